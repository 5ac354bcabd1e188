"""Build helpers for the CUDA C++ twin (``kernels/csrc/cuda``) without a GPU or torch headers.

* :func:`host_library`: ``twin_host_api.cpp`` built with g++ into a ctypes library: the twin's
  Philox words, its exact and fast noise twins (host twins of the device functions, same source)
  and its kernel-shape choice (``choose_config``). Used by ``tests/test_cuda_twin_rng.py`` and
  by the static model (``python -m bench.static --twin``).
* :func:`build_cubin`: one storage dtype's kernels (``twin_<dtype>.cu``, every instance the
  extension can launch) or the quick subset (:data:`QUICK_SOURCE`) compiled for sm_90 with nvcc.
* :func:`kernel_name`: the demangled name of the kernel the launch layer picks for a call.
* :func:`measure` (GPU): the twin against the Triton kernels, ``python -m bench.twin --measure``:
  per case (shape, dtype, mode, pass) the median time of each (``triton.testing.do_bench``, the
  suite's CUDA timer) and their ratio, after checking that both give the same hard/index sample.
* :func:`write_measured_block`: ``python -m bench.twin --update-dispatch <json>`` rewrites the
  measured table of ``fused_gumbel/_twin_dispatch.py`` from such a measurement: per shape class x
  dtype x mode x pass the twin only where twin/Triton <= 1 - :data:`DISPATCH_MARGIN` in every
  measured case of the class, else Triton. Only these records make the twin the default under
  backend "auto" (the static model's predictions never do).

Everything built is cached under the static model's cache folder by a hash of the sources and flags.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = os.path.join(REPO, "kernels", "csrc", "cuda")
DTYPE_SUFFIX = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "fp64": "f64"}
CPP_TYPE = {"fp32": "float", "bf16": "__nv_bfloat16", "fp16": "__half", "fp64": "double"}
NVCC_FLAGS = ["-cubin", "-arch=sm_90", "-O3", "-std=c++17"]
SHAPE_NAMES = {0: "small", 1: "resident", 2: "streamed"}
MODES = {"soft": 0, "hard": 1, "index": 2}

# A few instances of every kernel shape in two dtypes: compiles in well under a minute, so CI
# checks that the kernels build for sm_90 on every change (the full set takes minutes).
QUICK_SOURCE = """
#include "twin_launch.cuh"
namespace fused_gumbel {
namespace twin {
#define FG_QUICK(T)                                                                   \\
  template __global__ void small_fwd_kernel<T, 10, MODE_SOFT, true>(FwdParams<ComputeOf<T>::type>);     \\
  template __global__ void small_fwd_kernel<T, 10, MODE_HARD, false>(FwdParams<ComputeOf<T>::type>);     \\
  template __global__ void small_bwd_kernel<T, 10, true, true, false>(BwdParams<ComputeOf<T>::type>);          \\
  template __global__ void resident_fwd_kernel<T, 5, MODE_SOFT, true>(FwdParams<ComputeOf<T>::type>); \\
  template __global__ void resident_fwd_kernel<T, 2, MODE_INDEX, false>(FwdParams<ComputeOf<T>::type>); \\
  template __global__ void resident_bwd_kernel<T, 5, true, true, false>(BwdParams<ComputeOf<T>::type>);  \\
  template __global__ void streamed_fwd_kernel<T, MODE_SOFT, true>(FwdParams<ComputeOf<T>::type>);  \\
  template __global__ void streamed_bwd_kernel<T, true, true, false>(BwdParams<ComputeOf<T>::type>);
FG_QUICK(float)
FG_QUICK(__nv_bfloat16)
}  // namespace twin
}  // namespace fused_gumbel
"""


def cache_dir() -> str:
    from bench.static import cache_dir as static_cache

    path = os.path.join(static_cache(), "twin")
    os.makedirs(path, exist_ok=True)
    return path


def _sources_hash(*extra: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(SOURCE_DIR)):
        with open(os.path.join(SOURCE_DIR, name), "rb") as f:
            digest.update(name.encode() + f.read())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:20]


def nvcc_path() -> str | None:
    """nvcc from CUDA_HOME, /usr/local/cuda or PATH; None when there is none."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def build_cubin(which: str, log=None) -> str:
    """Path of the sm_90 cubin of ``which``: a dtype name (``fp32``, ``bf16``, ``fp16``,
    ``fp64``: that dtype's full translation unit) or ``quick`` (:data:`QUICK_SOURCE`)."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME)")
    source_text = QUICK_SOURCE if which == "quick" else ""
    out = os.path.join(cache_dir(), f"twin-{which}-{_sources_hash(source_text, *NVCC_FLAGS)}.cubin")
    if os.path.exists(out):
        return out
    if which == "quick":
        source = os.path.join(cache_dir(), f"quick-{os.getpid()}.cu")
        with open(source, "w") as f:
            f.write(source_text)
    else:
        source = os.path.join(SOURCE_DIR, f"twin_{DTYPE_SUFFIX[which]}.cu")
    t0 = time.time()
    tmp = out + f".{os.getpid()}.tmp"
    done = subprocess.run([nvcc, *NVCC_FLAGS, "-I", SOURCE_DIR, source, "-o", tmp], capture_output=True, text=True)
    if which == "quick":
        os.unlink(source)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed for the twin ({which}):\n{done.stderr[-6000:]}")
    os.replace(tmp, out)
    if log:
        log(f"built twin cubin {which} in {time.time() - t0:.1f}s")
    return out


def _tool(name: str) -> str:
    from bench.static import triton_bin

    try:
        return triton_bin(name)
    except (FileNotFoundError, ImportError):
        nvcc = nvcc_path()
        candidate = os.path.join(os.path.dirname(nvcc), name) if nvcc else None
        if candidate and os.path.exists(candidate):
            return candidate
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found (triton wheel, CUDA_HOME or PATH)")
        return found


def demangle(names: list[str]) -> list[str]:
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


@functools.lru_cache(maxsize=16)
def cubin_functions(cubin: str) -> dict[str, dict]:
    """{demangled kernel name: {"mangled", "regs", "stack", "local", "shared"}} of a cubin."""
    import re

    text = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                          check=True).stdout
    entries = re.findall(r"Function (\S+):\s*\n\s*(.*)", text)
    readable = demangle([name for name, _ in entries])
    out = {}
    for (mangled, usage), name in zip(entries, readable):
        fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
        out[name] = dict(mangled=mangled, regs=int(fields.get("REG", 0)), stack=int(fields.get("STACK", 0)),
                         local=int(fields.get("LOCAL", 0)), shared=int(fields.get("SHARED", 0)))
    return out


@functools.lru_cache(maxsize=4)
def sass_text(cubin: str) -> str:
    path = cubin[:-len(".cubin")] + ".sass"
    if not os.path.exists(path):
        text = subprocess.run([_tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
        with open(path + f".{os.getpid()}.tmp", "w") as f:
            f.write(text)
        os.replace(path + f".{os.getpid()}.tmp", path)
    with open(path) as f:
        return f.read()


# --- the host library ---------------------------------------------------------------------------
_library = None


def host_library():
    """ctypes handle of ``twin_host_api.cpp`` (built with g++ on first use, cached)."""
    global _library
    if _library is not None:
        return _library
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise FileNotFoundError("no C++ compiler (g++) to build the twin's host library")
    flags = ["-O2", "-shared", "-fPIC", "-std=c++17"]
    out = os.path.join(cache_dir(), f"twin-host-{_sources_hash(*flags)}.so")
    if not os.path.exists(out):
        tmp = out + f".{os.getpid()}.tmp"
        subprocess.run([compiler, *flags, os.path.join(SOURCE_DIR, "twin_host_api.cpp"), "-o", tmp], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, out)
    lib = ctypes.CDLL(out)
    u64, i64, ptr = ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p
    lib.fg_twin_philox_words.argtypes = [u64, u64, ptr, i64, ptr]
    for name in ("fg_twin_gumbel_exact_f32", "fg_twin_gumbel_exact_f64", "fg_twin_gumbel_fast"):
        getattr(lib, name).argtypes = [ptr, i64, ptr]
    lib.fg_twin_choose_config.argtypes = [i64, i64, ctypes.c_int, ptr]
    _library = lib
    return lib


def philox_words(key: int, offset: int, counters) -> np.ndarray:
    """uint32 [n, 4]: the twin's Philox words of ``counters`` under the Philox ``key`` (seed ^ DOMAIN_TAG)."""
    counters = np.ascontiguousarray(counters, dtype=np.uint64)
    out = np.empty((counters.size, 4), dtype=np.uint32)
    host_library().fg_twin_philox_words(key & (2**64 - 1), offset & (2**64 - 1), counters.ctypes.data,
                                        counters.size, out.ctypes.data)
    return out


