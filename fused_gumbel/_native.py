"""The compiled extension ``fused_gumbel._C``, loaded lazily: is it there, why not, and its ops.

``_C`` (built by ``setup.py`` from ``kernels/csrc/``) registers the native op contract
``torch.ops.fused_gumbel.kernel_forward`` / ``kernel_backward``: one fused pass per row of the
same math the Triton kernels run (``kernels/gumbel_softmax.py``: Gumbel noise from the RNG
spec's Philox words, tempered softmax, one-hot or argmax; dx = y (dy - sum(dy y)) / tau and the
temperature gradient), with a CPU kernel (``kernels/csrc/cpu``) and, where built, a CUDA twin
(``kernels/csrc/cuda``), and the eager CPU fast path (``kernels/csrc/eager.cpp``: the functions
``sample_eager`` and ``draw_key_offset`` of the module itself, which ``functional`` and
``_seeding`` call), and the CPU kernels of ``relaxed_bernoulli``/``bernoulli`` and
``gumbel_topk``/``sample_subset`` (``bernoulli_kernel_*``, ``topk_kernel_*``). Importing
``fused_gumbel`` never imports ``_C``; the first call that asks does, once. It is refused, with
the reason kept for :func:`unavailable_reason`, when it was not built, fails to load, was built
against another torch version (its C++ ABI would not match), or its last build failed (then with
a warning): ``_C.build.json``, written by setup.py, records the torch version or the build error.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from typing import Optional

import torch

_BUILD_INFO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C.build.json")
_state: dict = {}  # "module" (or None) and "reason", once loaded


def _load():
    try:
        with open(_BUILD_INFO) as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = {}
    if info.get("error"):  # setup.py caught a failed build (pip shows its warning only with -v)
        reason = f"the last build of fused_gumbel._C failed: {info['error']}"
        warnings.warn(f"{reason}; CPU calls run the PyTorch reference (fused_gumbel.select_backend)", stacklevel=4)
        return None, reason
    built_with = info.get("torch")
    if built_with is not None and built_with != torch.__version__:
        return None, (f"fused_gumbel._C was built against torch {built_with} but torch {torch.__version__} is "
                      "installed (C++ ABI mismatch); rebuild it: pip install --no-build-isolation -e .")
    try:
        module = importlib.import_module("fused_gumbel._C")
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == "fused_gumbel._C":
            return None, ("fused_gumbel._C is not built (the package was installed without compiling its C++ "
                          "extension; see the install warning, or run: pip install --no-build-isolation -e .)")
        return None, f"fused_gumbel._C failed to load: {error}"
    _register_fakes()
    _register_relaxed_fakes()
    _register_topk_fakes()
    return module, None


def load():
    """The ``_C`` module, or None (see :func:`unavailable_reason`)."""
    if "module" not in _state:
        _state["module"], _state["reason"] = _load()
    return _state["module"]


def _constant_under_compile(fn):
    """torch.compile calls ``fn`` once while tracing and keeps its result (loading _C cannot be traced).

    What ``torch._dynamo.assume_constant_result`` does (it sets this one attribute, which Dynamo
    reads; tests/test_native.py checks that it still does), without importing ``torch._dynamo``
    at ``import fused_gumbel``: that import alone took ~2 s of every process's start-up."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def available(device_type: str = "cpu") -> bool:
    """Whether ``_C`` loaded and implements the ops for ``device_type`` ("cpu" or "cuda")."""
    if load() is None:
        return False
    if "devices" not in _state:  # asked once: a plain dict lookup afterwards, which torch.compile traces
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        _state["devices"] = {kind: has("fused_gumbel::kernel_forward", key) for kind, key in
                             (("cpu", "CPU"), ("cuda", "CUDA"))}
    return _state["devices"].get(device_type, False)


def unavailable_reason(device_type: str = "cpu") -> Optional[str]:
    """Why :func:`available` is False (None when it is True)."""
    if load() is None:
        return _state["reason"]
    if not available(device_type):
        return f"fused_gumbel._C has no {device_type} implementation of its ops (built without it)"
    return None


def cpu_isa() -> Optional[str]:
    """The instruction set of the CPU kernel build that runs here ("avx512", "avx2", "default")."""
    return torch.ops.fused_gumbel._cpu_isa() if available("cpu") else None


def _as_int64(value: int) -> int:
    # CUDA keys are uint64 (generator.initial_seed()); the op takes the int64 with the same bits.
    return value - 2**64 if value >= 2**63 else value


def _key_offset(seed, offset):
    if isinstance(seed, torch.Tensor):  # a compiled graph's saved (key, offset) state
        seed, offset = seed.tolist()
    return _as_int64(seed), _as_int64(offset)


# The CPU kernel's mode beyond the shared contract: hard, plus the soft sample of the same noise.
MODE_HARD_KEEP_SOFT = 3


