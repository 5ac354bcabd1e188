"""The static sm_90 cost model (``bench/static.py``, ``bench/sass.py``).

(a) The SASS parser, CFG, loop weighting, pipe classification and ceiling arithmetic on small
    hand-written SASS and synthetic launches, with exact expected counts.
(b) The model on the real kernels: every gumbel_softmax variant (fwd soft/hard/index, bwd
    soft/hard) at the four issue-9 shapes in bf16, the dtype whose instruction budget binds
    (``STATIC_MODEL_FULL=1`` adds fp32), must meet its static ceiling target. Cases listed in
    ``bench.static.KNOWN_UNMET`` are xfail (non-strict) until the kernels meet them.
    Compiles go through the on-disk cubin cache, so a second run costs seconds.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/ is at the repository root
from bench import sass  # noqa: E402
from bench import static  # noqa: E402

# The lead turns this off only while kernels are being rewritten; KNOWN_UNMET is the per-case switch.
ENFORCE_TARGETS = True

# --- (a) parser, CFG, loops ---------------------------------------------------------------------
LOOP = """
        .text.k:
k:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x4, PT ;
        /*0020*/               @P0 BRA `(.L_x_1) ;
.L_x_0:
        /*0030*/                   FFMA.FTZ R2, R2, R3, R4 ;
        /*0040*/                   MUFU.EX2 R5, R2 ;
        /*0050*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0060*/                   ISETP.GE.AND P0, PT, R0, 0x4, PT ;
        /*0070*/              @!P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0080*/                   STG.E desc[UR4][R6.64], R5 ;
        /*0090*/                   EXIT ;
.L_x_2:
        /*00a0*/                   BRA `(.L_x_2);
"""


def test_parse_guards_opcodes_labels_and_targets():
    instrs, labels = sass.parse(LOOP)
    assert [i.addr for i in instrs] == list(range(0, 0xb0, 0x10))
    assert labels == {"k": 0, ".L_x_0": 0x30, ".L_x_1": 0x80, ".L_x_2": 0xa0}
    bra = instrs[2]
    assert (bra.guard, bra.opcode, bra.target, bra.always) == ("@P0", "BRA", ".L_x_1", False)
    assert instrs[3].opcode == "FFMA.FTZ" and instrs[3].operands == "R2, R2, R3, R4" and instrs[3].guard is None
    assert instrs[7].guard == "@!P0" and instrs[7].target == ".L_x_0"


def test_loop_body_weighted_by_trip_count_and_padding_not_counted():
    cfg, counts = sass.analyse(LOOP, [5])
    assert len(cfg.loops) == 1 and cfg.blocks[cfg.loops[0].header].addr == 0x30
    # entry 3 instructions once, loop body 5 instructions x 5, exit 2 once; the BRA self-loop
    # after EXIT is unreachable padding.
    assert counts["total"] == 3 + 5 * 5 + 2
    assert counts["by_class"]["fma"] == 5 and counts["by_class"]["xu"] == 5
    assert counts["by_class"]["alu"] == 1 + 2 * 5
    assert counts["by_class"]["mem"] == 2 and counts["by_class"]["control"] == 1 + 5 + 1
    assert counts["static_instructions"] == 10 and counts["straight_line_instructions"] == 5
    assert sass.analyse(LOOP, [1])[1]["total"] == 10


DIAMOND = """
        /*0000*/                   ISETP.NE.AND P0, PT, R0, RZ, PT ;
        /*0010*/               @P0 BRA `(.L_x_0) ;
        /*0020*/                   FADD R1, R1, 1 ;
        /*0030*/                   BRA `(.L_x_1) ;
.L_x_0:
        /*0040*/                   FMUL R1, R1, 2 ;
        /*0050*/                   FMUL R1, R1, 2 ;
.L_x_1:
        /*0060*/                   EXIT ;
"""


def test_if_else_counts_every_block_once():
    cfg, counts = sass.analyse(DIAMOND, [])
    assert cfg.loops == []
    assert [b.succs for b in cfg.blocks] == [[2, 1], [3], [3], []]
    assert counts["total"] == 7 and counts["by_class"]["fma"] == 3


NESTED = """
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
        /*0010*/                   MOV R1, RZ ;
