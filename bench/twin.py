"""Build helpers for the CUDA C++ twin (``kernels/csrc/cuda``) without a GPU or torch headers.

* :func:`host_library`: ``twin_host_api.cpp`` built with g++ into a ctypes library: the twin's
  Philox words, its exact and fast noise twins (host twins of the device functions, same source)
  and its kernel-shape choice (``choose_config``). Used by ``tests/test_cuda_twin_rng.py`` and
  by the static model (``python -m bench.static --twin``).
* :func:`build_cubin`: one storage dtype's kernels (``twin_<dtype>.cu``, every instance the
  extension can launch) or the quick subset (:data:`QUICK_SOURCE`) compiled for sm_90 with nvcc.
* :func:`kernel_name`: the demangled name of the kernel the launch layer picks for a call.

Everything is cached under the static model's cache folder by a hash of the sources and flags.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
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
