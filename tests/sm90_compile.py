"""Compile Triton kernels for an H100 (sm_90) without a GPU: catches code that the interpreter
accepts but the Triton compiler rejects. Run in a process WITHOUT TRITON_INTERPRET (the
interpreter replaces @triton.jit functions); ``tests/test_kernel_compile.py`` does that.

Usage: ``compile_variants(kernel, args, variants)`` where ``args`` maps every runtime argument
to an example value (a torch dtype stands for a pointer to it, an int or float for a scalar) and
each variant maps the constexpr arguments (plus optional ``num_warps``) to values.

With ``FUSED_GUMBEL_SM90_GPU_VARIANTS=1`` (``tests/test_triton_versions.py`` sets it for the other
Triton versions) the variants no GPU launch ever compiles are skipped: the float32 exact and
exact-math fast twins (``FAST`` 0 or 1 with ``COMPUTE=float32``), which only the interpreter runs
(on a GPU float32 math is always ``FAST=2``, ``kernels.gumbel_softmax._fast``). The installed
Triton still compiles them in the suite's own compile tests.
"""
from __future__ import annotations

import os
import sys
import time

assert os.environ.get("TRITON_INTERPRET") != "1", "sm90_compile must run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
_POINTER = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16",
            torch.int64: "*i64", torch.int32: "*i32", torch.int8: "*i8", torch.bool: "*i1"}


def _type_of(value) -> str:
    if isinstance(value, torch.dtype):
        return _POINTER[value]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unsupported example argument {value!r}")


def launched_on_a_gpu(variant: dict) -> bool:
    """False for the interpreter-only float32 noise twins (``FAST`` 0 or 1 with float32 math)."""
    import triton.language as tl

    return variant.get("FAST", 2) == 2 or variant.get("COMPUTE") == tl.float64


def compile_variants(kernel, args: dict, variants: list[dict]) -> list[str]:
    """Compile ``kernel`` to a cubin for every variant; returns one line per variant."""
    lines = []
    gpu_only = os.environ.get("FUSED_GUMBEL_SM90_GPU_VARIANTS") == "1"
    for variant in variants:
        if gpu_only and not launched_on_a_gpu(variant):
            lines.append(f"{kernel.__name__} {variant}: skipped (interpreter-only twin)")
            continue
        variant = dict(variant)
        num_warps = variant.pop("num_warps", 4)
        signature, constexprs = {}, {}
        for param in kernel.params:
            name = param.name
            if name in variant or (param.is_constexpr and name not in args):
                signature[name] = "constexpr"
                constexprs[name] = variant[name] if name in variant else param.default
            else:
                signature[name] = _type_of(args[name])
        # Name the variant on stderr first: an LLVM assertion aborts the process without a Python
        # traceback, and the caller's error message shows the tail of stderr.
        print(f"compiling {kernel.__name__} {variant} num_warps={num_warps}", file=sys.stderr, flush=True)
        start = time.time()
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET,
                                  options=dict(num_warps=num_warps))
        assert compiled.asm.get("cubin"), f"no cubin for {kernel.__name__} {variant}"
        lines.append(f"{kernel.__name__} {variant} num_warps={num_warps}: ok ({time.time() - start:.1f}s)")
    return lines