def gumbel(words, twin: str) -> np.ndarray:
    """The twin's noise of uint32 ``words``: ``exact32``, ``exact64`` or ``fast`` (host: log2f)."""
    words = np.ascontiguousarray(words, dtype=np.uint32)
    dtype, fn = {"exact32": (np.float32, "fg_twin_gumbel_exact_f32"), "exact64": (np.float64, "fg_twin_gumbel_exact_f64"),
                 "fast": (np.float32, "fg_twin_gumbel_fast")}[twin]
    out = np.empty(words.size, dtype=dtype)
    getattr(host_library(), fn)(words.ctypes.data, words.size, out.ctypes.data)
    return out


def config(rows: int, classes: int, compute_bytes: int = 4) -> dict:
    """The launch layer's kernel shape for a [rows, classes] call (twin_config.h)."""
    out = np.zeros(8, dtype=np.int64)
    host_library().fg_twin_choose_config(rows, classes, compute_bytes, out.ctypes.data)
    keys = ("shape", "threads_per_row", "calls_per_thread", "block", "grid", "chunks", "shared_bytes", "width")
    cfg = dict(zip(keys, (int(v) for v in out)))
    cfg["shape_name"] = SHAPE_NAMES[cfg["shape"]]
    return cfg


def kernel_name(dtype: str, mode: str, pass_: str, classes: int, cfg: dict, vec: bool, unit: bool = True,
                tau_grad: bool = False) -> str:
    """Demangled name (up to the argument list) of the kernel the launch layer launches
    (``vec``: vector access; ``unit``: every class stride is 1; ``tau_grad``: the backward
    writes the temperature gradient)."""
    t = CPP_TYPE[dtype]
    flag = "true" if vec else "false"
    unit = "true" if unit else "false"
    shape = cfg["shape_name"]
    if pass_ == "fwd":
        m = MODES[mode]
        args = {"small": f"{t}, {classes}, {m}, {unit}", "resident": f"{t}, {cfg['width']}, {m}, {flag}",
                "streamed": f"{t}, {m}, {flag}"}[shape]
        return f"void fused_gumbel::twin::{shape}_fwd_kernel<{args}>"
    regen = "true" if mode == "hard" else "false"
    tau = "true" if tau_grad else "false"
    args = {"small": f"{t}, {classes}, {regen}, {unit}, {tau}",
            "resident": f"{t}, {cfg['width']}, {regen}, {flag}, {tau}",
            "streamed": f"{t}, {regen}, {flag}, {tau}"}[shape]
    return f"void fused_gumbel::twin::{shape}_bwd_kernel<{args}>"