def forward(logits: torch.Tensor, tau, mode: int, dim: int, seed, offset, keep_soft: bool = False):
    """``kernel_forward``: (the sample (contiguous, logits' shape and dtype) or int64 indices (mode 2),
    None or, for a hard CPU sample with ``keep_soft``, the soft sample its backward reads).
    ``tau`` is a float, a 0-dim tensor or a [rows] tensor in RNG-spec row order (compute dtype)."""
    key, offset = _key_offset(seed, offset)
    if keep_soft and mode == 1 and logits.device.type == "cpu":
        mode = MODE_HARD_KEEP_SOFT
    if isinstance(tau, torch.Tensor):
        return torch.ops.fused_gumbel.kernel_forward(logits, tau, 1.0, mode, dim, key, offset)
    return torch.ops.fused_gumbel.kernel_forward(logits, None, float(tau), mode, dim, key, offset)


def backward(grad_y: torch.Tensor, src: torch.Tensor, tau, dim: int, seed, offset, hard: bool, tau_grad: bool,
             soft: Optional[torch.Tensor] = None):
    """``kernel_backward``: (grad_logits, per-row temperature gradients or None). ``src`` is the soft
    output, or the logits when ``hard`` (the kernel regenerates the noise, unless the forward kept
    the ``soft`` sample: then that is read, as in soft mode)."""
    if hard and soft is not None:
        src, hard = soft, False
    key, offset = _key_offset(seed, offset)
    tau_tensor = tau if isinstance(tau, torch.Tensor) else None
    tau_value = 1.0 if tau_tensor is not None else float(tau)
    return torch.ops.fused_gumbel.kernel_backward(grad_y, src, tau_tensor, tau_value, hard, dim, key, offset,
                                                  tau_grad and tau_tensor is not None, None)


def _register_missing_fakes(fakes) -> None:
    """``torch.library.register_fake`` for each (op name, fake) whose op has no Meta kernel yet."""
    for name, fake in fakes:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta"):
            torch.library.register_fake(name, fake)


def _register_fakes() -> None:
    """Shape functions, so the ops also trace (meta tensors, torch.compile, torch.export)."""
    def forward_fake(logits, tau_tensor, tau, mode, dim, key, offset):
        if mode == 2:
            return logits.new_empty(logits.shape[:dim] + logits.shape[dim + 1:], dtype=torch.int64), None
        return logits.new_empty(logits.shape), (logits.new_empty(logits.shape) if mode == MODE_HARD_KEEP_SOFT else None)

    def backward_fake(grad_y, src, tau_tensor, tau, hard, dim, key, offset, tau_grad, stats):
        grad_tau = None
        if tau_grad and tau_tensor is not None:
            rows = src.numel() // max(src.shape[dim], 1) if src.dim() else 1
            grad_tau = src.new_empty(rows, dtype=torch.float64 if src.dtype == torch.float64 else torch.float32)
        return src.new_empty(src.shape), grad_tau

    _register_missing_fakes((("fused_gumbel::kernel_forward", forward_fake),
                             ("fused_gumbel::kernel_backward", backward_fake)))


# ---- relaxed Bernoulli (kernels/csrc/relaxed_ops.cpp, cpu/relaxed_bernoulli_cpu*) -------------------
# The same math as kernels/relaxed_bernoulli.py, elementwise over the row-major elements with the RNG
# spec's elementwise mapping: fused_gumbel.relaxed_bernoulli and bernoulli run it under "native".

@_constant_under_compile
def bernoulli_available(device_type: str = "cpu") -> bool:
    """Whether ``_C`` loaded and has the relaxed-Bernoulli kernel for ``device_type`` (CPU only)."""
    if load() is None:
        return False
    if "bernoulli_devices" not in _state:
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        _state["bernoulli_devices"] = {kind: has("fused_gumbel::bernoulli_kernel_forward", key) for kind, key in
                                       (("cpu", "CPU"), ("cuda", "CUDA"))}
    return _state["bernoulli_devices"].get(device_type, False)


def _elementwise_tau_args(tau):
    """(tau_tensor or None, tau value) for a float, a 0-dim or a [numel] compute-dtype tensor."""
    return (tau, 1.0) if isinstance(tau, torch.Tensor) else (None, float(tau))


def bernoulli_forward(logits: torch.Tensor, tau, mode: int, seed, offset) -> torch.Tensor:
    """``bernoulli_kernel_forward``: the soft (mode 0) or exact (mode 1) sample, contiguous, in the
    logits' dtype and shape. ``tau``: a float, a 0-dim or a [numel] tensor (compute dtype)."""
    key, offset = _key_offset(seed, offset)
    tau_tensor, tau_value = _elementwise_tau_args(tau)
    return torch.ops.fused_gumbel.bernoulli_kernel_forward(logits, tau_tensor, tau_value, mode, key, offset)


