"""pytest-benchmark regression tests on CPU: ``pytest bench --benchmark-only``.

Tiny cases (the VAE shape and one wider row), timed per provider with pytest-benchmark so
that CPU regressions show up in ``--benchmark-compare``; ``python -m bench`` is the full
suite. Each test also checks that what it timed is a valid sample, so it cannot silently
time something broken. Timings are recorded, never asserted. Not collected by a plain
``pytest`` (testpaths = tests).
"""
import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 would time the Triton interpreter (numpy), not the CPU path",
                allow_module_level=True)

import fused_gumbel  # noqa: E402
from bench.cases import DTYPE_NAMES, Case, Shape, make_inputs  # noqa: E402
from bench.providers import build_call  # noqa: E402

VAE = Shape((3000, 10), note="VAE: batch 100 x 30 latents")
WIDE = Shape((16, 1024))
CASES = [Case(VAE, torch.float32, mode, pass_) for mode, pass_ in
         [("soft", "fwd"), ("soft", "fwd+bwd"), ("hard", "fwd"), ("hard", "fwd+bwd"), ("categorical", "fwd")]]
CASES += [Case(WIDE, torch.float32, "hard", "fwd+bwd"), Case(VAE, torch.bfloat16, "soft", "fwd+bwd")]


@pytest.fixture(autouse=True)
def one_thread():
    # One thread: stable numbers on shared CI cores, as the suite's CPU default.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_sample(case, logits, out):
    """Soft rows sum to 1, hard rows are one-hot, indices are in range, gradients sum to 0 per row."""
    dim = case.shape.dim
    if case.mode == "categorical":
        assert out.dtype == torch.int64 and out.min() >= 0 and out.max() < case.shape.classes
        return
    out = out.float()
    assert torch.isfinite(out).all()
    if case.backward:  # softmax's Jacobian maps every upstream gradient to rows summing to 0
        scale = out.abs().amax().clamp_min(1e-30)
        tolerance = 1e-2 if case.dtype == torch.bfloat16 else 1e-4
        assert (out.sum(dim) / scale).abs().max() < tolerance
        return
    assert torch.allclose(out.sum(dim), torch.ones(()), atol=1e-4)
    if case.hard:
        assert ((out == 0) | (out == 1)).all()


@pytest.mark.parametrize("provider", ["fused", "eager", "reference", "exp_race"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key.replace("/", "-"))
def test_cpu_speed(benchmark, case, provider):
    if provider == "exp_race" and case.mode != "categorical":
        pytest.skip("the exponential-race sampler draws categorical indices only")
    logits, grad_out = make_inputs(case, torch.device("cpu"))
    call = build_call(provider, case, logits, grad_out)
    benchmark.group = case.key
    benchmark.extra_info.update(case=case.key, dtype=DTYPE_NAMES[case.dtype], minimal_bytes=case.minimal_bytes,
                                fused_backend=fused_gumbel.select_backend(torch.device("cpu")))
    out = benchmark(call)
    _check_sample(case, logits, out)
