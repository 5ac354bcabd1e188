"""The runtime choice between the CUDA C++ twin and the Triton kernels (no GPU needed).

``fused_gumbel._twin_dispatch`` holds per (shape class, dtype, mode, pass) a static prediction and,
after a GPU run of ``python -m bench.twin --measure``, a measured record; only measured records
make the twin the default under backend "auto" (``functional._cuda_launcher``), the environment
variable FUSED_GUMBEL_CUDA_IMPL overrides, and the lookup per call is a cached dict hit. Here:
the pure choice function over every key, the source rule, the override and its errors, the
cache, ``bench.twin``'s table writer (round trip through the written module), the margin rule,
and the backward's contract with the forward (same implementation, statistics never misread).
"""
import builtins
import importlib.util
import itertools
import json
import shutil

import pytest
import torch

from fused_gumbel import _custom_op, _native, _twin_dispatch, function, functional

SHAPE_OF_CLASS = {"small": (65536, 10), "resident": (4096, 1000), "streamed": (8192, 32000),
                  "streamed-few-rows": (64, 128256)}
DTYPES = ("fp32", "bf16", "fp16", "fp64")
MODES = ("soft", "hard", "index")
PASSES = ("fwd", "bwd")


def _every_key():
    return [f"{c}/{d}/{m}/{p}" for c, d, m, p in itertools.product(SHAPE_OF_CLASS, ("fp32", "bf16"), MODES, PASSES)
            if not (m == "index" and p == "bwd")]


def _measured(choices: dict) -> dict:
    return {k: {"choice": v, "worst_ratio": 0.8 if v == "twin" else 1.2, "cases": 2} for k, v in choices.items()}


@pytest.fixture
def fresh_choice(monkeypatch):
    """A clean CUDA choice cache (and the twin 'built') for tests that patch the table."""
    monkeypatch.setattr(functional, "_twin_under_auto", None)
    monkeypatch.setattr(functional, "_cuda_choices", {})
    monkeypatch.delenv(functional.CUDA_IMPL_ENV, raising=False)
    monkeypatch.setattr(_native, "available", lambda device_type="cpu": True)


def test_static_entries_never_pick_the_twin(monkeypatch):
    """The source rule: with only the static prediction (today's table) auto runs Triton for every
    shape class, dtype, mode and pass, also where the prediction favours the twin."""
    monkeypatch.setattr(_twin_dispatch, "MEASURED", {})
    assert any(v == "twin" for v in _twin_dispatch.STATIC.values())  # the rule is not vacuous
    for (shape_class, (rows, classes)), dtype, mode, pass_ in itertools.product(SHAPE_OF_CLASS.items(), DTYPES,
                                                                                MODES, PASSES):
        key = _twin_dispatch.key(rows, classes, dtype, mode, pass_)
        choice, source, origin = _twin_dispatch.entry(key)
        if key in _twin_dispatch.STATIC:
            assert (choice, source, origin) == (_twin_dispatch.STATIC[key], "static", _twin_dispatch.STATIC_FROM)
        else:
            assert (choice, source, origin) == ("triton", "default", None)
        assert _twin_dispatch.preferred(rows, classes, dtype, mode, pass_) == choice
        assert _twin_dispatch.auto_choice(rows, classes, dtype, mode, backward=pass_ == "bwd") == "triton"
    assert not _twin_dispatch.twin_measured_anywhere()


def test_the_committed_table_names_its_measurement():
    """Measured records come with the file they were made from (committed next to them); without
    any, auto runs Triton everywhere (as the README and docs/benchmarks.md say today)."""
    import os

    if not _twin_dispatch.MEASURED:
        assert _twin_dispatch.MEASURED_FROM is None and _twin_dispatch.summary()["auto_twin"] == []
        return
    path = _twin_dispatch.MEASURED_FROM.split(" (")[0]
    assert os.path.exists(os.path.join(os.path.dirname(os.path.dirname(_twin_dispatch.__file__)), path))
    assert 0 < _twin_dispatch.MEASURED_MARGIN < 1


@pytest.mark.parametrize("forward_choice, backward_choice", [("twin", "twin"), ("twin", "triton"),
                                                             ("triton", "twin"), ("triton", "triton")])
