"""Gumbel-Softmax derivatives in differentiable PyTorch ops: double backward and forward-mode AD.

The backward kernel computes the first-order gradient in one launch, but autograd cannot
differentiate a kernel launch: under ``create_graph=True`` (a gradient penalty, Hessian-vector
products, every ``torch.func.grad``) ``GumbelSoftmaxFunction`` computes its backward here instead,
and its forward-mode tangent (``jvp``) always. With ``y = softmax(z)``, ``z = (x + g) / tau`` and
``t`` any per-row shift of ``z``:

    vjp:  s = y * (dy - sum(y * dy)),   dx = s / tau,   dtau = -sum(s * t) / tau
    jvp:  dz = (dx - t * dtau) / tau,   dy = y * (dz - sum(y * dz))

(a per-row shift of ``t`` drops out because ``sum(s) = 0`` and ``sum(y * (c - sum(y) c)) = 0``).
Hard (straight-through) samples use the soft sample's derivatives, as their first-order backward does.

``y`` must be differentiable in (logits, tau) for the double backward. Soft mode has it: the
Function's saved output, whose own backward is the kernel. Hard mode rebuilds it from the
detached effective noise ``g_eff = tau * log(y0) - x`` of a regenerated soft sample ``y0``
(``g`` up to a per-row constant, which the softmax ignores): ``y = softmax((x + g_eff) / tau)``.
Classes with ``y0 == 0`` (-inf logits, underflow) stay at probability 0 with zero derivatives.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

Tau = Union[float, torch.Tensor]


def row_tau(tau: Tau, shape: torch.Size, dim: int) -> Tau:
    """The kernel-form tau (float, 0-dim, or [rows] in RNG-spec row order) broadcastable to ``shape``."""
    if not isinstance(tau, torch.Tensor) or tau.dim() == 0:
        return tau
    row_shape = list(shape)
    row_shape[dim] = 1
    return tau.reshape(row_shape)


def kernel_form_tau_grad(grad_rows: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """A per-row tau gradient (size 1 along the class dim) in the shape of the kernel-form ``tau``."""
    return (grad_rows.sum() if tau.dim() == 0 else grad_rows.reshape(-1)).to(tau.dtype)


def log_domain(y: torch.Tensor) -> torch.Tensor:
    """``log(y)``: the tempered logits up to a per-row shift; 0 where ``y == 0`` (those classes carry
    no derivative). The inner ``where`` keeps log's gradient finite there."""
    positive = y > 0
    return torch.where(positive, torch.log(torch.where(positive, y, torch.ones_like(y))), torch.zeros_like(y))


def soft_from_effective_noise(logits: torch.Tensor, tau: Tau, y0: torch.Tensor, dim: int):
    """``(y, t)``: the soft sample as a differentiable function of ``logits`` and ``tau``, rebuilt from a
    detached soft sample ``y0`` of the same noise (compute dtype), and its log-domain ``t``."""
    x = logits.to(y0.dtype)
    tau_b = row_tau(tau, logits.shape, dim)
    tau_0 = tau_b.detach() if isinstance(tau_b, torch.Tensor) else tau_b
    positive = y0 > 0
    # x + g_eff = tau0 * log(y0) + (x - x0): the same value without cancelling a large |x| against itself.
    perturbed = tau_0 * log_domain(y0) + torch.where(positive, x - x.detach(), torch.zeros_like(y0))
    z = torch.where(positive, perturbed / tau_b, torch.full_like(y0, float("-inf")))
    y = torch.softmax(z, dim)
    return y, torch.where(positive, z, torch.zeros_like(z))


def vjp(grad_y: torch.Tensor, y: torch.Tensor, t: torch.Tensor, tau: Tau, dim: int, logits_dtype: torch.dtype,
        tau_grad: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(grad_logits, grad of the kernel-form tau or None), differentiable in every argument."""
    tau_b = row_tau(tau, y.shape, dim)
    dy = grad_y.to(y.dtype)
    s = y * (dy - (dy * y).sum(dim, keepdim=True))
    grad_x = (s / tau_b).to(logits_dtype)
    if not (tau_grad and isinstance(tau, torch.Tensor)):
        return grad_x, None
    return grad_x, kernel_form_tau_grad(-(s * t).sum(dim, keepdim=True) / tau_b, tau)


def jvp(y: torch.Tensor, t: torch.Tensor, tau: Tau, dim: int, logits_dtype: torch.dtype,
        logits_tangent: Optional[torch.Tensor], tau_tangent: Optional[torch.Tensor]) -> torch.Tensor:
    """The output tangent for input tangents of the logits and the kernel-form tau (either may be None)."""
    tau_b = row_tau(tau, y.shape, dim)
    dz = torch.zeros_like(y)
    if logits_tangent is not None:
        dz = dz + logits_tangent.to(y.dtype) / tau_b
    if tau_tangent is not None and isinstance(tau, torch.Tensor):
        dz = dz - t * row_tau(tau_tangent.to(y.dtype), y.shape, dim) / tau_b
    return (y * (dz - (y * dz).sum(dim, keepdim=True))).to(logits_dtype)
