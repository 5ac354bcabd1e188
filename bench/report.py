"""Derived metrics, the issue's goals, and the outputs: markdown tables, JSON, PNG plot.

Speed-up over a provider is ``time(provider) / time(fused)`` (> 1: fused is faster).
Goals are reported, never asserted: each gets a measured value, its target and a status
("met", "not met", "not measured", or "n/a on <device>" for a goal set for the other device).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from .cases import LARGE_NUMEL

SPEEDUP_OVER = ("eager", "compile", "reference", "exp_race")


def derive(record: dict) -> None:
    """Add GB/s, % of copy bandwidth, speed-ups and the softmax ratio to a case record."""
    providers = record["providers"]
    copy = providers.get("copy", {})
    copy_gbps = None
    if "median_ms" in copy:
        copy_gbps = 2 * record["input_bytes"] / (copy["median_ms"] * 1e-3) / 1e9
    record["copy_gbps"] = copy_gbps
    for name, entry in providers.items():
        if "median_ms" not in entry or name == "copy":
            continue
        entry["gbps"] = record["minimal_bytes"] / (entry["median_ms"] * 1e-3) / 1e9
        if copy_gbps:
            entry["pct_copy"] = 100.0 * entry["gbps"] / copy_gbps
        if entry.get("peak_bytes") is not None:
            entry["peak_rel_input"] = entry["peak_bytes"] / record["input_bytes"]
    if "copy" in providers and copy_gbps:
        providers["copy"]["gbps"] = copy_gbps
    fused_ms = providers.get("fused", {}).get("median_ms")
    record["speedup"] = {}
    if fused_ms:
        for name in SPEEDUP_OVER:
            other = providers.get(name, {}).get("median_ms")
            if other:
                record["speedup"][name] = other / fused_ms
        softmax_ms = providers.get("softmax", {}).get("median_ms")
        record["fused_over_softmax"] = fused_ms / softmax_ms if softmax_ms else None


# ---------------------------------------------------------------------------------------- goals

def _large(record) -> bool:
    return record["numel"] >= LARGE_NUMEL


def _select(results, shape=None, dtype=None, modes=None, pass_=None, large=False):
    return [r for r in results
            if (shape is None or r["shape"] == shape) and (dtype is None or r["dtype"] == dtype)
            and (modes is None or r["mode"] in modes) and (pass_ is None or r["pass"] == pass_)
            and (not large or _large(r))]


def _extreme(records, value_of, worst):
    """(value, case key) of the worst record that has a value, or (None, None)."""
    valued = [(value_of(r), r["key"]) for r in records]
    valued = [(v, k) for v, k in valued if v is not None]
    if not valued:
        return None, None
    return worst(valued, key=lambda item: item[0])


def _provider_value(record, provider, field):
    return record["providers"].get(provider, {}).get(field)


def _memory_ratio(record):
    fused = _provider_value(record, "fused", "peak_bytes")
    eager = _provider_value(record, "eager", "peak_bytes")
    return eager / fused if fused and eager is not None else None


# The shapes of the CPU kernel's goals (issue 11).
CPU_NATIVE_SHAPES = ("3000x10", "256x1024")


def evaluate_goals(results: list[dict], device: str, host_us: Optional[dict] = None) -> list[dict]:
    goals = []

    def add(goal_id, text, for_device, value_and_case, target, better, unit=""):
        value, case = value_and_case
        if for_device != device:
            status = f"n/a on {device}"
        elif value is None:
            status = "not measured"
        else:
            status = "met" if better(value, target) else "not met"
        goals.append({"id": goal_id, "goal": text, "device": for_device, "measured": value, "case": case,
                      "target": target, "unit": unit, "status": status})

    at_least = lambda v, t: v >= t  # noqa: E731
    at_most = lambda v, t: v <= t  # noqa: E731
    add("bandwidth", "large shapes: fused forward+backward >= 85% of the measured copy bandwidth (worst case)",
        "cuda", _extreme(_select(results, modes=("soft", "hard"), pass_="fwd+bwd", large=True),
                         lambda r: _provider_value(r, "fused", "pct_copy"), min), 85.0, at_least, "%")
    add("vs_eager", "hard forward+backward at 8192x32000 bf16: fused >= 5x faster than eager",
        "cuda", _extreme(_select(results, "8192x32000", "bf16", ("hard",), "fwd+bwd"),
                         lambda r: r["speedup"].get("eager"), min), 5.0, at_least, "x")
    add("vs_compile", "large shapes: fused >= 1.5x faster than torch.compile (worst case)",
        "cuda", _extreme(_select(results, large=True), lambda r: r["speedup"].get("compile"), min), 1.5, at_least,
        "x")
    add("vs_softmax", "large shapes: fused forward <= 1.15x the time of torch.softmax alone (worst case)",
        "cuda", _extreme(_select(results, modes=("soft", "hard"), pass_="fwd", large=True),
                         lambda r: r.get("fused_over_softmax"), max), 1.15, at_most, "x")
    fwd_launches = _extreme(_select(results, "3000x10", modes=("soft", "hard"), pass_="fwd"),
                            lambda r: _provider_value(r, "fused", "launches"), max)
    bwd_launches = _extreme(_select(results, "3000x10", modes=("soft", "hard"), pass_="fwd+bwd"),
                            lambda r: _provider_value(r, "fused", "launches"), max)
    add("launches_fwd", "3000x10: one launch forward", "cuda", fwd_launches, 1, at_most, "launches")
    add("launches_fwd_bwd", "3000x10: one launch each way (forward+backward = 2)", "cuda", bwd_launches, 2,
        at_most, "launches")
    add("vs_exp_race", "256x128256 categorical: fused >= 2x the exponential-race sampler (worst dtype)",
        "cuda", _extreme(_select(results, "256x128256", modes=("categorical",)),
                         lambda r: r["speedup"].get("exp_race"), min), 2.0, at_least, "x")
    add("memory", "large shapes: hard forward+backward peak memory >= 3x below eager (worst case)",
        "cuda", _extreme(_select(results, modes=("hard",), pass_="fwd+bwd", large=True), _memory_ratio, min),
        3.0, at_least, "x")
    add("cpu_vae", "CPU, VAE shape 3000x10: fused not slower than eager F.gumbel_softmax (worst case)",
        "cpu", _extreme(_select(results, "3000x10", modes=("soft", "hard")),
                        lambda r: r["speedup"].get("eager"), min), 1.0, at_least, "x")
    # Issue 11: the C++ CPU kernel (one thread), soft and hard, fwd and fwd+bwd, fp32 and bf16.
    native_cases = [r for shape in CPU_NATIVE_SHAPES
                    for r in _select(results, shape, modes=("soft", "hard")) if r["dtype"] in ("fp32", "bf16")]
    add("cpu_native_vs_compile", "CPU 3000x10 and 256x1024: fused >= 2x torch.compile(F.gumbel_softmax) (worst case)",
        "cpu", _extreme(native_cases, lambda r: r["speedup"].get("compile"), min), 2.0, at_least, "x")
    add("cpu_native_vs_eager", "CPU 3000x10 and 256x1024: fused >= 4x eager F.gumbel_softmax (worst case)",
        "cpu", _extreme(native_cases, lambda r: r["speedup"].get("eager"), min), 4.0, at_least, "x")
    host = {k: v for k, v in (host_us or {}).items() if k != "eager_F"}  # eager_F: the yardstick, not ours
    add("cpu_host_fwd", "CPU host time per forward call through the C++ op (2 elements: no kernel time)",
        "cpu", _extreme([{"key": k, "v": v.get("fwd")} for k, v in host.items()], lambda r: r["v"], max),
        8.0, at_most, "us")
    add("cpu_host_fwd_bwd", "CPU host time of forward+backward beyond the autograd floor, through the C++ op",
        "cpu", _extreme([{"key": k, "v": v.get("fwd+bwd_beyond_floor")} for k, v in host.items()],
                        lambda r: r["v"], max), 20.0, at_most, "us")
    return goals


# ------------------------------------------------------------------------------------- markdown

def _num(value, digits=2, suffix=""):
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def _ms(entry):
    if "median_ms" not in entry:
        return "error" if "error" in entry else ("skip" if "skipped" in entry else "–")
    return f"{entry['median_ms']:.3g} [{entry['p20_ms']:.3g}, {entry['p80_ms']:.3g}]"


def _speedup(record, name):
    entry = record["providers"].get(name)
    if entry is None:
        return "–"
    if "median_ms" not in entry:
        return _ms(entry)
    return _num(record["speedup"].get(name), 2, "x")


def _triple(record, field, fmt):
    return "/".join(fmt(_provider_value(record, p, field)) for p in ("fused", "eager", "compile"))


def _shape_label(record):
    label = record["shape"]
    return f"{label} (for {record['stands_for']})" if record.get("stands_for") else label


def cases_table(results: list[dict]) -> str:
    header = ("| shape | dtype | mode | pass | fused ms [p20, p80] | GB/s | % copy | vs eager | vs compile "
              "| vs reference | vs exp-race | fused / softmax | launches f/e/c | peak mem ×input f/e/c |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        fused = r["providers"].get("fused", {})
        lines.append("| " + " | ".join([
            _shape_label(r), r["dtype"], r["mode"], r["pass"], _ms(fused), _num(fused.get("gbps")),
            _num(fused.get("pct_copy"), 1), _speedup(r, "eager"), _speedup(r, "compile"), _speedup(r, "reference"),
            _speedup(r, "exp_race"), _num(r.get("fused_over_softmax"), 2, "x"),
            _triple(r, "launches", lambda v: "–" if v is None else f"{v:g}"),
            _triple(r, "peak_rel_input", lambda v: _num(v, 1)),
        ]) + " |")
    return "\n".join(lines)


def times_table(results: list[dict], providers) -> str:
    header = "| case | " + " | ".join(providers) + " | copy GB/s |"
    lines = [header, "|" + "---|" * (len(providers) + 2)]
    for r in results:
        cells = []
        for name in providers:
            entry = r["providers"].get(name)
            cells.append("–" if entry is None else
                         (f"{entry['median_ms']:.3g}" if "median_ms" in entry else _ms(entry)))
        lines.append(f"| {r['key']} | " + " | ".join(cells) + f" | {_num(r.get('copy_gbps'))} |")
    return "\n".join(lines)


def vae_table(records: list[dict]) -> str:
    lines = ["| batch | sampler | steps/s | ms/step [p20, p80] | vs eager |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['batch']} | {r['sampler']} | {_num(r.get('steps_per_s'), 1)} | {_ms(r)} | "
                     f"{_num(r.get('speedup_vs_eager'), 2, 'x')} |")
    return "\n".join(lines)


def goals_table(goals: list[dict]) -> str:
    lines = ["| goal | measured | target | worst case | status |", "|---|---|---|---|---|"]
    for g in goals:
        unit = g["unit"]
        measured = "–" if g["measured"] is None else f"{_num(g['measured'], 2)} {unit}".strip()
        lines.append(f"| {g['goal']} | {measured} | {g['target']} {unit} | {g['case'] or '–'} | {g['status']} |")
    return "\n".join(lines)


def errors_list(results: list[dict]) -> str:
    lines, skipped = [], {}
    for r in results:
        for name, entry in r["providers"].items():
            if "error" in entry:
                lines.append(f"- {r['key']} {name}: {entry['error']}")
            if "skipped" in entry:
                skipped.setdefault(f"{name}: {entry['skipped']}", []).append(r["key"])
    for reason, keys in skipped.items():
        lines.append(f"- skipped {reason} ({len(keys)} cases)")
    return "\n".join(lines)


def _native_note(native: Optional[dict]) -> str:
    if not native:
        return ""
    if native.get("available"):
        return f" (C++ extension, {native.get('cpu_isa')} build)"
    return f" (C++ extension not available: {native.get('reason')})"


def markdown_report(data: dict) -> str:
    env = data["environment"]
    title = (f"## Benchmarks: {env['device_name']} ({data['device']}), {data['date'][:10]}"
             f"{' (--quick)' if data['quick'] else ''}")
    parts = [
        title,
        f"torch {env['torch']}, triton {env['triton']}, fused backend `{env['fused_backend']}`"
        f"{_native_note(env.get('native'))}, "
        f"timer: {env['timer']}, commit {env['git_commit'] or 'unknown'}{' (dirty)' if env.get('git_dirty') else ''}.",
        "Speed-ups are time(provider) / time(fused); GB/s under the minimal-bytes model "
        "(fwd: read logits + write output; fwd+bwd: + read grad_out + read logits + write grad_in); "
        "% copy: of a same-size device copy's GB/s; launches and peak memory (× input bytes) for "
        "fused / eager / compile.",
        "", "### Goals", "", goals_table(data["goals"]),
        "", "### Cases", "", cases_table(data["results"]),
    ]
    if data.get("host_us"):
        parts += ["", "### Host time per call, us (C++ extension on 2 elements; floor: a trivial Python autograd "
                  "Function; eager_F: torch.nn.functional.gumbel_softmax, this machine's yardstick)", "",
                  "| case | fwd | fwd+bwd | autograd floor | fwd+bwd beyond floor | bwd beyond floor |",
                  "|---|---|---|---|---|---|"]
        parts += [f"| {k} | {v['fwd']} | {v['fwd+bwd']} | {v['autograd_floor']} | {v.get('fwd+bwd_beyond_floor', '–')} "
                  f"| {v['bwd_beyond_floor']} |" for k, v in data["host_us"].items()]
    if data.get("vae"):
        parts += ["", "### VAE training steps/s (soft samples, tau = 1)", "", vae_table(data["vae"])]
    parts += ["", "### Median ms per provider", "", times_table(data["results"], data["providers"])]
    errors = errors_list(data["results"])
    if errors:
        parts += ["", "### Provider errors and skips", "", errors]
    if data.get("skipped_cases"):
        parts += ["", f"Skipped (time budget): {', '.join(data['skipped_cases'])}"]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------- json / plot

def write_json(data: dict, path: Path) -> None:
    """Atomic write, so that a run killed mid-way leaves the last complete snapshot."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=str))
    os.replace(tmp, path)


