"""Public API: ``gumbel_softmax`` and ``categorical``, input checks and backend dispatch.

``gumbel_softmax`` is a drop-in for ``torch.nn.functional.gumbel_softmax`` (Jang, Gu, Poole
2017; Maddison, Mnih, Teh 2017): y = softmax((logits + g) / tau) with g ~ Gumbel(0, 1), or,
with ``hard=True``, the exact one-hot of argmax(logits + g) with the soft sample's gradient.
Every input error raises here, before any kernel launch. CUDA tensors run the fused Triton
kernels (through ``GumbelSoftmaxFunction``), or the CUDA C++ twin where it is built and a GPU
measurement recorded it faster for the call's shape class (``_twin_dispatch``; the environment
variable FUSED_GUMBEL_CUDA_IMPL overrides; :func:`select_implementation` says which); CPU
tensors run the fused C++ kernel of ``fused_gumbel._C`` when it is built: the common eager call entirely in C++
(``_C.sample_eager``, ``kernels/csrc/eager.cpp``: generator draw, kernel, and a C++ autograd
Function), anything else through the same Function (``_native``), else the PyTorch
reference with the same noise stream, or the Triton kernels under ``TRITON_INTERPRET=1``. While a graph is being
recorded (``torch.compile``, ``torch.export``, ``torch.jit.trace``: ``_graph_mode``) both run as
the custom op ``torch.ops.fused_gumbel.sample`` (``_custom_op``), which draws its seed at run
time; where seeds come from (generator, ``seed=``, CUDA graphs, ranks) is ``_seeding``.
A repeat eager call that runs Triton (no ``seed=``, generator or estimator, a float tau) takes a
short path: ``gumbel_softmax`` checks what no cache can hold and finds the rest, validated and
planned, by the call's signature (``_eager_calls``, ``function.EagerCall``).
"""
from __future__ import annotations

import numbers
import operator
import os
import sys
import warnings
from typing import Literal, Optional, Union

import torch
from torch.autograd import forward_ad as _forward_ad

from . import _custom_op, _estimator_op, _functorch, _native, _seeding, _twin_dispatch, reference, reference_estimators
from ._layout import RowShape

Backend = Literal["auto", "triton", "native", "reference"]
BACKENDS = ("auto", "triton", "native", "reference")
Estimator = Literal["st", "gumbel_rao", "reinmax"]
BACKEND_ENV = "FUSED_GUMBEL_BACKEND"
CudaImpl = Literal["auto", "triton", "twin"]
CUDA_IMPLS = ("auto", "triton", "twin")
CUDA_IMPL_ENV = "FUSED_GUMBEL_CUDA_IMPL"


# os.environ's own dict (POSIX CPython: fsencoded bytes keys and values), which os.environ.get
# reads through two codec calls: _env reads the same entries at a fraction of the host cost.
_ENVIRON_DATA = os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) \
    else None


def _env(name: str, default: str) -> str:
    """``os.environ.get(name, default)``, for the variables read on every call."""
    if _ENVIRON_DATA is None:
        return os.environ.get(name, default)
    value = _ENVIRON_DATA.get(_ENV_KEYS.get(name) or os.fsencode(name))
    return default if value is None else os.fsdecode(value)


_ENV_KEYS = {name: os.fsencode(name) for name in (BACKEND_ENV, CUDA_IMPL_ENV)}


_TRITON_AVAILABLE: Optional[bool] = None
# Not named _interpreted: bench.static replaces every fused_gumbel module's _interpreted() while recording.
_INTERPRETED: Optional[bool] = None


def _triton_available() -> bool:
    """Whether Triton imports (found out once)."""
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        try:
            import triton  # noqa: F401
        except ImportError:
            _TRITON_AVAILABLE = False
        else:
            _TRITON_AVAILABLE = True
    return _TRITON_AVAILABLE


def _interpret_env() -> bool:
    """``TRITON_INTERPRET=1``, read once, at the first call that asks: Triton itself decides between
    its interpreter and its compiler once, when the kernels are imported (the first Triton call)."""
    global _INTERPRETED
    if _INTERPRETED is None:
        _INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return _INTERPRETED


