"""The CUDA twin (``kernels/csrc/cuda``) compiles for sm_90 without a GPU.

* Every run: a few instances of each kernel shape in float32 and bfloat16 (``bench.twin.QUICK_SOURCE``,
  about 5 s): they build, spill nothing, and are the instances the launch layer names.
* With ``FUSED_GUMBEL_TWIN_FULL_BUILD=1`` (minutes on a small machine; the static model and the
  extension build do the same work): every instance of each storage dtype (``twin_<dtype>.cu``),
  and the torch-facing translation unit ``gumbel_softmax_cuda.cu`` against torch's headers (``-c``).
Skipped with a reason when nvcc is missing.
"""
import os
import subprocess
import sysconfig

import pytest

twin = pytest.importorskip("bench.twin")

pytestmark = pytest.mark.skipif(twin.nvcc_path() is None, reason="needs nvcc (CUDA_HOME or /usr/local/cuda)")

FULL = os.environ.get("FUSED_GUMBEL_TWIN_FULL_BUILD") == "1"
full_build = pytest.mark.skipif(not FULL, reason="set FUSED_GUMBEL_TWIN_FULL_BUILD=1 (builds take minutes)")

QUICK_KERNELS = [
    ("soft", "fwd", 10), ("hard", "fwd", 10), ("hard", "bwd", 10), ("soft", "fwd", 1024), ("index", "fwd", 100),
    ("hard", "bwd", 1024), ("soft", "fwd", 128256), ("hard", "bwd", 128256),
]


def _no_spills(functions):
    spilled = {name: info for name, info in functions.items() if info["local"] or info["stack"]}
    assert not spilled, f"kernels that spill: {spilled}"


def test_quick_instances_build_for_sm90():
    functions = twin.cubin_functions(twin.build_cubin("quick"))
    assert len(functions) == 2 * len(QUICK_KERNELS)
    _no_spills(functions)
    for dtype in ("fp32", "bf16"):
        for mode, pass_, classes in QUICK_KERNELS:
            rows = 4096
            cfg = twin.config(rows, classes)
            vec = classes % 4 == 0 and not (mode == "index" and classes == 100)
            unit = not (mode == "hard" and pass_ == "fwd")
            name, info = twin.find_function(functions, twin.kernel_name(dtype, mode, pass_, classes, cfg, vec, unit))
            assert info["regs"] * cfg["block"] <= 65536, name


def test_quick_cubin_has_sass_the_static_model_reads():
    from bench import sass

    path = twin.build_cubin("quick")
    functions = twin.cubin_functions(path)
    name, info = twin.find_function(functions, twin.kernel_name("bf16", "soft", "fwd", 10, twin.config(65536, 10),
                                                                  False))
    cfg = sass.CFG(*sass.parse(twin.sass_text(path), info["mangled"]))
    counts = cfg.counts([1.0] * len(cfg.loops))
    assert counts["by_opcode"].get("MUFU", 0) >= 3 * 10  # two lg2 per noise value and one ex2 per class
    assert not cfg.loops  # K = 10 is fully unrolled


@full_build
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp64"])
def test_every_instance_builds_without_spills(dtype):
    functions = twin.cubin_functions(twin.build_cubin(dtype))
    # forward: 3 modes x (16 K x 2 UNIT + 9 widths x 2 VEC + 2 VEC);
    # backward: 2 (soft, hard) x 2 TAU x (16 K x 2 UNIT + 9 widths x 2 VEC + 2 VEC)
    assert len(functions) == (3 + 4) * (16 * 2 + 9 * 2 + 2)
    if dtype != "fp64":
        _no_spills(functions)


@full_build
@pytest.mark.slow
def test_torch_op_translation_unit_compiles(tmp_path):
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{path}" for path in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    source = os.path.join(twin.SOURCE_DIR, "gumbel_softmax_cuda.cu")
    done = subprocess.run([twin.nvcc_path(), "-c", "-O3", "-std=c++20", "-arch=sm_90", "-I", twin.SOURCE_DIR, *includes,
                           "-DTORCH_EXTENSION_NAME=_C", source, "-o", str(tmp_path / "op.o")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-6000:]