def find_function(functions: dict, prefix: str) -> tuple[str, dict]:
    for name, info in functions.items():
        if name.startswith(prefix + "("):
            return name, info
    raise KeyError(f"no kernel {prefix} in the cubin")


# --- the torch op on a GPU -----------------------------------------------------------------------
SCHEMA_SOURCE = os.path.join(REPO, "tests", "gpu", "twin_schema.cpp")
TORCH_SOURCES = ["gumbel_softmax_cuda.cu", "twin_f32.cu", "twin_f64.cu", "twin_f16.cu", "twin_bf16.cu"]
# What the extension build needs for the twin (setup.py's hook): these sources, this include
# dir, these nvcc flags. No --use_fast_math: the noise series keeps a float32 subnormal constant.
EXTENSION_NVCC_FLAGS = ["-O3", "-gencode=arch=compute_90,code=sm_90", "-std=c++20"]


def _has_cuda_kernel(op: str) -> bool:
    import torch

    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    except RuntimeError:  # the op is not defined
        return False


def cuda_op(verbose: bool = False, build: bool | None = None):
    """``torch.ops.fused_gumbel`` with the twin's CUDA kernels registered: the installed
    extension's (``fused_gumbel._C``) when it has them, else built here with
    ``torch.utils.cpp_extension.load`` (minutes; the schema from ``tests/gpu/twin_schema.cpp``
    when no extension defined it). ``build=False`` (default: unless FUSED_GUMBEL_TWIN_NO_BUILD=1)
    raises RuntimeError instead of building."""
    import torch

    if build is None:
        build = os.environ.get("FUSED_GUMBEL_TWIN_NO_BUILD") != "1"

    try:
        import fused_gumbel._C  # noqa: F401  (the extension, where setup.py built one)
    except ImportError:
        pass
    if not _has_cuda_kernel("fused_gumbel::kernel_forward"):
        if not build:
            raise RuntimeError("no CUDA kernel for fused_gumbel::kernel_forward and building is off")
        from torch.utils.cpp_extension import load

        sources = [os.path.join(SOURCE_DIR, name) for name in TORCH_SOURCES]
        try:
            torch._C._dispatch_find_schema_or_throw("fused_gumbel::kernel_forward", "")
        except RuntimeError:
            sources.append(SCHEMA_SOURCE)
        load(name="fused_gumbel_twin", sources=sources, extra_include_paths=[SOURCE_DIR],
             extra_cuda_cflags=EXTENSION_NVCC_FLAGS, extra_cflags=["-O2", "-std=c++20"], with_cuda=True,
             verbose=verbose, is_python_module=False)
    return torch.ops.fused_gumbel