def test_measured_choice_over_every_key(monkeypatch, forward_choice, backward_choice):
    """A measured table decides, per key; a call with a backward needs both passes measured twin
    (one implementation runs both); fp16 follows bf16; fp64 and unmeasured keys keep Triton."""
    table = {k: (forward_choice if k.endswith("/fwd") else backward_choice) for k in _every_key()}
    monkeypatch.setattr(_twin_dispatch, "MEASURED", _measured(table))
    for (shape_class, (rows, classes)), dtype, mode in itertools.product(SHAPE_OF_CLASS.items(), DTYPES, MODES):
        measured_dtype = "bf16" if dtype == "fp16" else dtype
        forward_key = f"{shape_class}/{measured_dtype}/{mode}/fwd"
        assert _twin_dispatch.entry(forward_key)[1] == ("default" if dtype == "fp64" else "measured")
        forward_twin = dtype != "fp64" and forward_choice == "twin"
        assert _twin_dispatch.auto_choice(rows, classes, dtype, mode, backward=False) == (
            "twin" if forward_twin else "triton")
        both_twin = forward_twin and mode != "index" and backward_choice == "twin"
        assert _twin_dispatch.auto_choice(rows, classes, dtype, mode, backward=True) == (
            "twin" if both_twin else "triton")


def test_measured_record_overrides_static(monkeypatch):
    key = next(k for k, v in _twin_dispatch.STATIC.items() if v == "twin")
    monkeypatch.setattr(_twin_dispatch, "MEASURED", _measured({key: "triton"}))
    assert _twin_dispatch.entry(key)[:2] == ("triton", "measured")


def _cpu_logits(rows=4, classes=10, dtype=torch.float32):
    return torch.zeros(rows, classes, dtype=dtype)


def test_env_override(monkeypatch, fresh_choice):
    """FUSED_GUMBEL_CUDA_IMPL, read on every call, beats the table under auto; an explicit backend
    beats it; unknown values and "twin" without a built twin raise ValueError with the reason."""
    x = _cpu_logits()  # _cuda_launcher reads only shapes and dtypes: a CPU tensor stands in
    monkeypatch.setattr(_twin_dispatch, "MEASURED", _measured({k: "twin" for k in _every_key()}))
    assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_SOFT, backward=True) == "native"
    monkeypatch.setenv(functional.CUDA_IMPL_ENV, "triton")
    assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_SOFT, backward=True) == "triton"
    monkeypatch.setattr(_twin_dispatch, "MEASURED", {})
    monkeypatch.setattr(functional, "_twin_under_auto", None)
    monkeypatch.setenv(functional.CUDA_IMPL_ENV, "twin")
    assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_SOFT, backward=True) == "native"
    assert functional._cuda_launcher("triton", x, 1, _custom_op.MODE_SOFT, backward=True) == "triton"
    monkeypatch.setenv(functional.CUDA_IMPL_ENV, "cuda")
    with pytest.raises(ValueError, match="FUSED_GUMBEL_CUDA_IMPL must be one of"):
        functional._cuda_launcher("auto", x, 1, _custom_op.MODE_SOFT)


def test_env_twin_without_the_twin_raises(monkeypatch):
    monkeypatch.setattr(_native, "available", lambda device_type="cpu": device_type == "cpu")
    monkeypatch.setattr(_native, "unavailable_reason", lambda device_type="cpu": "built without nvcc (test)")
    monkeypatch.setenv(functional.CUDA_IMPL_ENV, "twin")
    with pytest.raises(ValueError, match=r"FUSED_GUMBEL_CUDA_IMPL=twin .*built without nvcc \(test\)"):
        functional._cuda_launcher("auto", _cpu_logits(), 1, _custom_op.MODE_HARD)


def test_auto_needs_the_twin_built(monkeypatch, fresh_choice):
    monkeypatch.setattr(_twin_dispatch, "MEASURED", _measured({k: "twin" for k in _every_key()}))
    monkeypatch.setattr(_native, "available", lambda device_type="cpu": device_type == "cpu")
    assert functional._cuda_launcher("auto", _cpu_logits(), 1, _custom_op.MODE_SOFT, backward=False) == "triton"


def test_cuda_choice_is_a_cached_dict_lookup(monkeypatch, fresh_choice):
    """Per call: no import, no table walk; ``auto_choice`` runs once per distinct call key, and
    not at all while no measured record picks the twin."""
    calls = []
    real = _twin_dispatch.auto_choice
    monkeypatch.setattr(_twin_dispatch, "auto_choice", lambda *args: calls.append(args) or real(*args))
    x = _cpu_logits(dtype=torch.bfloat16)
    monkeypatch.setattr(_twin_dispatch, "MEASURED", {})
    for _ in range(5):
        assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_HARD, backward=True) == "triton"
    assert calls == []

    monkeypatch.setattr(_twin_dispatch, "MEASURED", _measured({"small/bf16/hard/fwd": "twin",
                                                               "small/bf16/hard/bwd": "twin"}))
    monkeypatch.setattr(functional, "_twin_under_auto", None)
    imports = []
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda *a, **k: imports.append(a[0]) or real_import(*a, **k))
    for _ in range(5):
        assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_HARD, backward=True) == "native"
        assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_HARD, backward=False) == "native"
        assert functional._cuda_launcher("auto", x, 1, _custom_op.MODE_SOFT, backward=False) == "triton"
    builtins.__import__ = real_import  # (monkeypatch.setattr itself imports: undo by hand first)
    assert imports == []
    assert len(calls) == 3  # one per (rows, classes, dtype, mode, backward)
    assert len(functional._cuda_choices) == 3


