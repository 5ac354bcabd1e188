"""The autograd Function behind ``fused_gumbel.gumbel_softmax``: one kernel launch each way.

Forward launches ``kernels.gumbel_softmax.gumbel_softmax_forward``; backward launches
``gumbel_softmax_backward`` with dx = y * (dy - sum(dy * y)) / tau and the temperature
gradient. Soft mode saves its output y; hard (straight-through) mode saves only the logits
and the call's (seed, offset) and regenerates the noise and y in the backward kernel (rows too
long for one program's registers also keep the forward's row max, 4 bytes a row).
Double backward (``create_graph=True``) and forward-mode AD use the same formulas in
differentiable PyTorch ops (``_autograd``); ``torch.func.vmap`` has a rule (``_functorch``).
Eager calls go through ``apply``, which avoids the host cost of a ``setup_context`` Function
outside torch.func transforms (see ``_EagerGumbelSoftmaxFunction``); the common repeat call
through ``eager_sample``, with its layout and plans (forward and backward) made once per call
signature (``EagerCall``, kept by ``functional``).
CPU tensors launch the native op of ``fused_gumbel._C`` instead (``_native``; the same contract,
one pass per row) unless the caller asks for Triton's interpreter; CUDA tensors launch it (the CUDA
C++ twin) where ``functional`` picked it (backend "native", FUSED_GUMBEL_CUDA_IMPL=twin, or a measured
twin-faster class of ``_twin_dispatch`` under auto). The choice is made in
``sample_forward``/``sample_backward``, so every route above serves both (``_launcher``), and the
Function keeps it in ``ctx.native``: one call's backward runs on its forward's implementation.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import NamedTuple, Optional

import torch
from torch.autograd import forward_ad as _forward_ad

from . import _autograd, _functorch, _native
from ._layout import RowShape, as_rows, contiguous_row_strides, contiguous_strides, rows_layout
from .reference import compute_dtype
from .kernels import gumbel_softmax as kernels


def _stats_buffer(shape, mode, dtype, device, save_stats):
    """Compute-dtype scratch for streamed rows (soft), or the hard forward's row maxima."""
    if mode == kernels.MODE_INDEX and not save_stats:
        return None
    size = kernels.stats_size(shape.rows, shape.classes, mode)
    return torch.empty(size, dtype=compute_dtype(dtype), device=device) if size else None


class _Launcher(threading.local):
    """What launches on this thread: "native" (``fused_gumbel._C``: the CPU kernel, or the CUDA C++
    twin for CUDA tensors), "triton" (compiled, or the interpreter on CPU), or None for the default
    (CPU: native when ``_C`` loads and TRITON_INTERPRET is unset; CUDA: Triton). ``apply`` sets it
    for one call; the Function keeps the choice in ``ctx`` for its backward."""

    def __init__(self):
        self.name = None


_launcher = _Launcher()
_native_auto = None


def runs_native(device: torch.device) -> bool:
    """Whether a launch for tensors on ``device`` runs the native op on this thread now."""
    if _launcher.name is not None:
        return _launcher.name == "native"
    if device.type != "cpu":
        return False
    global _native_auto
    if _native_auto is None:
        _native_auto = _native.available("cpu") and os.environ.get("TRITON_INTERPRET", "0") != "1"
    return _native_auto


