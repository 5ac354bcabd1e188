"""Static sm_90 cost model: what the kernels would cost on an H200/H100, predicted without a GPU.

``python -m bench.static [--out bench/results] [--shapes ...] [--dtypes ...] [--quick] [--host]``
``python -m bench.static --twin``: the CUDA C++ twin's kernels in the same model, next to Triton's
latest report (``bench/static_twin.py``).

1. **Record** (a subprocess with ``TRITON_INTERPRET=1``): every Triton kernel object in the
   ``fused_gumbel`` modules is replaced by a recorder that notes each ``kernel[grid](...)``
   launch (name, grid, arguments, constexprs, ``num_warps``, ``num_stages``) without running
   it, and the public API is called on empty CPU tensors at the real shapes. So the launches
   are the ones the launchers really make; nothing here knows the kernels' internals.
2. **Compile** (a subprocess without the interpreter): each launch is specialised by Triton's
   own launcher rules (``tt.divisibility=16`` on 16-byte aligned pointers and on ints divisible
   by 16, ints equal to 1 made constexpr, ``do_not_specialize`` honoured), compiled for
   ``GPUTarget("cuda", 90, 32)`` and disassembled with the ``nvdisasm``/``cuobjdump`` of the
   triton wheel. Results are cached on disk by (kernel source hash, signature, constexprs,
   attributes, options, triton version), so a variant compiles once.
3. **Count** (``bench/sass.py``): CFG of the SASS, loop bodies weighted by their trip counts
   (``STATIC_TRIP_COUNTS`` below, or the kernel module's own ``STATIC_TRIP_COUNTS``), dynamic
   thread-instructions per element by pipe, SM cycles per element.
4. **Ceiling**: predicted time per element of each launch = max(bytes / copy bandwidth,
   cycles / (SMs x clock)) / grid fill; the case's ceiling is the time the API-level bytes
   (logits in, sample out; + grad in and out for backward) take at copy bandwidth, over the
   sum of its launches' times. Reported for an H200 and an H100 SXM.

Outputs ``bench/results/static-sm90-<date>.json`` and ``.md``: a static prediction, not a
measurement. ``--host`` also measures the Python time per eager call up to the (stubbed)
launch and stores it as ``host_us``. See docs/benchmarks.md, "Static sm_90 cost model".
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

try:  # ``python -m bench.static`` and ``from bench import static`` both work
    from . import sass
except ImportError:  # pragma: no cover - run as a plain script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import sass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = "fused-gumbel-static/1"

# --- Chips --------------------------------------------------------------------------------------
# Copy bandwidth counts bytes read plus bytes written. H200: 4.3 TB/s measured by a PyTorch
# device-to-device copy on this project's machines (vendor: 4.8 TB/s HBM3e). H100 SXM: 3.35 TB/s
# HBM3 by the datasheet; ~3.0 TB/s is the usual copy figure (an estimate, not measured here).
# Both run 132 SMs at up to 1.98 GHz.
CHIPS = {
    "H200": dict(sms=132, clock_hz=1.98e9, copy_bytes_per_s=4.3e12, note="copy bandwidth measured here"),
    "H100": dict(sms=132, clock_hz=1.98e9, copy_bytes_per_s=3.0e12, note="H100 SXM, copy bandwidth estimated"),
}
# Per-SM limits for the occupancy estimate (sm_90).
SM_REGISTERS, SM_MAX_WARPS, SM_MAX_CTAS, SM_SHARED_BYTES, CTA_RESERVED_SHARED = 65536, 64, 32, 233472, 1024

# --- Cases --------------------------------------------------------------------------------------
SHAPES = {"8192x32000": (8192, 32000), "4096x1024": (4096, 1024), "65536x10": (65536, 10),
          "64x128256": (64, 128256)}
DTYPES = ("bf16", "fp32")
TOPK_K = 4
# (family, mode, pass). "index" is fused_gumbel.categorical.
VARIANTS = [
    ("gumbel_softmax", "soft", "fwd"), ("gumbel_softmax", "hard", "fwd"), ("gumbel_softmax", "index", "fwd"),
    ("gumbel_softmax", "soft", "bwd"), ("gumbel_softmax", "hard", "bwd"),
    ("relaxed_bernoulli", "soft", "fwd"), ("relaxed_bernoulli", "hard", "fwd"), ("relaxed_bernoulli", "soft", "bwd"),
    ("gumbel_topk", "soft", "fwd"), ("gumbel_topk", "hard", "fwd"), ("gumbel_topk", "soft", "bwd"),
    ("gumbel_topk", "hard", "bwd"),
    ("gumbel_estimator", "gumbel_rao", "bwd"), ("gumbel_estimator", "reinmax", "bwd"),
]
# The estimators' fused backward takes rows of up to this many classes (wider ones run PyTorch ops).
ESTIMATOR_MAX_CLASSES = 4096  # fused_gumbel.kernels.gumbel_estimators.MAX_FUSED_CLASSES
# gumbel_estimator/<estimator> is gumbel_softmax(hard=True, estimator=...), Gumbel-Rao at its default K.
ITEMSIZE = {"bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class Case:
    family: str
    mode: str
    pass_: str
    shape: str
    dtype: str

    @property
    def key(self) -> str:
        return f"{self.family}/{self.mode}/{self.pass_}/{self.shape}/{self.dtype}"

    @property
    def rows(self) -> int:
        return SHAPES[self.shape][0]

    @property
    def classes(self) -> int:
        return SHAPES[self.shape][1]

    @property
    def elements(self) -> int:
        return self.rows * self.classes

    def essential_bytes_per_element(self) -> float:
        """Bytes per element the call cannot avoid, from the API contract: read the logits and
        write the sample (categorical: 8 bytes of index per row); backward: read the upstream
        gradient and the saved tensor (sample or logits), write the logits' gradient."""
        s = ITEMSIZE[self.dtype]
        if self.pass_ == "bwd":
            return 3 * s
        if self.mode == "index":
            return s + 8 / self.classes
        return 2 * s


def all_cases(shapes=None, dtypes=None, families=None) -> list[Case]:
    shapes = list(shapes or SHAPES)
    dtypes = list(dtypes or DTYPES)
    return [Case(f, m, p, s, d) for (f, m, p) in VARIANTS for s in shapes for d in dtypes
            if (families is None or f in families)
            and (f != "gumbel_estimator" or SHAPES[s][1] <= ESTIMATOR_MAX_CLASSES)]


