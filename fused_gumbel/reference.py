"""Pure-PyTorch reference Gumbel-Softmax: the readable algorithm the kernels are tested against.

The Gumbel-Softmax / Concrete distribution (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017):

    g_k ~ Gumbel(0, 1),   y = softmax((logits + g) / tau),

and for ``hard=True`` the straight-through estimator: the forward value is the exact one-hot
of ``argmax(logits + g)`` (a sample of Categorical(softmax(logits)), by the Gumbel-max trick)
and the gradient is the soft sample's. The noise follows the spec in ``fused_gumbel/rng.py``
bit for bit, so a kernel and this reference given the same ``(seed, offset)`` see identical
noise; ``noise=`` replaces it with an explicit tensor. This module is also the CPU backend.
"""
from __future__ import annotations

import torch

from . import rng


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
    to the soft sample unchanged (exact values, unlike ``hard - soft.detach() + soft``)."""

    @staticmethod
    def forward(ctx, y_soft, y_hard):
        return y_hard

    @staticmethod
    def backward(ctx, grad):
        return grad, None


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


def _resolve_noise(logits, dim, generator, noise, seed, offset):
    return resolve_noise(logits, generator, noise, seed, offset, lambda s, o: gumbel_noise(logits, dim, s, o))


def _perturbed(logits, dim, generator, noise, seed, offset):
    """logits + g in the compute dtype, the row max, and which rows are invalid (NaN / no finite max)."""
    dim = dim if logits.dim() else 0
    x = logits.reshape(1) if logits.dim() == 0 else logits
    g = _resolve_noise(x, dim, generator, None if noise is None else noise.reshape(x.shape), seed, offset)
    perturbed = x.to(g.dtype) + g
    row_max = perturbed.amax(dim, keepdim=True).detach()
    invalid = ~torch.isfinite(row_max)  # amax propagates NaN, so this also flags NaN rows
    return perturbed, row_max, invalid, dim


def _nan_rows(t: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """``t`` with invalid rows set to NaN (no copy in the common case of none)."""
    return t.masked_fill(invalid, float("nan")) if bool(invalid.any()) else t


def gumbel_softmax(logits: torch.Tensor, tau: float | torch.Tensor = 1.0, hard: bool = False, dim: int = -1, *,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                   seed: int | None = None, offset: int | None = None) -> torch.Tensor:
    """Reference ``gumbel_softmax``; the noise comes from ``noise``, else ``(seed, offset)``,
    else a fresh ``(seed, offset)`` drawn from ``generator``."""
    perturbed, row_max, invalid, dim = _perturbed(logits, dim, generator, noise, seed, offset)
    tau = torch.as_tensor(tau, dtype=perturbed.dtype, device=perturbed.device)
    # softmax((x + g) / tau) as the kernels compute it: the exponent is <= 0, so no further shift.
    # (Also several times faster than torch.softmax on CPU for short rows.)
    unnormalised = torch.exp((perturbed - row_max) / tau)
    y_soft = _nan_rows(unnormalised / unnormalised.sum(dim, keepdim=True), invalid)
    if hard:
        index = perturbed.argmax(dim, keepdim=True)
        y_hard = _nan_rows(torch.zeros_like(y_soft).scatter_(dim, index, 1.0), invalid)
        y_soft = StraightThrough.apply(y_soft, y_hard)
    return y_soft.to(logits.dtype).reshape(logits.shape)


def categorical(logits: torch.Tensor, dim: int = -1, *, generator: torch.Generator | None = None,
                one_hot: bool = False, noise: torch.Tensor | None = None, seed: int | None = None,
                offset: int | None = None) -> torch.Tensor:
    """Reference Gumbel-max draw: int64 indices with ``dim`` removed (-1 for invalid rows), or a one-hot."""
    perturbed, _, invalid, dim = _perturbed(logits, dim, generator, noise, seed, offset)
    index = perturbed.argmax(dim, keepdim=True).masked_fill(invalid, -1)
    if one_hot:
        out = _nan_rows(torch.zeros_like(perturbed).scatter_(dim, index.clamp_min(0), 1.0), invalid)
        return out.to(logits.dtype).reshape(logits.shape)
    index = index.squeeze(dim)
    return index.reshape(()) if logits.dim() == 0 else index
