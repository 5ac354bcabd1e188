"""``torch.func.vmap`` support: batching rules for the samplers and the vmap randomness modes.

A kernel cannot read a vmap ``BatchedTensor``, and one call's noise comes from one Philox
``(seed, offset)`` drawn in Python. So the autograd Functions that launch kernels or draw noise
have ``vmap`` rules (``gumbel_softmax_rule``, ``noise_rule``) that see plain tensors and the
vmap ``randomness`` flag, with PyTorch's semantics for random ops:

- ``"different"``: the batch dim is folded into the rows (``[B, ...]``, class dim + 1), so every
  batch element gets its own rows of the call's stream: independent noise, one launch. The result
  equals the unbatched call on the stacked inputs with the same seed.
- ``"same"``: every element gets the noise of one unbatched call (a loop of one launch per element
  on the Triton path; the reference broadcasts one noise tensor).
- ``"error"`` (vmap's default): random operations raise, as PyTorch's do. A call with ``seed=``
  draws nothing, so it is a deterministic function and runs with ``"same"`` semantics (which
  is what ``torch.func.jacfwd``/``hessian``, built on vmap, need).

The seed is drawn once per call, outside the vmap (``outside_vmap``): a generator draw inside it
would itself be batched. Inspecting the vmap levels needs ``torch._functorch`` internals; where
they are missing (another PyTorch version) the checks are skipped and the rules still apply.
"""
from __future__ import annotations

import contextlib

import torch

# PyTorch's own message for a random op under vmap(randomness="error").
RANDOMNESS_ERROR = ("vmap: called random operation while in randomness error mode. Please either use the 'same' or "
                    "'different' randomness flags on vmap or perform the randomness operation out of vmap")


try:
    from torch._functorch.pyfunctorch import coerce_cinterpreter as _coerce
    _peek = torch._C._functorch.peek_interpreter_stack
    _stack = torch._C._functorch.get_interpreter_stack
    _VMAP = torch._C._functorch.TransformType.Vmap
except (ImportError, AttributeError):  # pragma: no cover - PyTorch without these internals
    _peek = None


def _vmap_levels() -> list:
    """The vmap interpreters on the functorch stack, innermost last ([] outside vmap)."""
    if _peek is None or _peek() is None:  # the common case, outside every transform: one cheap call
        return []
    return [_coerce(c) for c in _stack() or () if c.key() == _VMAP]


def transforms_active() -> bool:
    """Whether any torch.func transform (vmap, grad, jvp, functionalize) is active; True where the
    functorch internals are missing (the caller then takes the form that works under transforms)."""
    return _peek is None or _peek() is not None


def in_vmap() -> bool:
    """Whether this call runs under ``torch.func.vmap`` (tensors may be batched: no data-dependent ``bool``)."""
    return bool(_vmap_levels())


def check_vmap_randomness(*inputs, seeded: bool = False) -> None:
    """Raise, before any draw, as PyTorch's random ops do: under vmap(randomness="error"), and under
    randomness="different" when no input is batched by the innermost vmap (one sample would be
    silently shared by the whole batch; ``F.gumbel_softmax`` raises there too). A ``seeded`` call
    (``seed=``) is deterministic: nothing to refuse."""
    levels = _vmap_levels()
    if not levels or seeded:
        return
    if any(level.randomness() == "error" for level in levels):
        raise RuntimeError(RANDOMNESS_ERROR)
    if levels[-1].randomness() == "different" and _peek().key() == _VMAP:
        batched = torch._C._functorch.is_batchedtensor
        if not any(isinstance(t, torch.Tensor) and batched(t) for t in inputs):
            raise RuntimeError("vmap: randomness='different' needs the logits or tau to be batched (inputs that are "
                               "the same for every batch element would get one shared sample); map over them, or "
                               "use randomness='same'")


def outside_vmap():
    """A context in which functorch transforms are off, for the call's one generator draw."""
    disable = getattr(torch._C, "_DisableFuncTorch", None)
    return disable() if disable is not None and in_vmap() else contextlib.nullcontext()


def _batch_first(t: torch.Tensor, bdim, batch_size: int) -> torch.Tensor:
    return t.movedim(bdim, 0) if bdim is not None else t.expand(batch_size, *t.shape)


def _fold_tau(tau, bdim, batch_size: int, rows: int):
    """The kernel-form tau (float, 0-dim or [rows]) of a batched call as the kernel form of the folded
    ``[B, ...]`` call: rows ``b * rows + r`` in RNG-spec order."""
    if not isinstance(tau, torch.Tensor) or (bdim is None and tau.dim() == 0):
        return tau
    if bdim is None:
        return tau.expand(batch_size, rows).reshape(-1)
    tau = tau.movedim(bdim, 0)
    return tau.reshape(batch_size, -1).expand(batch_size, rows).reshape(-1).contiguous()


def _select(t, bdim, index: int):
    return t if bdim is None or not isinstance(t, torch.Tensor) else t.select(bdim, index)


def gumbel_softmax_rule(apply, info, in_dims, logits, tau, hard, dim, seed, offset):
    """The vmap rule of ``GumbelSoftmaxFunction`` (``apply`` is its ``apply``). A call that reaches
    it under "error" passed ``check_vmap_randomness`` (a ``seed=`` call, or the backward replaying
    one): it gets the "same" semantics."""
    logits_bdim, tau_bdim = in_dims[0], in_dims[1]
    batch = info.batch_size
    if info.randomness == "different":
        folded = _batch_first(logits, logits_bdim, batch)
        rows = folded[0].numel() // max(folded.shape[dim + 1], 1)
        return apply(folded, _fold_tau(tau, tau_bdim, batch, rows), hard, dim + 1, seed, offset), 0
    outs = [apply(_select(logits, logits_bdim, b), _select(tau, tau_bdim, b), hard, dim, seed, offset)
            for b in range(batch)]
    return torch.stack(outs), 0


def noise_rule(make_noise, info, in_dims, like, batch_like, dim, seed, offset):
    """The vmap rule of the reference's noise Function: ``make_noise(like, dim, seed, offset)`` for the
    folded ``[B, ...]`` shape ("different") or one per-element shape ("same"). ``batch_like`` (tau, or
    None) only tells which batch the call belongs to when ``like`` itself is not batched. "error"
    is "same", as in ``gumbel_softmax_rule``."""
    bdim = in_dims[0]
    if info.randomness == "different":
        return make_noise(_batch_first(like, bdim, info.batch_size), dim + 1, seed, offset), 0
    return make_noise(_select(like, bdim, 0), dim, seed, offset), None
