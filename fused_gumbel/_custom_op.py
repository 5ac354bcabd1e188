"""``torch.library`` custom ops: how ``torch.compile`` and CUDA-graph capture see the sampler.

``torch.ops.fused_gumbel.sample(logits, tau, tau_value, mode, dim, seed, backend) -> (out, rng_state)``
is one opaque node in a compiled, exported or traced graph (so ``fullgraph=True`` holds, and
``torch.export``/``torch.jit.trace`` record the op rather than one sample) with a fake (meta)
implementation for shapes and a registered autograd formula (``sample_backward``). It draws the
call's Philox key and offset *when it runs*, from the same source as an eager call
(``_seeding.draw``): a seed traced into the graph would be a constant and repeat its noise on
every call. So for the same ``torch.manual_seed`` a compiled model samples exactly what the
eager model samples, and under CUDA-graph capture the seed comes from device memory refreshed
on every replay.

``rng_state`` is the call's (key, offset) as an int64 [2] tensor on the logits' device, the
only thing the hard-mode backward needs to regenerate the noise; the Triton forward writes it
from its first program, so a compiled call is still one launch.

The op is tagged ``nondeterministic_seeded``: PyTorch neither merges two calls with identical
inputs (common-subexpression elimination), nor recomputes it in the backward, nor reorders
it against other random ops. Older PyTorch releases' AOTAutograd CSE pass ignores that tag, so
each call also takes a fresh empty ``call_token`` tensor (``aten.empty`` is never merged), which
makes the inputs of two calls distinct in every version. It keeps the dtype it is given (no autocast registration: under
``torch.autocast`` it runs on the logits' own dtype with float32 math, like an eager call).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _seeding, reference
from ._layout import as_rows

# The kernels' MODE_* values (kernels.gumbel_softmax), repeated so that importing this module,
# which registers the ops, does not import Triton.
MODE_SOFT = 0
MODE_HARD = 1
MODE_INDEX = 2

_LIB = torch.library.Library("fused_gumbel", "DEF")
_LIB.define(
    "sample(Tensor logits, Tensor? tau, float tau_value, int mode, int dim, int? seed, str backend,"
    " Tensor call_token) -> (Tensor, Tensor)",
    tags=(torch.Tag.nondeterministic_seeded,),
)
_LIB.define(
    "sample_backward(Tensor grad, Tensor src, Tensor? tau, float tau_value, bool hard, int dim,"
    " Tensor rng_state, bool tau_grad, str backend) -> (Tensor, Tensor)"
)


def _row_shape(shape: torch.Size, dim: int) -> list[int]:
    row_shape = list(shape)
    row_shape[dim] = 1
    return row_shape


def _reference_tau(tau: Optional[torch.Tensor], tau_value: float, logits: torch.Tensor, dim: int):
    """The kernel's tau (float, 0-dim or [rows] in spec order) in the reference's broadcast form."""
    if tau is None:
        return tau_value
    return tau if tau.dim() == 0 else tau.reshape(_row_shape(logits.shape, dim))


def _as_int64(value: int) -> int:
    # CUDA keys are uint64 (generator.initial_seed()); store their bits in an int64.
    return value - 2**64 if value >= 2**63 else value


def _sample(logits: torch.Tensor, tau: Optional[torch.Tensor], tau_value: float, mode: int, dim: int,
            seed: Optional[int], backend: str, call_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key, offset = _seeding.draw(logits.device, None, seed)
    if backend == "reference":
        if isinstance(key, torch.Tensor):
            raise RuntimeError("the reference backend cannot run under CUDA-graph capture; use backend='triton'")
        state = torch.tensor([_as_int64(key), offset], dtype=torch.int64, device=logits.device)
        if mode == MODE_INDEX:
            out = reference.categorical(logits, dim, seed=key, offset=offset)
        else:
            out = reference.gumbel_softmax(logits, _reference_tau(tau, tau_value, logits, dim), mode == MODE_HARD,
                                           dim, seed=key, offset=offset)
        return out.contiguous(), state
    from .function import sample_forward

    if isinstance(key, torch.Tensor):
        state, rng_out = key, None
    else:
        state = rng_out = torch.empty(2, dtype=torch.int64, device=logits.device)
    native = backend == "native"
    if native and rng_out is not None:  # the native op takes the key and offset as ints: the state is made here
        state = torch.tensor([_as_int64(key), offset], dtype=torch.int64, device=logits.device)
    out = sample_forward(logits, tau_value if tau is None else tau, mode, dim, key, offset,
                         rng_out=None if native else rng_out, native=native)[0]
    return out, state


def _sample_fake(logits, tau, tau_value, mode, dim, seed, backend, call_token):
    state = logits.new_empty(2, dtype=torch.int64)
    if mode == MODE_INDEX:
        return logits.new_empty(logits.shape[:dim] + logits.shape[dim + 1:], dtype=torch.int64), state
    return logits.new_empty(logits.shape), state


def _sample_backward(grad: torch.Tensor, src: torch.Tensor, tau: Optional[torch.Tensor], tau_value: float,
                     hard: bool, dim: int, rng_state: torch.Tensor, tau_grad: bool,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. the logits and the kernel-form tau; ``src`` is the logits, or the soft
    output y for the Triton soft mode (which needs no noise)."""
    if backend == "reference":
        return _reference_backward(grad, src, tau, tau_value, dim, rng_state, tau_grad)
    from .function import sample_backward

    src, src_strides = as_rows(src, dim)
    grad_x, grad_tau = sample_backward(grad, src, src_strides, tau_value if tau is None else tau, dim, rng_state, None,
                                       hard, tau_grad, native=backend == "native")
    return grad_x, grad_x.new_empty(0) if grad_tau is None else grad_tau