def signed64(value: int) -> int:
    """A uint64 as the int64 with the same bits (the op schema's ``int``)."""
    value &= 2**64 - 1
    return value - 2**64 if value >= 2**63 else value


# --- twin vs Triton on a GPU: the measured dispatch table ---------------------------------------
MEASURE_SCHEMA = "fused-gumbel-twin-measured/1"
# The twin becomes the default for a class only where its median is at least 5% below Triton's in
# every measured case: run-to-run noise of do_bench medians is a few percent, and a tie keeps the
# implementation every other path (compile, CUDA graphs, estimators) already runs.
DISPATCH_MARGIN = 0.05
# Two or more shapes per shape class of fused_gumbel._twin_dispatch (small, resident, streamed,
# streamed-few-rows), the static model's four among them.
MEASURE_SHAPES = {"65536x10": (65536, 10), "3000x10": (3000, 10), "4096x1024": (4096, 1024),
                  "256x4096": (256, 4096), "8192x32000": (8192, 32000), "1024x50257": (1024, 50257),
                  "64x128256": (64, 128256), "8x32000": (8, 32000)}
MEASURE_DTYPES = ("bf16", "fp32")  # fp16 follows bf16 in the table
MEASURE_VARIANTS = (("soft", "fwd"), ("hard", "fwd"), ("index", "fwd"), ("soft", "bwd"), ("hard", "bwd"))
MEASURED_BEGIN, MEASURED_END = "# <measured-twin:begin>", "# <measured-twin:end>"


def _case_calls(mode: str, pass_: str, logits, grad, seed: int = 1234) -> dict:
    """{"twin": call, "triton": call} for one case, each what ``GumbelSoftmaxFunction`` launches:
    the forward alone, or the backward of a forward that ran on the same implementation (with the
    statistics that forward kept, as in training)."""
    from fused_gumbel import function
    from fused_gumbel._layout import as_rows
    from fused_gumbel.kernels import gumbel_softmax as kernels

    mode_value = {"soft": kernels.MODE_SOFT, "hard": kernels.MODE_HARD, "index": kernels.MODE_INDEX}[mode]
    hard = mode == "hard"
    calls = {}
    for name, native in (("twin", True), ("triton", False)):
        if pass_ == "fwd":
            def call(native=native):
                return function.sample_forward(logits, 1.0, mode_value, 1, seed, 0, native=native)[0]
        else:
            out, _, _, stats = function.sample_forward(logits, 1.0, mode_value, 1, seed, 0, save_stats=hard,
                                                       native=native)
            src, strides = as_rows(logits if hard else out, 1)

            def call(native=native, src=src, strides=strides, stats=stats):
                return function.sample_backward(grad, src, strides, 1.0, 1, seed, 0, hard, False, stats,
                                                native=native)[0]
        calls[name] = call
    return calls