def select_backend(device: torch.device, backend: Optional[Backend] = None) -> str:
    """Which implementation runs for tensors on ``device``: "triton", "native" or "reference".

    ``backend`` (or the ``FUSED_GUMBEL_BACKEND`` environment variable, read on every call) forces
    one; "auto" picks Triton for CUDA tensors; for CPU tensors Triton when ``TRITON_INTERPRET=1``
    (read once, at the first call), else the C++ kernel of ``fused_gumbel._C`` ("native") when it
    is built, else the PyTorch reference. "native" raises (with the reason) where ``_C`` has no
    kernel for the device (for CUDA tensors "native" is the CUDA C++ twin). Meta tensors accept any
    (they only propagate shapes: no kernel runs). Under auto a CUDA call may still run the twin
    rather than Triton, by shape class: :func:`select_implementation` says what a call runs.
    """
    return _select_backend(device, backend or _env(BACKEND_ENV, "auto"))


def _select_backend(device: torch.device, choice: str) -> str:
    """``select_backend`` once the request (argument or environment) is known."""
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {choice!r}")
    kind = device.type
    if kind == "meta":  # shapes only, no kernel launch: every backend agrees
        return "reference" if choice == "auto" else choice
    if choice == "auto":
        if (kind == "cuda" or (kind == "cpu" and _interpret_env())) and _triton_available():
            return "triton"
        return "native" if kind == "cpu" and _native.available("cpu") else "reference"
    if choice == "triton" and not (kind == "cuda" or _interpret_env()):
        raise ValueError(f"the triton backend needs a CUDA tensor or TRITON_INTERPRET=1, got a {kind} tensor")
    if choice == "native" and not _native.available(kind):
        raise ValueError(f"the native backend is not available for {kind} tensors: {_native.unavailable_reason(kind)}")
    return choice


_EAGER_UNRESOLVED = object()
_eager_native_function = _EAGER_UNRESOLVED


def _native_eager(backend: Optional[str]):
    """``fused_gumbel._C.sample_eager`` (the eager CPU fast path, ``kernels/csrc/eager.cpp``) when a
    call with this ``backend`` argument runs the native kernel on CPU tensors, else None: backend
    "native", or none given while auto would pick native (``select_backend``; the environment
    variable is read by the fast path itself, on every call). The fast path runs the same kernel
    on the same (key, offset) from the same generator draw as the Function does, or declines
    (returns None) whenever Python has something to do: autograd, transforms, bad input."""
    global _eager_native_function
    if backend is None:
        if _interpret_env() and _triton_available():
            return None
    elif backend != "native":
        return None
    if _eager_native_function is _EAGER_UNRESOLVED:
        module = _native.load() if _native.available("cpu") else None
        _eager_native_function = getattr(module, "sample_eager", None)
    return _eager_native_function


def select_backend_for_op(device: torch.device, backend: Optional[Backend], has_native: bool) -> str:
    """``select_backend`` for one op: where the op has no C++ kernel (``has_native`` False:
    the estimators' backward, relaxed_bernoulli and gumbel_topk off CPU) "native" runs as
    "reference", which draws the same noise."""
    chosen = select_backend(device, backend)
    return "reference" if chosen == "native" and not has_native else chosen


_MODE_SOFT, _MODE_HARD, _MODE_INDEX = _custom_op.MODE_SOFT, _custom_op.MODE_HARD, _custom_op.MODE_INDEX
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
_MODE_NAMES = {_custom_op.MODE_SOFT: "soft", _custom_op.MODE_HARD: "hard", _custom_op.MODE_INDEX: "index"}
_CUDA_CHOICE_CACHE_SIZE = 4096
# Whether auto can pick the twin at all (it is built and a measured record picks it somewhere),
# found out once; {(rows, classes, dtype, mode, backward): twin?} for the calls seen.
_twin_under_auto: Optional[bool] = None
_cuda_choices: dict = {}


def _cuda_impl_env() -> str:
    """FUSED_GUMBEL_CUDA_IMPL (read on every call, like FUSED_GUMBEL_BACKEND), checked."""
    choice = _env(CUDA_IMPL_ENV, "auto")
    if choice == "auto" or choice == "triton":
        return choice
    if choice != "twin":
        raise ValueError(f"{CUDA_IMPL_ENV} must be one of {', '.join(map(repr, CUDA_IMPLS))}, got {choice!r}")
    if not _native.available("cuda"):
        raise ValueError(f"{CUDA_IMPL_ENV}=twin but the CUDA C++ twin is not available: "
                         f"{_native.unavailable_reason('cuda')}")
    return choice


