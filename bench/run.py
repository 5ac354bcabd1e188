"""Run the benchmark suite: every case on every provider, then the VAE end to end.

    python -m bench --device cuda            # the full GPU suite (~4-5 minutes on an H100)
    python -m bench --device cpu             # CPU: shrunk stand-ins for the big shapes
    python -m bench --device cpu --quick     # tiny shapes, fp32, no torch.compile (CI)

Prints markdown tables and writes ``<out>/<device>-<YYYY-MM-DD>[-quick].{json,md,png}``
(default ``bench/results``). The JSON holds the environment (device and GPU name, torch,
triton, git commit, which backend "fused" ran and, for the C++ extension, which build), every
measurement, the CPU host time per call through the C++ op, the goals and the
errors: a provider that fails (torch.compile included) is recorded, never fatal. The JSON
is rewritten after every case, so a run cut short still leaves its results.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import unset_triton_interpreter

    unset_triton_interpreter()  # before triton or fused_gumbel is imported

import torch

import fused_gumbel
from bench import cases as case_lib
from bench import bench_relaxed, probes, providers as provider_lib, report, vae_e2e
from bench.timing import CudaTimer, Skipped, WallClockTimer, deadline, error_record, synchronize

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "fused-gumbel-bench/1"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, fp32, short timing, no torch.compile")
    parser.add_argument("--shapes", nargs="+", metavar="PATTERN",
                        help="only shapes whose name contains a pattern, e.g. 3000x10 32000 dim1")
    parser.add_argument("--full-shapes", action="store_true", help="on CPU, run the GPU shapes unshrunk")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(case_lib.DTYPES_BY_NAME))
    parser.add_argument("--modes", nargs="+", choices=case_lib.MODES, default=list(case_lib.MODES))
    parser.add_argument("--passes", nargs="+", choices=case_lib.PASSES, default=list(case_lib.PASSES))
    parser.add_argument("--providers", nargs="+", choices=provider_lib.ALL_PROVIDERS,
                        default=list(provider_lib.ALL_PROVIDERS), help="fused and copy always run")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--rep-ms", type=int, help="do_bench timed milliseconds per provider (CUDA; default 100)")
    parser.add_argument("--cpu-budget-s", type=float, help="wall-clock seconds of timed rounds per case (CPU)")
    parser.add_argument("--compile-budget", type=float,
                        help="seconds that torch.compile may spend in all (later cases skip it; "
                             "default: cuda 150, cpu 240, --quick 0)")
    parser.add_argument("--time-budget", type=float,
                        help="stop starting new cases after this many seconds (default: cuda 270, cpu none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU: torch threads (default 1: stable timings on shared cores; 0 keeps torch's default)")
    parser.add_argument("--no-probes", action="store_true", help="skip launch counts and peak memory")
    parser.add_argument("--no-vae", action="store_true")
    parser.add_argument("--no-relaxed", action="store_true",
                        help="skip relaxed_bernoulli / gumbel_topk (bench/bench_relaxed.py), run after the main cases")
    parser.add_argument("--vae-batches", nargs="+", type=int)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    defaults = dict(rep_ms=25 if args.quick else 100, cpu_budget_s=0.2 if args.quick else 1.0,
                    compile_budget=0.0 if args.quick else (150.0 if cuda else 240.0),
                    time_budget=270.0 if cuda else 0.0,
                    vae_batches=[100] if args.quick else [100, 1024])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if "fused" not in args.providers:
        args.providers.insert(0, "fused")
    if "copy" not in args.providers:
        args.providers.append("copy")
    return args


# ----------------------------------------------------------------------------------- environment

def _git(*command) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *command], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _source_hash() -> str:
    """sha256 of the package sources: identifies the code even where the checkout has no .git."""
    digest = hashlib.sha256()
    for folder in ("fused_gumbel", "kernels"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, timer) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from fused_gumbel.kernels import gumbel_softmax as kernels

    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    dirty = _git("status", "--porcelain", "--", "fused_gumbel", "kernels", "bench")
    return {
        "device_name": gpu_name or _cpu_name(),
        "gpu_name": gpu_name,
        "gpu_capability": list(torch.cuda.get_device_capability(device)) if gpu_name else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "fused_backend": fused_gumbel.select_backend(device),
        "native": probes.native_extension(device),
        "cuda_implementation": probes.cuda_implementation(device),
        "kernels_interpreted": type(kernels.gumbel_softmax_fwd_kernel).__name__ == "InterpretedFunction",
        "timer": timer.name,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "source_sha256": _source_hash(),
        "fused_gumbel": fused_gumbel.__version__,
    }


# ------------------------------------------------------------------------------------------ cases

class Suite:
    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.started = time.perf_counter()
        self.compile_spent = 0.0
        self._inputs_key = None
        self._inputs = None
        if device.type == "cuda":
            self.timer = CudaTimer(rep_ms=args.rep_ms, warmup_ms=max(5, args.rep_ms // 4))
        else:
            self.timer = WallClockTimer(device, min_rounds=3 if args.quick else 5,
                                        max_rounds=10 if args.quick else 50, budget_s=args.cpu_budget_s)

    def inputs(self, case):
        """(logits, grad_out) shared by all cases of one (shape, dtype)."""
        key = (case.shape, case.dtype)
        if self._inputs_key != key:
            self._inputs = None
            self._release()
            backward_case = case_lib.Case(case.shape, case.dtype, "soft", "fwd+bwd")
            self._inputs = case_lib.make_inputs(backward_case, self.device, self.args.seed)
            self._inputs_key = key
        return self._inputs

    def _release(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _compile_warmup(self, call) -> float:
        if self.args.compile_budget <= 0:
            raise Skipped("torch.compile off (--compile-budget 0, the --quick default)")
        remaining = self.args.compile_budget - self.compile_spent
        if remaining <= 0:
            raise Skipped(f"torch.compile budget ({self.args.compile_budget:.0f} s) spent")
        started = time.perf_counter()
        try:
            # A compile that runs far past the budget is abandoned, not waited for.
            with deadline(max(60.0, remaining + 30.0)):
                call()
                synchronize(self.device)
        finally:
            self.compile_spent += time.perf_counter() - started
        return time.perf_counter() - started

    def build_calls(self, case, logits, grad_out):
        calls, entries = {}, {}
        for name in self.args.providers:
            if not provider_lib.applies(name, case):
                continue
            entries[name] = {}
            try:
                if name == "compile":
                    torch._dynamo.reset()
                call = provider_lib.build_call(name, case, logits, grad_out)
                if name == "compile":
                    entries[name]["compile_s"] = self._compile_warmup(call)
                calls[name] = call
            except Exception as error:
                entries[name] = error_record(error)
        return calls, entries

    def run_case(self, case) -> dict:
        logits, grad_out = self.inputs(case)
        calls, entries = self.build_calls(case, logits, grad_out)
        for name, timing in self.timer.measure(calls).items():
            entries[name].update(timing)
        if "fused" in calls:  # which implementation ran (CUDA: Triton or the twin, by shape class)
            entries["fused"]["implementation"] = fused_gumbel.select_implementation(
                logits, case.shape.dim, mode="index" if case.mode == "categorical" else case.mode,
                backward=case.backward)
        if not self.args.no_probes:
            probed = {name: call for name, call in calls.items() if name != "copy" and "median_ms" in entries[name]}
            try:
                with deadline(120):
                    for name, launches in probes.count_launches(probed, self.device).items():
                        entries[name]["launches"] = launches
            except Exception as error:
                for name in probed:
                    entries[name]["probe_error"] = error_record(error)["error"]
            for name, call in probed.items():
                try:
                    with deadline(120):
                        entries[name]["peak_bytes"] = probes.peak_memory(call, self.device)
                except Exception as error:
                    entries[name]["probe_error"] = error_record(error)["error"]
        shape = case.shape
        record = {
            "key": case.key, "shape": shape.name, "sizes": list(shape.sizes), "dim": shape.dim,
            "rows": shape.rows, "classes": shape.classes, "numel": shape.numel, "note": shape.note,
            "stands_for": shape.stands_for, "dtype": case_lib.DTYPE_NAMES[case.dtype], "mode": case.mode,
            "pass": case.pass_, "input_bytes": case.input_bytes, "minimal_bytes": case.minimal_bytes,
            "providers": entries,
        }
        report.derive(record)
        del calls
        if "compile" in entries:
            torch._dynamo.reset()
        return record

    def out_of_time(self) -> bool:
        budget = self.args.time_budget
        return bool(budget) and time.perf_counter() - self.started > budget


def _progress(record) -> str:
    fused = record["providers"].get("fused", {})
    if "median_ms" not in fused:
        return f"{record['key']:42s} fused: {fused.get('error', 'no timing')}"
    speedups = " ".join(f"{k}={v:.2f}x" for k, v in record["speedup"].items())
    pct = fused.get("pct_copy")
    return (f"{record['key']:42s} fused {fused['median_ms']:9.4f} ms {fused.get('gbps', 0):8.1f} GB/s"
            f"{'' if pct is None else f' ({pct:5.1f}% copy)'}  {speedups}")


def main(argv=None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        shapes, dtypes = case_lib.QUICK_SHAPES, (torch.float32,)
    elif device.type == "cuda" or args.full_shapes:
        shapes = case_lib.GPU_SHAPES
        dtypes = case_lib.GPU_DTYPES if device.type == "cuda" else case_lib.CPU_DTYPES
    else:
        shapes, dtypes = case_lib.CPU_SHAPES, case_lib.CPU_DTYPES
    if args.dtypes:
        dtypes = tuple(case_lib.DTYPES_BY_NAME[name] for name in args.dtypes)
    shapes = case_lib.select_shapes(shapes, args.shapes)
    todo = case_lib.cases(shapes, dtypes, tuple(args.modes), tuple(args.passes))
    table_order = {case.key: i for i, case in enumerate(todo)}
    if device.type == "cuda":
        todo = case_lib.run_order(todo)

    suite = Suite(args, device)
    now = _dt.datetime.now(_dt.timezone.utc)
    stem = f"{args.device}-{now:%Y-%m-%d}{'-quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stem}.json"
    data = {
        "schema": SCHEMA, "device": args.device, "date": now.isoformat(timespec="seconds"), "quick": args.quick,
        "command": " ".join(["python -m bench"] + (sys.argv[1:] if argv is None else list(argv))),
        "environment": environment(device, suite.timer),
        "settings": {"rep_ms": args.rep_ms, "cpu_budget_s": args.cpu_budget_s,
                     "compile_budget_s": args.compile_budget, "time_budget_s": args.time_budget,
                     "tau": provider_lib.TAU, "seed": args.seed,
                     "threads": torch.get_num_threads() if device.type == "cpu" else None},
        "providers": [p for p in provider_lib.ALL_PROVIDERS if p in args.providers],
        "launch_unit": probes.LAUNCH_UNITS[args.device],
        "results": [], "vae": [], "skipped_cases": [], "goals": [],
    }
    env = data["environment"]
    print(f"# fused-gumbel bench on {env['device_name']} ({args.device}); torch {env['torch']}, triton {env['triton']}; "
          f"fused backend: {env['fused_backend']}; {len(todo)} cases", flush=True)

    if not args.no_vae:
        if "compile" in args.providers and args.compile_budget <= 0:
            samplers = tuple(s for s in vae_e2e.VAE_SAMPLERS if s != "compile")
        else:
            samplers = tuple(s for s in vae_e2e.VAE_SAMPLERS if s in args.providers)
        try:
            data["vae"] = vae_e2e.run(device, tuple(args.vae_batches), samplers,
                                      steps=5 if args.quick else 30, budget_s=0.5 if args.quick else 3.0,
                                      seed=args.seed, log=lambda line: print(line, flush=True))
        except Exception as error:
            data["vae"] = [{"sampler": "all", "batch": None, **error_record(error)}]
        report.write_json(data, json_path)

    for case in todo:
        if suite.out_of_time():
            data["skipped_cases"].append(case.key)
            continue
        try:
            record = suite.run_case(case)
        except Exception as error:  # e.g. out of memory making the inputs
            record = {"key": case.key, "shape": case.shape.name, "dtype": case_lib.DTYPE_NAMES[case.dtype],
                      "mode": case.mode, "pass": case.pass_, "numel": case.shape.numel, "providers": {},
                      "speedup": {}, **error_record(error)}
            suite._inputs_key = None
        data["results"].append(record)
        data["results"].sort(key=lambda r: table_order[r["key"]])
        print(_progress(record), flush=True)
        report.write_json(data, json_path)
    suite._inputs = None

    if not args.no_relaxed and not suite.out_of_time():
        try:
            data["relaxed"] = bench_relaxed.run(device, args.quick)
        except Exception as error:
            data["relaxed"] = [error_record(error)]
        for record in data["relaxed"]:
            print("relaxed", {key: value for key, value in record.items() if key != "providers"}, flush=True)
        report.write_json(data, json_path)

    if device.type == "cpu" and data["environment"]["fused_backend"] == "native" and not args.no_probes:
        try:
            data["host_us"] = probes.native_host_us(calls=100 if args.quick else 300)
        except Exception as error:
            data["host_us_error"] = error_record(error)["error"]
        print("host us per call", data.get("host_us") or data.get("host_us_error"), flush=True)
    data["goals"] = report.evaluate_goals([r for r in data["results"] if "error" not in r], args.device,
                                          data.get("host_us"))
    data["wall_s"] = time.perf_counter() - suite.started
    data["compile_s_total"] = suite.compile_spent
    markdown = report.markdown_report({**data, "results": [r for r in data["results"] if "error" not in r]})
    (args.out / f"{stem}.md").write_text(markdown)
    if not args.no_plot:
        problem = report.plot(data, args.out / f"{stem}.png")
        if problem:
            data["plot_error"] = problem
    report.write_json(data, json_path)
    print()
    print(markdown)
    print(f"wrote {json_path} (+ .md{'' if args.no_plot or data.get('plot_error') else ', .png'}) "
          f"in {data['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