def _reference_backward(grad, logits, tau, tau_value, dim, rng_state, tau_grad):
    """The kernel's backward formula in PyTorch ops (soft and straight-through alike):
    with t = (x + g - M) / tau, y = softmax(t) and s = y * (dy - sum(dy * y)),
    dx = s / tau and dtau = -sum(s * t) / tau."""
    key, offset = rng_state.tolist()
    perturbed, row_max, invalid, _ = reference._perturbed(logits, dim, None, None, key, offset)
    tau_b = torch.as_tensor(_reference_tau(tau, tau_value, logits, dim), dtype=perturbed.dtype,
                            device=perturbed.device)
    t = (perturbed - row_max) / tau_b
    y = torch.softmax(t, dim).masked_fill(invalid, float("nan"))
    t = torch.where(y > 0, t, torch.zeros_like(t))  # zero-probability classes add nothing, not 0 * -inf
    dy = grad.to(perturbed.dtype)
    s = y * (dy - (dy * y).sum(dim, keepdim=True))
    grad_x = (s / tau_b).to(logits.dtype).contiguous()
    if not tau_grad:
        return grad_x, grad_x.new_empty(0)
    grad_tau = -(s * t).sum(dim, keepdim=True) / tau_b
    grad_tau = grad_tau.sum() if tau.dim() == 0 else grad_tau.reshape(-1)
    return grad_x, grad_tau.to(tau.dtype)


def _sample_backward_fake(grad, src, tau, tau_value, hard, dim, rng_state, tau_grad, backend):
    grad_x = src.new_empty(src.shape)
    if not tau_grad:
        return grad_x, src.new_empty(0)
    return grad_x, tau.new_empty(tau.shape)


def _setup_context(ctx, inputs, output):
    logits, tau, tau_value, mode, dim, seed, backend, call_token = inputs
    out, state = output
    ctx.tau_value, ctx.hard, ctx.dim, ctx.backend = tau_value, mode == MODE_HARD, dim, backend
    # The kernels' soft backward reads only its output; every other case regenerates from the logits.
    src = out if backend in ("triton", "native") and mode == MODE_SOFT else logits
    ctx.save_for_backward(src, tau, state)


def _backward(ctx, grad_out, grad_state):
    src, tau, state = ctx.saved_tensors
    tau_grad = tau is not None and ctx.needs_input_grad[1]
    grad_x, grad_tau = torch.ops.fused_gumbel.sample_backward(grad_out, src, tau, ctx.tau_value, ctx.hard, ctx.dim,
                                                             state, tau_grad, ctx.backend)
    return grad_x, (grad_tau if tau_grad else None), None, None, None, None, None, None


_LIB.impl("sample", _sample, "CompositeExplicitAutograd")
_LIB.impl("sample_backward", _sample_backward, "CompositeExplicitAutograd")
torch.library.register_fake("fused_gumbel::sample", _sample_fake, lib=_LIB)
torch.library.register_fake("fused_gumbel::sample_backward", _sample_backward_fake, lib=_LIB)
torch.library.register_autograd("fused_gumbel::sample", _backward, setup_context=_setup_context, lib=_LIB)


def sample(logits: torch.Tensor, tau, mode: int, dim: int, seed: Optional[int], backend: str) -> torch.Tensor:
    """Run the op; ``tau`` is a float or the kernel-form tensor (0-dim or [rows], compute dtype)."""
    token = torch.empty(0, device=logits.device)
    if isinstance(tau, torch.Tensor):
        out, _ = torch.ops.fused_gumbel.sample(logits, tau, 1.0, mode, dim, seed, backend, token)
    else:
        out, _ = torch.ops.fused_gumbel.sample(logits, None, float(tau), mode, dim, seed, backend, token)
    return out