def plot(data: dict, path: Path) -> Optional[str]:
    """GB/s per case and provider, and fused's speed-ups, for one dtype (bf16 on CUDA, fp32 on CPU)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as error:  # matplotlib is optional
        return f"no plot: {type(error).__name__}: {error}"
    results = data["results"]
    if not results:
        return "no plot: no results"
    dtypes = [r["dtype"] for r in results]
    preferred = "bf16" if data["device"] == "cuda" else "fp32"
    dtype = preferred if preferred in dtypes else dtypes[0]
    chosen = [r for r in results if r["dtype"] == dtype]
    labels = [f"{r['shape']}\n{r['mode']} {r['pass']}" for r in chosen]
    providers = [p for p in data["providers"] if any("gbps" in r["providers"].get(p, {}) for r in chosen)]
    width = 0.8 / max(1, len(providers))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(10, 0.9 * len(chosen)), 10))
    for i, name in enumerate(providers):
        xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(chosen))]
        top.bar(xs, [r["providers"].get(name, {}).get("gbps", 0) for r in chosen], width, label=name)
    top.set_ylabel("effective GB/s (minimal bytes)")
    top.set_yscale("log")
    top.set_title(f"{data['environment']['device_name']} ({data['device']}), {dtype}, {data['date'][:10]}")
    top.legend(ncol=len(providers), fontsize=8)
    others = [p for p in SPEEDUP_OVER if any(p in r["speedup"] for r in chosen)]
    width = 0.8 / max(1, len(others))
    for i, name in enumerate(others):
        xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(chosen))]
        bottom.bar(xs, [r["speedup"].get(name, 0) for r in chosen], width, label=f"vs {name}")
    bottom.axhline(1.0, color="black", linewidth=0.8)
    bottom.set_yscale("log")
    bottom.set_ylabel("speed-up of fused (x)")
    bottom.legend(ncol=len(others), fontsize=8)
    for axis in (top, bottom):
        axis.set_xticks(range(len(chosen)))
        axis.set_xticklabels(labels, rotation=90, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