def sample_forward(logits, tau, mode, dim, seed, offset, rng_out=None, save_stats=False, native=None):
    """One forward launch for ``mode`` (kernels.MODE_*). Returns ``(out, x, x_strides, stats)``:
    the sample (same shape and dtype as the logits) or, for MODE_INDEX, int64 indices with
    ``dim`` removed; the [outer, K, inner] view of the logits the kernel read; and, for rows
    too long for registers, the row maxima that the hard backward reads (else None).
    ``native`` (default: ``runs_native``) launches the native op instead (no rng_out); its hard CPU
    forward with ``save_stats`` returns the soft sample as the stats (the backward reads it)."""
    if native if native is not None else runs_native(logits.device):
        out, soft = _native.forward(logits, tau, mode, dim, seed, offset, keep_soft=save_stats)
        return out, logits, None, soft
    shape, x_strides = rows_layout(logits, dim)
    x = logits
    if x_strides is None:  # no [outer, K, inner] view: the kernel reads a contiguous copy
        x, x_strides = as_rows(logits, dim)
    plan = kernels.forward_plan(shape.rows, shape.classes, mode, logits.dtype, isinstance(tau, torch.Tensor),
                                save_stats)
    stats = torch.empty(plan.stats_words, dtype=compute_dtype(logits.dtype), device=logits.device) \
        if plan.stats_words else None
    if mode == kernels.MODE_INDEX:
        index = torch.empty(shape.rows, dtype=torch.int64, device=logits.device)
        kernels.gumbel_softmax_forward(x, x_strides, None, (0, 0, 0), index, tau, shape.rows, shape.classes,
                                       shape.inner, seed, offset, mode, rng_out=rng_out, stats=stats, plan=plan)
        return index.reshape(_index_shape(logits.shape, dim)), x, x_strides, stats
    # empty_like: a third of the host time of torch.empty(logits.shape, dtype=..., device=...).
    y = torch.empty_like(logits, memory_format=torch.contiguous_format)
    kernels.gumbel_softmax_forward(x, x_strides, y, shape.contiguous_strides, None, tau, shape.rows, shape.classes,
                                   shape.inner, seed, offset, mode, rng_out=rng_out, stats=stats, plan=plan)
    return y, x, x_strides, (stats if mode == kernels.MODE_HARD else None)


def _index_shape(shape, dim: int):
    """``shape`` without ``dim``: the categorical's output shape (memoised, as the layout is)."""
    try:
        return _index_shape_cached(shape, dim)
    except TypeError:  # a symbolic size (torch.compile) does not hash
        return shape[:dim] + shape[dim + 1:]


@functools.lru_cache(maxsize=1024)
def _index_shape_cached(shape, dim: int):
    return shape[:dim] + shape[dim + 1:]


def tau_grad_buffer(tau, needed: bool, size: int, like: torch.Tensor):
    """Per-row (or per-program) temperature-gradient buffer in the compute dtype, or None."""
    if not (needed and isinstance(tau, torch.Tensor)):
        return None
    return torch.empty(size, dtype=compute_dtype(like.dtype), device=like.device)