def _auto_runs_twin(logits: torch.Tensor, dim: int, mode: int, tau, backward: Optional[bool]) -> bool:
    """``_twin_dispatch.auto_choice`` for a CUDA call, cached per (rows, classes, dtype, mode,
    backward): a dict lookup per call, and nothing at all while no measured record picks the twin.
    ``backward`` None: whether autograd records the call (grad mode, logits or tau need grad)."""
    global _twin_under_auto
    if _twin_under_auto is None:
        _twin_under_auto = _twin_dispatch.twin_measured_anywhere() and _native.available("cuda")
    if not _twin_under_auto or _graph_mode():  # a graph's shapes may be symbolic: no lookup
        return False
    if backward is None:
        backward = mode != _custom_op.MODE_INDEX and torch.is_grad_enabled() and (
            logits.requires_grad or (isinstance(tau, torch.Tensor) and tau.requires_grad))
    classes = logits.shape[dim]
    cache_key = (logits.numel() // classes, classes, logits.dtype, mode, backward)
    twin = _cuda_choices.get(cache_key)
    if twin is None:
        if len(_cuda_choices) >= _CUDA_CHOICE_CACHE_SIZE:  # many distinct shapes: start over rather than grow
            _cuda_choices.clear()
        twin = _cuda_choices[cache_key] = _twin_dispatch.auto_choice(
            cache_key[0], classes, _DTYPE_NAMES[logits.dtype], _MODE_NAMES[mode], backward) == "twin"
    return twin


def _cuda_launcher(requested: str, logits: torch.Tensor, dim: int, mode: int, tau=None,
                   backward: Optional[bool] = None) -> str:
    """"native" (the CUDA C++ twin) or "triton" for a non-empty CUDA call that ``select_backend`` sent
    to Triton; ``requested`` is the backend asked for (argument or FUSED_GUMBEL_BACKEND). Only an
    auto request is open to FUSED_GUMBEL_CUDA_IMPL and to the measured table. Recorded graphs
    (torch.compile: one op for every shape, possibly replayed from a CUDA graph) and CUDA-graph
    capture keep Triton: the twin takes the seed as host integers, where a captured launch must
    read it from device memory at replay, which only the Triton kernels do."""
    if requested != "auto":
        return "triton"
    impl = _cuda_impl_env()
    if impl == "auto":
        if not _auto_runs_twin(logits, dim, mode, tau, backward):  # (False in graph mode)
            return "triton"
    elif impl == "triton" or _graph_mode():
        return "triton"
    return "triton" if logits.is_cuda and torch.cuda.is_current_stream_capturing() else "native"


def select_implementation(logits: torch.Tensor, dim: int = -1, *, mode: str = "soft", backward: Optional[bool] = None,
                          backend: Optional[Backend] = None) -> str:
    """What a call on ``logits`` runs: "triton", "twin" (the CUDA C++ twin of ``fused_gumbel._C``),
    "native" (its CPU kernel) or "reference" (``select_backend``, refined per call for CUDA tensors).

    ``mode``: "soft", "hard" (``gumbel_softmax``) or "index" (``categorical``); ``backward``: whether
    the call's backward will run (default: the logits require grad in grad mode; the forward and the
    backward of one call run the same implementation, so the twin needs both passes faster).

    For CUDA tensors under backend "auto", FUSED_GUMBEL_CUDA_IMPL ("auto", "triton" or "twin", read
    on every call) picks; under its "auto" the twin runs only where it is built and the table of
    ``fused_gumbel._twin_dispatch`` holds a *measured* record (``python -m bench.twin``) of it being
    faster for the call's shape class, dtype, mode and passes. The static cost model's predictions
    in that table never pick it: the twin has not run on a GPU until such a measurement exists.
    """
    _check_logits(logits)
    dim = _normalize_dim(dim, logits.dim())
    mode_value = {name: value for value, name in _MODE_NAMES.items()}.get(mode)
    if mode_value is None:
        raise ValueError(f"mode must be 'soft', 'hard' or 'index', got {mode!r}")
    requested = backend or _env(BACKEND_ENV, "auto")
    chosen = _select_backend(logits.device, requested)
    if logits.device.type != "cuda" or chosen != "triton":
        return "twin" if chosen == "native" and logits.device.type == "cuda" else chosen
    if backward is None:
        backward = mode != "index" and torch.is_grad_enabled() and logits.requires_grad
    classes = logits.shape[dim] if logits.dim() else 1
    if logits.numel() == 0 or classes == 0:
        return "triton"
    view = logits.reshape(1) if logits.dim() == 0 else logits
    return "twin" if _cuda_launcher(requested, view, dim, mode_value, None, bool(backward)) == "native" else "triton"


_function_module = None


def _function():
    """The ``function`` module (Triton backend), imported at the first call that needs it: importing
    fused_gumbel does not import Triton, and a call does not pay for an import statement."""
    global _function_module
    if _function_module is None:
        from . import function

        _function_module = function
    return _function_module


def _check_logits(logits: torch.Tensor) -> torch.device:
    """The logits' device, once they are known to be a floating tensor on a supported device."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype (float16, bfloat16, float32, float64), got {logits.dtype}")
    device = logits.device
    if device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"fused_gumbel supports CPU, CUDA and meta tensors, got device {device}")
    return device


def _normalize_dim(dim: int, ndim: int) -> int:
    if type(dim) is int and -ndim <= dim < ndim:  # the common case, without the checks below
        return dim % ndim
    # Any integer type (numpy's too, as torch accepts), but not bool.
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    dim = operator.index(dim)
    span = max(ndim, 1)
    if not -span <= dim < span:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], but got {dim})")
    return dim % span


def _graph_mode() -> bool:
    """Is this call being recorded into a graph (``torch.compile``, ``torch.export``,
    ``torch.jit.trace``)? Then it must run as a custom op that draws its seed when the graph
    runs: a seed drawn now would be frozen into the graph and repeat one sample forever."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


# torch.jit.is_tracing() without its Python wrapper (which first asks whether TorchScript is
# compiling this code: never, for this function).
_jit_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)
# The innermost torch.func interpreter, None outside every transform (``_functorch.transforms_active``
# without its Python frame, for the eager fast paths); where the internals are missing, never None.
_peek_transform = _functorch._peek if _functorch._peek is not None else object