.L_x_1:
        /*0020*/                   FFMA R2, R2, R2, R2 ;
        /*0030*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0040*/                   ISETP.LT.AND P0, PT, R1, R5, PT ;
        /*0050*/               @P0 BRA `(.L_x_1) ;
        /*0060*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0070*/                   ISETP.LT.AND P1, PT, R0, R6, PT ;
        /*0080*/               @P1 BRA `(.L_x_0) ;
        /*0090*/                   EXIT ;
"""


def test_nested_loops_multiply_in_program_order():
    cfg, counts = sass.analyse(NESTED, [3, 4])
    assert [(cfg.blocks[lp.header].addr, lp.depth) for lp in cfg.loops] == [(0x10, 1), (0x20, 2)]
    assert cfg.loops[1].parent == 0
    assert counts["by_class"]["fma"] == 12
    assert counts["total"] == 1 + 1 * 3 + 4 * 12 + 3 * 3 + 1
    with pytest.raises(ValueError, match="2 loops, 1 trip counts"):
        cfg.weights([3])


SELF_LOOP = """
        /*0000*/                   MOV R0, RZ ;
        /*0010*/                   MOV R1, RZ ;
.L_x_0:
        /*0020*/                   FFMA R2, R2, R2, R2 ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
        /*0040*/                   EXIT ;
"""


def test_single_block_loop_does_not_swallow_its_predecessor():
    cfg, counts = sass.analyse(SELF_LOOP, [10])
    assert len(cfg.loops) == 1 and cfg.loops[0].blocks == {1}
    assert counts["total"] == 2 + 2 * 10 + 1


EXIT_IN_LOOP = """
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
        /*0010*/                   FFMA R2, R2, R2, R2 ;
        /*0020*/              @!P1 EXIT ;
        /*0030*/                   BRA `(.L_x_0) ;
.L_x_1:
        /*0040*/                   BRA `(.L_x_1);
"""


def test_loop_left_by_a_guarded_exit():
    cfg, counts = sass.analyse(EXIT_IN_LOOP, [4])
    assert len(cfg.loops) == 1 and len(cfg.loops[0].blocks) == 2
    assert counts["total"] == 1 + 3 * 4


CUOBJDUMP = """
        code for sm_90
                Function : k
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                  /* 0x00000a0000017a02 */
                                                                           /* 0x000fe40000000f00 */
        /*0010*/              @!P0 BRA 0x30 ;                              /* 0x0000000000008947 */
                                                                           /* 0x000fea0003800000 */
        /*0020*/                   FADD R1, R1, 1 ;                        /* 0x3f80000001017421 */
                                                                           /* 0x000fe20000000000 */
        /*0030*/                   EXIT ;                                  /* 0x000000000000794d */
                                                                           /* 0x000fea0003800000 */
"""


def test_cuobjdump_format_with_address_targets():
    cfg, counts = sass.analyse(CUOBJDUMP, [])
    assert cfg.instrs[1].target == 0x30
    assert [b.succs for b in cfg.blocks] == [[2, 1], [2], []]
    assert counts["total"] == 4


def test_never_and_always_guards_and_unresolved_targets():
    text = """
        /*0000*/              @!PT BRA `(.L_x_9) ;
        /*0010*/               @PT BRA `(.L_x_0) ;
        /*0020*/                   FADD R1, R1, 1 ;
.L_x_0:
        /*0030*/                   EXIT ;
