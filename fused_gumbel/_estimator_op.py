"""Custom ops of the Gumbel-Rao and ReinMax estimators: how ``torch.compile``/``torch.export`` see them.

``torch.ops.fused_gumbel.sample_estimator(logits, tau, tau_value, estimator, mc_samples, dim, seed,
backend, call_token) -> (out, rng_state)`` forwards the hard sample exactly as
``fused_gumbel::sample`` in MODE_HARD does (same implementation, same run-time seed, same
``nondeterministic_seeded`` tag and ``call_token``; see ``_custom_op``), and registers the
estimator's backward, ``fused_gumbel::estimator_backward``: the fused kernel
(``estimators.fused_backward``) or, for ``backend="reference"``, the reference math.
``estimator`` is 1 (Gumbel-Rao) or 2 (ReinMax), the kernels' codes.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _custom_op, reference_estimators

ESTIMATOR_CODES = {"gumbel_rao": 1, "reinmax": 2}  # kernels.gumbel_estimators.ESTIMATOR_*, without importing Triton
_NAMES = {code: name for name, code in ESTIMATOR_CODES.items()}

_LIB = _custom_op._LIB
_LIB.define(
    "sample_estimator(Tensor logits, Tensor? tau, float tau_value, int estimator, int mc_samples, int dim, int? seed,"
    " str backend, Tensor call_token) -> (Tensor, Tensor)",
    tags=(torch.Tag.nondeterministic_seeded,),
)
_LIB.define(
    "estimator_backward(Tensor grad, Tensor logits, Tensor? tau, float tau_value, int estimator, int mc_samples,"
    " int dim, Tensor rng_state, bool tau_grad, str backend) -> (Tensor, Tensor)"
)


def _sample(logits, tau, tau_value, estimator, mc_samples, dim, seed, backend, call_token):
    return _custom_op._sample(logits, tau, tau_value, _custom_op.MODE_HARD, dim, seed, backend, call_token)


def _sample_fake(logits, tau, tau_value, estimator, mc_samples, dim, seed, backend, call_token):
    return logits.new_empty(logits.shape), logits.new_empty(2, dtype=torch.int64)


def _estimator_backward(grad: torch.Tensor, logits: torch.Tensor, tau: Optional[torch.Tensor], tau_value: float,
                        estimator: int, mc_samples: int, dim: int, rng_state: torch.Tensor, tau_grad: bool,
                        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    name = _NAMES[estimator]
    kernel_tau = tau_value if tau is None else tau
    if backend == "reference":
        key, offset = rng_state.tolist()
        index = reference_estimators.forward_index(logits, dim, key, offset)
        grad_x, grad_tau = reference_estimators.surrogate_grads(grad, logits, kernel_tau, dim, index, name, mc_samples,
                                                                key, offset, tau_grad)
    else:
        from .estimators import fused_backward

        grad_x, grad_tau = fused_backward(grad, logits, kernel_tau, dim, rng_state, None, name, mc_samples, tau_grad)
    return grad_x.contiguous(), grad_x.new_empty(0) if grad_tau is None else grad_tau


def _estimator_backward_fake(grad, logits, tau, tau_value, estimator, mc_samples, dim, rng_state, tau_grad, backend):
    return logits.new_empty(logits.shape), (tau.new_empty(tau.shape) if tau_grad else logits.new_empty(0))


def _setup_context(ctx, inputs, output):
    logits, tau, tau_value, estimator, mc_samples, dim, seed, backend, call_token = inputs
    ctx.tau_value, ctx.estimator, ctx.mc_samples, ctx.dim, ctx.backend = tau_value, estimator, mc_samples, dim, backend
    ctx.save_for_backward(logits, tau, output[1])


def _backward(ctx, grad_out, grad_state):
    logits, tau, state = ctx.saved_tensors
    # ReinMax gives tau no gradient (as the eager call, which leaves tau.grad None).
    tau_grad = tau is not None and ctx.needs_input_grad[1] and ctx.estimator == ESTIMATOR_CODES["gumbel_rao"]
    grad_x, grad_tau = torch.ops.fused_gumbel.estimator_backward(grad_out, logits, tau, ctx.tau_value, ctx.estimator,
                                                                ctx.mc_samples, ctx.dim, state, tau_grad, ctx.backend)
    return grad_x, (grad_tau if tau_grad else None), None, None, None, None, None, None, None


_LIB.impl("sample_estimator", _sample, "CompositeExplicitAutograd")
_LIB.impl("estimator_backward", _estimator_backward, "CompositeExplicitAutograd")
torch.library.register_fake("fused_gumbel::sample_estimator", _sample_fake, lib=_LIB)
torch.library.register_fake("fused_gumbel::estimator_backward", _estimator_backward_fake, lib=_LIB)
torch.library.register_autograd("fused_gumbel::sample_estimator", _backward, setup_context=_setup_context, lib=_LIB)


def sample(logits: torch.Tensor, tau, estimator: str, mc_samples: int, dim: int, seed: Optional[int],
           backend: str) -> torch.Tensor:
    """Run the op; ``tau`` is a float or the kernel-form tensor (0-dim or [rows], compute dtype)."""
    token = torch.empty(0, device=logits.device)
    code = ESTIMATOR_CODES[estimator]
    if isinstance(tau, torch.Tensor):
        out, _ = torch.ops.fused_gumbel.sample_estimator(logits, tau, 1.0, code, mc_samples, dim, seed, backend, token)
    else:
        out, _ = torch.ops.fused_gumbel.sample_estimator(logits, None, float(tau), code, mc_samples, dim, seed, backend,
                                                         token)
    return out
