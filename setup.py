"""Build script. Metadata and configuration live in pyproject.toml.

The package list is computed here because `kernels/` (device code) is installed as the
subpackage `fused_gumbel.kernels` through a package-dir mapping; no top-level `kernels`
package is ever installed.

The native extension `fused_gumbel._C` (C++ sources in `kernels/csrc/`) is built with
`torch.utils.cpp_extension`, so torch must be importable here: the README installs torch first
and then this package with `pip install --no-build-isolation`. The extension is optional:
without torch at build time, without a compiler, with `FUSED_GUMBEL_BUILD_EXT=0`, or when the
build fails, a warning says why and the package installs on its pure-Python path
(`fused_gumbel._native` reports the reason at run time).

- CPU: `ops.cpp` (op schemas + module), `eager.cpp` (the eager CPU fast path: module functions),
  `relaxed_ops.cpp` and `topk_ops.cpp` (the relaxed-Bernoulli and Gumbel top-k op schemas);
  per kernel (`cpu/gumbel_softmax_cpu*`, `cpu/relaxed_bernoulli_cpu*`, `cpu/gumbel_topk_cpu*`) the host side (`<kernel>.cpp`)
  and the kernel built three times: baseline (`*_default.cpp`), AVX2+FMA (`*_avx2.cpp`) and AVX-512
  (`*_avx512.cpp`), each x86 build with its own flags; the CPU's features choose one at run time.
- CUDA: `cuda/*.cu` (the CUDA C++ twin of the Triton kernels) join the same extension (a
  CUDAExtension) when nvcc is found (CUDA_HOME; /usr/local/cuda when torch's guess has no CUDA
  runtime) and either a GPU is visible or `FUSED_GUMBEL_BUILD_CUDA=1` (`0` never builds them):
  the twin takes minutes to compile, so a machine without a GPU (CI) builds the CPU extension
  only and compiles the twin's kernels in a test (`tests/test_cuda_twin_compile.py`). Built for
  sm_90 unless `TORCH_CUDA_ARCH_LIST` says otherwise. If that build fails, the CPU extension is
  built alone (with a warning).
- `fused_gumbel/_C.build.json` records the torch version the extension was built against (the
  loader refuses an extension built for another torch: a C++ ABI mismatch), or the build's error
  (the loader then warns once, at the first CPU call, and runs the pure-Python path).
"""
import glob
import json
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("kernels", "csrc")
BUILD_INFO = os.path.join("fused_gumbel", "_C.build.json")
CUDA_LIBRARIES = ("cudart", "c10_cuda", "torch_cuda")  # what CUDAExtension links beyond CppExtension
ISA_FLAGS = {  # the per-ISA kernel builds (cpu/<kernel>_<isa>.cpp), each compiled with its own flags
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
}
CPU_KERNELS = ("gumbel_softmax_cpu", "relaxed_bernoulli_cpu", "gumbel_topk_cpu")
ISA_SOURCES = {os.path.join(CSRC, "cpu", f"{kernel}_{isa}.cpp"): flags
               for kernel in CPU_KERNELS for isa, flags in ISA_FLAGS.items()}

host_packages = find_packages(include=["fused_gumbel", "fused_gumbel.*"])
device_packages = ["fused_gumbel.kernels"] + [
    "fused_gumbel.kernels." + name for name in find_packages(where="kernels")
]


def _warn(message: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (fused-gumbel): {message}\n"
          f"Installing the pure-Python package: fused_gumbel._C is not built.\n{bar}\n", file=sys.stderr)


def _write_build_info(**info) -> None:
    """What the loader checks: the torch version built against, or the build's error."""
    with open(os.path.join(HERE, BUILD_INFO), "w") as f:
        json.dump(info, f)


def _cuda_home(cpp_extension):
    """torch's CUDA_HOME, unless it has no CUDA runtime to link (torch guesses it from the nvcc on
    PATH, which may be a wrapper script such as /usr/local/bin/nvcc) and /usr/local/cuda has one."""
    def has_runtime(home):
        return bool(home) and bool(glob.glob(os.path.join(home, "lib64", "libcudart.so*")))

    home = cpp_extension.CUDA_HOME
    if not os.environ.get("CUDA_HOME") and not has_runtime(home) and has_runtime("/usr/local/cuda"):
        home = cpp_extension.CUDA_HOME = "/usr/local/cuda"  # the module global its CUDAExtension reads
    return home