def _disagreement(mode: str, pass_: str, calls: dict) -> str | None:
    """Why the twin's and Triton's outputs of one case differ beyond what the spec allows, or None:
    hard and index samples identical; soft values and gradients within the fast noise's bound."""
    import torch

    a, b = calls["twin"](), calls["triton"]()
    if pass_ == "fwd" and mode != "soft":
        same = torch.equal(a, b) if mode == "index" else torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
        return None if same else f"{mode} samples differ in {int((a != b).sum())} elements"
    tolerance = 2e-2 if a.dtype == torch.bfloat16 else 1e-4  # relative to the largest value
    scale = max(1.0, b.float().abs().nan_to_num(0.0).max().item())
    error = (a.float() - b.float()).abs().nan_to_num(0.0).max().item() / scale
    return None if error <= tolerance else f"max |twin - triton| / scale = {error:.3g} > {tolerance}"


def measure(shapes=None, dtypes=None, budget_s: float | None = None, warmup_ms: int = 10, rep_ms: int = 40,
            log=print, device: str = "cuda", shape_sizes: dict | None = None) -> dict:
    """Time the twin against Triton on the current CUDA device (report: ``MEASURE_SCHEMA``).
    ``device="cpu"`` (tests) times the CPU kernel against Triton's interpreter the same way;
    ``shape_sizes`` replaces :data:`MEASURE_SHAPES`."""
    import datetime

    import torch

    from bench.static import git_commit
    from bench.timing import CudaTimer, WallClockTimer, error_record

    device = torch.device(device)
    if device.type == "cuda":
        cuda_op()  # the twin's kernels registered (the installed extension's, or built here)
        timer = CudaTimer(warmup_ms=warmup_ms, rep_ms=rep_ms)
    else:
        timer = WallClockTimer(device, min_rounds=2, max_rounds=3, budget_s=rep_ms / 1e3)
    shape_sizes = shape_sizes or MEASURE_SHAPES
    dtype_of = {"bf16": torch.bfloat16, "fp32": torch.float32}
    started = time.perf_counter()
    results = {}
    for mode, pass_ in MEASURE_VARIANTS:
        for shape in shapes or shape_sizes:
            rows, classes = shape_sizes[shape]
            for dtype in dtypes or MEASURE_DTYPES:
                case = f"gumbel_softmax/{mode}/{pass_}/{shape}/{dtype}"
                entry = {"mode": mode, "pass": pass_, "shape": shape, "dtype": dtype, "rows": rows,
                         "classes": classes}
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    results[case] = {**entry, "skipped": "time budget spent"}
                    continue
                try:
                    generator = torch.Generator().manual_seed(0)
                    logits = torch.randn(rows, classes, generator=generator).to(device, dtype_of[dtype])
                    grad = torch.randn(rows, classes, generator=generator).to(device, dtype_of[dtype])
                    calls = _case_calls(mode, pass_, logits, grad)
                    why = _disagreement(mode, pass_, calls)
                    if why is not None:
                        results[case] = {**entry, "error": f"outputs disagree: {why}"}
                        continue
                    timed = timer.measure(calls)
                    del logits, grad, calls
                except Exception as error:  # noqa: BLE001 - one case failing must not hide the others
                    results[case] = {**entry, **error_record(error)}
                    continue
                twin_ms, triton_ms = timed["twin"].get("median_ms"), timed["triton"].get("median_ms")
                entry.update(twin=timed["twin"], triton=timed["triton"])
                if twin_ms is not None and triton_ms:
                    entry["ratio"] = twin_ms / triton_ms
                    log(f"{case}: twin {twin_ms * 1e3:.1f} us, Triton {triton_ms * 1e3:.1f} us, "
                        f"ratio {entry['ratio']:.3f}")
                else:
                    entry["error"] = "a provider failed: " + "; ".join(
                        str(timed[n].get("error")) for n in timed if "median_ms" not in timed[n])
                results[case] = entry
    cuda = device.type == "cuda"
    return {"schema": MEASURE_SCHEMA, "label": "GPU measurement: twin vs Triton, median per case",
            "date": datetime.date.today().isoformat(), "git_commit": git_commit(),
            "device_name": torch.cuda.get_device_name(device) if cuda else f"cpu (test: {device})",
            "torch": torch.__version__,
            "timer": timer.name, "results": results}


