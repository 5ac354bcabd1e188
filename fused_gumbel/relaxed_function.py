"""The launches and autograd Functions behind ``relaxed_bernoulli`` and ``gumbel_topk``: one launch each way.

``bernoulli_forward``/``bernoulli_backward`` and ``topk_forward``/``topk_backward`` are the one
launch path of each family: the eager autograd Functions below and the ``torch.library``
custom ops (``fused_gumbel._relaxed_op``, for torch.compile, torch.export and torch.jit.trace)
both call them.

``RelaxedBernoulliFunction`` saves only the logits and the call's (seed, offset): its backward
kernel regenerates the logistic noise, for the soft and the straight-through hard mode alike.
With ``native`` the launches are the C++ CPU kernel's (``_native.bernoulli_forward``/
``bernoulli_backward``, the same math in one pass), and a backward that builds a graph
(``create_graph=True``) replays the reference on the same noise, so double backward works there
as it does on the reference backend.
``GumbelTopkFunction`` saves the logits and four per-row, per-step statistics (the max, the
runner-up, the complement mass and the argmax: [rows, k, 4]) of the Xie & Ermon recursion; its backward kernel
regenerates the Gumbel noise and replays the recursion from them (``kernels/gumbel_topk.py``). With
``native`` the launches are the C++ CPU kernel's (``_native.topk_forward``/``topk_backward``, the same
statistics and replay), and a create_graph backward replays the reference, as for the Bernoulli.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _native, reference_relaxed
from ._layout import RowShape, as_rows
from .function import reduce_tau_grad, tau_grad_buffer
from .reference import compute_dtype
from .kernels import gumbel_topk as topk_kernels
from .kernels import relaxed_bernoulli as bernoulli_kernels


def bernoulli_forward(logits, tau, mode, seed, offset, rng_out=None, native=False):
    """One forward launch (``bernoulli_kernels.MODE_*``): the sample, contiguous, in the logits'
    dtype and shape. ``tau``: float, 0-dim or contiguous [numel] tensor (compute dtype).
    ``native`` launches the C++ CPU kernel instead (which writes no ``rng_out``)."""
    if native:
        return _native.bernoulli_forward(logits, tau, mode, seed, offset)
    y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    bernoulli_kernels.relaxed_bernoulli_forward(logits.contiguous(), y, tau, seed, offset, mode, rng_out=rng_out)
    return y


def bernoulli_backward(grad_y, logits, tau, seed, offset, tau_grad: bool, native=False):
    """One backward launch (soft and straight-through alike). Returns (grad_logits, grad_tau or None).
    ``native`` as for ``bernoulli_forward``."""
    if native:
        grad_x, grad_tau = _native.bernoulli_backward(grad_y, logits, tau, seed, offset, tau_grad)
        return grad_x, None if grad_tau is None else grad_tau.to(tau.dtype)
    x = logits.contiguous()
    grad_x = torch.empty_like(x)
    tau_tensor = tau if isinstance(tau, torch.Tensor) else None
    # A 0-dim tau gets one partial sum per program (no atomics), reduced below.
    size = x.numel() if tau_tensor is not None and tau_tensor.dim() else bernoulli_kernels.num_programs(x.numel())
    grad_tau = tau_grad_buffer(tau_tensor, tau_grad, size, x)
    bernoulli_kernels.relaxed_bernoulli_backward(grad_y.contiguous(), x, grad_x, grad_tau, tau, seed, offset)
    return grad_x, None if grad_tau is None else reduce_tau_grad(grad_tau, tau_tensor)


def topk_forward(logits, tau, k, mode, dim, seed, offset, save_stats: bool, rng_out=None, native=False):
    """One forward launch (``topk_kernels.MODE_*``). Returns ``(out, stats, x, x_strides)``: the
    relaxed or exact k-hot (logits' dtype and shape) or, for MODE_INDEX, int64 indices with size
    ``k`` along ``dim``; the [rows, k, 4] statistics the backward needs (None unless
    ``save_stats``); and the [outer, K, inner] view of the logits the kernel read. ``native``
    launches the C++ CPU kernel instead (which writes no ``rng_out``): ``x`` is then the logits
    themselves, ``x_strides`` None."""
    if native:
        out, stats = _native.topk_forward(logits, tau, k, mode, dim, seed, offset, save_stats)
        return out, stats, logits, None
    shape = RowShape.of(logits.shape, dim)
    x, x_strides = as_rows(logits, dim)
    stats = None
    if save_stats:
        stats = torch.empty(shape.rows, k, 4, dtype=compute_dtype(logits.dtype), device=logits.device)
    if mode == topk_kernels.MODE_INDEX:
        index = torch.empty(shape.rows, k, dtype=torch.int64, device=logits.device)
        topk_kernels.gumbel_topk_forward(x, x_strides, None, (0, 0, 0), index, None, 1.0, shape.rows, shape.classes,
                                         shape.inner, k, seed, offset, mode, rng_out=rng_out)
        out_shape = list(logits.shape)
        out_shape[dim] = k
        # Rows are ordered (outer, inner): [outer, inner, k] -> k moved back to dim.
        return index.reshape(shape.outer, shape.inner, k).movedim(-1, 1).reshape(out_shape), None, x, x_strides
    y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    topk_kernels.gumbel_topk_forward(x, x_strides, y, shape.contiguous_strides, None, stats, tau, shape.rows,
                                     shape.classes, shape.inner, k, seed, offset, mode, rng_out=rng_out)
    return y, stats, x, x_strides


def topk_backward(grad_y, x, x_strides, stats, tau, k, dim, seed, offset, tau_grad: bool, native=False):
    """One backward launch from the forward's statistics and its [outer, K, inner] view ``x`` of
    the logits (with ``native``: the logits themselves, the C++ CPU kernel's backward).
    Returns (grad_logits, grad_tau or None)."""
    if native:
        grad_x, grad_tau_rows = _native.topk_backward(grad_y, x, tau, k, dim, seed, offset, stats, tau_grad)
        return grad_x, None if grad_tau_rows is None else reduce_tau_grad(grad_tau_rows, tau)
    shape = RowShape.of(grad_y.shape, dim)
    grad_y, grad_y_strides = as_rows(grad_y, dim)
    grad_x = torch.empty(grad_y.shape, dtype=x.dtype, device=x.device)
    tau_tensor = tau if isinstance(tau, torch.Tensor) else None
    grad_tau_rows = tau_grad_buffer(tau_tensor, tau_grad, shape.rows, x)
    topk_kernels.gumbel_topk_backward(grad_y, grad_y_strides, x, x_strides, grad_x, shape.contiguous_strides,
                                      grad_tau_rows, stats, tau, shape.rows, shape.classes, shape.inner, k,
                                      seed, offset)
    return grad_x, None if grad_tau_rows is None else reduce_tau_grad(grad_tau_rows, tau_tensor)


class RelaxedBernoulliFunction(torch.autograd.Function):
    """``apply(logits, tau, hard, seed, offset, native=False)``; ``tau`` is a float, a 0-dim tensor or
    a contiguous [numel] tensor (one temperature per element, row-major), compute dtype; ``native``
    launches the C++ CPU kernel."""

    @staticmethod
    def forward(ctx, logits, tau, hard, seed, offset, native=False):
        mode = bernoulli_kernels.MODE_HARD if hard else bernoulli_kernels.MODE_SOFT
        y = bernoulli_forward(logits.contiguous(), tau, mode, seed, offset, native=native)
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        # The logits as given (an input, so a create_graph backward can differentiate through them).
        ctx.save_for_backward(logits, tau_tensor)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.seed, ctx.offset, ctx.native = seed, offset, native
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if ctx.native and torch.is_grad_enabled():
            return _replayed_bernoulli_backward(ctx, grad_y)
        return _bernoulli_kernel_backward(ctx, grad_y)


@once_differentiable  # the kernel backward has no graph: create_graph raises, never a silent 0
def _bernoulli_kernel_backward(ctx, grad_y):
    x, tau_tensor = ctx.saved_tensors
    tau = ctx.tau_float if tau_tensor is None else tau_tensor
    grad_x, grad_tau = bernoulli_backward(grad_y, x, tau, ctx.seed, ctx.offset, ctx.needs_input_grad[1],
                                          native=ctx.native)
    return grad_x, grad_tau, None, None, None, None


def _replayed_bernoulli_backward(ctx, grad_y):
    """The create_graph backward of the native path: autograd of the reference on the call's noise, a
    graph in the logits, tau and grad_y (the double backward the reference backend has)."""
    logits, tau_tensor = ctx.saved_tensors
    tau = ctx.tau_float if tau_tensor is None else tau_tensor
    wanted = [t for t, need in ((logits, ctx.needs_input_grad[0]), (tau_tensor, ctx.needs_input_grad[1])) if need]
    reference_tau = tau.reshape(logits.shape) if isinstance(tau, torch.Tensor) and tau.dim() else tau
    # The soft sample: the hard mode's straight-through gradient is the soft one.
    y = reference_relaxed.relaxed_bernoulli(logits, reference_tau, False, seed=ctx.seed, offset=ctx.offset)
    grads = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=True, allow_unused=True))
    grad_x = next(grads) if ctx.needs_input_grad[0] else None
    grad_tau = next(grads) if ctx.needs_input_grad[1] else None
    return grad_x, grad_tau, None, None, None, None


class GumbelTopkFunction(torch.autograd.Function):
    """``apply(logits, tau, k, hard, dim, seed, offset, save_stats, native=False)``; ``tau`` is a float,
    a 0-dim tensor or a contiguous [rows] tensor (rows in RNG-spec order), compute dtype. Without
    ``save_stats`` (no gradient will be taken) a hard sample skips the relaxation entirely.
    ``native`` launches the C++ CPU kernel; its create_graph backward replays the reference."""

    @staticmethod
    def forward(ctx, logits, tau, k, hard, dim, seed, offset, save_stats, native=False):
        mode = topk_kernels.MODE_HARD if hard else topk_kernels.MODE_SOFT
        y, stats, x, x_strides = topk_forward(logits, tau, k, mode, dim, seed, offset, save_stats, native=native)
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        # Native: x is the logits as given (an input, so a create_graph backward can differentiate through them).
        ctx.save_for_backward(x, tau_tensor, stats)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.k, ctx.dim, ctx.seed, ctx.offset, ctx.x_strides, ctx.native = k, dim, seed, offset, x_strides, native
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if ctx.native and torch.is_grad_enabled():
            return _replayed_topk_backward(ctx, grad_y)
        return _topk_kernel_backward(ctx, grad_y)


@once_differentiable  # its kernel backward has no graph: create_graph raises, never a silent 0
def _topk_kernel_backward(ctx, grad_y):
    x, tau_tensor, stats = ctx.saved_tensors
    tau = ctx.tau_float if tau_tensor is None else tau_tensor
    grad_x, grad_tau = topk_backward(grad_y, x, ctx.x_strides, stats, tau, ctx.k, ctx.dim, ctx.seed, ctx.offset,
                                     ctx.needs_input_grad[1], native=ctx.native)
    return grad_x, grad_tau, None, None, None, None, None, None, None


def _replayed_topk_backward(ctx, grad_y):
    """The create_graph backward of the native path: autograd of the reference relaxation on the call's
    noise, a graph in the logits, tau and grad_y (the double backward the reference backend has)."""
    from ._relaxed_op import _topk_reference_tau

    logits, tau_tensor, _ = ctx.saved_tensors
    wanted = [t for t, need in ((logits, ctx.needs_input_grad[0]), (tau_tensor, ctx.needs_input_grad[1])) if need]
    tau = _topk_reference_tau(tau_tensor, ctx.tau_float, logits, ctx.dim)
    # The relaxed k-hot: the hard mode's straight-through gradient is its gradient.
    y = reference_relaxed.gumbel_topk(logits, ctx.k, tau, False, ctx.dim, seed=ctx.seed, offset=ctx.offset)
    grads = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=True, allow_unused=True))
    grad_x = next(grads) if ctx.needs_input_grad[0] else None
    grad_tau = next(grads) if ctx.needs_input_grad[1] else None
    return grad_x, grad_tau, None, None, None, None, None, None, None
