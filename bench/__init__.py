"""Benchmark suite of fused-gumbel: speed and memory against PyTorch eager, torch.compile,
the reference and the LLM exponential-race sampler, on CPU and on CUDA.

``python -m bench --device cuda|cpu [--quick]`` (or ``python bench/run.py``) runs it; see
``docs/benchmarks.md``. ``bench/gpu_suite.sh`` runs the GPU correctness tests and the suite
in one GPU session; ``pytest bench --benchmark-only`` runs the pytest-benchmark CPU tests.
"""
import os
import sys


def unset_triton_interpreter() -> None:
    """The Triton interpreter (``TRITON_INTERPRET=1``) would time numpy instead of a kernel;
    the entry points call this before triton or fused_gumbel is imported."""
    if os.environ.pop("TRITON_INTERPRET", None) not in (None, "0"):
        print("bench: unset TRITON_INTERPRET (the interpreter would time numpy, not the kernels)", file=sys.stderr)