def measured_table(report: dict, margin: float = DISPATCH_MARGIN) -> dict:
    """{table key: {"choice", "worst_ratio", "cases"}} from a measurement: per key of
    ``fused_gumbel._twin_dispatch`` the twin only where twin/Triton <= 1 - ``margin`` in every
    measured case; a case that failed or disagreed keeps its key on Triton."""
    from fused_gumbel import _twin_dispatch

    if report.get("schema") != MEASURE_SCHEMA:
        raise ValueError(f"not a twin measurement ({MEASURE_SCHEMA}): schema {report.get('schema')!r}")
    ratios: dict[str, list] = {}
    for r in report["results"].values():
        if "skipped" in r:
            continue
        key = _twin_dispatch.key(r["rows"], r["classes"], r["dtype"], r["mode"], r["pass"])
        ratios.setdefault(key, []).append(r.get("ratio") if "error" not in r else None)
    table = {}
    for key, values in sorted(ratios.items()):
        failed = any(v is None for v in values)
        worst = None if failed else max(values)
        choice = "twin" if not failed and worst <= 1.0 - margin else "triton"
        table[key] = {"choice": choice, "worst_ratio": None if worst is None else round(worst, 4),
                      "cases": len(values)}
    return table


def write_measured_block(report: dict, json_path: str, margin: float = DISPATCH_MARGIN,
                         path: str | None = None) -> dict:
    """Rewrite the measured block of ``fused_gumbel/_twin_dispatch.py`` (``MEASURED``,
    ``MEASURED_FROM``, ``MEASURED_MARGIN``) from ``report``; the static block is left as it is.
    Returns the table written."""
    from bench.static import replace_block
    from bench.static_twin import DISPATCH_MODULE

    path = path or DISPATCH_MODULE
    table = measured_table(report, margin)
    origin = os.path.relpath(os.path.abspath(json_path), REPO)
    source = f"{origin} ({report['device_name']}, {report['date']}, commit {report['git_commit']})"
    body = "\n".join([
        f"# Generated by python -m bench.twin --update-dispatch from {origin}: the twin where its median",
        f"# time is at most {1 - margin:g} x Triton's in every measured case of the class (worst_ratio: the",
        "# largest twin/Triton ratio of medians among the class's cases; None: a case failed or disagreed).",
        f"MEASURED_FROM = {source!r}",
        f"MEASURED_MARGIN = {margin!r}",
        "MEASURED = {",
        *[f"    {k!r}: {v!r}," for k, v in table.items()],
        "}",
    ])
    with open(path) as f:
        if MEASURED_BEGIN not in f.read():
            raise ValueError(f"{path} has no {MEASURED_BEGIN} block")
    replace_block(path, MEASURED_BEGIN, MEASURED_END, body)
    return table


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.twin",
                                     description="The CUDA C++ twin against the Triton kernels on a GPU, and the "
                                                 "measured dispatch table of fused_gumbel/_twin_dispatch.py.")
    parser.add_argument("--measure", action="store_true", help="time twin and Triton on this GPU (writes "
                        "twin-measured-<date>.json into --out)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    parser.add_argument("--shapes", nargs="+", choices=list(MEASURE_SHAPES))
    parser.add_argument("--dtypes", nargs="+", choices=list(MEASURE_DTYPES))
    parser.add_argument("--budget", type=float, help="seconds: start no new case after this")
    parser.add_argument("--update-dispatch", nargs="?", const="", metavar="JSON",
                        help="rewrite the measured table of fused_gumbel/_twin_dispatch.py from JSON (with "
                             "--measure and no JSON: from the measurement just made)")
    parser.add_argument("--margin", type=float, default=DISPATCH_MARGIN)
    args = parser.parse_args(argv)
    if not args.measure and not args.update_dispatch:
        parser.error("give --measure and/or --update-dispatch JSON")
    json_path = args.update_dispatch or None
    if args.measure:
        report = measure(args.shapes, args.dtypes, args.budget, log=lambda m: print(m, file=sys.stderr))
        os.makedirs(args.out, exist_ok=True)
        written = os.path.join(args.out, f"twin-measured-{report['date']}.json")
        with open(written, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {written}", file=sys.stderr)
        json_path = json_path or written
    if args.update_dispatch is not None:
        with open(json_path) as f:
            report = json.load(f)
        table = write_measured_block(report, json_path, args.margin)
        twin_keys = [k for k, v in table.items() if v["choice"] == "twin"]
        print(f"measured table from {json_path}: {len(table)} keys, twin for {len(twin_keys)}: "
              f"{', '.join(twin_keys) or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
