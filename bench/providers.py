"""The implementations compared on every case, and the two yardsticks.

Samplers (same logits, same tau = 1, same ``dim``):
  fused      ``fused_gumbel.gumbel_softmax`` / ``fused_gumbel.categorical`` (one Triton kernel
             each way on CUDA; on CPU the backend ``fused_gumbel.select_backend`` picks: the
             C++ kernel of ``fused_gumbel._C`` where it is built, else the PyTorch reference;
             never the Triton interpreter, as this suite never sets ``TRITON_INTERPRET=1``)
  eager      ``torch.nn.functional.gumbel_softmax`` (categorical: its hard sample's argmax)
  compile    ``torch.compile(F.gumbel_softmax, dynamic=False)``, compiled per case
  reference  ``fused_gumbel.reference`` (the readable pure-PyTorch algorithm, same noise)
  exp_race   categorical only: the exponential-race sampler of LLM servers,
             ``probs = softmax(logits); probs.div_(empty_like(probs).exponential_()).argmax(-1)``
             (softmax in float32, as vLLM does)
Yardsticks on the same tensor:
  softmax    ``torch.softmax`` alone (with its backward for fwd+bwd): the cost of a softmax
  copy       a same-device copy of the logits (reads and writes the same bytes): the
             bandwidth ceiling; its GB/s is 2 * bytes / time whatever the case's pass
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

import fused_gumbel
from fused_gumbel import reference

from .cases import Case

TAU = 1.0
SAMPLERS = ("fused", "eager", "compile", "reference", "exp_race")
YARDSTICKS = ("softmax", "copy")
ALL_PROVIDERS = SAMPLERS + YARDSTICKS


def applies(provider: str, case: Case) -> bool:
    if provider == "exp_race":
        return case.mode == "categorical"
    return True


def _eager_categorical(logits: torch.Tensor, dim: int) -> torch.Tensor:
    return F.gumbel_softmax(logits, TAU, hard=True, dim=dim).argmax(dim)


def _exp_race(logits: torch.Tensor, dim: int) -> torch.Tensor:
    probs = torch.softmax(logits, dim, dtype=torch.float32)
    return probs.div_(torch.empty_like(probs).exponential_()).argmax(dim)


def sampler(provider: str, case: Case) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits -> output`` for one provider and case (the forward only)."""
    dim, hard = case.shape.dim, case.hard
    categorical = case.mode == "categorical"
    if provider == "fused":
        if categorical:
            return lambda x: fused_gumbel.categorical(x, dim)
        return lambda x: fused_gumbel.gumbel_softmax(x, TAU, hard, dim=dim)
    if provider == "reference":
        if categorical:
            return lambda x: reference.categorical(x, dim)
        return lambda x: reference.gumbel_softmax(x, TAU, hard, dim)
    if provider in ("eager", "compile"):
        if categorical:
            def eager(x):
                return _eager_categorical(x, dim)
        else:
            def eager(x):
                return F.gumbel_softmax(x, TAU, hard, dim=dim)
        if provider == "eager":
            return eager
        # One static graph per case; the caller resets dynamo between cases so that the
        # recompile limit of the shared code object is never hit.
        return torch.compile(eager, dynamic=False)
    if provider == "exp_race":
        return lambda x: _exp_race(x, dim)
    if provider == "softmax":
        return lambda x: torch.softmax(x, dim)
    raise ValueError(f"unknown provider {provider!r}")


def build_call(provider: str, case: Case, logits: torch.Tensor, grad_out: torch.Tensor | None) -> Callable[[], object]:
    """A no-argument callable that runs one timed call of ``provider`` on ``case``."""
    if provider == "copy":
        out = torch.empty_like(logits)
        return lambda: out.copy_(logits)
    forward = sampler(provider, case)
    if case.mode == "categorical":
        def call_no_grad():
            with torch.no_grad():
                return forward(logits)
        return call_no_grad
    if not case.backward:
        x = logits.detach()
        return lambda: forward(x)
    x = logits.detach().requires_grad_(True)

    def forward_backward():
        y = forward(x)
        # autograd.grad returns the gradient without accumulating it into x.grad.
        return torch.autograd.grad(y, x, grad_out)[0]

    return forward_backward
