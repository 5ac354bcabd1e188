"""The twin's column of the static model (``bench/static_twin.py``) and the dispatch table it writes
(``fused_gumbel/_twin_dispatch.py``): the decision rules, on hand-made numbers (no nvcc needed)."""
import pytest

from bench import static_twin
from fused_gumbel import _twin_dispatch


def _case(ceiling, instr):
    return {"ceiling_pct_H200": ceiling, "instr_per_element": instr}


@pytest.mark.parametrize("twin, triton, expected", [
    (_case(90, 50), _case(80, 40), "twin"),      # higher ceiling wins, whatever the instruction count
    (_case(70, 40), _case(80, 50), "triton"),
    (_case(97, 40), _case(97, 50), "twin"),      # same (bandwidth-bound) ceiling: fewer instructions
    (_case(97, 49), _case(97, 50), "tie"),       # within 5%: a tie
    (_case(97.3, 50), _case(97, 50), "tie"),     # ceilings within 0.5 points
])
def test_winner(twin, triton, expected):
    assert static_twin.winner(triton, twin)[0] == expected


def test_winner_without_a_triton_kernel():
    assert static_twin.winner(None, _case(50, 50))[0] == "twin"
    assert static_twin.winner({"skipped": "reference"}, _case(50, 50))[0] == "twin"


def test_dispatch_table_needs_every_case_of_a_class():
    results = {
        "a": {"shape_class": "streamed", "dtype": "bf16", "mode": "soft", "pass": "fwd", "faster": "twin"},
        "b": {"shape_class": "streamed", "dtype": "bf16", "mode": "soft", "pass": "fwd", "faster": "triton"},
        "c": {"shape_class": "small", "dtype": "fp32", "mode": "hard", "pass": "bwd", "faster": "twin"},
        "d": {"shape_class": "small", "dtype": "fp32", "mode": "soft", "pass": "bwd", "faster": "tie"},
        "e": {"shape_class": "small", "dtype": "fp32", "mode": "index", "pass": "fwd", "error": "x"},
    }
    assert static_twin.dispatch_table(results) == {
        "small/fp32/hard/bwd": "twin", "small/fp32/soft/bwd": "triton", "streamed/bf16/soft/fwd": "triton"}


def test_streamed_trip_counts():
    loops = [object(), object()]
    assert static_twin.trip_counts("void streamed_fwd_kernel<float, 0, true>", "soft", loops, 4)[0] == [4.0, 4.0]
    # the hard forward's last loop writes NaN over an invalid row: counted as never running
    assert static_twin.trip_counts("void streamed_fwd_kernel<float, 1, true>", "hard", loops, 4)[0] == [4.0, 0.0]
    trips, warnings = static_twin.trip_counts("void small_fwd_kernel<float, 10, 0, true>", "soft", loops, 1)
    assert trips == [1.0, 1.0] and warnings


def test_runtime_lookup(monkeypatch):
    monkeypatch.setattr(_twin_dispatch, "MEASURED", {})  # the static prediction alone
    lookup = _twin_dispatch.shape_class
    assert lookup(1000, 16) == "small" and lookup(1000, 17) == "resident"
    assert lookup(1000, 8192) == "resident" and lookup(1000, 8193) == "streamed"
    assert lookup(_twin_dispatch.FEW_ROWS - 1, 8193) == "streamed-few-rows"
    assert _twin_dispatch.preferred(1000, 10, "fp64", "soft", "fwd") == "triton"  # not modelled: Triton
    shapes = {"small": (65536, 10), "resident": (4096, 1000), "streamed": (8192, 32000),
              "streamed-few-rows": (64, 128256)}
    for key, value in _twin_dispatch.STATIC.items():
        shape_class, dtype, mode, pass_ = key.split("/")
        assert value in ("twin", "triton")
        assert _twin_dispatch.preferred(*shapes[shape_class], dtype, mode, pass_) == value
        if dtype == "bf16":
            assert _twin_dispatch.preferred(*shapes[shape_class], "fp16", mode, pass_) == value


def test_shape_classes_match_the_twin_config():
    twin = pytest.importorskip("bench.twin")
    try:
        lib = twin.host_library()
    except (FileNotFoundError, OSError) as why:
        pytest.skip(f"no host compiler: {why}")
    assert _twin_dispatch.SMALL_K == lib.fg_twin_small_k()
    assert _twin_dispatch.MAX_RESIDENT == lib.fg_twin_max_resident()
    assert _twin_dispatch.FEW_ROWS == static_twin.FEW_ROWS


def test_docs_block_is_generated_from_the_committed_report():
    """docs/benchmarks.md's twin-vs-Triton table is the block ``--twin --update-docs`` writes from
    the committed results, so the docs cannot drift from them."""
    import glob
    import json
    import os

    from bench import static

    path = sorted(glob.glob(os.path.join(static.REPO, "bench", "results", "static-twin-sm90-*.json")))[-1]
    with open(path) as f:
        report = json.load(f)
    table = static_twin.summary_table(report)
    assert table.count("\n| ") == 20  # 5 passes x 4 shapes, after the header
    with open(os.path.join(static.REPO, "docs", "benchmarks.md")) as f:
        docs = f.read()
    block = docs.split(static_twin.DOC_BEGIN, 1)[1].split(static_twin.DOC_END, 1)[0]
    assert table in block and os.path.basename(path).replace(".json", ".md") in block