# --- Targets (issue 9): static ceiling, % of H200 copy bandwidth -------------------------------
# Columns: forward soft/hard and backward soft/hard; categorical; hard backward with K > 8192.
# The 64x128256 cases meet the same targets after grid fill.
TARGETS = {
    ("K>=1024", "fp32"): dict(main=85, index=80, hard_bwd_large_k=85),
    ("K>=1024", "bf16"): dict(main=75, index=50, hard_bwd_large_k=65),
    ("K=10", "fp32"): dict(main=70, index=50),
    ("K=10", "bf16"): dict(main=50, index=35),
}

# Cases that miss their target with the current kernels (bench/results/static-sm90-<date>.md);
# the CI test (tests/test_static_model.py) xfails exactly these (non-strict). Remove cases as the
# kernels meet them: a listed case that meets its target shows as XPASS, an unlisted one that
# misses fails the test. Empty: every gumbel_softmax case meets its target.
KNOWN_UNMET: set[str] = set()


def target_for(case: Case) -> float | None:
    """The issue-9 target (% of H200 copy bandwidth) of a gumbel_softmax case, or None."""
    if case.family != "gumbel_softmax":
        return None
    k = case.classes
    shape_class = "K>=1024" if k >= 1024 else "K=10" if k == 10 else None
    row = TARGETS.get((shape_class, case.dtype))
    if row is None:
        return None
    if case.mode == "index":
        return row["index"]
    if case.pass_ == "bwd" and case.mode == "hard" and k > 8192 and "hard_bwd_large_k" in row:
        return row["hard_bwd_large_k"]
    return row["main"]


# --- Trip counts --------------------------------------------------------------------------------
# hook(launch, loops) -> list of trip counts (iterations per entry), one per loop of the SASS in
# program order (by loop-header address; an inner loop comes after the loop around it). A kernel
# module may define its own ``STATIC_TRIP_COUNTS = {kernel_name: hook}``, which wins over this
# table. Loops a hook leaves out get the default: the runtime argument ``num_chunks`` if the
# kernel has one, else 1; the report flags them.


def _chunks(launch, loops):
    return [launch.args["num_chunks"]] * len(loops)


def _topk_fwd(launch, loops):
    return [launch.args["k"]] * len(loops)


def _topk_bwd(launch, loops):
    # for step in range(k): for i in range(k - 1 - step): ...  -> inner loop (k - 1) / 2 on average
    k = launch.args["k"]
    if len(loops) == 2 and loops[1].depth == 2:
        return [k, (k - 1) / 2]
    return [k] * min(len(loops), 1)


def _split_rows(launch, loops):
    # Only the last program of each row (one in SEGMENTS) runs its finishing loop over the
    # SEGMENTS segments: one segment's worth per program on average. The hard forward's loop
    # writes NaN over an invalid row (NaN or infinite logits) and is counted as never running.
    if launch.kernel == "gumbel_softmax_split_fwd_kernel" and launch.args.get("MODE") == 1:
        return [0] * len(loops)
    return [1] * len(loops)


STATIC_TRIP_COUNTS = {
    "gumbel_softmax_split_fwd_kernel": _split_rows,
    "gumbel_softmax_split_bwd_kernel": _split_rows,
    "gumbel_softmax_fwd_kernel": _chunks,
    "gumbel_softmax_bwd_kernel": _chunks,
    "gumbel_topk_fwd_kernel": _topk_fwd,
    "gumbel_topk_bwd_kernel": _topk_bwd,
}


class Launch:
    """One recorded launch: ``args`` maps every kernel parameter to its value (tensors become
    ``TensorArg``), ``options`` the launch options (num_warps, num_stages, ...)."""

    def __init__(self, record: dict):
        self.record = record
        self.kernel = record["kernel"]
        self.module = record["module"]
        self.grid = record["grid"]
        self.options = record["options"]
        self.constexprs = set(record["constexprs"])
        self.args = {name: decode(value) for name, value in record["args"].items()}

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    @property
    def num_warps(self) -> int:
        return self.options.get("num_warps") or 4


@dataclass
class TensorArg:
    dtype: str
    shape: list
    strides: list
    storage_offset: int
    itemsize: int
    storage: int
    storage_nbytes: int

    @property
    def nbytes(self) -> int:
        # Bytes a launch can touch through this view: its extent, capped by the storage.
        if not self.shape or 0 in self.shape:
            return 0
        extent = 1 + sum((n - 1) * abs(s) for n, s in zip(self.shape, self.strides))
        return min(extent * self.itemsize, self.storage_nbytes)

    @property
    def align16(self) -> bool:
        # CUDA's caching allocator returns 512-byte aligned blocks; a view is aligned when its
        # offset is.
        return (self.storage_offset * self.itemsize) % 16 == 0


def encode(value):
    """A launch argument as JSON (tensors by description, Triton dtypes by name)."""
    import torch

    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        return {"tensor": dict(dtype=str(value.dtype).replace("torch.", ""), shape=list(value.shape),
                               strides=list(value.stride()), storage_offset=value.storage_offset(),
                               itemsize=value.element_size(), storage=storage.data_ptr(),
                               storage_nbytes=storage.nbytes())}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    if value is None:
        return {"none": None}
    if isinstance(value, str):
        return {"str": value}
    if type(value).__name__ in ("dtype", "pointer_type") and type(value).__module__.startswith("triton"):
        return {"tl_dtype": str(value)}
    if type(value).__name__ == "constexpr":
        return encode(value.value)
    raise TypeError(f"bench.static cannot record a launch argument of type {type(value).__name__}: {value!r}")


def decode(value):
    (tag, v), = value.items()
    if tag == "tensor":
        return TensorArg(**v)
    if tag == "tl_dtype":
        return TlDtypeName(v)
    return v


class TlDtypeName(str):
    """A Triton dtype constexpr, by name (``fp32``), outside any Triton process."""


# --- Recording (TRITON_INTERPRET=1 process) ------------------------------------------------------
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion", "launch_pdl",
                   "launch_cooperative_grid")


class KernelRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` records the launch
    into ``sink`` (a list, or None to drop it) and runs nothing."""

    def __init__(self, original, sink):
        import inspect

        self.original = original
        fn = getattr(original, "fn", original)
        while hasattr(fn, "fn"):  # Autotuner / Heuristics wrap a JIT function
            fn = fn.fn
        if type(original).__name__ in ("Autotuner", "Heuristics"):
            raise TypeError(f"{fn.__name__}: autotuned or heuristic kernels have no fixed launch; "
                            "the static model needs the configuration the launcher picks")
        self.fn = fn
        self.__name__ = fn.__name__
        self.signature = inspect.signature(fn)
        self.sink = sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._launch(grid, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is stubbed by bench.static and cannot be called as a device function")

    def _launch(self, grid, args, kwargs):
        if self.sink is None:
            return None
        if isinstance(self.sink, LaunchClock):
            self.sink.stamp()
            return None
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _LAUNCH_OPTIONS}
        unknown = [k for k in kwargs if k not in self.signature.parameters]
        if unknown:
            raise TypeError(f"{self.__name__}: unknown launch keywords {unknown}")
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if callable(grid):
            grid = grid(dict(bound.arguments))
        grid = [int(g) for g in (grid if isinstance(grid, (tuple, list)) else (grid,))]
        grid += [1] * (3 - len(grid))
        constexprs = [name for name, p in self.signature.parameters.items()
                      if "constexpr" in str(p.annotation)]
        self.sink.append(dict(kernel=self.__name__, module=self.fn.__module__, grid=grid,
                              args={k: encode(v) for k, v in bound.arguments.items()},
                              constexprs=constexprs, options=options))
        return None


def kernel_modules():
    """Every imported ``fused_gumbel`` module plus every submodule of ``fused_gumbel.kernels``."""
    import importlib
    import pkgutil

    import fused_gumbel
    import fused_gumbel.kernels as kernels_pkg

    for info in pkgutil.iter_modules(kernels_pkg.__path__, kernels_pkg.__name__ + "."):
        importlib.import_module(info.name)
    return [m for name, m in sorted(sys.modules.items())
            if m is not None and (name == "fused_gumbel" or name.startswith("fused_gumbel."))]


class LaunchClock:
    """A ``stub_kernels`` sink that records only when each launch happened (``perf_counter_ns``),
    first thing in the stub, so host timings can stop at the moment Triton would take over."""

    def __init__(self):
        self.stamps = []

    def stamp(self):
        self.stamps.append(time.perf_counter_ns())


class stub_kernels:
    """Context manager: replace every Triton kernel object in the fused_gumbel modules by a
    ``KernelRecorder`` writing into ``sink`` (None: record nothing, for timing the host)."""

    def __init__(self, sink):
        self.sink = sink
        self.patched = []

    def __enter__(self):
        from triton.runtime.jit import KernelInterface

        recorders = {}
        for module in kernel_modules():
            # Launch-time choices that depend on the interpreter (the noise twin, FAST) are made
            # as on a GPU: a launcher asks ``_interpreted()``, which says False while recording.
            if callable(vars(module).get("_interpreted")):
                self.patched.append((module, "_interpreted", module._interpreted))
                module._interpreted = lambda: False
            for name, obj in list(vars(module).items()):
                if isinstance(obj, KernelInterface):
                    rec = recorders.get(id(obj))
                    if rec is None:
                        rec = recorders[id(obj)] = KernelRecorder(obj, self.sink)
                    self.patched.append((module, name, obj))
                    setattr(module, name, rec)
        if not self.patched:
            raise RuntimeError("bench.static found no Triton kernels in the fused_gumbel modules")
        return self

    def __exit__(self, *exc):
        for module, name, obj in reversed(self.patched):
            setattr(module, name, obj)
        self.patched = []
        return False


def _torch_dtype(name):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


class FallbackToReference(Exception):
    pass


def call_case(case: Case, sink: list):
    """Call the public API for ``case`` on empty CPU tensors (the kernels are stubbed); the
    launches of the measured pass land in ``sink`` (a backward case records only backward)."""
    import warnings

    import torch

    import fused_gumbel as fg

    x = torch.empty(case.rows, case.classes, dtype=_torch_dtype(case.dtype))
    hard = case.mode == "hard"

    def forward(inp):
        if case.family == "gumbel_softmax":
            if case.mode == "index":
                return fg.categorical(inp, backend="triton")
            return fg.gumbel_softmax(inp, tau=1.0, hard=hard, backend="triton")
        if case.family == "gumbel_estimator":
            return fg.gumbel_softmax(inp, tau=1.0, hard=True, backend="triton", estimator=case.mode)
        if case.family == "relaxed_bernoulli":
            return fg.relaxed_bernoulli(inp, tau=1.0, hard=hard, backend="triton")
        if case.family == "gumbel_topk":
            return fg.gumbel_topk(inp, TOPK_K, tau=1.0, hard=hard, backend="triton")
        raise ValueError(case.family)

    with warnings.catch_warnings():
        # A fallback to the PyTorch reference warns first: make it an error before the
        # reference runs (it would compute on the full-size tensors).
        warnings.simplefilter("error", RuntimeWarning)
        try:
            if case.pass_ == "fwd":
                start = len(sink)
                out = forward(x)
            else:
                x.requires_grad_(True)
                out = forward(x)
                start = len(sink)  # the forward's launches are not part of this case
                torch.autograd.grad(out, x, torch.empty_like(out))
        except RuntimeWarning as warning:
            raise FallbackToReference(str(warning)) from None
    del out, x
    return start


def record(cases: list[Case]) -> dict:
    """{case key: {"launches": [...]} or {"skipped": why}} for ``cases``, recorded in this
    process, which must run with TRITON_INTERPRET=1."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("recording needs TRITON_INTERPRET=1 (the interpreter picks the triton backend on CPU)")
    import gc

    sink: list = []
    out = {}
    with stub_kernels(sink):
        for case in cases:
            sink.clear()
            try:
                start = call_case(case, sink)
            except FallbackToReference as why:
                out[case.key] = {"skipped": f"falls back to the PyTorch reference: {why}"}
                continue
            launches = sink[start:]
            out[case.key] = {"launches": launches} if launches else {"skipped": "no Triton launch"}
            gc.collect()
    return out


# --- Host overhead (TRITON_INTERPRET=1 process) -------------------------------------------------
HOST_CASES = [("3000x10", (3000, 10), "fp32"), ("8192x32000", (8192, 32000), "bf16")]


def _autograd_floor_function():
    """A trivial old-style autograd Function with ``GumbelSoftmaxFunction``'s inputs: its forward
    allocates the output and saves one tensor, its backward allocates the gradient. Its
    forward+backward time is autograd's own floor, which no implementation avoids."""
    import torch

    class AutogradFloor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, tau, hard, dim, seed, offset):
            y = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad_y):
            ctx.saved_tensors
            return torch.empty(grad_y.shape, dtype=grad_y.dtype, device=grad_y.device), None, None, None, None, None

    return AutogradFloor


def measure_host(calls: int = 300, modes=("soft", "hard"), repeats: int = 5) -> dict:
    """Python time per eager call, up to the (stubbed, no-op) Triton launch, in us: for each
    quantity the smallest of ``repeats`` medians of ``calls`` calls (the rounds interleave every
    quantity, so a burst of load on a shared machine hits them alike, and noise only adds time):
    forward (no grad), forward+backward (``torch.autograd.grad``) and their difference (``bwd``).
    ``autograd_floor`` is forward+backward of a trivial Function (``_autograd_floor_function``);
    ``bwd_beyond_floor`` = fwd+bwd - autograd_floor - fwd, the backward's own host time."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("host timing needs TRITON_INTERPRET=1 so that CPU tensors take the triton backend")
    import torch

    import fused_gumbel as fg

    from .timing import host_best_us

    def timed(functions: dict) -> dict:
        return host_best_us(functions, calls, repeats)

    floor_function = _autograd_floor_function()
    out = {}
    with stub_kernels(None):
        for name, (rows, classes), dtype in HOST_CASES:
            x = torch.empty(rows, classes, dtype=_torch_dtype(dtype))
            xg = x.clone().requires_grad_(True) if rows * classes < 10**6 else \
                torch.empty(rows, classes, dtype=_torch_dtype(dtype), requires_grad=True)
            grad = torch.empty(rows, classes, dtype=_torch_dtype(dtype))
            functions = {
                "floor": lambda: torch.autograd.grad(floor_function.apply(xg, 1.0, False, -1, 0, 0), xg, grad),
            }
            for mode in modes:
                hard = mode == "hard"
                functions[f"{mode}/fwd"] = lambda hard=hard: fg.gumbel_softmax(x, hard=hard, backend="triton")
                functions[f"{mode}/both"] = lambda hard=hard: torch.autograd.grad(
                    fg.gumbel_softmax(xg, hard=hard, backend="triton"), xg, grad)
            t = timed(functions)
            for mode in modes:
                fwd, both, floor = t[f"{mode}/fwd"], t[f"{mode}/both"], t["floor"]
                out[f"{name}/{dtype}/{mode}"] = {"fwd": round(fwd, 2), "fwd+bwd": round(both, 2),
                                                 "bwd": round(both - fwd, 2), "autograd_floor": round(floor, 2),
                                                 "bwd_beyond_floor": round(both - floor - fwd, 2)}
            del x, xg, grad, functions
    with stub_kernels(clock := LaunchClock()):
        for name, (rows, classes), dtype in HOST_CASES:
            for mode in modes:
                out[f"{name}/{dtype}/{mode}"].update(
                    _time_to_launch(clock, (rows, classes), _torch_dtype(dtype), mode == "hard", calls, repeats))
    with stub_kernels(None):
        for name, (rows, classes), dtype in HOST_CASES:
            x = torch.empty(rows, classes, dtype=_torch_dtype(dtype))
            functions = {"index": lambda: fg.categorical(x, backend="triton"),
                         "alloc": lambda: torch.empty(rows, classes, dtype=_torch_dtype(dtype))}
            t = timed(functions)
            out[f"{name}/{dtype}/index"] = {"fwd": round(t["index"], 2)}
            out[f"{name}/{dtype}/torch.empty"] = {"alloc": round(t["alloc"], 2)}
            del x, functions
    return out


def _time_to_launch(clock: LaunchClock, shape, dtype, hard: bool, calls: int, repeats: int) -> dict:
    """Our own Python time up to Triton's launch, without autograd's engine around it:
    ``fwd_to_launch`` from entering ``gumbel_softmax`` (logits requiring grad) to the forward's
    launch, ``bwd_to_launch`` from entering the autograd Function's ``backward`` to the backward's
    launch (the smallest of ``repeats`` medians of ``calls`` calls)."""
    import torch

    import fused_gumbel as fg
    from fused_gumbel import function

    eager = function._EagerGumbelSoftmaxFunction
    original = eager.__dict__["backward"]
    entered = []

    def backward(ctx, grad_y):
        entered.append(time.perf_counter_ns())
        return original.__func__(ctx, grad_y)

    x = torch.empty(shape, dtype=dtype, requires_grad=True)
    grad = torch.empty(shape, dtype=dtype)
    best = {"fwd_to_launch": math.inf, "bwd_to_launch": math.inf}
    eager.backward = staticmethod(backward)
    try:
        for round_ in range(max(1, repeats) + 1):  # the first round warms up
            fwd, bwd = [], []
            for _ in range(calls):
                clock.stamps.clear()
                entered.clear()
                t0 = time.perf_counter_ns()
                y = fg.gumbel_softmax(x, hard=hard, backend="triton")
                torch.autograd.grad(y, x, grad)
                fwd.append(clock.stamps[0] - t0)
                bwd.append(clock.stamps[-1] - entered[0])
            if round_:
                best["fwd_to_launch"] = min(best["fwd_to_launch"], statistics.median(fwd) / 1e3)
                best["bwd_to_launch"] = min(best["bwd_to_launch"], statistics.median(bwd) / 1e3)
    finally:
        eager.backward = original
    return {k: round(v, 2) for k, v in best.items()}


# --- Compiling (process without TRITON_INTERPRET) ------------------------------------------------
def cache_dir() -> str:
    path = os.environ.get("FUSED_GUMBEL_STATIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fused-gumbel-static")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # no writable home: a per-user temporary folder
        path = os.path.join(tempfile.gettempdir(), f"fused-gumbel-static-{os.getuid()}")
        os.makedirs(path, exist_ok=True)
    return path


def triton_bin(tool: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{tool} not found in the triton wheel ({path})")
    return path


class _Pointer:
    """Stands in for a CUDA tensor in Triton's specialisation: dtype and a data_ptr whose
    alignment is the recorded view's."""

    def __init__(self, dtype, ptr):
        self.dtype = dtype
        self._ptr = ptr

    def data_ptr(self):
        return self._ptr


def _specialise(kernel, launch: Launch, target):
    """(signature, constexprs, attrs, options dict, hints) the real launcher would compile.
    Uses Triton's own binder (triton >= 3.4); older versions get a by-value signature and no
    divisibility hints (``hints`` says which)."""
    import torch
    import triton.language as tl

    values = []
    for p in kernel.params:
        v = launch.args[p.name]
        if isinstance(v, TensorArg):
            v = _Pointer(getattr(torch, v.dtype), 0 if v.align16 else (v.storage_offset * v.itemsize) % 16)
        elif isinstance(v, TlDtypeName):
            v = tl.dtype(str(v))
        values.append(v)
    kwargs = {k: v for k, v in launch.options.items() if v is not None}
    try:
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        backend = make_backend(target)
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, specialization, opts = binder(*values, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, opts)
        return signature, constexprs, attrs, dict(options.__dict__), "triton-launcher"
    except (ImportError, AttributeError, TypeError) as why:
        hints = f"by value, no divisibility hints ({type(why).__name__}: {why})"
    signature, constexprs = {}, {}
    for p, v in zip(kernel.params, values):
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", v
        elif isinstance(v, _Pointer):
            signature[p.name] = "*" + {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16", "float64": "fp64",
                                       "int64": "i64", "int32": "i32", "int8": "i8", "bool": "i1"}[
                str(v.dtype).replace("torch.", "")]
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            signature[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
        else:
            signature[p.name] = "fp32"
    return signature, constexprs, None, kwargs, hints


def _variant_key(kernel, signature, constexprs, attrs, options) -> str:
    import triton

    opts = {k: v for k, v in sorted(options.items()) if k not in ("extern_libs",)}
    text = repr((kernel.cache_key, triton.__version__, sorted(signature.items()), sorted(map(repr, constexprs.items())),
                 sorted(map(repr, (attrs or {}).items())), sorted(map(repr, opts.items()))))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def compile_launches(records: list[dict], log=None) -> list[dict]:
    """For each launch record: {"variant": key, "sass": path, "resources": {...}, ...} or
    {"error": ...}. Runs in a process without TRITON_INTERPRET."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compiling needs a process without TRITON_INTERPRET")
    import importlib
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    root = cache_dir()
    results, seen = [], {}
    for rec in records:
        launch = Launch(rec)
        try:
            kernel = getattr(importlib.import_module(launch.module), launch.kernel)
            signature, constexprs, attrs, options, hints = _specialise(kernel, launch, target)
            key = _variant_key(kernel, signature, constexprs, attrs, options)
            meta_path = os.path.join(root, key + ".json")
            if key in seen:
                results.append(seen[key])
                continue
            if os.path.exists(meta_path):
                with open(meta_path) as f:
                    meta = json.load(f)
                meta["cached"] = True
            else:
                t0 = time.time()
                src = ASTSource(kernel, signature, constexprs, attrs) if attrs is not None else \
                    ASTSource(kernel, signature, constexprs)
                compiled = triton.compile(src, target=target, options=options)
                compile_s = time.time() - t0
                cubin = os.path.join(root, key + ".cubin")
                with open(cubin, "wb") as f:
                    f.write(compiled.asm["cubin"])
                text = subprocess.run([triton_bin("nvdisasm"), "-c", cubin], capture_output=True, text=True,
                                      check=True).stdout
                with open(os.path.join(root, key + ".sass"), "w") as f:
                    f.write(text)
                res = subprocess.run([triton_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                                     check=True).stdout
                usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res))
                meta = dict(kernel=launch.kernel, variant=key, compile_s=round(compile_s, 2), hints=hints,
                            signature=signature, constexprs={str(k): repr(v) for k, v in constexprs.items()},
                            divisible_16=sorted(str(k) for k, v in (attrs or {}).items() if v),
                            num_warps=options.get("num_warps"), num_stages=options.get("num_stages"),
                            regs=int(usage.get("REG", 0)), stack=int(usage.get("STACK", 0)),
                            local=int(usage.get("LOCAL", 0)),
                            shared=int(usage.get("SHARED", 0)) + int(getattr(compiled.metadata, "shared", 0) or 0),
                            triton=triton.__version__)
                # Written last and atomically: its presence means the cubin and SASS are complete.
                with open(meta_path + f".{os.getpid()}.tmp", "w") as f:
                    json.dump(meta, f, indent=1)
                os.replace(meta_path + f".{os.getpid()}.tmp", meta_path)
                meta["cached"] = False
                if log:
                    log(f"compiled {launch.kernel} {key} in {compile_s:.1f}s")
            meta["sass_path"] = os.path.join(root, key + ".sass")
            seen[key] = meta
            results.append(meta)
        except Exception as why:  # one variant failing must not hide the others
            results.append({"kernel": launch.kernel, "error": _describe(why)})
    return results


def _describe(error: BaseException) -> str:
    """The innermost cause first (a CompilationError wraps the AttributeError that matters),
    then the outer error's message, shortened."""
    inner = error
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    text = f"{type(inner).__name__}: {inner}"
    if inner is not error:
        text += f" (raised as {type(error).__name__}: {str(error).strip()[:1200]})"
    return text[:2000]


# --- Subprocess plumbing -------------------------------------------------------------------------
# glibc malloc settings for the host timings: serve every block from the heap (no mmap) and never
# return freed memory to the system, so a freed output is reused by the next call's allocation, as
# PyTorch's CUDA caching allocator reuses it on a GPU. With glibc's defaults, each CPU allocation of
# an 8192x32000 output maps fresh pages and each free unmaps them (tens of us of system calls that
# no GPU call pays, and that no change to our Python could remove). The torch.empty rows of
# host_us are timed under the same settings.
HOST_MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"


def _run_child(mode: str, payload: dict, interpret: bool, timeout: int = 1800) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if mode == "host":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), HOST_MALLOC_TUNABLES)))
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(src, "w") as f:
            json.dump(payload, f)
        done = subprocess.run([sys.executable, "-m", "bench.static", "--child", mode, src, dst], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"bench.static {mode} subprocess failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
        if done.stderr.strip():
            sys.stderr.write(done.stderr)
        with open(dst) as f:
            return json.load(f)


def _child(mode: str, src: str, dst: str) -> None:
    with open(src) as f:
        payload = json.load(f)
    if mode == "record":
        out = record([Case(**c) for c in payload["cases"]])
    elif mode == "host":
        out = measure_host(payload.get("calls", 300))
    elif mode == "compile":
        out = compile_launches(payload["launches"], log=lambda m: print(m, file=sys.stderr, flush=True))
    else:
        raise ValueError(mode)
    with open(dst, "w") as f:
        json.dump(out, f)


# --- Model ---------------------------------------------------------------------------------------
def occupancy(regs: int, shared: int, num_warps: int) -> int:
    """Resident CTAs per SM from registers (allocated per warp in units of 256), shared memory
    and the warp/CTA limits of sm_90."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (SM_REGISTERS // regs_per_warp) // num_warps
    by_warps = SM_MAX_WARPS // num_warps
    by_shared = SM_SHARED_BYTES // (shared + CTA_RESERVED_SHARED)
    return max(0, min(SM_MAX_CTAS, by_regs, by_warps, by_shared))


def grid_fill(programs: int, sms: int) -> float:
    """Fraction of SM-time busy when every SM takes whole programs of equal cost and one
    resident program can drive its SM (an upper bound): programs / (SMs x waves)."""
    waves = math.ceil(programs / sms)
    return programs / (sms * waves) if programs else 0.0


def trip_counts(launch: Launch, cfg: sass.CFG, hooks: dict) -> tuple[list[float], list[str]]:
    """Trip count of every loop of ``cfg`` (program order) and the flags for defaulted ones."""
    hook = hooks.get(launch.kernel)
    given = list(hook(launch, cfg.loops)) if hook else []
    flags = []
    trips = []
    for i, lp in enumerate(cfg.loops):
        if i < len(given):
            lp.trip, lp.trip_source = float(given[i]), "hook"
        else:
            default = launch.args.get("num_chunks")
            lp.trip = float(default) if isinstance(default, int) else 1.0
            lp.trip_source = "default num_chunks" if isinstance(default, int) else "default 1"
            flags.append(f"{launch.kernel}: loop {i} at {cfg.blocks[lp.header].addr:#x} has no trip-count hook; "
                         f"counted {lp.trip:g}x ({lp.trip_source})")
        trips.append(lp.trip)
    if len(given) > len(cfg.loops):
        flags.append(f"{launch.kernel}: hook gave {len(given)} trip counts for {len(cfg.loops)} loops")
    return trips, flags


def trip_hooks() -> dict:
    """This module's hooks, overridden by any kernel module's ``STATIC_TRIP_COUNTS``."""
    import importlib
    import pkgutil

    hooks = dict(STATIC_TRIP_COUNTS)
    try:
        import fused_gumbel.kernels as kernels_pkg
    except ImportError:
        return hooks
    for info in pkgutil.iter_modules(kernels_pkg.__path__, kernels_pkg.__name__ + "."):
        module = importlib.import_module(info.name)
        hooks.update(getattr(module, "STATIC_TRIP_COUNTS", {}) or {})
    return hooks


def model_launch(launch: Launch, meta: dict, case: Case, hooks: dict) -> dict:
    """Per-element counts, cycles and bytes of one launch."""
    with open(meta["sass_path"]) as f:
        cfg = sass.CFG(*sass.parse(f.read(), launch.kernel))
    trips, flags = trip_counts(launch, cfg, hooks)
    counts = cfg.counts(trips)
    threads = 32 * launch.num_warps
    elems_per_program = case.elements / launch.programs
    scale = threads / elems_per_program
    per_class = {c: counts["by_class"][c] * scale for c in sass.CLASSES}
    cycles = sass.sm_cycles(per_class)
    bound = max(cycles, key=cycles.get)
    storages: dict[int, int] = {}
    for v in launch.args.values():
        if isinstance(v, TensorArg):
            storages[v.storage] = max(storages.get(v.storage, 0), v.nbytes)
    others = {k: round(v * scale, 2) for k, v in counts["by_opcode"].items() if sass.classify(k) == "other"}
    top = sorted(counts["by_opcode"].items(), key=lambda kv: -kv[1])[:12]
    return {
        "kernel": launch.kernel, "variant": meta["variant"], "grid": launch.grid, "programs": launch.programs,
        "num_warps": launch.num_warps, "num_stages": launch.options.get("num_stages") or meta.get("num_stages"),
        "constexprs": {k: launch.record["args"][k] for k in launch.constexprs if k in launch.record["args"]},
        "elements_per_program": elems_per_program,
        "instr_per_element": counts["total"] * scale,
        "by_class_per_element": {k: round(v, 3) for k, v in per_class.items()},
        "cycles_per_element": {k: round(v, 4) for k, v in cycles.items()},
        "bound": bound,
        "top_opcodes_per_element": {k: round(v * scale, 2) for k, v in top},
        "other_opcodes_per_element": others,
        "static_instructions": counts["static_instructions"],
        "straight_line_instructions": counts["straight_line_instructions"],
        "straight_line_per_element": round(counts["straight_line_instructions"] * scale, 3),
        "loops": [lp.to_json(cfg) for lp in cfg.loops],
        "bytes_per_element": sum(storages.values()) / case.elements,
        "regs": meta.get("regs"), "spill_local_bytes": meta.get("local"), "stack": meta.get("stack"),
        "shared": meta.get("shared"),
        "spill_instr_per_element": round(sum(counts["by_opcode"].get(op, 0) for op in ("LDL", "STL")) * scale, 3),
        "ctas_per_sm": occupancy(meta.get("regs") or 0, meta.get("shared") or 0, launch.num_warps),
        "hints": meta.get("hints"), "compile_s": meta.get("compile_s"),
        "warnings": cfg.warnings + flags,
    }


def model_case(case: Case, launches: list[dict]) -> dict:
    """Case totals and the ceilings on each chip."""
    out = {"instr_per_element": sum(lr["instr_per_element"] for lr in launches),
           "cycles_per_element": {k: round(sum(lr["cycles_per_element"][k] for lr in launches), 4)
                                  for k in launches[0]["cycles_per_element"]},
           "essential_bytes_per_element": case.essential_bytes_per_element(),
           "bytes_per_element": sum(lr["bytes_per_element"] for lr in launches),
           "launches": len(launches)}
    slowest = None
    for chip, spec in CHIPS.items():
        sm_rate = spec["sms"] * spec["clock_hz"]
        total = 0.0
        for lr in launches:
            cyc = max(lr["cycles_per_element"].values())
            fill = grid_fill(lr["programs"], spec["sms"])
            t = max(lr["bytes_per_element"] / spec["copy_bytes_per_s"], cyc / sm_rate) / fill
            total += t
            if chip == "H200" and (slowest is None or t > slowest[0]):
                slowest = (t, lr)
        ideal = case.essential_bytes_per_element() / spec["copy_bytes_per_s"]
        out[f"ceiling_pct_{chip}"] = round(100 * min(1.0, ideal / total), 1)
        out[f"budget_cycles_{chip}"] = round(ideal * sm_rate, 4)
        out[f"budget_instr_{chip}"] = round(ideal * sm_rate * 128, 1)
    lr = slowest[1]
    cyc = lr["cycles_per_element"]
    out["bound"] = "bandwidth" if lr["bytes_per_element"] / CHIPS["H200"]["copy_bytes_per_s"] * \
        CHIPS["H200"]["sms"] * CHIPS["H200"]["clock_hz"] >= max(cyc.values()) else lr["bound"]
    out["grid_fill"] = round(min(grid_fill(x["programs"], CHIPS["H200"]["sms"]) for x in launches), 3)
    out["programs"] = [x["programs"] for x in launches]
    out["regs"] = max(x["regs"] or 0 for x in launches)
    out["spills"] = any((x["spill_local_bytes"] or 0) > 0 or x["spill_instr_per_element"] > 0 for x in launches)
    out["ctas_per_sm"] = min(x["ctas_per_sm"] for x in launches)
    out["warnings"] = [w for x in launches for w in x["warnings"]]
    target = target_for(case)
    out["target_pct_H200"] = target
    out["met"] = None if target is None else out["ceiling_pct_H200"] >= target
    return out


# --- Driver --------------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels", "fused_gumbel"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def triton_version() -> str:
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # noqa: BLE001
        return "unknown"


def run_model(cases: list[Case], log=print, host: bool = False, host_calls: int = 300) -> dict:
    """Record, compile and model ``cases``; returns the report dict (see docs/benchmarks.md)."""
    t0 = time.time()
    recorded = _run_child("record", {"cases": [c.__dict__ for c in cases]}, interpret=True)
    log(f"recorded {len(cases)} cases in {time.time() - t0:.1f}s")
    flat = [(key, i, rec) for key, entry in recorded.items() for i, rec in enumerate(entry.get("launches", []))]
    t1 = time.time()
    compiled = _run_child("compile", {"launches": [rec for _, _, rec in flat]}, interpret=False) if flat else []
    log(f"compiled/disassembled {len({c.get('variant') for c in compiled})} variants in {time.time() - t1:.1f}s")
    hooks = trip_hooks()
    per_case: dict[str, list] = {}
    errors: dict[str, list] = {}
    for (key, _, rec), meta in zip(flat, compiled):
        case = next(c for c in cases if c.key == key)
        if "error" in meta:
            errors.setdefault(key, []).append(meta["error"])
            continue
        per_case.setdefault(key, []).append(model_launch(Launch(rec), meta, case, hooks))
    results = {}
    for case in cases:
        entry = recorded.get(case.key, {})
        record_ = {"family": case.family, "mode": case.mode, "pass": case.pass_, "shape": case.shape,
                   "dtype": case.dtype, "rows": case.rows, "classes": case.classes}
        if "skipped" in entry:
            record_["skipped"] = entry["skipped"]
        elif case.key in errors:
            record_["error"] = errors[case.key]
        else:
            record_.update(model_case(case, per_case[case.key]))
            record_["kernels"] = per_case[case.key]
        record_["known_unmet"] = case.key in KNOWN_UNMET
        results[case.key] = record_
    report = {
        "schema": SCHEMA, "label": "static prediction, not a measurement",
        "date": datetime.date.today().isoformat(), "git_commit": git_commit(), "triton": triton_version(),
        "target": "sm_90 (GPUTarget('cuda', 90, 32))", "chips": CHIPS,
        "pipe_rates_per_sm_clock": dict(sass.PIPE_RATES, issue=128),
        "opcode_classes": {cls: sorted(op for op, c in sass.OPCODE_CLASS.items() if c == cls) for cls in sass.CLASSES
                           if cls not in ("uniform", "other")},
        "targets": {f"{k[0]} {k[1]}": v for k, v in TARGETS.items()},
        "results": results, "wall_s": None,
    }
    if host:
        report["host_us"] = _run_child("host", {"calls": host_calls}, interpret=True)
    report["wall_s"] = round(time.time() - t0, 1)
    return report


def _fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def _header(report: dict) -> str:
    return (f"**Static prediction, not a measurement.** Triton {report['triton']}, commit {report['git_commit']}, "
            f"{report['date']}: every launch the public API makes, compiled for sm_90 and counted from its SASS "
            "(`python -m bench.static`; method in docs/benchmarks.md). Ceiling = the share of the chip's copy "
            "bandwidth a call could reach at best: bandwidth-bound time over the predicted time of its launches, "
            "max(bytes / copy bandwidth, pipe-bound cycles / (SMs x clock)) / grid fill. "
            f"H200: {CHIPS['H200']['copy_bytes_per_s'] / 1e12:.1f} TB/s copy (measured), H100 SXM: "
            f"{CHIPS['H100']['copy_bytes_per_s'] / 1e12:.1f} TB/s (estimate); 132 SMs at 1.98 GHz.")


def summary_table(report: dict, families=None) -> str:
    """One row per (family, mode, pass, shape), bf16 / fp32 side by side."""
    rows: dict[tuple, dict] = {}
    for r in report["results"].values():
        if families and r["family"] not in families:
            continue
        rows.setdefault((r["family"], r["mode"], r["pass"], r["shape"]), {})[r["dtype"]] = r

    def pair(by_dtype, fn):
        return " / ".join(fn(by_dtype[d]) if d in by_dtype else "–" for d in DTYPES)

    def ok(r):
        if "ceiling_pct_H200" not in r:
            return "–"
        return "–" if r["met"] is None else ("met" if r["met"] else "**unmet**")

    lines = [f"| kernel | shape | instr/elem {' / '.join(DTYPES)} | bound | grid fill | ceiling H200 | ceiling H100 "
             "| target (H200) | met |", "|---|---|---|---|---|---|---|---|---|"]
    for (family, mode, pass_, shape), by_dtype in rows.items():
        first = next(iter(by_dtype.values()))
        name = f"{family} {mode} {pass_}"
        if "ceiling_pct_H200" not in first:
            why = " ".join((first.get("skipped") or "; ".join(first.get("error", []))).split())
            if "reference" in why:
                why = "not fused: falls back to the PyTorch reference"
            lines.append(f"| {name} | {shape} | {why[:120]} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {shape} | {pair(by_dtype, lambda r: format(r.get('instr_per_element', 0), '.0f'))} | "
            f"{pair(by_dtype, lambda r: r.get('bound', '–'))} | {first['grid_fill']:.2f} | "
            f"{pair(by_dtype, lambda r: _pct(r.get('ceiling_pct_H200')))} | "
            f"{pair(by_dtype, lambda r: _pct(r.get('ceiling_pct_H100')))} | "
            f"{pair(by_dtype, lambda r: _pct(r.get('target_pct_H200'), '≥'))} | {pair(by_dtype, ok)} |")
    return "\n".join(lines)


def _pct(x, prefix=""):
    return "–" if x is None else f"{prefix}{x:.0f}%"


def markdown(report: dict) -> str:
    lines = [f"# Static sm_90 cost model, {report['date']}", "", _header(report), "",
             "## Summary (bf16 / fp32)", "", summary_table(report), "",
             "## Per case", "",
             "| case | shape | dtype | launches | instr/elem | budget (H200) | cycles/elem issue · fma · alu · xu"
             " | bound | grid fill | CTAs/SM | regs | ceiling H200 | ceiling H100 | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"].values():
        if "ceiling_pct_H200" not in r:
            continue
        c = r["cycles_per_element"]
        met = "–" if r["met"] is None else ("met" if r["met"] else "**unmet**")
        if r["met"] is False and r["known_unmet"]:
            met += " (known)"
        lines.append(
            f"| {r['family']} {r['mode']} {r['pass']} | {r['shape']} | {r['dtype']} | {r['launches']} | "
            f"{r['instr_per_element']:.0f} | {r['budget_instr_H200']:.0f} | "
            f"{c['issue']:.3f} · {c['fma']:.3f} · {c['alu']:.3f} · {c['xu']:.3f} | {r['bound']} | "
            f"{r['grid_fill']:.2f} | {r['ctas_per_sm']} | {r['regs']}{' (spills)' if r['spills'] else ''} | "
            f"{_pct(r['ceiling_pct_H200'])} | {_pct(r['ceiling_pct_H100'])} | {_pct(r['target_pct_H200'], '≥')} | "
            f"{met} |")
    lines += ["", "instr/elem: SASS thread-instructions per element, loop bodies weighted by their trip counts. "
              "budget: the instructions per element that fit in the bandwidth-bound time at 128 per SM clock. "
              "cycles: SM cycles per element; issue = all / 128, fma = (FP32 + IMAD) / 128, alu = / 64, xu = / 16. "
              "bound: the limit of the slowest launch (bandwidth, or the pipe). CTAs/SM: resident programs per SM "
              "by registers and shared memory (grid fill assumes one program can drive an SM)."]
    warnings = sorted({w for r in report["results"].values() for w in r.get("warnings", [])})
    if warnings:
        lines += ["", "Model warnings:", ""] + [f"- {w}" for w in warnings]
    others = sorted({op for r in report["results"].values() for k in r.get("kernels", [])
                     for op in k["other_opcodes_per_element"]})
    if others:
        lines += ["", f"Unclassified opcodes (counted as issue slots only): {', '.join(others)}"]
    if report.get("host_us"):
        lines += ["", "## Host time per call", "",
                  "Python time per eager call up to the (stubbed) Triton launch, in us (the smallest of several "
                  "medians): CPU tensors, TRITON_INTERPRET=1 so the triton backend is chosen; it includes allocating "
                  "the outputs on the CPU (the torch.empty row), with glibc's malloc keeping freed blocks for "
                  "reuse as the CUDA caching allocator does (GLIBC_TUNABLES=" + HOST_MALLOC_TUNABLES + "; with "
                  "glibc's defaults an 8192x32000 output maps and unmaps fresh pages on every call, 20-60 us here). "
                  "autograd floor: forward+backward of a trivial "
                  "autograd Function with the same inputs; bwd beyond floor = fwd+bwd - floor - fwd. Our own "
                  "Python up to the launch, without autograd's engine around it: bwd to launch, from entering the "
                  "Function's backward to the backward's launch; fwd to launch, from entering gumbel_softmax with "
                  "logits that require grad (the autograd Function's apply included) to the forward's launch.", "",
                  "| case | fwd | fwd+bwd | bwd | autograd floor | bwd beyond floor | fwd to launch (grad) "
                  "| bwd to launch |", "|---|---|---|---|---|---|---|---|"]
        for k, v in report["host_us"].items():
            if "fwd" in v:
                lines.append(f"| {k} | {v['fwd']} | {v.get('fwd+bwd', '–')} | {v.get('bwd', '–')} | "
                             f"{v.get('autograd_floor', '–')} | {v.get('bwd_beyond_floor', '–')} | "
                             f"{v.get('fwd_to_launch', '–')} | {v.get('bwd_to_launch', '–')} |")
            else:
                lines.append(f"| {k} (torch.empty of one output) | {v['alloc']} | – | – | – | – | – | – |")
    return "\n".join(lines) + "\n"


DOC_BEGIN, DOC_END = "<!-- static-sm90:begin -->", "<!-- static-sm90:end -->"


def update_docs(report: dict, paths=("README.md", "docs/benchmarks.md"), md_name: str = "") -> list[str]:
    """Rewrite the generated block between DOC_BEGIN and DOC_END in ``paths`` (the summary
    table, gumbel_softmax only in the README); returns the files changed."""
    changed = []
    for rel in paths:
        families = ["gumbel_softmax"] if rel == "README.md" else None
        link = f"bench/results/{md_name}" if rel == "README.md" else f"../bench/results/{md_name}"
        body = "\n".join([_header(report), "", summary_table(report, families), "",
                          f"Full tables, per-pipe cycles, registers and host time: [{md_name}]({link})."])
        if replace_block(rel, DOC_BEGIN, DOC_END, body):
            changed.append(rel)
    return changed


def replace_block(rel: str, begin: str, end: str, body: str) -> bool:
    """Put ``body`` between the ``begin`` and ``end`` markers of the repository file ``rel``;
    whether the file changed (False when it has no such block)."""
    path = os.path.join(REPO, rel)
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    new = head + "\n".join([begin, body, end]) + rest.split(end, 1)[1]
    if new == text:
        return False
    with open(path, "w") as f:
        f.write(new)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES))
    parser.add_argument("--families", nargs="+", choices=sorted({v[0] for v in VARIANTS}))
    parser.add_argument("--quick", action="store_true", help="gumbel_softmax only, bf16 only")
    parser.add_argument("--host", action="store_true", help="also measure the host time per call (host_us)")
    parser.add_argument("--host-calls", type=int, default=300)
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the generated tables in README.md and docs/benchmarks.md (with --twin: the "
                             "twin-vs-Triton table in docs/benchmarks.md)")
    parser.add_argument("--twin", action="store_true",
                        help="model the CUDA C++ twin (kernels/csrc/cuda) next to Triton's latest report "
                             "(bench/static_twin.py) and write fused_gumbel/_twin_dispatch.py")
    parser.add_argument("--triton-json", help="with --twin: the Triton report to compare with (default: the latest)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    if args.twin:
        from . import static_twin

        static_twin.main(args.out, args.shapes, args.dtypes, args.triton_json,
                         log=lambda m: print(m, file=sys.stderr), docs=args.update_docs)
        return 0
    families = args.families or (["gumbel_softmax"] if args.quick else None)
    dtypes = args.dtypes or (["bf16"] if args.quick else None)
    cases = all_cases(args.shapes, dtypes, families)
    report = run_model(cases, log=lambda m: print(m, file=sys.stderr), host=args.host, host_calls=args.host_calls)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"static-sm90-{report['date']}{'-quick' if args.quick else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    if args.update_docs:
        changed = update_docs(report, md_name=os.path.basename(stem) + ".md")
        print(f"updated {', '.join(changed) or 'nothing (no generated block found)'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