def bernoulli_backward(grad_y: torch.Tensor, logits: torch.Tensor, tau, seed, offset, tau_grad: bool):
    """``bernoulli_kernel_backward``: (grad_logits, tau's gradient (0-dim or [numel]) or None), the noise
    regenerated from ``(seed, offset)``; the soft gradient, which the hard sample passes straight through."""
    key, offset = _key_offset(seed, offset)
    tau_tensor, tau_value = _elementwise_tau_args(tau)
    return torch.ops.fused_gumbel.bernoulli_kernel_backward(grad_y, logits, tau_tensor, tau_value, key, offset,
                                                            tau_grad and tau_tensor is not None)


def _register_relaxed_fakes() -> None:
    """Shape functions of the relaxed-Bernoulli ops (meta tensors, torch.compile, torch.export)."""
    def forward_fake(logits, tau_tensor, tau, mode, key, offset):
        return logits.new_empty(logits.shape)

    def backward_fake(grad_y, logits, tau_tensor, tau, key, offset, tau_grad):
        grad_tau = None
        if tau_grad and tau_tensor is not None:
            shape = () if tau_tensor.dim() == 0 else (logits.numel(),)
            grad_tau = logits.new_empty(shape, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
        return logits.new_empty(logits.shape), grad_tau

    _register_missing_fakes((("fused_gumbel::bernoulli_kernel_forward", forward_fake),
                             ("fused_gumbel::bernoulli_kernel_backward", backward_fake)))


# ---- Gumbel top-k (kernels/csrc/topk_ops.cpp, cpu/gumbel_topk_cpu*) -------------------------------
# The same math as kernels/gumbel_topk.py on gumbel_softmax's noise, one row at a time: exact top-k
# indices / k-hot and Xie & Ermon's relaxed k-hot with its saved per-step statistics, and the backward
# that replays the recursion from them. fused_gumbel.gumbel_topk and sample_subset run it under "native".

@_constant_under_compile
def topk_available(device_type: str = "cpu") -> bool:
    """Whether ``_C`` loaded and has the Gumbel top-k kernel for ``device_type`` (CPU only)."""
    if load() is None:
        return False
    if "topk_devices" not in _state:
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        _state["topk_devices"] = {kind: has("fused_gumbel::topk_kernel_forward", key) for kind, key in
                                  (("cpu", "CPU"), ("cuda", "CUDA"))}
    return _state["topk_devices"].get(device_type, False)


def topk_forward(logits: torch.Tensor, tau, k: int, mode: int, dim: int, seed, offset, save_stats: bool):
    """``topk_kernel_forward``: (the relaxed or exact k-hot (contiguous, logits' shape and dtype) or, for
    mode 2, int64 indices with size ``k`` along ``dim``; the [rows, k, 4] statistics or None).
    ``tau``: a float, a 0-dim or a [rows] tensor in RNG-spec row order (compute dtype)."""
    key, offset = _key_offset(seed, offset)
    tau_tensor, tau_value = _elementwise_tau_args(tau)
    return torch.ops.fused_gumbel.topk_kernel_forward(logits, tau_tensor, tau_value, k, mode, dim, key, offset,
                                                      save_stats)


def topk_backward(grad_y: torch.Tensor, logits: torch.Tensor, tau, k: int, dim: int, seed, offset,
                  stats: torch.Tensor, tau_grad: bool):
    """``topk_kernel_backward``: (grad_logits, per-row temperature gradients or None), the noise
    regenerated from ``(seed, offset)`` and the recursion replayed from the forward's ``stats``."""
    key, offset = _key_offset(seed, offset)
    tau_tensor, tau_value = _elementwise_tau_args(tau)
    return torch.ops.fused_gumbel.topk_kernel_backward(grad_y, logits, tau_tensor, tau_value, k, dim, key, offset,
                                                       stats, tau_grad and tau_tensor is not None)


def _register_topk_fakes() -> None:
    """Shape functions of the Gumbel top-k ops (meta tensors, torch.compile, torch.export)."""
    def compute(logits):
        return torch.float64 if logits.dtype == torch.float64 else torch.float32

    def rows_of(logits, dim):
        return logits.numel() // logits.shape[dim] if logits.dim() and logits.shape[dim] else 0

    def forward_fake(logits, tau_tensor, tau, k, mode, dim, key, offset, save_stats):
        if mode == 2:
            shape = list(logits.shape) or [1]
            shape[dim] = k
            out = logits.new_empty(shape, dtype=torch.int64)
        else:
            out = logits.new_empty(logits.shape)
        rows = rows_of(logits, dim) if logits.dim() else 1
        stats = logits.new_empty((rows, k, 4), dtype=compute(logits)) if save_stats and mode != 2 else None
        return out, stats

    def backward_fake(grad_y, logits, tau_tensor, tau, k, dim, key, offset, stats, tau_grad):
        grad_tau = None
        if tau_grad and tau_tensor is not None:
            grad_tau = logits.new_empty(rows_of(logits, dim) if logits.dim() else 1, dtype=compute(logits))
        return logits.new_empty(logits.shape), grad_tau

    _register_missing_fakes((("fused_gumbel::topk_kernel_forward", forward_fake),
                             ("fused_gumbel::topk_kernel_backward", backward_fake)))
