"""The kernels compile for sm_90 under the Triton versions pyproject.toml admits, not only under
the installed one: the oldest (pyproject's ``triton>=`` floor) and 3.6.0, the GPU image's
(torch 2.11). No GPU needed.

Each version is pip-installed (``--no-deps --target``) once into a cache folder,
``$FUSED_GUMBEL_TRITON_CACHE/<version>`` (default ``~/.cache/fused-gumbel-triton``, about 0.65 GB a
version), and put first on PYTHONPATH of one subprocess, without TRITON_INTERPRET, that runs every
sm_90 compile script of the suite (the same variants and launch options as the tests that compile
with the installed Triton) with an empty Triton cache, so every variant is really compiled. About
50-70 s a version on two cores. ``bench/triton_versions.sh`` does the same for any list of versions.
If pip cannot reach the registry the test is skipped with pip's error; any other failure fails it.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import test_compile
import test_estimators
import test_gumbel_topk
import test_kernel_compile
import test_relaxed_bernoulli

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
GPU_IMAGE_TRITON = "3.6.0"  # the GPU machines: torch 2.11 + triton 3.6 (Python 3.12)
CACHE = os.environ.get("FUSED_GUMBEL_TRITON_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fused-gumbel-triton")
# The compile scripts of tests/test_kernel_compile.py, test_compile.py, test_estimators.py,
# test_gumbel_topk.py and test_relaxed_bernoulli.py (each a str.format template over {tests}, see
# helpers.compile_for_sm90): every Triton kernel module of the package.
SCRIPTS = {
    "test_kernel_compile": test_kernel_compile.SCRIPT,
    "test_compile": test_compile.SM90_CHECK,
    "test_estimators": test_estimators.SM90_SCRIPT,
    "test_gumbel_topk": test_gumbel_topk._COMPILE_SCRIPT,
    "test_relaxed_bernoulli": test_relaxed_bernoulli._COMPILE_SCRIPT,
}
# pip output that means the registry was not reachable (not that the version is missing).
UNREACHABLE = re.compile(r"from versions: none|Could not fetch URL|NewConnectionError|Max retries exceeded|"
                         r"Temporary failure in name resolution|Network is unreachable|Connection refused|"
                         r"ConnectTimeout|ReadTimeout|ProxyError|No module named pip")


def oldest_admitted() -> str:
    """pyproject.toml's triton floor as a full version (``triton>=3.2`` -> ``3.2.0``)."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        match = re.search(r'"triton>=([0-9][0-9.]*)[;"]', f.read())
    assert match, "pyproject.toml no longer pins triton as 'triton>=X': update this test"
    parts = match.group(1).split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


VERSIONS = list(dict.fromkeys([oldest_admitted(), GPU_IMAGE_TRITON]))


def install(version: str) -> str:
    """The folder holding ``triton==version`` (installed on first use); skips if pip is offline."""
    site = os.path.join(CACHE, version, "site")
    if os.path.isdir(os.path.join(site, f"triton-{version}.dist-info")):
        return site
    partial = f"{site}.partial-{os.getpid()}"  # renamed into place only once complete
    shutil.rmtree(partial, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
                           "--disable-pip-version-check", "--no-compile", "--target", partial, f"triton=={version}"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        output = done.stdout + done.stderr
        error = "\n".join(line for line in output.splitlines() if line.startswith(("ERROR", "WARNING"))) \
            or output[-2000:]
        if UNREACHABLE.search(output):
            pytest.skip(f"pip cannot install triton=={version} (registry unreachable?): {error}")
        pytest.fail(f"pip install triton=={version} failed:\n{output[-4000:]}")
    shutil.rmtree(site, ignore_errors=True)
    os.replace(partial, site)
    return site


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_kernels_compile_for_sm90_under_admitted_triton(version, tmp_path):
    site = install(version)
    lines = ["import triton", "print('triton', triton.__version__, triton.__file__, flush=True)"]
    for name, script in SCRIPTS.items():
        lines += [f"print('== {name}', flush=True)",
                  f"exec(compile({script.format(tests=TESTS)!r}, {name!r}, 'exec'), {{'__name__': '__main__'}})"]
    program = tmp_path / "compile_all.py"
    program.write_text("\n".join(lines) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([site] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # empty: a cache hit would prove nothing new
    env["FUSED_GUMBEL_SM90_GPU_VARIANTS"] = "1"
    done = subprocess.run([sys.executable, str(program)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    # stderr names each variant before compiling it, so its tail shows which one failed and why.
    assert done.returncode == 0, f"triton {version}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    first, *rest = done.stdout.splitlines()
    assert first.startswith(f"triton {version} {site}"), first  # the wheel under test, not the installed one
    sections = "\n".join(rest).split("== ")[1:]
    assert [section.split("\n", 1)[0] for section in sections] == list(SCRIPTS)
    for section in sections:
        assert ": ok" in section, section  # every script compiled something


def test_gpu_launches_compute_float32_with_fast_math(monkeypatch):
    """What lets the version test skip the float32 FAST=0/1 twins (tests/sm90_compile.py): outside
    the interpreter every float32/bfloat16/float16 launch takes FAST=2, float64 FAST=0."""
    from fused_gumbel.kernels import gumbel_softmax as kernels

    monkeypatch.setattr(kernels, "_interpreted", lambda: False)
    assert [kernels._fast(dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)] == [2, 2, 2]
    assert kernels._fast(torch.float64) == 0
