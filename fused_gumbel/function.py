"""The autograd Function behind ``fused_gumbel.gumbel_softmax``: one kernel launch each way.

Forward launches ``kernels.gumbel_softmax.gumbel_softmax_forward``; backward launches
``gumbel_softmax_backward`` with dx = y * (dy - sum(dy * y)) / tau and the temperature
gradient. Soft mode saves its output y; hard (straight-through) mode saves only the logits
and the call's (seed, offset) and regenerates the noise and y in the backward kernel.
"""
from __future__ import annotations

import torch

from ._layout import RowShape, as_rows
from .kernels import gumbel_softmax as kernels


def _stats_buffer(shape, mode, dtype, device, save_stats):
    """Compute-dtype scratch for streamed rows (soft), or the hard forward's per-row (max, sum)."""
    if mode == kernels.MODE_INDEX and not save_stats:
        return None
    size = kernels.stats_size(shape.rows, shape.classes, mode)
    return torch.empty(size, dtype=_compute(dtype), device=device) if size else None


def _compute(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample_forward(logits, tau, mode, dim, seed, offset, rng_out=None, save_stats=False):
    """One forward launch for ``mode`` (kernels.MODE_*). Returns ``(out, x, x_strides, stats)``:
    the sample (same shape and dtype as the logits) or, for MODE_INDEX, int64 indices with
    ``dim`` removed; the [outer, K, inner] view of the logits the kernel read; and, for rows
    too long for registers, the per-row (max, sum) that the hard backward reads (else None)."""
    shape = RowShape.of(logits.shape, dim)
    x, x_strides = as_rows(logits, dim)
    stats = _stats_buffer(shape, mode, logits.dtype, logits.device, save_stats)
    if mode == kernels.MODE_INDEX:
        index = torch.empty(shape.rows, dtype=torch.int64, device=logits.device)
        kernels.gumbel_softmax_forward(x, x_strides, None, (0, 0, 0), index, tau, shape.rows, shape.classes,
                                       shape.inner, seed, offset, mode, rng_out=rng_out, stats=stats)
        return index.reshape(logits.shape[:dim] + logits.shape[dim + 1:]), x, x_strides, stats
    y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    kernels.gumbel_softmax_forward(x, x_strides, y, shape.contiguous_strides, None, tau, shape.rows, shape.classes,
                                   shape.inner, seed, offset, mode, rng_out=rng_out, stats=stats)
    return y, x, x_strides, (stats if mode == kernels.MODE_HARD else None)


def tau_grad_buffer(tau, needed: bool, size: int, like: torch.Tensor):
    """Per-row (or per-program) temperature-gradient buffer in the compute dtype, or None."""
    if not (needed and isinstance(tau, torch.Tensor)):
        return None
    return torch.empty(size, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32,
                       device=like.device)


def reduce_tau_grad(partial: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The gradient of a 0-dim tau is the sum of the partial ones; a per-row tau keeps them."""
    return (partial.sum() if tau.dim() == 0 else partial).to(tau.dtype)


def sample_backward(grad_y, src, src_strides, tau, dim, seed, offset, hard, tau_grad, stats=None):
    """One backward launch. ``src`` is the saved soft output, or the logits' [outer, K, inner]
    view when ``hard`` (the kernel regenerates the noise; for rows too long for registers it also
    needs the forward's ``stats``, recomputed here by an index-mode forward when not given).
    Returns (grad_logits, grad_tau or None)."""
    shape = RowShape.of(src.shape, dim)
    if hard and stats is None and kernels.needs_row_stats(shape.rows, shape.classes):
        stats = _stats_buffer(shape, kernels.MODE_HARD, src.dtype, src.device, True)
        index = torch.empty(shape.rows, dtype=torch.int64, device=src.device)
        kernels.gumbel_softmax_forward(src, src_strides, None, (0, 0, 0), index, tau, shape.rows, shape.classes,
                                       shape.inner, seed, offset, kernels.MODE_INDEX, stats=stats)
    grad_y, grad_y_strides = as_rows(grad_y, dim)
    grad_x = torch.empty(grad_y.shape, dtype=src.dtype, device=src.device)
    grad_tau_rows = tau_grad_buffer(tau, tau_grad, shape.rows, src)
    kernels.gumbel_softmax_backward(grad_y, grad_y_strides, src, src_strides, grad_x, shape.contiguous_strides,
                                    grad_tau_rows, tau, shape.rows, shape.classes, shape.inner, seed, offset,
                                    regenerate=hard, stats=stats)
    return grad_x, None if grad_tau_rows is None else reduce_tau_grad(grad_tau_rows, tau)


class GumbelSoftmaxFunction(torch.autograd.Function):
    """``apply(logits, tau, hard, dim, seed, offset)``; ``tau`` is a float, a 0-dim tensor or a
    contiguous [rows] tensor (one temperature per row, rows in RNG-spec order). ``seed`` is an
    int (with ``offset``) or, under CUDA-graph capture, an int64 [2] device tensor holding
    (key, offset) that the kernels read at run time (``offset`` is then ignored)."""

    @staticmethod
    def forward(ctx, logits, tau, hard, dim, seed, offset):
        mode = kernels.MODE_HARD if hard else kernels.MODE_SOFT
        y, x, x_strides, stats = sample_forward(logits, tau, mode, dim, seed, offset, save_stats=hard)
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        ctx.save_for_backward(x if hard else y, tau_tensor, stats)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.hard, ctx.dim, ctx.seed, ctx.offset = hard, dim, seed, offset
        ctx.src_strides = x_strides if hard else RowShape.of(logits.shape, dim).contiguous_strides
        return y

    @staticmethod
    def backward(ctx, grad_y):
        src, tau_tensor, stats = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        grad_x, grad_tau = sample_backward(grad_y, src, ctx.src_strides, tau, ctx.dim, ctx.seed, ctx.offset,
                                           ctx.hard, ctx.needs_input_grad[1], stats)
        return grad_x, grad_tau, None, None, None, None