def test_select_implementation_on_cpu_and_meta():
    x = _cpu_logits()
    assert functional.select_implementation(x) == functional.select_backend(x.device)
    assert functional.select_implementation(x.to("meta"), mode="index") == "reference"
    with pytest.raises(ValueError, match="mode must be"):
        functional.select_implementation(x, mode="categorical")


# --- bench.twin: the measured table from a GPU run ---------------------------------------------------

def _report(ratios: dict, extra=None) -> dict:
    """A synthetic measurement: {(shape, dtype, mode, pass): ratio or "error" or "skipped"}."""
    from bench import twin

    results = {}
    for (shape, dtype, mode, pass_), ratio in ratios.items():
        rows, classes = twin.MEASURE_SHAPES[shape]
        entry = {"mode": mode, "pass": pass_, "shape": shape, "dtype": dtype, "rows": rows, "classes": classes}
        if ratio == "error":
            entry["error"] = "outputs disagree: test"
        elif ratio == "skipped":
            entry["skipped"] = "time budget spent"
        else:
            entry.update(twin={"median_ms": ratio}, triton={"median_ms": 1.0}, ratio=ratio)
        results[f"gumbel_softmax/{mode}/{pass_}/{shape}/{dtype}"] = entry
    return {"schema": twin.MEASURE_SCHEMA, "date": "2026-12-31", "git_commit": "abc1234",
            "device_name": "NVIDIA H200 (synthetic)", "results": results, **(extra or {})}


def test_measured_table_margin_rule():
    from bench import twin

    margin = twin.DISPATCH_MARGIN
    report = _report({
        ("65536x10", "fp32", "soft", "fwd"): 0.80, ("3000x10", "fp32", "soft", "fwd"): 1 - margin,  # twin
        ("65536x10", "bf16", "soft", "fwd"): 0.80, ("3000x10", "bf16", "soft", "fwd"): 1 - margin / 2,  # in margin
        ("4096x1024", "fp32", "hard", "fwd"): 0.50, ("256x4096", "fp32", "hard", "fwd"): 1.30,  # one slower case
        ("8192x32000", "fp32", "index", "fwd"): 0.50, ("1024x50257", "fp32", "index", "fwd"): "error",
        ("64x128256", "fp32", "soft", "bwd"): 0.70, ("8x32000", "fp32", "soft", "bwd"): "skipped",
    })
    table = twin.measured_table(report)
    assert table == {
        "small/fp32/soft/fwd": {"choice": "twin", "worst_ratio": round(1 - margin, 4), "cases": 2},
        "small/bf16/soft/fwd": {"choice": "triton", "worst_ratio": round(1 - margin / 2, 4), "cases": 2},
        "resident/fp32/hard/fwd": {"choice": "triton", "worst_ratio": 1.3, "cases": 2},
        "streamed/fp32/index/fwd": {"choice": "triton", "worst_ratio": None, "cases": 2},
        "streamed-few-rows/fp32/soft/bwd": {"choice": "twin", "worst_ratio": 0.7, "cases": 1},
    }
    with pytest.raises(ValueError, match="not a twin measurement"):
        twin.measured_table({"schema": "fused-gumbel-static-twin/1", "results": {}})


def test_measure_runs_every_variant_on_cpu(tmp_path):
    """``bench.twin.measure``'s calls, agreement check and report, run here on the CPU kernel
    against Triton's interpreter (the GPU run compares the CUDA twin with compiled Triton the same
    way); its report feeds the table writer."""
    from bench import twin

    if not _native.available("cpu"):
        pytest.skip(_native.unavailable_reason("cpu"))
    report = twin.measure(dtypes=["fp32"], device="cpu", rep_ms=5, log=lambda m: None,
                          shape_sizes={"3x10": (3, 10), "2x40": (2, 40)})
    assert len(report["results"]) == len(twin.MEASURE_VARIANTS) * 2
    for case, entry in report["results"].items():
        assert "error" not in entry, (case, entry)
        assert entry["ratio"] > 0 and entry["twin"]["median_ms"] > 0
    table = twin.measured_table(report)
    assert set(table) == {f"{c}/fp32/{m}/{p}" for c in ("small", "resident") for m, p in twin.MEASURE_VARIANTS}


def test_disagreement_is_caught():
    from bench import twin

    same, other = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    assert twin._disagreement("index", "fwd", {"twin": lambda: same, "triton": lambda: same}) is None
    assert "1 elements" in twin._disagreement("index", "fwd", {"twin": lambda: same, "triton": lambda: other})
    soft = torch.tensor([0.25, 0.75])
    assert twin._disagreement("soft", "fwd", {"twin": lambda: soft, "triton": lambda: soft + 1e-6}) is None
    assert "max |twin - triton|" in twin._disagreement("soft", "bwd", {"twin": lambda: soft,
                                                                        "triton": lambda: soft + 1e-2})


