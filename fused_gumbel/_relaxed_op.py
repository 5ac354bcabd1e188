"""``torch.library`` custom ops for the binary and subset relaxations (``fused_gumbel.relaxed``).

The same contract as ``fused_gumbel::sample`` (``_custom_op``), so ``relaxed_bernoulli``,
``bernoulli``, ``gumbel_topk``, ``sample_subset`` and ``nn.GumbelSigmoid`` run under
``torch.compile(fullgraph=True)``, ``torch.export`` and ``torch.jit.trace``:

* ``fused_gumbel::relaxed_bernoulli(logits, tau, tau_value, mode, seed, backend, call_token)
  -> (out, rng_state)``, mode 0 soft, 1 hard (``bernoulli`` is the hard mode without gradient);
* ``fused_gumbel::gumbel_topk(logits, tau, tau_value, k, mode, dim, save_stats, seed, backend,
  call_token) -> (out, rng_state, stats)``, mode 0 soft, 1 hard, 2 indices (``sample_subset``).

Each op draws its Philox key and offset *when it runs*, from the same source as an eager call
(``_seeding.draw``), so a compiled, exported or traced call gets fresh noise every time and the
same sample as eager for the same ``torch.manual_seed``. ``rng_state`` (the call's key and
offset, int64 [2]) is all the backward needs to regenerate the noise; the Triton forward writes
it from its first program (the reference and native backends make it on the host). ``stats`` is
the top-k kernel's [rows, k, 4] recursion statistics (empty unless ``save_stats`` on the Triton
or native backend). Fake implementations give the shapes; the autograd formulas call
``relaxed_bernoulli_backward`` / ``gumbel_topk_backward``: the Triton backward kernels (under
"native", the C++ CPU kernels), or for the reference backend a replay
of the reference forward on the same noise differentiated by autograd (the same gradient as an
eager reference call).

The ops and the eager autograd Functions share their launches (``relaxed_function``) and the
reference functions (``reference_relaxed``). Ops are tagged ``nondeterministic_seeded`` and take
a fresh ``call_token``, as ``fused_gumbel::sample`` does, so identical calls are never merged.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _seeding, reference_relaxed
from ._custom_op import _as_int64, _row_shape

# The kernels' MODE_* values (kernels.relaxed_bernoulli, kernels.gumbel_topk), repeated so
# that registering the ops does not import Triton.
MODE_SOFT = 0
MODE_HARD = 1
MODE_INDEX = 2

_LIB = torch.library.Library("fused_gumbel", "FRAGMENT")
_LIB.define(
    "relaxed_bernoulli(Tensor logits, Tensor? tau, float tau_value, int mode, int? seed, str backend,"
    " Tensor call_token) -> (Tensor, Tensor)",
    tags=(torch.Tag.nondeterministic_seeded,),
)
_LIB.define(
    "relaxed_bernoulli_backward(Tensor grad, Tensor logits, Tensor? tau, float tau_value, Tensor rng_state,"
    " bool tau_grad, str backend) -> (Tensor, Tensor)"
)
_LIB.define(
    "gumbel_topk(Tensor logits, Tensor? tau, float tau_value, int k, int mode, int dim, bool save_stats, int? seed,"
    " str backend, Tensor call_token) -> (Tensor, Tensor, Tensor)",
    tags=(torch.Tag.nondeterministic_seeded,),
)
_LIB.define(
    "gumbel_topk_backward(Tensor grad, Tensor logits, Tensor? tau, float tau_value, int k, int dim,"
    " Tensor rng_state, Tensor stats, bool tau_grad, str backend) -> (Tensor, Tensor)"
)


def _draw(logits: torch.Tensor, seed: Optional[int], backend: str):
    """(key, offset, state, rng_out) for one call: ``state`` is the int64 [2] (key, offset)
    tensor the backward reads; ``rng_out`` is the buffer a Triton forward writes it into."""
    key, offset = _seeding.draw(logits.device, None, seed)
    if isinstance(key, torch.Tensor):  # CUDA-graph capture: the kernels read it on the device
        if backend == "reference":
            raise RuntimeError("the reference backend cannot run under CUDA-graph capture; use backend='triton'")
        return key, 0, key, None
    if backend in ("reference", "native"):  # neither writes the state from a kernel: it is made here
        return key, offset, torch.tensor([_as_int64(key), offset], dtype=torch.int64, device=logits.device), None
    state = torch.empty(2, dtype=torch.int64, device=logits.device)
    return key, offset, state, state


def _replay_grads(forward, grad, logits, tau, tau_value, tau_grad):
    """Gradients w.r.t. the logits and (if ``tau_grad``) ``tau`` of ``forward(logits, tau)`` (the
    reference on a fixed noise), by autograd: the gradient an eager reference call gets."""
    with torch.enable_grad():
        x = logits.detach().requires_grad_()
        t = tau_value if tau is None else tau.detach().requires_grad_(tau_grad)
        inputs = (x, t) if tau_grad else (x,)
        grads = torch.autograd.grad(forward(x, t), inputs, grad)
    grad_x = grads[0].contiguous()
    return grad_x, (grads[1] if tau_grad else grad_x.new_empty(0))


# ------------------------------------------------------------------------ relaxed Bernoulli

def _elementwise_reference_tau(tau: Optional[torch.Tensor], tau_value: float, logits: torch.Tensor):
    """The kernel's tau (float, 0-dim or [numel]) in the reference's broadcast form."""
    if tau is None:
        return tau_value
    return tau if tau.dim() == 0 else tau.reshape(logits.shape)


def _bernoulli(logits, tau, tau_value, mode, seed, backend, call_token):
    key, offset, state, rng_out = _draw(logits, seed, backend)
    if backend == "reference":
        if mode == MODE_HARD:  # the hard sample's value is the exact draw
            out = reference_relaxed.bernoulli(logits, seed=key, offset=offset)
        else:
            out = reference_relaxed.relaxed_bernoulli(logits, _elementwise_reference_tau(tau, tau_value, logits),
                                                      False, seed=key, offset=offset)
        return out.contiguous(), state
    from .relaxed_function import bernoulli_forward

    return bernoulli_forward(logits, tau_value if tau is None else tau, mode, key, offset, rng_out=rng_out,
                             native=backend == "native"), state


def _bernoulli_fake(logits, tau, tau_value, mode, seed, backend, call_token):
    return logits.new_empty(logits.shape), logits.new_empty(2, dtype=torch.int64)


def _bernoulli_backward(grad, logits, tau, tau_value, rng_state, tau_grad, backend):
    if backend == "reference":
        key, offset = rng_state.tolist()

        def forward(x, t):
            # The soft sample: the hard mode's straight-through gradient is the soft one.
            t = t.reshape(x.shape) if isinstance(t, torch.Tensor) and t.dim() else t
            return reference_relaxed.relaxed_bernoulli(x, t, False, seed=key, offset=offset)

        return _replay_grads(forward, grad, logits, tau, tau_value, tau_grad)
    from .relaxed_function import bernoulli_backward

    grad_x, grad_tau = bernoulli_backward(grad, logits, tau_value if tau is None else tau, rng_state, None, tau_grad,
                                          native=backend == "native")
    return grad_x, grad_x.new_empty(0) if grad_tau is None else grad_tau


def _bernoulli_backward_fake(grad, logits, tau, tau_value, rng_state, tau_grad, backend):
    grad_x = logits.new_empty(logits.shape)
    return grad_x, (tau.new_empty(tau.shape) if tau_grad else logits.new_empty(0))


def _bernoulli_setup_context(ctx, inputs, output):
    logits, tau, tau_value, mode, seed, backend, call_token = inputs
    ctx.tau_value, ctx.backend = tau_value, backend
    ctx.save_for_backward(logits, tau, output[1])


def _bernoulli_autograd(ctx, grad_out, grad_state):
    logits, tau, state = ctx.saved_tensors
    tau_grad = tau is not None and ctx.needs_input_grad[1]
    grad_x, grad_tau = torch.ops.fused_gumbel.relaxed_bernoulli_backward(grad_out, logits, tau, ctx.tau_value, state,
                                                                        tau_grad, ctx.backend)
    return grad_x, (grad_tau if tau_grad else None), None, None, None, None, None


# ------------------------------------------------------------------------- Gumbel top-k

def _topk_reference_tau(tau: Optional[torch.Tensor], tau_value: float, logits: torch.Tensor, dim: int):
    """The kernel's tau (float, 0-dim or [rows] in spec order) in the reference's broadcast form."""
    if tau is None:
        return tau_value
    return tau if tau.dim() == 0 else tau.reshape(_row_shape(logits.shape, dim))


def _topk_out_shape(logits: torch.Tensor, k: int, dim: int, mode: int) -> list:
    shape = list(logits.shape)
    if mode == MODE_INDEX:
        shape[dim] = k
    return shape


def _topk(logits, tau, tau_value, k, mode, dim, save_stats, seed, backend, call_token):
    key, offset, state, rng_out = _draw(logits, seed, backend)
    if backend == "reference":
        if mode == MODE_INDEX:
            out = reference_relaxed.sample_subset(logits, k, dim, seed=key, offset=offset)
        else:
            with torch.no_grad():  # the value only; the autograd formula gives the gradient
                out = reference_relaxed.gumbel_topk(logits, k, _topk_reference_tau(tau, tau_value, logits, dim),
                                                    mode == MODE_HARD, dim, seed=key, offset=offset)
        return out.contiguous(), state, logits.new_empty(0)
    from .relaxed_function import topk_forward

    out, stats, _, _ = topk_forward(logits, tau_value if tau is None else tau, k, mode, dim, key, offset,
                                    save_stats and mode != MODE_INDEX, rng_out=rng_out, native=backend == "native")
    return out.contiguous(), state, logits.new_empty(0) if stats is None else stats


def _topk_fake(logits, tau, tau_value, k, mode, dim, save_stats, seed, backend, call_token):
    out_dtype = torch.int64 if mode == MODE_INDEX else logits.dtype
    out = logits.new_empty(_topk_out_shape(logits, k, dim, mode), dtype=out_dtype)
    if backend in ("triton", "native") and save_stats and mode != MODE_INDEX:
        rows = logits.numel() // logits.shape[dim]
        stats = logits.new_empty((rows, k, 4), dtype=reference_relaxed.compute_dtype(logits.dtype))
    else:
        stats = logits.new_empty(0)
    return out, logits.new_empty(2, dtype=torch.int64), stats


def _topk_backward(grad, logits, tau, tau_value, k, dim, rng_state, stats, tau_grad, backend):
    if backend == "reference":
        key, offset = rng_state.tolist()

        def forward(x, t):
            # The relaxed k-hot: the hard mode's straight-through gradient is its gradient.
            t = t.reshape(_row_shape(x.shape, dim)) if isinstance(t, torch.Tensor) and t.dim() else t
            return reference_relaxed.gumbel_topk(x, k, t, False, dim, seed=key, offset=offset)

        return _replay_grads(forward, grad, logits, tau, tau_value, tau_grad)
    from ._layout import as_rows
    from .relaxed_function import topk_backward

    native = backend == "native"
    x, x_strides = (logits, None) if native else as_rows(logits, dim)  # the native kernel takes the logits and dim
    grad_x, grad_tau = topk_backward(grad, x, x_strides, stats, tau_value if tau is None else tau, k, dim, rng_state,
                                     None, tau_grad, native=native)
    return grad_x, grad_x.new_empty(0) if grad_tau is None else grad_tau


def _topk_backward_fake(grad, logits, tau, tau_value, k, dim, rng_state, stats, tau_grad, backend):
    grad_x = logits.new_empty(logits.shape)
    return grad_x, (tau.new_empty(tau.shape) if tau_grad else logits.new_empty(0))


def _topk_setup_context(ctx, inputs, output):
    logits, tau, tau_value, k, mode, dim, save_stats, seed, backend, call_token = inputs
    ctx.tau_value, ctx.k, ctx.dim, ctx.backend = tau_value, k, dim, backend
    ctx.save_for_backward(logits, tau, output[1], output[2])


def _topk_autograd(ctx, grad_out, grad_state, grad_stats):
    logits, tau, state, stats = ctx.saved_tensors
    tau_grad = tau is not None and ctx.needs_input_grad[1]
    grad_x, grad_tau = torch.ops.fused_gumbel.gumbel_topk_backward(grad_out, logits, tau, ctx.tau_value, ctx.k,
                                                                  ctx.dim, state, stats, tau_grad, ctx.backend)
    return grad_x, (grad_tau if tau_grad else None), None, None, None, None, None, None, None, None


for _name, _impl, _fake in [("relaxed_bernoulli", _bernoulli, _bernoulli_fake),
                            ("relaxed_bernoulli_backward", _bernoulli_backward, _bernoulli_backward_fake),
                            ("gumbel_topk", _topk, _topk_fake),
                            ("gumbel_topk_backward", _topk_backward, _topk_backward_fake)]:
    _LIB.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fused_gumbel::{_name}", _fake, lib=_LIB)
torch.library.register_autograd("fused_gumbel::relaxed_bernoulli", _bernoulli_autograd,
                                setup_context=_bernoulli_setup_context, lib=_LIB)
torch.library.register_autograd("fused_gumbel::gumbel_topk", _topk_autograd, setup_context=_topk_setup_context,
                                lib=_LIB)


def _op_tau(tau):
    """(tensor or None, float) for the ops' ``Tensor? tau, float tau_value`` pair."""
    return (tau, 1.0) if isinstance(tau, torch.Tensor) else (None, float(tau))


def relaxed_bernoulli(logits: torch.Tensor, tau, mode: int, seed: Optional[int], backend: str) -> torch.Tensor:
    """Run the op; ``tau`` is a float or the kernel-form tensor (0-dim or [numel], compute dtype)."""
    tau_tensor, tau_value = _op_tau(tau)
    token = torch.empty(0, device=logits.device)
    return torch.ops.fused_gumbel.relaxed_bernoulli(logits, tau_tensor, tau_value, mode, seed, backend, token)[0]


def gumbel_topk(logits: torch.Tensor, tau, k: int, mode: int, dim: int, save_stats: bool, seed: Optional[int],
                backend: str) -> torch.Tensor:
    """Run the op; ``tau`` is a float or the kernel-form tensor (0-dim or [rows], compute dtype)."""
    tau_tensor, tau_value = _op_tau(tau)
    token = torch.empty(0, device=logits.device)
    return torch.ops.fused_gumbel.gumbel_topk(logits, tau_tensor, tau_value, k, mode, dim, save_stats, seed, backend,
                                              token)[0]
