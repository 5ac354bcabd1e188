"""Pure-PyTorch reference Gumbel-Softmax: the readable algorithm the kernels are tested against.

The Gumbel-Softmax / Concrete distribution (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017):

    g_k ~ Gumbel(0, 1),   y = softmax((logits + g) / tau),

and for ``hard=True`` the straight-through estimator: the forward value is the exact one-hot
of ``argmax(logits + g)`` (a sample of Categorical(softmax(logits)), by the Gumbel-max trick)
and the gradient is the soft sample's. The noise follows the spec in ``fused_gumbel/rng.py``
bit for bit, so a kernel and this reference given the same ``(seed, offset)`` see identical
noise; ``noise=`` replaces it with an explicit tensor. This module is also the CPU backend.
Everything is differentiable PyTorch ops (double backward, forward-mode AD, ``torch.func``);
under ``torch.func.vmap`` the noise is batched by a rule (``_functorch``), per vmap's randomness.
"""
from __future__ import annotations

import torch

from . import _functorch, rng


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gumbel_noise(logits: torch.Tensor, dim: int, seed: int, offset: int) -> torch.Tensor:
    """The spec's Gumbel noise for ``logits`` (same shape, compute dtype)."""
    moved = logits.movedim(dim, -1) if logits.dim() else logits.reshape(1)
    classes = moved.shape[-1]
    rows = moved.numel() // classes if classes else 0
    noise = rng.gumbel_noise_rows(rows, classes, seed, offset, compute_dtype(logits.dtype), logits.device)
    noise = noise.reshape(moved.shape)
    return noise.movedim(-1, dim) if logits.dim() else noise.reshape(())


