"""The benchmark suite cannot rot: run ``python -m bench --device cpu --quick`` and check the
JSON it writes; unit-check the minimal-bytes model and the goal evaluation.

The quick run takes ~30 s on two cores. No timing is asserted, only that every measurement
is present and sane.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the bench package lives at the repository root

from bench import cases as case_lib  # noqa: E402
from bench import report  # noqa: E402

TIMED = ("median_ms", "p20_ms", "p80_ms")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSED_GUMBEL_BACKEND")}
    done = subprocess.run([sys.executable, "-m", "bench", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (json_path,) = out.glob("cpu-*-quick.json")
    return json.loads(json_path.read_text()), out, done.stdout


def test_quick_run_writes_json_markdown_and_plot(quick_run):
    data, out, stdout = quick_run
    assert data["schema"] == "fused-gumbel-bench/1" and data["device"] == "cpu" and data["quick"] is True
    env = data["environment"]
    for key in ("device_name", "torch", "triton", "git_commit", "source_sha256", "timer", "fused_backend"):
        assert key in env
    # The suite never times the interpreter: on CPU "fused" is the C++ kernel where it is built,
    # else the PyTorch reference path.
    native = env["native"]
    assert env["fused_backend"] == ("native" if native["available"] else "reference")
    assert env["kernels_interpreted"] is False
    if native["available"]:
        assert native["cpu_isa"] in ("avx512", "avx2", "default")
        assert set(data["host_us"]) == {"soft", "hard", "index", "eager_F"}
        assert all(data["host_us"][k]["fwd+bwd_beyond_floor"] is not None for k in ("soft", "hard", "eager_F"))
        assert {g["id"] for g in data["goals"]} >= {"cpu_host_fwd", "cpu_host_fwd_bwd"}
    stem = next(out.glob("*.json")).stem
    assert (out / f"{stem}.md").read_text().startswith("## Benchmarks")
    assert (out / f"{stem}.png").stat().st_size > 0
    assert "| shape | dtype | mode | pass |" in stdout


def test_quick_run_measures_every_case(quick_run):
    data = quick_run[0]
    expected = {c.key for c in case_lib.cases(case_lib.QUICK_SHAPES, (case_lib.DTYPES_BY_NAME["fp32"],))}
    assert {r["key"] for r in data["results"]} == expected and not data["skipped_cases"]
    for record in data["results"]:
        providers = record["providers"]
        for name in ("fused", "eager", "reference", "softmax", "copy"):
            entry = providers[name]
            assert "error" not in entry, (record["key"], name, entry)
            assert 0 < entry["p20_ms"] <= entry["median_ms"] <= entry["p80_ms"], (record["key"], name)
        assert "skipped" in providers["compile"]  # --quick runs no torch.compile
        assert ("exp_race" in providers) == (record["mode"] == "categorical")
        fused = providers["fused"]
        assert fused["gbps"] > 0 and fused["pct_copy"] > 0 and fused["launches"] >= 1 and fused["peak_bytes"] > 0
        assert record["copy_gbps"] > 0 and record["speedup"]["eager"] > 0 and record["fused_over_softmax"] > 0
        assert record["minimal_bytes"] == case_lib.Case(
            case_lib.Shape(tuple(record["sizes"]), record["dim"]), case_lib.DTYPES_BY_NAME[record["dtype"]],
            record["mode"], record["pass"]).minimal_bytes


def test_quick_run_reports_vae_and_goals(quick_run):
    data = quick_run[0]
    vae = {r["sampler"]: r for r in data["vae"]}
    assert set(vae) == {"fused", "eager", "reference"}
    assert all(r["steps_per_s"] > 0 and r["batch"] == 100 for r in vae.values())
    goals = {g["id"]: g for g in data["goals"]}
    assert goals["cpu_vae"]["status"] in ("met", "not met") and goals["cpu_vae"]["case"].startswith("3000x10/")
    assert goals["vs_eager"]["status"] == "n/a on cpu"


def test_minimal_bytes_model():
    shape = case_lib.Shape((8, 32000))
    bf16 = case_lib.DTYPES_BY_NAME["bf16"]
    assert case_lib.Case(shape, bf16, "soft", "fwd").minimal_bytes == 2 * 8 * 32000 * 2
    assert case_lib.Case(shape, bf16, "hard", "fwd+bwd").minimal_bytes == 5 * 8 * 32000 * 2
    assert case_lib.Case(shape, bf16, "categorical", "fwd").minimal_bytes == 8 * 32000 * 2 + 8 * 8
    middle = case_lib.Shape((4, 512, 64), dim=1)
    assert (middle.rows, middle.classes, middle.name) == (256, 512, "4x512x64:dim1")


def _record(key_shape, dtype, mode, pass_, numel, ms, peaks=None):
    providers = {name: {"median_ms": t, "p20_ms": t, "p80_ms": t} for name, t in ms.items()}
    for name, peak in (peaks or {}).items():
        providers[name]["peak_bytes"] = peak
    record = {"key": f"{key_shape}/{dtype}/{mode}/{pass_}", "shape": key_shape, "dtype": dtype, "mode": mode,
              "pass": pass_, "numel": numel, "input_bytes": 2 * numel,
              "minimal_bytes": (5 if pass_ == "fwd+bwd" else 2) * 2 * numel, "providers": providers}
    report.derive(record)
    return record


def test_derived_metrics_and_goals():
    numel = 8192 * 32000
    hard = _record("8192x32000", "bf16", "hard", "fwd+bwd", numel,
                   {"fused": 1.0, "eager": 6.0, "compile": 1.2, "softmax": 0.5, "copy": 0.4},
                   peaks={"fused": 2 * numel * 2, "eager": 12 * numel * 2})
    assert hard["copy_gbps"] == pytest.approx(2 * 2 * numel / 0.4e-3 / 1e9)
    assert hard["providers"]["fused"]["pct_copy"] == pytest.approx(100 * (10 * numel / 1e-3) / (4 * numel / 0.4e-3))
    assert hard["speedup"] == pytest.approx({"eager": 6.0, "compile": 1.2})
    soft = _record("8192x32000", "bf16", "soft", "fwd", numel, {"fused": 1.1, "softmax": 1.0, "copy": 1.0})
    goals = {g["id"]: g for g in report.evaluate_goals([hard, soft], "cuda")}
    assert goals["vs_eager"]["status"] == "met" and goals["vs_eager"]["measured"] == pytest.approx(6.0)
    assert goals["vs_compile"]["status"] == "not met" and goals["vs_compile"]["case"] == hard["key"]
    assert goals["vs_softmax"]["status"] == "met" and goals["vs_softmax"]["measured"] == pytest.approx(1.1)
    assert goals["memory"]["measured"] == pytest.approx(6.0) and goals["memory"]["status"] == "met"
    assert goals["bandwidth"]["status"] == "met"  # 10 N bytes in 1 ms vs a 4 N-byte copy in 0.4 ms
    assert goals["vs_exp_race"]["status"] == "not measured"
    assert goals["cpu_vae"]["status"] == "n/a on cuda"