def _is_tracing() -> bool:
    """Recording a graph or capturing a CUDA graph: host-side value checks are skipped."""
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    return _graph_mode() or capturing


# A Python float that torch.compile traces as a symbol: Dynamo makes a float that changes
# between calls (an annealed temperature) dynamic instead of recompiling for every value.
_SYMBOLIC_SCALARS = (torch.SymFloat, torch.SymInt)
# Not math.inf: Dynamo drops a symbolic float's guard "tau < inf" as always true.
_FLOAT_MAX = sys.float_info.max


def _check_tau(tau, logits: torch.Tensor, dim: int):
    """A validated float, or a floating tensor that broadcasts to the logits with size 1 at ``dim``."""
    if type(tau) is float and 0 < tau <= _FLOAT_MAX:  # the common case, as the checks below return it
        return tau
    if isinstance(tau, torch.Tensor):
        if not tau.is_floating_point():
            raise TypeError(f"tau must be a float or a floating tensor, got {tau.dtype}")
        row_shape = list(logits.shape)
        if row_shape:
            row_shape[dim] = 1
        try:
            broadcast = list(torch.broadcast_shapes(tau.shape, row_shape))
        except RuntimeError:
            broadcast = None
        if tau.dim() > logits.dim() or broadcast != row_shape:
            raise ValueError(
                f"tau of shape {tuple(tau.shape)} must broadcast to the logits' shape {tuple(logits.shape)} "
                f"with size 1 along dim {dim} (one temperature per row), i.e. to {tuple(row_shape)}")
        if tau.device != logits.device and not (tau.device.type == "cpu" and tau.dim() == 0):
            raise ValueError(f"tau is on {tau.device} but the logits are on {logits.device}")
        # Value checks on a CUDA tensor cost one synchronisation; skipped while tracing or capturing,
        # and where a tensor has no values to branch on (meta tensors, vmap's batched tensors).
        checkable = not (_is_tracing() or tau.device.type == "meta" or _functorch.in_vmap())
        if checkable and tau.numel() and not bool(torch.all(torch.isfinite(tau) & (tau > 0))):
            raise ValueError("tau must be positive and finite everywhere")
        return tau
    if isinstance(tau, _SYMBOLIC_SCALARS):
        # A float a tracer hands over as a symbol (its value is unknown until the graph runs):
        # it becomes a 0-dim tensor input of the custom op (_tau_for_kernel), not checked here.
        return tau
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):  # numbers.Real: numpy scalars too
        raise TypeError(f"tau must be a float or a tensor, got {type(tau).__name__}")
    # Comparisons rather than math.isfinite() or float(): under torch.compile a temperature that
    # changes between calls is a symbolic float; a comparison only guards the graph on its
    # outcome (a later value that fails it re-runs this check), where isfinite() does not trace
    # and float() would specialise the graph to one value and recompile for every new one.
    if not (0 < tau <= _FLOAT_MAX):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    return tau if isinstance(tau, float) else float(tau)


