"""Shared test utilities: run the fused kernel and the reference on identical noise; compile
kernels for an H100 without a GPU."""
import os
import subprocess
import sys

import torch

import fused_gumbel
from fused_gumbel import reference

TOLERANCES = {  # (atol, rtol) for values in [0, 1] and their gradients
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-6, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def run_both_backends(sample, logits, tau=1.0, seed=0, grad_weight=None, **kwargs):
    """``sample(x, tau=t, backend=b, **kwargs)`` on the Triton path and on the reference, both from
    the same RNG state, with a backward of ``(y * grad_weight).sum()`` when ``grad_weight`` is
    given. Returns ((y, dlogits, dtau) fused, (y, dlogits, dtau) reference)."""
    results = []
    for backend in ("triton", "reference"):
        torch.manual_seed(seed)
        x = logits.detach().clone().requires_grad_(grad_weight is not None)
        t = tau.detach().clone().requires_grad_(grad_weight is not None) if isinstance(tau, torch.Tensor) else tau
        y = sample(x, tau=t, backend=backend, **kwargs)
        dx = dt = None
        if grad_weight is not None:
            (y.to(grad_weight.dtype) * grad_weight).sum().backward()
            dx = x.grad
            dt = t.grad if isinstance(t, torch.Tensor) else None
        results.append((y, dx, dt))
    return results


def fused_and_reference(logits, tau=1.0, hard=False, dim=-1, seed=0, grad_weight=None):
    """:func:`run_both_backends` for ``fused_gumbel.gumbel_softmax``."""
    return run_both_backends(fused_gumbel.gumbel_softmax, logits, tau, seed, grad_weight, hard=hard, dim=dim)


def elementwise_tau(kind, shape, dtype):
    """A relaxed_bernoulli temperature of ``kind``: "float", "scalar" (0-dim), "per_row" (size 1 on
    the trailing dims, broadcast) or per element (the logits' shape)."""
    if kind == "float":
        return 0.7
    if kind == "scalar":
        return torch.tensor(0.7, dtype=dtype)
    if kind == "per_row":
        return torch.linspace(0.3, 2.0, shape[0], dtype=dtype).reshape(shape[0], *([1] * (len(shape) - 1)))
    return torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(5)) + 0.2


def row_tau(kind, shape, dim, dtype):
    """A gumbel_topk temperature of ``kind``: "float", "scalar" (0-dim) or one per row (size 1
    along ``dim``, values in [0.2, 2.2))."""
    if kind == "float":
        return 0.6
    if kind == "scalar":
        return torch.tensor(0.6, dtype=dtype)
    row_shape = list(shape)
    row_shape[dim] = 1
    return torch.rand(row_shape, dtype=dtype, generator=torch.Generator().manual_seed(3)) * 2 + 0.2


def compile_for_sm90(script: str, timeout: int = 900) -> str:
    """Run ``script`` (a ``str.format`` template whose ``{tests}`` is this folder, so it can import
    ``sm90_compile``) in a fresh Python without TRITON_INTERPRET; assert it succeeds and return
    its stdout (one ``: ok`` line per compiled variant)."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script.format(tests=tests)], cwd=os.path.dirname(tests), env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return done.stdout


def assert_close(actual, expected, dtype, scale=None):
    """Within ``dtype``'s tolerance; ``scale`` (default: 1 or the largest |expected|) scales atol,
    since a gradient's rounding error grows with its magnitude."""
    atol, rtol = TOLERANCES[dtype]
    if scale is None:
        scale = max(1.0, expected.abs().nan_to_num().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol, equal_nan=True)


__all__ = ["compile_for_sm90", "elementwise_tau", "row_tau", "run_both_backends", "fused_and_reference", "assert_close", "TOLERANCES", "reference"]
