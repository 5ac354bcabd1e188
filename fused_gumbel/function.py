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


def _contiguous_strides(shape: RowShape) -> tuple[int, int, int]:
    return (shape.classes * shape.inner, shape.inner, 1)


class GumbelSoftmaxFunction(torch.autograd.Function):
    """``apply(logits, tau, hard, dim, seed, offset)``; ``tau`` is a float, a 0-dim tensor or a
    contiguous [rows] tensor (one temperature per row, rows in RNG-spec order). ``seed`` is an
    int (with ``offset``) or, under CUDA-graph capture, an int64 [2] device tensor holding
    (key, offset) that the kernels read at run time (``offset`` is then ignored)."""

    @staticmethod
    def forward(ctx, logits, tau, hard, dim, seed, offset):
        shape = RowShape.of(logits.shape, dim)
        x, x_strides = as_rows(logits, dim)
        y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        kernels.gumbel_softmax_forward(x, x_strides, y, _contiguous_strides(shape), None, tau, shape.rows,
                                       shape.classes, shape.inner, seed, offset,
                                       kernels.MODE_HARD if hard else kernels.MODE_SOFT)
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        ctx.save_for_backward(x if hard else y, tau_tensor)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.hard, ctx.dim, ctx.seed, ctx.offset, ctx.shape = hard, dim, seed, offset, shape
        ctx.src_strides = x_strides if hard else _contiguous_strides(shape)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        src, tau_tensor = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        shape = ctx.shape
        grad_y, grad_y_strides = as_rows(grad_y, ctx.dim)
        grad_x = torch.empty(grad_y.shape, dtype=src.dtype, device=src.device)
        grad_tau_rows = None
        if tau_tensor is not None and ctx.needs_input_grad[1]:
            grad_tau_rows = torch.empty(shape.rows, dtype=torch.float64 if src.dtype == torch.float64
                                        else torch.float32, device=src.device)
        kernels.gumbel_softmax_backward(grad_y, grad_y_strides, src, ctx.src_strides, grad_x,
                                        _contiguous_strides(shape), grad_tau_rows, tau, shape.rows,
                                        shape.classes, shape.inner, ctx.seed, ctx.offset, regenerate=ctx.hard)
        grad_tau = None
        if grad_tau_rows is not None:
            grad_tau = (grad_tau_rows.sum() if tau_tensor.dim() == 0 else grad_tau_rows).to(tau_tensor.dtype)
        return grad_x, grad_tau, None, None, None, None