def _scalar_tensor(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A float as a 0-dim tensor that stays a graph input under torch.compile.

    The custom ops' ``float`` arguments, and ``torch.full``/``torch.tensor`` of a symbolic float,
    specialise the graph to the value, so a temperature annealed every step would recompile on
    every step. Dynamo turns ``tensor * float`` into a tensor op on the float's value instead.
    The product is exact in float64 and rounded once to ``dtype``, as an eager call rounds it.
    """
    return (torch.ones((), dtype=torch.float64, device=device) * value).to(dtype)


def _tau_for_kernel(tau, logits: torch.Tensor, dim: int):
    """float, 0-dim tensor or a contiguous [rows] tensor in RNG-spec row order (differentiable)."""
    if type(tau) is float and logits.dtype is not torch.float64 and not torch.compiler.is_compiling():
        return tau  # the common eager call: Triton takes the float as float32, the compute dtype
    compute = reference.compute_dtype(logits.dtype)
    if isinstance(tau, _SYMBOLIC_SCALARS) or (torch.compiler.is_compiling() and not isinstance(tau, torch.Tensor)):
        return _scalar_tensor(tau, compute, logits.device)
    if not isinstance(tau, torch.Tensor):
        # Triton passes Python floats as float32; float64 math needs the exact value.
        return torch.tensor(tau, dtype=compute, device=logits.device) if compute == torch.float64 else tau
    tau = tau.to(device=logits.device, dtype=compute)
    if tau.dim() == 0:
        return tau
    row_shape = list(logits.shape)
    row_shape[dim] = 1
    return tau.expand(row_shape).reshape(-1).contiguous()


def _check_compiled_call(generator: Optional[torch.Generator], seed: Optional[int]) -> None:
    if generator is not None:
        raise ValueError(
            "generator= is not supported inside torch.compile, torch.export or torch.jit.trace (a Generator "
            "cannot be a graph input); seed the default generator with torch.manual_seed, or pass seed=")
    if seed is not None:
        _seeding.check_seed(seed)


def _check_host_seed(key) -> None:
    if isinstance(key, torch.Tensor):
        raise RuntimeError("the reference backend cannot run under CUDA-graph capture (its seed would be frozen "
                           "into the graph); use backend='triton'")


def _draw(device: torch.device, logits: torch.Tensor, tau, generator: Optional[torch.Generator],
          seed: Optional[int]):
    """The call's (key, offset) (``_seeding.draw``), after the vmap randomness checks, drawn outside vmap."""
    if not _functorch.transforms_active():  # the common case: nothing to check, nothing to leave
        return _seeding.draw(device, generator, seed)
    _functorch.check_vmap_randomness(logits, tau, seeded=seed is not None)
    with _functorch.outside_vmap():
        return _seeding.draw(device, generator, seed)


# {signature: function.EagerCall or None} of the eager Triton calls seen (``gumbel_softmax``).
_eager_calls: dict = {}
_EAGER_CALL_CACHE_SIZE = 4096
_UNSEEN = object()


def _new_eager_call(key: tuple, logits: torch.Tensor, dim: int, mode: int, records: bool, requested: str):
    """``function.EagerCall`` for a valid signature that runs Triton, else None; kept for ``key``.
    Bad input is not kept (the general path raises), nor the meta device (no kernel runs)."""
    try:
        device = _check_logits(logits)
        dim = _normalize_dim(dim, logits.dim())
        chosen = _select_backend(device, requested)
    except (TypeError, ValueError, IndexError):
        return None
    call = None
    if chosen == "triton" and device.type != "meta" and logits.numel():
        call = _function().eager_call(logits, dim, mode, records)
    if len(_eager_calls) >= _EAGER_CALL_CACHE_SIZE:  # many distinct signatures: start over rather than grow
        _eager_calls.clear()
    _eager_calls[key] = call
    return call


def _empty_like_result(logits: torch.Tensor) -> torch.Tensor:
    # Keeps the autograd graph (and the dtype/device) of an empty input.
    return logits * 0


def gumbel_softmax(
    logits: torch.Tensor,
    tau: Union[float, torch.Tensor] = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    backend: Optional[Backend] = None,
    estimator: Estimator = "st",
    mc_samples: Optional[int] = None,
) -> torch.Tensor:
    r"""Sample from the Gumbel-Softmax (Concrete) distribution; drop-in for ``F.gumbel_softmax``.

    .. math:: y = \mathrm{softmax}((\text{logits} + g) / \tau), \quad g_k = -\log(-\log u_k),\ u_k \sim U(0, 1)

    Args:
        logits: unnormalised log-probabilities, any shape, float16/bfloat16/float32/float64
            (math in float32, float64 for float64); the output has the same dtype and shape.
        tau: temperature > 0: a float, or a tensor (0-dim, or broadcastable to ``logits`` with
            size 1 along ``dim``, e.g. one temperature per row). A tensor that requires grad
            receives its gradient (learnable temperature).
        hard: return the exact one-hot of ``argmax(logits + g)`` (values exactly 0.0 and 1.0)
            with the straight-through gradient of the soft sample.
        eps: deprecated and ignored, as in PyTorch.
        dim: the class dimension.
        generator: the torch generator (of the logits' device) the noise is drawn from;
            default: the device's default generator, so ``torch.manual_seed`` reproduces calls.
        seed: an int in [0, 2**63): the noise is the RNG spec's stream (key ``seed``, offset 0),
            identical on CPU and CUDA and on every backend and rank; no generator is used or
            advanced. Exclusive with ``generator``.
        backend: "auto" (default), "triton", "native" or "reference"; see :func:`select_backend`.
        estimator: the gradient of a ``hard=True`` sample (its value is the same exact one-hot for
            every estimator): "st" (default) straight-through, the soft sample's gradient;
            "gumbel_rao" its Rao-Blackwellisation over ``mc_samples`` noise draws conditioned on
            the chosen class (Paulus et al. 2021; lower variance, same mean); "reinmax" the
            second-order ReinMax estimator (Liu et al. 2023; ``tau`` gets no gradient). See
            ``fused_gumbel.reference_estimators``.
        mc_samples: Gumbel-Rao's number of conditional draws, in [1, 32767] (default 10); the
            fused backward's memory does not depend on it, its time is linear in it.

    Runs on the logits' dtype whatever ``torch.autocast`` says (float32 math inside, output in
    the input dtype). Works under ``torch.compile(fullgraph=True)``, ``torch.export`` and
    ``torch.jit.trace`` (fresh noise on every call, the eager sample for the same
    ``torch.manual_seed``; a float ``tau`` annealed every step does not recompile) and CUDA-graph
    capture (fresh noise on every replay).

    Rows whose logits + noise hold a NaN or have no finite maximum (all ``-inf``, or ``+inf``)
    give NaN rows, like ``torch.softmax``. ``-inf`` logits get probability 0 and are never chosen.
    """
    if (seed is None and estimator == "st" and mc_samples is None and eps == 1e-10
            and isinstance(logits, torch.Tensor) and not torch.compiler.is_compiling()):
        on_cpu = logits.is_cpu
        # CPU calls only, and only the requests _native_eager serves (none, or "native"): other calls
        # must not pay for asking (the fast path would decline them anyway).
        sample_eager = _native_eager(backend) if on_cpu and (backend is None or backend == "native") else None
        if sample_eager is not None:
            mode = _custom_op.MODE_HARD if hard else _custom_op.MODE_SOFT
            y = sample_eager(logits, tau, mode, dim, generator, _seeding.rank_salt(), backend is None, False)
            if y is not None:
                return y
        # The common eager call that runs the Triton kernels. Checked here: what no cache can hold (the
        # arguments' kinds and tau's value; tracing, torch.func transforms, forward-mode AD, CUDA-graph
        # capture; the environment; grad mode). Looked up by the call's signature: everything the
        # general path below validates and derives from the logits' sizes, strides, dtype and device,
        # dim, hard and the backend asked for (function.EagerCall, made once by _new_eager_call).
        # Then the seed is drawn as _draw draws it (with the output, in one C call: function.eager_sample),
        # and the kernel launches. Anything else (a miss
        # that is not a fast signature, the CUDA twin) runs the general path, which raises what it raises.
        function = _function_module
        if (type(tau) is float and generator is None and type(dim) is int and (hard is True or hard is False)
                and 0 < tau <= _FLOAT_MAX and function is not None and _peek_transform() is None
                and not _jit_tracing() and getattr(_forward_ad, "_current_level", 0) < 0
                and (on_cpu or logits.is_cuda)):
            requested = backend or _env(BACKEND_ENV, "auto")
            records = torch.is_grad_enabled() and logits.requires_grad
            mode = _MODE_HARD if hard else _MODE_SOFT
            key = (logits.shape, logits.stride(), logits.dtype, -1 if on_cpu else logits.get_device(), dim, mode,
                   records, requested, _INTERPRETED, function.kernels.generation)
            try:
                call = _eager_calls.get(key, _UNSEEN)
            except TypeError:  # an unhashable backend argument: the general path says what is wrong with it
                call = None
            if call is _UNSEEN:
                call = _new_eager_call(key, logits, dim, mode, records, requested)
            if call is not None and (on_cpu or not (torch.cuda.is_current_stream_capturing() or _cuda_launcher(
                    requested, logits, call.dim, call.mode, tau, records) != "triton")):
                return function.eager_sample(call, logits, tau, hard, _seeding.rank_salt(), records)
    if eps != 1e-10:
        # A plain UserWarning, as PyTorch's (a DeprecationWarning is hidden by default).
        warnings.warn("`eps` parameter is deprecated and has no effect.", stacklevel=2)
    device = _check_logits(logits)
    ndim = logits.dim()
    dim = _normalize_dim(dim, ndim)
    tau = _check_tau(tau, logits, dim)
    if estimator != "st" or mc_samples is not None:
        mc_samples = reference_estimators.check_estimator(estimator, hard, mc_samples)
    if logits.numel() == 0:
        return _empty_like_result(logits)
    if ndim == 0:
        return gumbel_softmax(logits.reshape(1), tau, hard, dim=0, generator=generator, seed=seed,
                              backend=backend, estimator=estimator, mc_samples=mc_samples).reshape(())
    if estimator != "st":
        chosen = select_backend_for_op(device, backend, has_native=False)
        return _sample_with_estimator(logits, tau, dim, generator, seed, chosen, estimator, mc_samples)
    requested = backend or _env(BACKEND_ENV, "auto")
    chosen = _select_backend(device, requested)
    mode = _MODE_HARD if hard else _MODE_SOFT
    kind = device.type
    if chosen == "triton" and kind == "cuda":
        chosen = _cuda_launcher(requested, logits, dim, mode, tau)
    if _graph_mode():
        _check_compiled_call(generator, seed)
        return _custom_op.sample(logits, _tau_for_kernel(tau, logits, dim), mode, dim, seed, chosen)
    if kind == "meta":
        return reference.gumbel_softmax(logits, tau, hard, dim, noise=torch.zeros_like(logits))
    key, offset = _draw(device, logits, tau, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference.gumbel_softmax(logits, tau, hard, dim, seed=key, offset=offset)
    return _function().apply(logits, _tau_for_kernel(tau, logits, dim), bool(hard), dim, key, offset, chosen)


def _sample_with_estimator(logits, tau, dim, generator, seed, chosen, estimator, mc_samples):
    """A hard sample whose backward is ``estimator``'s (``reference_estimators``, ``estimators``)."""
    if _functorch.transforms_active() and not _graph_mode():
        raise NotImplementedError(f"estimator={estimator!r} does not support torch.func transforms; use estimator='st'")
    if estimator == "gumbel_rao":
        classes = logits.shape[dim]
        reference_estimators.check_counter_range(logits.numel() // classes, classes)
    if _graph_mode():
        _check_compiled_call(generator, seed)
        return _estimator_op.sample(logits, _tau_for_kernel(tau, logits, dim), estimator, mc_samples, dim, seed, chosen)
    if logits.device.type == "meta":
        return reference.gumbel_softmax(logits, tau, True, dim, noise=torch.zeros_like(logits))
    key, offset = _draw(logits.device, logits, tau, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference_estimators.gumbel_softmax(logits, tau, dim, estimator=estimator, mc_samples=mc_samples,
                                                   seed=key, offset=offset)
    from . import estimators

    return estimators.apply(logits, _tau_for_kernel(tau, logits, dim), dim, key, offset, estimator, mc_samples)


def categorical(
    logits: torch.Tensor,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    one_hot: bool = False,
    seed: Optional[int] = None,
    backend: Optional[Backend] = None,
) -> torch.Tensor:
    r"""Exact draw from Categorical(softmax(logits)) by the Gumbel-max trick, ``argmax(logits + g)``.

    Returns int64 indices with ``dim`` removed, or with ``one_hot=True`` a one-hot tensor of the
    logits' dtype and shape. No gradient. Rows with no valid class (a NaN, all ``-inf``, or
    ``+inf``) give index -1 (a NaN row when one-hot). Same noise stream as :func:`gumbel_softmax`;
    ``generator`` and ``seed`` as there.
    """
    if seed is None and isinstance(logits, torch.Tensor) and not torch.compiler.is_compiling():
        on_cpu = logits.is_cpu
        sample_eager = _native_eager(backend) if on_cpu and (backend is None or backend == "native") else None
        if sample_eager is not None:
            mode = _custom_op.MODE_HARD if one_hot else _custom_op.MODE_INDEX
            drawn = sample_eager(logits, 1.0, mode, dim, generator, _seeding.rank_salt(), backend is None, True)
            if drawn is not None:
                return drawn
        # The repeat call that runs Triton, as gumbel_softmax's (a draw never records: no grad mode or
        # forward-AD check; a one-hot draw shares the signature of an unrecorded hard gumbel_softmax).
        function = _function_module
        if (generator is None and type(dim) is int and (one_hot is True or one_hot is False) and function is not None
                and _peek_transform() is None and not _jit_tracing() and (on_cpu or logits.is_cuda)):
            requested = backend or _env(BACKEND_ENV, "auto")
            mode = _MODE_HARD if one_hot else _MODE_INDEX
            key = (logits.shape, logits.stride(), logits.dtype, -1 if on_cpu else logits.get_device(), dim, mode,
                   False, requested, _INTERPRETED, function.kernels.generation)
            try:
                call = _eager_calls.get(key, _UNSEEN)
            except TypeError:
                call = None
            if call is _UNSEEN:
                call = _new_eager_call(key, logits, dim, mode, False, requested)
            if call is not None and (on_cpu or not (torch.cuda.is_current_stream_capturing() or _cuda_launcher(
                    requested, logits, call.dim, mode, backward=False) != "triton")):
                return function.eager_categorical(call, logits, _seeding.rank_salt())
    device = _check_logits(logits)
    ndim = logits.dim()
    dim = _normalize_dim(dim, ndim)
    if logits.numel() == 0:
        shape = RowShape.of(logits.shape, dim)
        if shape.classes == 0 and shape.rows > 0:
            raise ValueError(f"cannot sample from zero categories (logits shape {tuple(logits.shape)}, dim {dim})")
        if one_hot:
            return torch.empty_like(logits)
        return torch.empty(logits.shape[:dim] + logits.shape[dim + 1:], dtype=torch.int64, device=device)
    if ndim == 0:
        drawn = categorical(logits.reshape(1), 0, generator=generator, one_hot=one_hot, seed=seed, backend=backend)
        return drawn.reshape(())
    logits = logits.detach()
    requested = backend or _env(BACKEND_ENV, "auto")
    chosen = _select_backend(device, requested)
    mode = _MODE_HARD if one_hot else _MODE_INDEX
    kind = device.type
    if chosen == "triton" and kind == "cuda":
        chosen = _cuda_launcher(requested, logits, dim, mode, backward=False)
    if _graph_mode():
        _check_compiled_call(generator, seed)
        return _custom_op.sample(logits, 1.0, mode, dim, seed, chosen)
    if kind == "meta":
        return reference.categorical(logits, dim, one_hot=one_hot, noise=torch.zeros_like(logits))
    key, offset = _draw(device, logits, None, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference.categorical(logits, dim, one_hot=one_hot, seed=key, offset=offset)
    function = _function()
    if _functorch.in_vmap():  # a kernel cannot read a batched tensor: the Function's vmap rule can
        drawn = function.apply(logits, 1.0, True, dim, key, offset, chosen)
        if one_hot:
            return drawn
        return drawn.argmax(dim).masked_fill(drawn.isnan().any(dim), -1)
    return function.sample_forward(logits, 1.0, mode, dim, key, offset, native=chosen == "native")[0]