def _native_build():
    """(ext_modules, cmdclass) for fused_gumbel._C, or ([], {}) after a warning."""
    if os.environ.get("FUSED_GUMBEL_BUILD_EXT", "1") == "0":
        _warn("FUSED_GUMBEL_BUILD_EXT=0.")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as error:  # pip's build isolation without torch in build requires lands here
        _warn(f"torch is not importable at build time ({error}); install torch first and run "
              "`pip install --no-build-isolation -e .` (see README).")
        return [], {}

    sources = [os.path.join(CSRC, name) for name in ("ops.cpp", "eager.cpp", "relaxed_ops.cpp", "topk_ops.cpp")]
    sources += [os.path.join(CSRC, "cpu", f"{kernel}{suffix}.cpp") for kernel in CPU_KERNELS for suffix in ("", "_default")]
    isa_sources = {src: flags for src, flags in ISA_SOURCES.items() if platform.machine() in ("x86_64", "AMD64")}
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    cuda_home = _cuda_home(cpp_extension)
    nvcc = cuda_home and shutil.which(os.path.join(cuda_home, "bin", "nvcc"))
    # The CUDA twin compiles for minutes (hundreds of kernel instances per dtype): by default only
    # where a GPU can run it; FUSED_GUMBEL_BUILD_CUDA=1 forces it, =0 skips it.
    wanted = os.environ.get("FUSED_GUMBEL_BUILD_CUDA") or ("1" if torch.cuda.is_available() else "0")
    build_cuda = bool(cuda_sources) and bool(nvcc) and wanted != "0"
    if cuda_sources and not build_cuda:
        print(f"fused-gumbel: CUDA sources not built (nvcc found: {bool(nvcc)}, GPU visible: "
              f"{torch.cuda.is_available()}, FUSED_GUMBEL_BUILD_CUDA={os.environ.get('FUSED_GUMBEL_BUILD_CUDA')})",
              file=sys.stderr)
    cxx = ["-O3", "-fopenmp"]
    kwargs = dict(include_dirs=[os.path.join(HERE, CSRC)], extra_link_args=["-fopenmp"])
    extension = cpp_extension.CppExtension("fused_gumbel._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        extension = cpp_extension.CUDAExtension(
            "fused_gumbel._C", sources + cuda_sources,
            # No --use_fast_math / -ftz: one of the noise series' constants is a float32 subnormal.
            # torch >= 2.14's headers need C++20.
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
            include_dirs=kwargs["include_dirs"] + [os.path.join(HERE, CSRC, "cuda")],
            extra_link_args=kwargs["extra_link_args"])

    class BuildNative(cpp_extension.BuildExtension):
        """BuildExtension that compiles the per-ISA kernel files with their own flags and turns any
        build failure into a warning (the package still installs, without _C)."""

        def run(self):
            cuda, inplace = build_cuda, self.inplace
            try:
                try:
                    super().run()
                except Exception as error:  # noqa: BLE001
                    if not cuda:
                        raise
                    # The CPU kernel does not depend on the CUDA twin: retry without it.
                    print(f"\nWARNING (fused-gumbel): the CUDA sources failed to build ({type(error).__name__}: "
                          f"{str(error)[-500:]}); building the CPU extension alone\n", file=sys.stderr)
                    cuda = False
                    for ext in self.extensions:  # the finalised extension, less its CUDA sources and libraries
                        ext.sources = [src for src in ext.sources if not src.endswith(".cu")]
                        ext.libraries = [lib for lib in ext.libraries if lib not in CUDA_LIBRARIES]
                    # run() makes a fresh compiler from the name (None: the default); setuptools' run()
                    # clears inplace while it builds and restores it only on success.
                    self.compiler, self.inplace = None, inplace
                    super().run()
            except Exception as error:  # noqa: BLE001 - no compiler, compile or link errors, ...
                message = f"building the C++ extension failed: {type(error).__name__}: {error}"
                _warn(message)
                _write_build_info(error=message[:2000])
            else:
                _write_build_info(torch=torch.__version__, cuda=cuda)

        def build_extension(self, ext):
            if ext.name == "fused_gumbel._C" and isa_sources:
                post = list(ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict)
                            else ext.extra_compile_args)
                # One compile call per flag set (not per file): with ninja each call builds its
                # files in parallel (the AVX2 builds of both kernels together, then the AVX-512 ones).
                by_flags = {}
                for source, flags in isa_sources.items():
                    by_flags.setdefault(tuple(flags), []).append(source)
                objects = []
                for flags, group in by_flags.items():
                    objects += self.compiler.compile(group, output_dir=self.build_temp, macros=ext.define_macros,
                                                     include_dirs=ext.include_dirs, debug=self.debug,
                                                     extra_postargs=post + list(flags))
                # After the baseline objects on the link line: the linker keeps the first copy of
                # each inline (COMDAT) function, so shared helpers are the baseline-ISA ones.
                ext.extra_objects = [obj for obj in ext.extra_objects or [] if obj not in objects] + objects
            super().build_extension(ext)

    return [extension], {"build_ext": BuildNative}


ext_modules, cmdclass = _native_build()

setup(
    packages=host_packages + device_packages,
    package_dir={"fused_gumbel.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
