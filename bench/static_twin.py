"""Static sm_90 cost of the CUDA C++ twin next to the Triton kernels: ``python -m bench.static --twin``.

The same model as ``bench/static.py`` (SASS -> CFG -> dynamic instructions per element by pipe ->
ceiling; ``bench/sass.py``), applied to the twin's cubins (``bench.twin.build_cubin``, one per
storage dtype, every instance the extension can launch). For each gumbel_softmax case the twin's
launch is the one its launch layer would make: ``choose_config`` from ``twin_config.h`` (through
the host library), vector access when the class dim is contiguous and K % 4 == 0 (the benchmark
tensors are contiguous). Triton's numbers are read from a ``static-sm90-*.json`` report.

Per case the faster implementation is the one with the higher H200 ceiling (more than
``CEILING_MARGIN_PCT`` points apart), else the one with fewer instructions per element (more than
``INSTR_MARGIN`` apart), else a tie, which keeps Triton. Per shape class (``small`` K <= 16,
``resident`` K <= 8192, ``streamed``, and ``streamed-few-rows``: fewer than ``FEW_ROWS`` rows) x
dtype x (mode, pass) the twin becomes the default only if it wins every case of the class;
:func:`dispatch_table` writes that into the static block of ``fused_gumbel/_twin_dispatch.py`` (its
measured block, from a GPU run of ``python -m bench.twin``, is kept: only measured records make the
twin the default under backend "auto").
"""
from __future__ import annotations

import datetime
import glob
import json
import os

from . import sass, static, twin

CEILING_MARGIN_PCT = 0.5
INSTR_MARGIN = 0.05
COMPUTE_BYTES = {"bf16": 4, "fp32": 4, "fp16": 4, "fp64": 8}
DISPATCH_MODULE = os.path.join(static.REPO, "fused_gumbel", "_twin_dispatch.py")


# Below this many rows the twin's streamed kernel (one block per row) leaves SMs idle, where Triton
# splits rows across programs (kernels.gumbel_softmax.SPLIT_BELOW_PROGRAMS): its own class.
FEW_ROWS = 264


def shape_class(rows: int, classes: int) -> str:
    name = twin.config(rows, classes)["shape_name"]
    return "streamed-few-rows" if name == "streamed" and rows < FEW_ROWS else name


def trip_counts(kernel: str, mode: str, loops: list, chunks: int) -> tuple[list[float], list[str]]:
    """Streamed kernels: every loop runs once per chunk, except the hard forward's NaN fill of an
    invalid row (the last loop), counted as never running. Other kernels are fully unrolled."""
    trips = [float(chunks)] * len(loops)
    warnings = []
    if "streamed_fwd_kernel" in kernel and mode == "hard" and trips:
        trips[-1] = 0.0
    if "streamed" not in kernel and loops:
        warnings.append(f"{kernel}: {len(loops)} loops in an unrolled kernel, counted once each")
        trips = [1.0] * len(loops)
    return trips, warnings