"""
    cfg, counts = sass.analyse(text, [])
    assert [b.succs for b in cfg.blocks] == [[1], [3], [3], []]
    assert counts["total"] == 3  # the FADD is skipped by the @PT branch
    assert any(".L_x_9" in w for w in cfg.warnings)


def test_pipe_classes():
    expect = {"FFMA.FTZ": "fma", "FADD": "fma", "HFMA2.MMA": "fma", "IMAD.MOV.U32": "imad", "IMAD.WIDE.U32": "imad",
              "LOP3.LUT": "alu", "ISETP.GE.U32.AND": "alu", "FSEL": "alu", "FMNMX": "alu", "SHF.R.U32.HI": "alu",
              "MUFU.EX2": "xu", "MUFU.LG2": "xu", "I2F.F32.S32": "xu", "F2I.TRUNC": "xu", "DFMA": "fp64",
              "LDG.E.128": "mem", "STG.E": "mem", "SHFL.BFLY": "mem", "UIADD3": "uniform", "ULDC.64": "uniform",
              "S2UR": "uniform", "BRA": "control", "BAR.SYNC.DEFER_BLOCKING": "control", "EXIT": "control",
              "FOOBAR.X": "other"}
    assert {op: sass.classify(op) for op in expect} == expect
    assert set(sass.OPCODE_CLASS.values()) <= set(sass.CLASSES)


def test_cycles_take_the_binding_pipe():
    per_elem = dict.fromkeys(sass.CLASSES, 0.0)
    per_elem.update(fma=64, imad=32, alu=32, xu=16)
    cycles = sass.sm_cycles(per_elem)
    assert cycles == {"issue": 144 / 128, "fma": 96 / 128, "imad": 0.5, "alu": 0.5, "xu": 1.0, "fp64": 0.0}
    per_elem.update(xu=32)
    cycles = sass.sm_cycles(per_elem)
    assert max(cycles, key=cycles.get) == "xu"


# --- (a) model arithmetic -----------------------------------------------------------------------
def test_grid_fill_and_occupancy():
    assert static.grid_fill(64, 132) == pytest.approx(64 / 132)
    assert static.grid_fill(132, 132) == 1.0
    assert static.grid_fill(200, 132) == pytest.approx(200 / 264)
    assert static.occupancy(regs=128, shared=0, num_warps=8) == 2
    assert static.occupancy(regs=32, shared=0, num_warps=4) == 16
    assert static.occupancy(regs=32, shared=100_000, num_warps=4) == 2


def test_targets_follow_issue_9():
    case = lambda mode, pass_, shape, dtype: static.Case("gumbel_softmax", mode, pass_, shape, dtype)
    assert static.target_for(case("soft", "fwd", "8192x32000", "fp32")) == 85
    assert static.target_for(case("soft", "fwd", "64x128256", "bf16")) == 75
    assert static.target_for(case("index", "fwd", "4096x1024", "bf16")) == 50
    assert static.target_for(case("hard", "bwd", "8192x32000", "bf16")) == 65
    assert static.target_for(case("hard", "bwd", "4096x1024", "bf16")) == 75
    assert static.target_for(case("hard", "bwd", "65536x10", "bf16")) == 50
    assert static.target_for(case("index", "fwd", "65536x10", "fp32")) == 50
    assert static.target_for(static.Case("relaxed_bernoulli", "soft", "fwd", "4096x1024", "bf16")) is None
    assert case("index", "fwd", "8192x32000", "bf16").essential_bytes_per_element() == 2 + 8 / 32000
    assert case("hard", "bwd", "8192x32000", "fp32").essential_bytes_per_element() == 12


def _launch(cycles, bytes_per_element, programs):
    return {"instr_per_element": cycles * 128, "cycles_per_element": {"issue": cycles, "fma": 0.0},
            "bytes_per_element": bytes_per_element, "programs": programs, "regs": 32, "spill_local_bytes": 0,
            "spill_instr_per_element": 0, "ctas_per_sm": 4, "warnings": [], "bound": "issue"}


def test_ceiling_is_bandwidth_time_over_predicted_time():
    case = static.Case("gumbel_softmax", "soft", "fwd", "8192x32000", "bf16")
    h200 = static.CHIPS["H200"]
    budget = 4 / h200["copy_bytes_per_s"] * h200["sms"] * h200["clock_hz"]  # ~0.243 cycles per element
    fill = static.grid_fill(8192, 132)
    fast = static.model_case(case, [_launch(budget / 2, 4, 8192)])
    assert fast["bound"] == "bandwidth"
    assert fast["ceiling_pct_H200"] == pytest.approx(100 * fill, abs=0.05)
    slow = static.model_case(case, [_launch(budget * 4, 4, 8192)])
    assert slow["bound"] == "issue"
    assert slow["ceiling_pct_H200"] == pytest.approx(25 * fill, abs=0.05)
    assert slow["met"] is False and slow["target_pct_H200"] == 75
    # Two launches: the second re-reads 4 bytes per element; times add up.
    split = static.model_case(case, [_launch(budget / 2, 4, 8192), _launch(budget / 2, 4, 8192)])
    assert split["launches"] == 2 and split["ceiling_pct_H200"] == pytest.approx(50 * fill, abs=0.05)
    # A grid of 64 programs fills 64 of 132 SMs.
    few = static.model_case(case, [_launch(budget / 2, 4, 64)])
    assert few["ceiling_pct_H200"] == pytest.approx(100 * 64 / 132, abs=0.05)


class _FakeLaunch:
    kernel = "some_new_kernel"

    def __init__(self, args):
        self.args = args


def test_loops_without_a_hook_default_to_num_chunks_and_are_flagged():
    cfg = sass.CFG(*sass.parse(NESTED))
    trips, flags = static.trip_counts(_FakeLaunch({"num_chunks": 7}), cfg, {})
    assert trips == [7.0, 7.0] and len(flags) == 2
    trips, flags = static.trip_counts(_FakeLaunch({}), cfg, {"some_new_kernel": lambda launch, loops: [3]})
    assert trips == [3.0, 1.0] and len(flags) == 1 and "loop 1" in flags[0]


# --- recorder and host timing (this process runs the interpreter) ----------------------------------
def test_recorder_records_launches_without_running_them():
    case = static.Case("gumbel_softmax", "hard", "bwd", "4096x1024", "bf16")
    out = static.record([case])[case.key]
    assert out["launches"], out
    for launch in out["launches"]:
        assert len(launch["grid"]) == 3 and all(isinstance(g, int) and g >= 1 for g in launch["grid"])
        assert launch["options"].get("num_warps")
        tensors = [v["tensor"] for v in launch["args"].values() if "tensor" in v]
        assert any(t["shape"] == [4096, 1024] and t["dtype"] == "bfloat16" for t in tensors)
    # The kernels are restored afterwards.
    from triton.runtime.jit import KernelInterface

    from fused_gumbel.kernels import gumbel_softmax as k
    assert isinstance(k.gumbel_softmax_fwd_kernel, KernelInterface)


def test_fallback_to_reference_is_reported_not_run():
    case = static.Case("gumbel_topk", "soft", "fwd", "8192x32000", "bf16")
    assert "falls back to the PyTorch reference" in static.record([case])[case.key]["skipped"]


def test_host_timing_runs():
    host = static.measure_host(calls=3)
    assert host["3000x10/fp32/soft"]["fwd"] > 0 and "bwd" in host["3000x10/fp32/hard"]
    # The launch clock saw both launches: our Python up to each is positive and below the whole call.
    for case in ("3000x10/fp32/soft", "3000x10/fp32/hard"):
        assert 0 < host[case]["bwd_to_launch"] < host[case]["fwd+bwd"]
        assert 0 < host[case]["fwd_to_launch"] < host[case]["fwd+bwd"]


# --- (b) the real kernels -------------------------------------------------------------------------
CI_DTYPES = list(static.DTYPES) if os.environ.get("STATIC_MODEL_FULL") == "1" else ["bf16"]
CI_CASES = static.all_cases(dtypes=CI_DTYPES, families=["gumbel_softmax"])


@pytest.fixture(scope="module")
def report():
    return static.run_model(CI_CASES, log=lambda message: None)


def test_model_runs_on_every_variant(report):
    for case in CI_CASES:
        r = report["results"][case.key]
        assert "error" not in r and "skipped" not in r, (case.key, r.get("error") or r.get("skipped"))
        assert r["launches"] >= 1 and r["instr_per_element"] > 0
        assert not r["warnings"], r["warnings"]  # every loop has a trip count, every branch a target
        for kernel in r["kernels"]:
            assert not kernel["other_opcodes_per_element"], kernel["other_opcodes_per_element"]


@pytest.mark.parametrize("case", CI_CASES, ids=lambda c: c.key)
def test_variant_meets_its_static_target(report, case, request):
    r = report["results"][case.key]
    target = static.target_for(case)
    assert target is not None
    if case.key in static.KNOWN_UNMET:
        request.applymarker(pytest.mark.xfail(strict=False, reason="listed in bench.static.KNOWN_UNMET"))
    if ENFORCE_TARGETS:
        assert r["ceiling_pct_H200"] >= target, (
            f"{case.key}: static ceiling {r['ceiling_pct_H200']}% of H200 copy bandwidth < target {target}% "
            f"({r['instr_per_element']:.0f} instr/elem, bound {r['bound']}, grid fill {r['grid_fill']})")