def _import_copy(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_dispatch_round_trip(tmp_path, monkeypatch):
    """``python -m bench.twin --update-dispatch`` on a synthetic measurement rewrites only the
    measured block; the written module imports and gives the expected choices; a later
    ``bench.static --twin`` rewrite of the static block keeps the measured one."""
    from bench import static_twin, twin

    module_path = tmp_path / "_twin_dispatch_copy.py"
    shutil.copy(_twin_dispatch.__file__, module_path)
    monkeypatch.setattr(static_twin, "DISPATCH_MODULE", str(module_path))
    report = _report({("65536x10", "fp32", "hard", "fwd"): 0.6, ("3000x10", "fp32", "hard", "fwd"): 0.7,
                      ("65536x10", "fp32", "hard", "bwd"): 0.8, ("4096x1024", "bf16", "soft", "fwd"): 1.1})
    json_path = tmp_path / "twin-measured-2026-12-31.json"
    json_path.write_text(json.dumps(report))
    assert twin.main(["--update-dispatch", str(json_path)]) == 0

    written = _import_copy(module_path, "written_dispatch")
    assert written.STATIC == _twin_dispatch.STATIC and written.STATIC_FROM == _twin_dispatch.STATIC_FROM
    assert written.MEASURED_MARGIN == twin.DISPATCH_MARGIN
    assert "NVIDIA H200 (synthetic), 2026-12-31, commit abc1234" in written.MEASURED_FROM
    assert written.entry("small/fp32/hard/fwd") == ("twin", "measured", written.MEASURED_FROM)
    assert written.entry("resident/bf16/soft/fwd")[:2] == ("triton", "measured")
    assert written.auto_choice(3000, 10, "fp32", "hard", backward=True) == "twin"
    assert written.auto_choice(3000, 10, "fp32", "soft", backward=False) == "triton"  # static says nothing here
    assert written.auto_choice(4096, 1024, "fp16", "soft", backward=False) == "triton"
    static_only_twin = next(k for k, v in written.STATIC.items() if v == "twin" and k not in written.MEASURED)
    assert written.entry(static_only_twin)[1] == "static"

    static_report = {"date": "2027-01-01", "git_commit": "fedcba9",
                     "dispatch": {k: "triton" for k in _twin_dispatch.STATIC}}
    assert static_twin.write_dispatch_module(static_report, str(tmp_path / "static-twin.json"), str(module_path))
    rewritten = _import_copy(module_path, "rewritten_dispatch")
    assert rewritten.MEASURED == written.MEASURED and rewritten.MEASURED_FROM == written.MEASURED_FROM
    assert set(rewritten.STATIC.values()) == {"triton"} and "2027-01-01" in rewritten.STATIC_FROM


# --- one call, one implementation; statistics never misread ----------------------------------------

def test_stats_reach_only_the_implementation_that_kept_them():
    logits = torch.zeros(3, 5)
    soft_kept = torch.zeros(3, 5)  # the native CPU hard forward keeps the soft sample
    row_maxima = torch.zeros(3)  # Triton's hard forward keeps the row maxima
    assert function._stats_for_backward(soft_kept, logits, native=True) is soft_kept
    assert function._stats_for_backward(soft_kept, logits, native=False) is None
    assert function._stats_for_backward(row_maxima, logits, native=False) is row_maxima
    assert function._stats_for_backward(row_maxima, logits, native=True) is None
    assert function._stats_for_backward(None, logits, native=True) is None


def test_backward_runs_on_the_forwards_implementation(monkeypatch):
    """The Function keeps its forward's implementation in ctx: a launcher change before the
    backward (another call, the environment) does not move the backward."""
    if not _native.available("cpu"):
        pytest.skip(_native.unavailable_reason("cpu"))
    used = []
    real_backward = _native.backward
    monkeypatch.setattr(_native, "backward", lambda *a, **k: used.append("native") or real_backward(*a, **k))
    x = torch.randn(4, 7, requires_grad=True)
    y = function.apply(x, 0.5, True, 1, 11, 0, "native")
    previous, function._launcher.name = function._launcher.name, "triton"
    try:
        (grad,) = torch.autograd.grad(y, x, torch.randn(4, 7))
    finally:
        function._launcher.name = previous
    assert used == ["native"]
    grad_y = torch.randn(4, 7, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(function.apply(x, 0.5, True, 1, 11, 0, "native"), x, grad_y)
    (expected,) = torch.autograd.grad(function.apply(x, 0.5, True, 1, 11, 0, "triton"), x, grad_y)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