def model_case(case: static.Case, cubins: dict) -> dict:
    cfg = twin.config(case.rows, case.classes, COMPUTE_BYTES[case.dtype])
    vec = case.classes % 4 == 0
    prefix = twin.kernel_name(case.dtype, case.mode, case.pass_, case.classes, cfg, vec)
    path = cubins[case.dtype]
    name, info = twin.find_function(twin.cubin_functions(path), prefix)
    graph = sass.CFG(*sass.parse(twin.sass_text(path), info["mangled"]))
    trips, warnings = trip_counts(name, case.mode, graph.loops, cfg["chunks"])
    counts = graph.counts(trips)
    programs = cfg["grid"]
    scale = cfg["block"] / (case.elements / programs)
    per_class = {c: counts["by_class"][c] * scale for c in sass.CLASSES}
    cycles = sass.sm_cycles(per_class)
    shared = info["shared"] + (cfg["shared_bytes"] if (case.mode == "soft" or case.mode == "hard" and
                                                        case.pass_ == "bwd") else 0)
    launch = {
        "kernel": name.split("(")[0].replace("void fused_gumbel::twin::", ""), "programs": programs,
        "block": cfg["block"], "instr_per_element": counts["total"] * scale,
        "by_class_per_element": {k: round(v, 3) for k, v in per_class.items()},
        "cycles_per_element": {k: round(v, 4) for k, v in cycles.items()},
        "bound": max(cycles, key=cycles.get),
        "bytes_per_element": case.essential_bytes_per_element(),
        "regs": info["regs"], "spill_local_bytes": info["local"], "stack": info["stack"],
        "spill_instr_per_element": round(sum(counts["by_opcode"].get(op, 0) for op in ("LDL", "STL")) * scale, 3),
        "ctas_per_sm": static.occupancy(info["regs"], shared, cfg["block"] // 32),
        "static_instructions": counts["static_instructions"], "loops": [lp.to_json(graph) for lp in graph.loops],
        "top_opcodes_per_element": {k: round(v * scale, 2) for k, v in
                                    sorted(counts["by_opcode"].items(), key=lambda kv: -kv[1])[:12]},
        "warnings": graph.warnings + warnings,
    }
    out = static.model_case(case, [launch])
    out["kernels"] = [launch]
    out["config"] = cfg
    return out


def winner(triton_case: dict | None, twin_case: dict) -> tuple[str, str]:
    """("twin" | "triton" | "tie", why) for one case."""
    if not triton_case or "ceiling_pct_H200" not in triton_case:
        return "twin", "Triton has no fused kernel for this case"
    a, b = twin_case["ceiling_pct_H200"], triton_case["ceiling_pct_H200"]
    if abs(a - b) > CEILING_MARGIN_PCT:
        return ("twin" if a > b else "triton"), f"H200 ceiling {a:.0f}% vs Triton {b:.0f}%"
    ia, ib = twin_case["instr_per_element"], triton_case["instr_per_element"]
    if abs(ia - ib) > INSTR_MARGIN * max(ia, ib):
        return ("twin" if ia < ib else "triton"), f"same ceiling ({a:.0f}%), {ia:.0f} vs {ib:.0f} instr/elem"
    return "tie", f"same ceiling ({a:.0f}%) and instr/elem ({ia:.0f} vs {ib:.0f})"


def latest_triton_report() -> str:
    paths = sorted(p for p in glob.glob(os.path.join(static.REPO, "bench", "results", "static-sm90-*.json"))
                   if "quick" not in p and "twin" not in p)
    if not paths:
        raise FileNotFoundError("no bench/results/static-sm90-*.json: run python -m bench.static first")
    return paths[-1]


def run(shapes=None, dtypes=None, triton_json: str | None = None, log=print) -> dict:
    triton_json = triton_json or latest_triton_report()
    with open(triton_json) as f:
        triton_report = json.load(f)
    cases = [c for c in static.all_cases(shapes, dtypes, ["gumbel_softmax"])]
    cubins = {d: twin.build_cubin(d, log=log) for d in sorted({c.dtype for c in cases})}
    results = {}
    for case in cases:
        entry = {"family": case.family, "mode": case.mode, "pass": case.pass_, "shape": case.shape,
                 "dtype": case.dtype, "rows": case.rows, "classes": case.classes,
                 "shape_class": shape_class(case.rows, case.classes)}
        try:
            entry["twin"] = model_case(case, cubins)
        except Exception as why:  # noqa: BLE001 - one case failing must not hide the others
            entry["error"] = f"{type(why).__name__}: {why}"
            results[case.key] = entry
            continue
        tri = triton_report["results"].get(case.key)
        entry["triton"] = {k: tri[k] for k in ("instr_per_element", "ceiling_pct_H200", "ceiling_pct_H100", "bound",
                                               "regs") if tri and k in tri} or None
        entry["faster"], entry["why"] = winner(tri, entry["twin"])
        results[case.key] = entry
    return {"schema": "fused-gumbel-static-twin/1", "label": "static prediction, not a measurement",
            "date": datetime.date.today().isoformat(), "git_commit": static.git_commit(),
            "triton_report": os.path.relpath(triton_json, static.REPO), "nvcc_flags": twin.NVCC_FLAGS,
            "margins": {"ceiling_pct": CEILING_MARGIN_PCT, "instr_relative": INSTR_MARGIN},
            "results": results, "dispatch": dispatch_table(results)}


def dispatch_table(results: dict) -> dict:
    """{"<shape class>/<dtype>/<mode>/<pass>": "twin" | "triton"}: the twin where it wins every
    modelled case of the class, else Triton (ties keep Triton)."""
    verdicts: dict[str, list] = {}
    for r in results.values():
        if "faster" not in r:
            continue
        key = f"{r['shape_class']}/{r['dtype']}/{r['mode']}/{r['pass']}"
        verdicts.setdefault(key, []).append(r["faster"])
    return {k: ("twin" if all(v == "twin" for v in vs) else "triton") for k, vs in sorted(verdicts.items())}


STATIC_BEGIN, STATIC_END = "# <static-twin:begin>", "# <static-twin:end>"


def write_dispatch_module(report: dict, json_path: str, path: str = DISPATCH_MODULE) -> bool:
    """Rewrite the static block of ``fused_gumbel/_twin_dispatch.py`` (``STATIC``, ``STATIC_FROM``)
    from ``report``; the measured block (``python -m bench.twin --update-dispatch``) is left as it is.
    Whether the file changed."""
    origin = os.path.relpath(json_path, static.REPO)
    source = f"{origin} (static sm_90 model, {report['date']}, commit {report['git_commit']})"
    body = "\n".join([
        f"# Generated by python -m bench.static --twin on {report['date']} (commit {report['git_commit']}) from",
        f"# {origin}. A prediction: never makes the twin the default.",
        f"STATIC_FROM = {source!r}",
        "STATIC = {",
        *[f"    {k!r}: {v!r}," for k, v in report["dispatch"].items()],
        "}",
    ])
    if not static.replace_block(path, STATIC_BEGIN, STATIC_END, body):
        with open(path) as f:
            if STATIC_BEGIN not in f.read():
                raise ValueError(f"{path} has no {STATIC_BEGIN} block")
        return False
    return True


def markdown(report: dict) -> str:
    lines = [f"# Static sm_90 cost model: CUDA twin vs Triton, {report['date']}", "",
             f"**Static prediction, not a measurement.** Commit {report['git_commit']}; twin cubins from "
             f"`nvcc {' '.join(report['nvcc_flags'])}`; Triton numbers from `{report['triton_report']}`. "
             "Same model as `python -m bench.static` (docs/benchmarks.md).", "",
             "| case | shape | dtype | twin kernel | twin instr/elem | Triton instr/elem | twin ceiling H200 | "
             "Triton ceiling H200 | regs twin / Triton | faster | why |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"].values():
        if "twin" not in r:
            lines.append(f"| {r['mode']} {r['pass']} | {r['shape']} | {r['dtype']} | error: {r.get('error')} |"
                         " | | | | | | |")
            continue
        t, tri = r["twin"], r["triton"] or {}
        kernel = t["kernels"][0]["kernel"]
        lines.append(
            f"| {r['mode']} {r['pass']} | {r['shape']} | {r['dtype']} | `{kernel}` | {t['instr_per_element']:.0f} | "
            f"{tri.get('instr_per_element', float('nan')):.0f} | {t['ceiling_pct_H200']:.0f}% | "
            f"{tri.get('ceiling_pct_H200', float('nan')):.0f}% | {t['regs']} / {tri.get('regs', '–')} | "
            f"**{r['faster']}** | {r['why']} |")
    lines += ["", "## Predicted faster per shape class (fused_gumbel/_twin_dispatch.py, STATIC)", "",
              "A prediction: backend \"auto\" runs the twin only where a GPU measurement says it is faster "
              "(`python -m bench.twin --measure`, then `--update-dispatch`).", "",
              "| shape class / dtype / mode / pass | predicted faster |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["dispatch"].items()]
    warnings = sorted({w for r in report["results"].values() for k in r.get("twin", {}).get("kernels", [])
                       for w in k["warnings"]})
    if warnings:
        lines += ["", "Model warnings:", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


DOC_BEGIN, DOC_END = "<!-- static-twin:begin -->", "<!-- static-twin:end -->"
SUMMARY_ORDER = [("soft", "fwd"), ("hard", "fwd"), ("index", "fwd"), ("soft", "bwd"), ("hard", "bwd")]


def summary_table(report: dict) -> str:
    """gumbel_softmax, bf16 and fp32 side by side: twin vs Triton instructions/element, H200
    ceilings and the faster one (docs/benchmarks.md's generated block)."""
    lines = ["| case | shape | instr/elem bf16: twin / Triton | H200 ceiling bf16: twin / Triton | "
             "fp32: twin / Triton | faster (bf16 / fp32) |", "|---|---|---|---|---|---|"]
    results = report["results"]
    for mode, pass_ in SUMMARY_ORDER:
        for shape in static.SHAPES:
            b = results.get(f"gumbel_softmax/{mode}/{pass_}/{shape}/bf16")
            f = results.get(f"gumbel_softmax/{mode}/{pass_}/{shape}/fp32")
            if not (b and f and "twin" in b and "twin" in f and b["triton"] and f["triton"]):
                continue

            def instr(r):
                return f"{r['twin']['instr_per_element']:.0f} / {r['triton']['instr_per_element']:.0f}"

            def ceiling(r):
                return f"{r['twin']['ceiling_pct_H200']:.0f}% / {r['triton']['ceiling_pct_H200']:.0f}%"

            lines.append(f"| {mode} {pass_} | {shape} | {instr(b)} | {ceiling(b)} | {instr(f)}, {ceiling(f)} | "
                         f"{b['faster']} / {f['faster']} |")
    return "\n".join(lines)


def update_docs(report: dict, md_name: str, rel: str = "docs/benchmarks.md") -> bool:
    """Rewrite docs/benchmarks.md's twin-vs-Triton block from ``report``."""
    body = "\n".join([
        f"`python -m bench.static --twin`, {report['date']}: twin cubins from `nvcc {' '.join(report['nvcc_flags'])}`, "
        f"Triton numbers from `{os.path.basename(report['triton_report'])}`. A static prediction, not a measurement. "
        f"Full table with kernels, registers and reasons: [{md_name}](../bench/results/{md_name}).", "",
        summary_table(report)])
    return static.replace_block(rel, DOC_BEGIN, DOC_END, body)


def main(out_dir: str, shapes=None, dtypes=None, triton_json=None, write_dispatch=True, log=print,
         docs: bool = False) -> dict:
    report = run(shapes, dtypes, triton_json, log=log)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"static-twin-sm90-{report['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    log(f"wrote {stem}.json and .md")
    if write_dispatch and not shapes and not dtypes:
        changed = write_dispatch_module(report, stem + ".json")
        log(f"{'rewrote' if changed else 'unchanged:'} the static block of {os.path.relpath(DISPATCH_MODULE, static.REPO)}")
    if docs:
        changed = update_docs(report, os.path.basename(stem) + ".md")
        log("updated docs/benchmarks.md" if changed else "docs/benchmarks.md: unchanged or no generated block")
    return report