class StraightThrough(torch.autograd.Function):
    """``StraightThrough.apply(soft, hard)``: forward the exact hard sample, send the gradient
    (and the forward-mode tangent) to the soft sample unchanged (exact values, unlike
    ``hard - soft.detach() + soft``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y_soft, y_hard):
        return y_hard

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad, None

    @staticmethod
    def jvp(ctx, soft_tangent, hard_tangent):
        return soft_tangent


class _SpecNoise(torch.autograd.Function):
    """``make_noise(like, dim, seed, offset)`` as a Function only so that ``torch.func.vmap`` can batch
    the noise (``_functorch.noise_rule``: independent noise per batch element, or the same, or an
    error, as vmap's ``randomness`` says). ``batch_like`` (tau or None) is there so that a call
    batched only through its temperature is seen as batched. No gradient: the noise is a constant."""

    @staticmethod
    def forward(like, batch_like, dim, seed, offset, make_noise):
        return make_noise(like, dim, seed, offset)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output)

    @staticmethod
    def backward(ctx, grad):
        return None, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, like, batch_like, dim, seed, offset, make_noise):
        return _functorch.noise_rule(make_noise, info, in_dims, like, batch_like, dim, seed, offset)


def spec_noise(make_noise, like: torch.Tensor, dim: int, seed: int, offset: int, batch_like=None) -> torch.Tensor:
    """``make_noise(like, dim, seed, offset)``, batched correctly under ``torch.func.vmap``."""
    if not _functorch.in_vmap():  # the plain call: no Function overhead on the CPU backend's hot path
        return make_noise(like, dim, seed, offset)
    batch_like = batch_like.detach() if isinstance(batch_like, torch.Tensor) else None
    return _SpecNoise.apply(like.detach(), batch_like, dim, seed, offset, make_noise)


def resolve_noise(logits, generator, noise, seed, offset, make_noise):
    """The explicit ``noise`` (checked, in the compute dtype), else ``make_noise(seed, offset)``
    for the given ``(seed, offset)``, else for a fresh pair drawn from ``generator``."""
    if noise is not None:
        if noise.shape != logits.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(logits.shape)}")
        return noise.to(device=logits.device, dtype=compute_dtype(logits.dtype))
    if seed is None:
        seed, offset = rng.draw_seed_offset(logits.device, generator)
    return make_noise(seed, 0 if offset is None else offset)


def _resolve_noise(logits, dim, generator, noise, seed, offset, batch_like=None):
    return resolve_noise(logits, generator, noise, seed, offset,
                         lambda s, o: spec_noise(gumbel_noise, logits, dim, s, o, batch_like))


def _perturbed(logits, dim, generator, noise, seed, offset, batch_like=None):
    """logits + g in the compute dtype, the row max, and which rows are invalid (NaN / no finite max)."""
    dim = dim if logits.dim() else 0
    x = logits.reshape(1) if logits.dim() == 0 else logits
    g = _resolve_noise(x, dim, generator, None if noise is None else noise.reshape(x.shape), seed, offset, batch_like)
    perturbed = x.to(g.dtype) + g
    row_max = perturbed.amax(dim, keepdim=True).detach()
    invalid = ~torch.isfinite(row_max)  # amax propagates NaN, so this also flags NaN rows
    return perturbed, row_max, invalid, dim


def _nan_rows(t: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """``t`` with invalid rows set to NaN (no copy in the common case of none; always a masked copy
    where a data-dependent branch is impossible: meta tensors, vmap)."""
    if invalid.device.type == "meta" or _functorch.in_vmap():
        return t.masked_fill(invalid, float("nan"))
    return t.masked_fill(invalid, float("nan")) if bool(invalid.any()) else t


def _one_hot(like: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Zeros like ``like`` with 1.0 at ``index`` along ``dim`` (in place, except under vmap, whose
    in-place scatter has no batching rule)."""
    if _functorch.in_vmap():
        return torch.zeros_like(like).scatter(dim, index, 1.0)
    return torch.zeros_like(like).scatter_(dim, index, 1.0)


def gumbel_softmax(logits: torch.Tensor, tau: float | torch.Tensor = 1.0, hard: bool = False, dim: int = -1, *,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                   seed: int | None = None, offset: int | None = None) -> torch.Tensor:
    """Reference ``gumbel_softmax``; the noise comes from ``noise``, else ``(seed, offset)``,
    else a fresh ``(seed, offset)`` drawn from ``generator``."""
    perturbed, row_max, invalid, dim = _perturbed(logits, dim, generator, noise, seed, offset, batch_like=tau)
    tau_is_tensor = isinstance(tau, torch.Tensor)
    tau = torch.as_tensor(tau, dtype=perturbed.dtype, device=perturbed.device)
    # softmax((x + g) / tau) as the kernels compute it: the exponent is <= 0, so no further shift.
    # (Also several times faster than torch.softmax on CPU for short rows.)
    shifted = perturbed - row_max
    if tau_is_tensor:
        # -inf logits stay out of the division, whose tau derivative would be 0 * inf = NaN (as the
        # kernels do: zero-probability classes add nothing to the tau gradient or tangent).
        finite = shifted > float("-inf")
        unnormalised = torch.exp(torch.where(finite, shifted, 0.0) / tau) * finite
    else:
        unnormalised = torch.exp(shifted / tau)
    y_soft = _nan_rows(unnormalised / unnormalised.sum(dim, keepdim=True), invalid)
    if hard:
        index = perturbed.argmax(dim, keepdim=True)
        y_hard = _nan_rows(_one_hot(y_soft, dim, index), invalid)
        y_soft = StraightThrough.apply(y_soft, y_hard)
    return y_soft.to(logits.dtype).reshape(logits.shape)


def categorical(logits: torch.Tensor, dim: int = -1, *, generator: torch.Generator | None = None,
                one_hot: bool = False, noise: torch.Tensor | None = None, seed: int | None = None,
                offset: int | None = None) -> torch.Tensor:
    """Reference Gumbel-max draw: int64 indices with ``dim`` removed (-1 for invalid rows), or a one-hot."""
    perturbed, _, invalid, dim = _perturbed(logits, dim, generator, noise, seed, offset)
    index = perturbed.argmax(dim, keepdim=True).masked_fill(invalid, -1)
    if one_hot:
        out = _nan_rows(_one_hot(perturbed, dim, index.clamp_min(0)), invalid)
        return out.to(logits.dtype).reshape(logits.shape)
    index = index.squeeze(dim)
    return index.reshape(()) if logits.dim() == 0 else index
