"""The autograd Function of the fused Gumbel-Rao and ReinMax estimators (Triton backend).

Forward: the hard Gumbel-Softmax forward launch (``function.sample_forward``, MODE_HARD), so the
one-hot is bit for bit the straight-through one. Backward: one launch of
``kernels.gumbel_estimators.gumbel_estimator_bwd_kernel``, which regenerates the choice and the
Gumbel-Rao conditional draws from the logits and the call's (seed, offset): nothing is saved but
the logits and tau, as for straight-through, and memory does not grow with ``mc_samples``.
The math and the papers are in ``reference_estimators``.

Two cases run the reference math in PyTorch ops instead (the choice still comes from an
index-mode forward launch, so it is the forward's): rows wider than
``kernels.gumbel_estimators.MAX_FUSED_CLASSES`` (the kernel holds a whole row in one program's
registers, and such rows are rare for a categorical latent), and ``create_graph=True``
(autograd cannot differentiate a kernel). The Gumbel-Rao conditional noise there is the exact
twin of the spec's conditional draws, where the GPU kernel uses the fast twin (``rng.py`` step 5).
"""
from __future__ import annotations

import torch

from . import function, reference_estimators
from ._layout import RowShape, as_rows
from .kernels import gumbel_estimators as kernels
from .kernels import gumbel_softmax as gumbel_kernels

ESTIMATOR_CODES = {"gumbel_rao": kernels.ESTIMATOR_GUMBEL_RAO, "reinmax": kernels.ESTIMATOR_REINMAX}


def _forward_index(logits, dim, seed, offset):
    """The forward's choice argmax(logits + g) (int64, size 1 along ``dim``), by an index-mode launch."""
    index = function.sample_forward(logits.detach(), 1.0, gumbel_kernels.MODE_INDEX, dim, seed, offset)[0]
    return index.unsqueeze(dim).clamp_min(0)


def torch_backward(grad_y, logits, tau, dim, seed, offset, estimator: str, mc_samples: int, tau_grad: bool):
    """(grad_logits, grad of the kernel-form tau or None) in PyTorch ops (differentiable under
    ``create_graph``); ``seed`` an int or an int64 [2] tensor (seed, offset)."""
    if isinstance(seed, torch.Tensor):
        seed, offset = seed.tolist()
    index = _forward_index(logits, dim, seed, offset)
    return reference_estimators.surrogate_grads(grad_y, logits, tau, dim, index, estimator, mc_samples, seed, offset,
                                                tau_grad)


def fused_backward(grad_y, logits, tau, dim, seed, offset, estimator: str, mc_samples: int, tau_grad: bool):
    """(grad_logits, grad of the kernel-form tau or None): one kernel launch when rows fit, else
    :func:`torch_backward`."""
    shape = RowShape.of(logits.shape, dim)
    if not kernels.fits(shape.classes):
        return torch_backward(grad_y, logits, tau, dim, seed, offset, estimator, mc_samples, tau_grad)
    x, x_strides = as_rows(logits, dim)
    grad_y, grad_y_strides = as_rows(grad_y, dim)
    grad_x = torch.empty(grad_y.shape, dtype=logits.dtype, device=logits.device)
    wants_tau = tau_grad and estimator == "gumbel_rao"
    grad_tau_rows = function.tau_grad_buffer(tau, wants_tau, shape.rows, logits)
    kernels.estimator_backward(grad_y, grad_y_strides, x, x_strides, grad_x, shape.contiguous_strides, grad_tau_rows,
                               tau, shape.rows, shape.classes, shape.inner, seed, offset, ESTIMATOR_CODES[estimator],
                               mc_samples)
    # ReinMax: tau gets no gradient (None), as in the official estimator.
    return grad_x, None if grad_tau_rows is None else function.reduce_tau_grad(grad_tau_rows, tau)


def backward(grad_y, logits, tau, dim, seed, offset, estimator: str, mc_samples: int, tau_grad: bool):
    """The estimator's gradients: the fused kernel, or PyTorch ops under ``create_graph=True``."""
    if torch.is_grad_enabled():
        return torch_backward(grad_y, logits, tau, dim, seed, offset, estimator, mc_samples, tau_grad)
    return fused_backward(grad_y, logits, tau, dim, seed, offset, estimator, mc_samples, tau_grad)


class GumbelEstimatorFunction(torch.autograd.Function):
    """``apply(logits, tau, dim, seed, offset, estimator, mc_samples)``: the hard sample forward, the
    ``estimator``'s ("gumbel_rao" or "reinmax") backward. ``tau`` and ``seed`` as in
    ``function.GumbelSoftmaxFunction``."""

    @staticmethod
    def forward(ctx, logits, tau, dim, seed, offset, estimator, mc_samples):
        y = function.sample_forward(logits, tau, gumbel_kernels.MODE_HARD, dim, seed, offset)[0]
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        ctx.save_for_backward(logits, tau_tensor)
        ctx.tau_float = None if tau_tensor is not None else tau
        ctx.dim, ctx.seed, ctx.offset, ctx.estimator, ctx.mc_samples = dim, seed, offset, estimator, mc_samples
        return y

    @staticmethod
    def backward(ctx, grad_y):
        logits, tau_tensor = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        grad_x, grad_tau = backward(grad_y, logits, tau, ctx.dim, ctx.seed, ctx.offset, ctx.estimator,
                                    ctx.mc_samples, ctx.needs_input_grad[1])
        return grad_x, grad_tau, None, None, None, None, None


def apply(logits, tau, dim, seed, offset, estimator: str, mc_samples: int):
    """The sample; autograd records the Function only where a gradient can flow."""
    if torch.is_grad_enabled() and (logits.requires_grad or (isinstance(tau, torch.Tensor) and tau.requires_grad)):
        return GumbelEstimatorFunction.apply(logits, tau, dim, seed, offset, estimator, mc_samples)
    return function.sample_forward(logits, tau, gumbel_kernels.MODE_HARD, dim, seed, offset)[0]
