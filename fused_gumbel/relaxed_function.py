"""The autograd Functions behind ``relaxed_bernoulli`` and ``gumbel_topk``: one launch each way.

``RelaxedBernoulliFunction`` saves only the logits and the call's (seed, offset): its backward
kernel regenerates the logistic noise, for the soft and the straight-through hard mode alike.
``GumbelTopkFunction`` saves the logits and four per-row, per-step statistics (the max, the
runner-up, the complement mass and the argmax: [rows, k, 4]) of the Xie & Ermon recursion; its backward kernel
regenerates the Gumbel noise and replays the recursion from them (``kernels/gumbel_topk.py``).
"""
from __future__ import annotations

import torch

from ._layout import RowShape, as_rows
from .function import reduce_tau_grad, tau_grad_buffer
from .reference import compute_dtype
from .kernels import gumbel_topk as topk_kernels
from .kernels import relaxed_bernoulli as bernoulli_kernels


class RelaxedBernoulliFunction(torch.autograd.Function):
    """``apply(logits, tau, hard, seed, offset)``; ``tau`` is a float, a 0-dim tensor or a
    contiguous [numel] tensor (one temperature per element, row-major), compute dtype."""

    @staticmethod
    def forward(ctx, logits, tau, hard, seed, offset):
        x = logits.contiguous()
        y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        mode = bernoulli_kernels.MODE_HARD if hard else bernoulli_kernels.MODE_SOFT
        bernoulli_kernels.relaxed_bernoulli_forward(x, y, tau, seed, offset, mode)
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        ctx.save_for_backward(x, tau_tensor)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.seed, ctx.offset = seed, offset
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, tau_tensor = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        grad_y = grad_y.contiguous()
        grad_x = torch.empty_like(x)
        # A 0-dim tau gets one partial sum per program (no atomics), reduced below.
        size = x.numel() if tau_tensor is not None and tau_tensor.dim() else bernoulli_kernels.num_programs(x.numel())
        grad_tau = tau_grad_buffer(tau_tensor, ctx.needs_input_grad[1], size, x)
        bernoulli_kernels.relaxed_bernoulli_backward(grad_y, x, grad_x, grad_tau, tau, ctx.seed, ctx.offset)
        if grad_tau is not None:
            grad_tau = reduce_tau_grad(grad_tau, tau_tensor)
        return grad_x, grad_tau, None, None, None


class GumbelTopkFunction(torch.autograd.Function):
    """``apply(logits, tau, k, hard, dim, seed, offset, save_stats)``; ``tau`` is a float, a 0-dim
    tensor or a contiguous [rows] tensor (rows in RNG-spec order), compute dtype. Without
    ``save_stats`` (no gradient will be taken) a hard sample skips the relaxation entirely."""

    @staticmethod
    def forward(ctx, logits, tau, k, hard, dim, seed, offset, save_stats):
        shape = RowShape.of(logits.shape, dim)
        x, x_strides = as_rows(logits, dim)
        y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        stats = None
        if save_stats:
            stats = torch.empty(shape.rows, k, 4, dtype=compute_dtype(logits.dtype), device=logits.device)
        mode = topk_kernels.MODE_HARD if hard else topk_kernels.MODE_SOFT
        topk_kernels.gumbel_topk_forward(x, x_strides, y, shape.contiguous_strides, None, stats, tau, shape.rows,
                                         shape.classes, shape.inner, k, seed, offset, mode)
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        ctx.save_for_backward(x, tau_tensor, stats)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.k, ctx.dim, ctx.seed, ctx.offset, ctx.shape, ctx.x_strides = k, dim, seed, offset, shape, x_strides
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, tau_tensor, stats = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        shape = ctx.shape
        grad_y, grad_y_strides = as_rows(grad_y, ctx.dim)
        grad_x = torch.empty(grad_y.shape, dtype=x.dtype, device=x.device)
        grad_tau_rows = tau_grad_buffer(tau_tensor, ctx.needs_input_grad[1], shape.rows, x)
        topk_kernels.gumbel_topk_backward(grad_y, grad_y_strides, x, ctx.x_strides, grad_x, shape.contiguous_strides,
                                          grad_tau_rows, stats, tau, shape.rows, shape.classes, shape.inner, ctx.k,
                                          ctx.seed, ctx.offset)
        grad_tau = None if grad_tau_rows is None else reduce_tau_grad(grad_tau_rows, tau_tensor)
        return grad_x, grad_tau, None, None, None, None, None, None