def reduce_tau_grad(partial: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The gradient of a 0-dim tau is the sum of the partial ones; a per-row tau keeps them."""
    return (partial.sum() if tau.dim() == 0 else partial).to(tau.dtype)


def sample_backward(grad_y, src, src_strides, tau, dim, seed, offset, hard, tau_grad, stats=None, native=None):
    """One backward launch. ``src`` is the saved soft output, or the logits' [outer, K, inner]
    view when ``hard`` (the kernel regenerates the noise; for rows too long for registers it also
    needs the forward's ``stats``, recomputed here by an index-mode forward when not given).
    Returns (grad_logits, grad_tau or None). ``native`` as in ``sample_forward``."""
    native = native if native is not None else runs_native(src.device)
    stats = _stats_for_backward(stats, src, native)
    if native:
        grad_x, grad_tau_rows = _native.backward(grad_y, src, tau, dim, seed, offset, hard, tau_grad, stats)
        return grad_x, None if grad_tau_rows is None else reduce_tau_grad(grad_tau_rows, tau)
    shape = RowShape.of(src.shape, dim)
    if hard and stats is None and kernels.needs_row_stats(shape.rows, shape.classes):
        stats = _stats_buffer(shape, kernels.MODE_HARD, src.dtype, src.device, True)
        index = torch.empty(shape.rows, dtype=torch.int64, device=src.device)
        kernels.gumbel_softmax_forward(src, src_strides, None, (0, 0, 0), index, tau, shape.rows, shape.classes,
                                       shape.inner, seed, offset, kernels.MODE_INDEX, stats=stats)
    grad_y, grad_y_strides = as_rows(grad_y, dim)
    # Autograd hands over a gradient of the output's dtype, the logits' (src's); empty_like costs a
    # third of torch.empty(shape, dtype=..., device=...).
    grad_x = torch.empty_like(grad_y, memory_format=torch.contiguous_format) if grad_y.dtype == src.dtype \
        else torch.empty(grad_y.shape, dtype=src.dtype, device=src.device)
    grad_tau_rows = tau_grad_buffer(tau, tau_grad, shape.rows, src)
    kernels.gumbel_softmax_backward(grad_y, grad_y_strides, src, src_strides, grad_x, shape.contiguous_strides,
                                    grad_tau_rows, tau, shape.rows, shape.classes, shape.inner, seed, offset,
                                    regenerate=hard, stats=stats)
    return grad_x, None if grad_tau_rows is None else reduce_tau_grad(grad_tau_rows, tau)


def _stats_for_backward(stats, src, native: bool):
    """The forward's ``stats`` if the backward about to run can read them, else None. Each
    implementation's hard backward reads only what its own forward kept: the native CPU kernel the
    soft sample (the logits' shape), Triton the row maxima ([rows]; it recomputes them when None),
    the CUDA twin nothing (it regenerates the row in one pass). So stats from a forward that ran on
    the other implementation are dropped, never misread."""
    if stats is None:
        return None
    return stats if (stats.shape == src.shape) == native else None


class _PendingStats(threading.local):
    """Hands the hard forward's row statistics from ``forward`` to ``setup_context``, which
    autograd calls right after it on the same thread with the same output (a forward without
    ``ctx`` has no other way to save a tensor it made). A miss (an output wrapped by a
    torch.func transform) only costs the backward one extra launch that recomputes them."""

    def __init__(self):
        self.output = None
        self.stats = None

    def put(self, output, stats):
        self.output, self.stats = (output, stats) if stats is not None else (None, None)

    def take(self, output):
        stats = self.stats if output is self.output and output is not None else None
        self.output = self.stats = None
        return stats


_pending_stats = _PendingStats()


class GumbelSoftmaxFunction(torch.autograd.Function):
    """``apply(logits, tau, hard, dim, seed, offset)``; ``tau`` is a float, a 0-dim tensor or a
    contiguous [rows] tensor (one temperature per row, rows in RNG-spec order). ``seed`` is an
    int (with ``offset``) or, under CUDA-graph capture, an int64 [2] device tensor holding
    (key, offset) that the kernels read at run time (``offset`` is then ignored).

    The backward is one kernel launch; under ``create_graph=True`` (and in ``torch.func.grad``) it
    is the same formula in differentiable PyTorch ops (``_autograd``), so double backward is exact.
    ``jvp`` gives forward-mode AD, ``vmap`` a batching rule (``_functorch``)."""

    @staticmethod
    def forward(logits, tau, hard, dim, seed, offset):
        y, stats = _forward_launch(logits, tau, hard, dim, seed, offset)
        _pending_stats.put(y, stats)
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_context(ctx, *inputs, output, _pending_stats.take(output), runs_native(inputs[0].device), True)

    @staticmethod
    def backward(ctx, grad_y):
        # (Eight gradients: the eager twin's apply takes the call's EagerCall and its output as a
        # seventh and eighth input; autograd drops the trailing Nones where there are six.)
        src, tau_tensor, stats = ctx.saved_tensors
        call = ctx.call
        if call is not None and not torch.is_grad_enabled() and call.generation == kernels.generation \
                and grad_y.stride() == call.out_strides and grad_y.dtype == call.dtype:
            # The common eager backward (see EagerCall): a contiguous gradient, its launch bound in the forward.
            grad_x = torch.empty_like(grad_y)
            if call.backward_launch is not None:
                call.backward_launch(grad_y, src, grad_x, stats, ctx.tau_float, ctx.words)
            else:
                kernels.gumbel_softmax_backward(grad_y, call.read_strides, src, call.src_strides, grad_x,
                                                call.out_row_strides, None, ctx.tau_float, call.rows, call.classes,
                                                call.inner, ctx.seed, ctx.offset, ctx.hard, stats=stats,
                                                plan=call.backward_plan)
            return grad_x, None, None, None, None, None, None, None
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        if torch.is_grad_enabled():  # create_graph=True: the kernel's gradient would have no graph
            y, t = _soft_sample(ctx, src, tau, differentiable=True)
            grad_x, grad_tau = _autograd.vjp(grad_y, y, t, tau, ctx.dim, src.dtype, ctx.needs_input_grad[1])
            return grad_x, grad_tau, None, None, None, None, None, None
        src, src_strides = as_rows(src, ctx.dim)
        grad_x, grad_tau = sample_backward(grad_y, src, src_strides, tau, ctx.dim, ctx.seed, ctx.offset,
                                           ctx.hard, ctx.needs_input_grad[1], stats, ctx.native)
        return grad_x, grad_tau, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, logits_tangent, tau_tangent, *_):
        src, tau_tensor = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        y, t = _soft_sample(ctx, src, tau, differentiable=False)
        return _autograd.jvp(y, t, tau, ctx.dim, src.dtype, logits_tangent, tau_tangent)

    @staticmethod
    def vmap(info, in_dims, logits, tau, hard, dim, seed, offset):
        return _functorch.gumbel_softmax_rule(GumbelSoftmaxFunction.apply, info, in_dims, logits, tau, hard, dim,
                                              seed, offset)


def _forward_launch(logits, tau, hard, dim, seed, offset, native=None):
    """Both Functions' forward: the sample and the statistics its hard backward reads."""
    mode = kernels.MODE_HARD if hard else kernels.MODE_SOFT
    y, _, _, stats = sample_forward(logits, tau, mode, dim, seed, offset, save_stats=hard, native=native)
    return y, stats


def _save_context(ctx, logits, tau, hard, dim, seed, offset, output, stats, native: bool, for_forward: bool,
                  call=None):
    """What the backward (and, with ``for_forward``, the jvp) of one call reads; ``call``: the
    call's ``EagerCall`` (the eager fast path), whose backward plan the backward may launch."""
    tau_tensor = tau if isinstance(tau, torch.Tensor) else None
    # Soft mode keeps its output; hard mode keeps the logits and regenerates the noise.
    src = logits if hard else output
    ctx.save_for_backward(src, tau_tensor, stats)
    if for_forward:
        ctx.save_for_forward(src, tau_tensor)
    ctx.tau_float = None if tau_tensor is not None else tau
    ctx.hard, ctx.dim, ctx.seed, ctx.offset, ctx.native, ctx.call = hard, dim, seed, offset, native, call


class _EagerGumbelSoftmaxFunction(torch.autograd.Function):
    """``GumbelSoftmaxFunction`` as an old-style Function (``forward(ctx, ...)``, no ``setup_context``)
    for calls outside every torch.func transform (``apply``): the same forward, backward and jvp.
    PyTorch binds the arguments of a Function that defines ``setup_context`` through
    ``inspect.signature`` on every call, about 30 us of host time; the torch.func transforms need
    that form (and get it), plain autograd and forward-mode AD do not."""

    @staticmethod
    def forward(ctx, logits, tau, hard, dim, seed, offset, call=None, prepared=None):
        if call is not None:  # eager_sample's call: a Triton launch planned for its signature
            y, stats = _eager_launch(call, logits, tau, prepared)
            _save_context(ctx, logits, tau, hard, dim, seed, offset, y, stats, False, False, call)
            ctx.words = prepared[3]
            return y
        native = runs_native(logits.device)
        y, stats = _forward_launch(logits, tau, hard, dim, seed, offset, native)
        # jvp runs only inside a forward-AD dual level, during this call: outside one, nothing reads
        # what save_for_forward keeps.
        _save_context(ctx, logits, tau, hard, dim, seed, offset, y, stats, native,
                      getattr(_forward_ad, "_current_level", 0) >= 0)
        return y

    backward = GumbelSoftmaxFunction.__dict__["backward"]
    jvp = GumbelSoftmaxFunction.__dict__["jvp"]


def apply(logits, tau, hard, dim, seed, offset, launcher=None):
    """``GumbelSoftmaxFunction.apply`` at the least host cost: the Function itself under a torch.func
    transform, its old-style twin when autograd records the call, else the forward launch alone.
    ``launcher`` ("native" or "triton") picks what launches (``_Launcher``)."""
    transformed = _functorch.transforms_active()
    if not transformed and not _records_autograd(logits, tau):  # nothing to record: launch
        native = None if launcher is None else launcher == "native"
        return sample_forward(logits, tau, kernels.MODE_HARD if hard else kernels.MODE_SOFT, dim, seed, offset,
                              native=native)[0]
    function = GumbelSoftmaxFunction if transformed else _EagerGumbelSoftmaxFunction
    if launcher is None or launcher == _launcher.name:
        return function.apply(logits, tau, hard, dim, seed, offset)
    previous, _launcher.name = _launcher.name, launcher
    try:
        return function.apply(logits, tau, hard, dim, seed, offset)
    finally:
        _launcher.name = previous


# launch_prelude's output layouts (kernels/csrc/eager.cpp): empty_like the logits (dense row-major),
# a contiguous empty_like, or INDEX_LAYOUT + dim: the categorical's int64 indices without ``dim``.
LAYOUT_OF_LOGITS, CONTIGUOUS_LAYOUT, INDEX_LAYOUT = 0, 1, 2


class EagerCall(NamedTuple):
    """What an eager Triton call launches with, as far as that is a function of its signature: the
    logits' sizes, strides, dtype and device, ``dim``, the mode (soft, hard or, for ``categorical``,
    index), whether autograd records the call, and a float ``tau`` (``eager_call``).
    ``sample_forward``'s layout (``rows_layout``, held flat: a ``RowShape`` property costs a call),
    plan and bound launch, and for a recorded call its backward's plan and bound launch and the
    layouts that backward takes without a check (the saved source's, and a gradient with the
    output's strides, ``out_strides``). Derived in the kernels' ``generation``; a later generation
    (a changed tunable, stubbed kernels) derives it again."""
    mode: int
    dim: int
    dtype: torch.dtype
    rows: int
    classes: int
    inner: int
    x_strides: tuple
    out_row_strides: tuple  # (outer, class, inner) strides the launchers give the contiguous outputs
    read_strides: Optional[tuple]  # and those as_rows finds in a contiguous tensor (the backward reads)
    out_layout: int  # launch_prelude's layout of the output
    plan: kernels.LaunchPlan
    backward_plan: Optional[kernels.LaunchPlan]
    src_strides: Optional[tuple]
    out_strides: Optional[tuple]
    generation: int
    launch: Optional[object]  # kernels.bound_forward of the plan (None: a split plan, launched in full)
    backward_launch: Optional[object]  # kernels.bound_backward of the backward plan


def eager_call(logits: torch.Tensor, dim: int, mode: int, records: bool) -> Optional[EagerCall]:
    """The ``EagerCall`` of a valid, non-empty call with a float tau (``dim`` normalised; ``mode`` a
    ``kernels.MODE_*``; index mode never records), or None where the signature takes the general
    path: float64 logits (tau goes to the kernel as a float64 tensor, ``functional._tau_for_kernel``)
    and logits with no [outer, K, inner] view (the kernel reads a copy)."""
    if logits.dtype == torch.float64 or logits.dim() == 0:
        return None
    shape, x_strides = rows_layout(logits, dim)
    if x_strides is None:
        return None
    hard = mode == kernels.MODE_HARD
    plan = kernels.forward_plan(shape.rows, shape.classes, mode, logits.dtype, False, records and hard)
    out_strides = contiguous_strides(logits.shape)
    backward_plan = src_strides = read_strides = backward_launch = None
    if records:
        backward_plan = kernels.backward_plan(shape.rows, shape.classes, logits.dtype, hard, False, False)
        read_strides = contiguous_row_strides(logits.shape, dim)
        src_strides = x_strides if hard else read_strides
        backward_launch = kernels.bound_backward(backward_plan, shape.inner, read_strides, src_strides,
                                                 shape.contiguous_strides, logits)
    if mode == kernels.MODE_INDEX:
        out_row_strides, out_layout = (0, 0, 0), INDEX_LAYOUT + dim
    else:
        out_row_strides = shape.contiguous_strides
        out_layout = LAYOUT_OF_LOGITS if logits.stride() == out_strides else CONTIGUOUS_LAYOUT
    return EagerCall(mode, dim, logits.dtype, shape.rows, shape.classes, shape.inner, x_strides, out_row_strides,
                     read_strides, out_layout, plan, backward_plan, src_strides, out_strides if records else None,
                     kernels.generation, kernels.bound_forward(plan, shape.inner, x_strides, out_row_strides, logits),
                     backward_launch)


def _python_launch_prelude(logits, salt: int, layout: int, stats_words: int):
    """``fused_gumbel._C.launch_prelude`` where the extension is not built: the call's draw
    (``_seeding.draw_generator``'s, salted with ``salt``), its seed words, its output (``layout``:
    ``LAYOUT_OF_LOGITS``, ``CONTIGUOUS_LAYOUT`` or ``INDEX_LAYOUT + dim``) and its stats buffer
    (None for 0 words)."""
    from . import rng

    key, offset = rng.draw_seed_offset(logits.device)
    key ^= salt
    if layout == LAYOUT_OF_LOGITS:
        y = torch.empty_like(logits)
    elif layout == CONTIGUOUS_LAYOUT:
        y = torch.empty_like(logits, memory_format=torch.contiguous_format)
    else:
        y = logits.new_empty(_index_shape(logits.shape, layout - INDEX_LAYOUT), dtype=torch.int64)
    stats = logits.new_empty(stats_words, dtype=compute_dtype(logits.dtype)) if stats_words else None
    return y, key, offset, kernels.seed_words(key, offset), stats


_launch_prelude = None


def _find_launch_prelude():
    """``_C.launch_prelude`` (one C call: the draw, the seed words, the output), else its Python twin."""
    global _launch_prelude
    module = _native.load()
    _launch_prelude = getattr(module, "launch_prelude", None) or _python_launch_prelude
    return _launch_prelude


def eager_sample(call: EagerCall, logits, tau: float, hard: bool, salt: int, records: bool):
    """``apply(logits, tau, hard, call.dim, seed, offset, "triton")`` with the (seed, offset) drawn
    from the default generator of the logits' device (``_seeding.draw_generator``: ``salt`` is its
    ``rank_salt``) for a call of ``call``'s signature outside torch.func transforms, forward-mode AD
    and CUDA-graph capture (the caller checked): the eager twin of the Function when autograd records
    the call, else the forward launch alone."""
    prepared = (_launch_prelude or _find_launch_prelude())(logits, salt, call.out_layout, call.plan.stats_words)
    if records:
        return _EagerGumbelSoftmaxFunction.apply(logits, tau, hard, call.dim, prepared[1], prepared[2], call, prepared)
    launch = call.launch
    if launch is None:
        return _eager_launch(call, logits, tau, prepared)[0]
    y = prepared[0]
    launch(logits, y, prepared[4], tau, prepared[3])  # _eager_launch's launch, one Python frame fewer
    return y


def eager_categorical(call: EagerCall, logits, salt: int):
    """``sample_forward(logits, 1.0, call.mode, call.dim, seed, offset)[0]`` with the (seed, offset)
    drawn as ``eager_sample`` draws them: ``categorical``'s index or one-hot draw for a call of
    ``call``'s signature (the caller checked what ``eager_sample``'s caller checks)."""
    return _eager_launch(call, logits, 1.0, (_launch_prelude or _find_launch_prelude())(
        logits, salt, call.out_layout, call.plan.stats_words))[0]


def _eager_launch(call: EagerCall, logits, tau: float, prepared: tuple):
    """``sample_forward`` of a call of ``call``'s signature (its mode's Triton launch) with its
    ``launch_prelude``: the sample (or indices), and the statistics its hard backward reads."""
    y, seed, offset, words, stats = prepared
    if call.launch is not None:
        call.launch(logits, y, stats, tau, words)
    else:
        index = call.mode == kernels.MODE_INDEX
        kernels.gumbel_softmax_forward(logits, call.x_strides, None if index else y, call.out_row_strides,
                                       y if index else None, tau, call.rows, call.classes, call.inner, seed, offset,
                                       call.mode, stats=stats, plan=call.plan)
    return y, (stats if call.mode == kernels.MODE_HARD else None)


def _records_autograd(logits, tau) -> bool:
    """Whether autograd would record a Function applied to these inputs: grad mode with an input that
    requires grad, or a forward-AD ``dual_level`` (dual tensors exist only inside one)."""
    if torch.is_grad_enabled() and (logits.requires_grad or (isinstance(tau, torch.Tensor) and tau.requires_grad)):
        return True
    return getattr(_forward_ad, "_current_level", 0) >= 0


def _soft_sample(ctx, src, tau, differentiable: bool):
    """The soft sample ``y`` (compute dtype) and its log-domain ``t``; with ``differentiable``, as
    functions of the saved inputs (see ``_autograd``). Hard mode regenerates the soft sample of the
    call's noise with this Function (so vmap applies its rule here too)."""
    if not ctx.hard:
        y = src.to(compute_dtype(src.dtype))
        y = y if differentiable else y.detach()
        return y, _autograd.log_domain(y)
    logits = src
    detached_tau = tau.detach() if isinstance(tau, torch.Tensor) else tau
    previous, _launcher.name = _launcher.name, ("native" if ctx.native else "triton")
    try:
        with torch.no_grad():
            y0 = GumbelSoftmaxFunction.apply(logits.detach().to(compute_dtype(logits.dtype)), detached_tau, False,
                                             ctx.dim, ctx.seed, ctx.offset)
    finally:
        _launcher.name = previous
    if not differentiable:
        return y0, _autograd.log_domain(y0)
    return _autograd.soft_from_effective_noise(logits, tau, y0, ctx.dim)
