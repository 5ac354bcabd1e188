"""One-thread CPU timings of the C++ kernels of ``relaxed_bernoulli`` and ``gumbel_topk`` (backend
"native") against what ran under "native" before they existed (the PyTorch reference,
``backend="reference"``) and against ``torch.compile`` (inductor) of that reference.

The compiled reference is ``reference_relaxed.relaxed_bernoulli`` / ``gumbel_topk`` with one fixed
(seed, offset) per case: its best case. A fresh seed per call (what a training step draws) is a new
Python int each time, on which Dynamo specialises: it recompiles every call and falls back to eager
after its recompile limit. Its Philox words come from the reference's own code (numba where
installed, a graph break), the rest is the inductor graph.

Cases: ``relaxed_bernoulli`` at 3000 x 10 and 256 x 1024, float32 and bfloat16; ``gumbel_topk`` at
3000 x 10 (k = 3) and 256 x 1024 (k = 8), float32; soft and hard, ``fwd`` (the sample) and
``fwd+bwd`` (the sample and ``torch.autograd.grad`` of the logits and a 0-dim tau, fixed upstream
gradient). Every provider draws its own (seed, offset) per call, as a training step does.
Times are ``bench.timing.host_best_us``: the smallest of interleaved medians, in us per call,
with ``torch.set_num_threads(1)``. ``python -m bench.bench_native_relaxed [--op OP] [--out FILE.md]``
prints the markdown table (and writes it to FILE.md); ``--op`` is ``relaxed_bernoulli``,
``gumbel_topk`` or ``all`` (the default).
"""
from __future__ import annotations

import argparse

import torch

import fused_gumbel
from fused_gumbel import reference_relaxed

from .timing import host_best_us

TAU = 0.5
FIXED_SEED, FIXED_OFFSET = 1234, 0
# op -> [(shape, k or None, dtype name)]
CASES = {
    "relaxed_bernoulli": [(shape, None, dtype) for shape in ((3000, 10), (256, 1024)) for dtype in ("fp32", "bf16")],
    "gumbel_topk": [((3000, 10), 3, "fp32"), ((256, 1024), 8, "fp32")],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _providers(op: str, k):
    """Fresh per case (after ``torch._dynamo.reset()``): each case gets its own compiled graph (the
    cases share one code object, whose recompiles would pass Dynamo's limit)."""
    if op == "relaxed_bernoulli":
        def public(x, t, hard, backend):
            return fused_gumbel.relaxed_bernoulli(x, t, hard, backend=backend)

        def fixed_seed_reference(x, t, hard):
            return reference_relaxed.relaxed_bernoulli(x, t, hard, seed=FIXED_SEED, offset=FIXED_OFFSET)
    else:
        def public(x, t, hard, backend):
            return fused_gumbel.gumbel_topk(x, k, t, hard, backend=backend)

        def fixed_seed_reference(x, t, hard):
            return reference_relaxed.gumbel_topk(x, k, t, hard, seed=FIXED_SEED, offset=FIXED_OFFSET)
    return {
        "native": lambda x, t, hard: public(x, t, hard, "native"),
        "reference": lambda x, t, hard: public(x, t, hard, "reference"),
        "compiled reference": torch.compile(fixed_seed_reference, dynamic=False),
    }


def _call(provider, logits, tau, hard, backward, grad_out):
    if not backward:
        def forward():
            with torch.no_grad():
                provider(logits, tau, hard)
        return forward
    x = logits.detach().requires_grad_()
    t = tau.detach().requires_grad_()

    def forward_backward():
        torch.autograd.grad(provider(x, t, hard), (x, t), grad_out)
    return forward_backward


def run(ops=tuple(CASES), calls: int = 30, repeats: int = 3) -> list[dict]:
    torch.set_num_threads(1)
    records = []
    for op in ops:
        for shape, k, dtype_name in CASES[op]:
            dtype = DTYPES[dtype_name]
            logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
            grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            tau = torch.tensor(TAU)
            for hard in (False, True):
                for backward in (False, True):
                    torch._dynamo.reset()
                    times = host_best_us({name: _call(p, logits, tau, hard, backward, grad_out)
                                          for name, p in _providers(op, k).items()}, calls, repeats)
                    records.append({"op": op, "shape": "x".join(map(str, shape)) + (f", k={k}" if k else ""),
                                    "dtype": dtype_name, "mode": "hard" if hard else "soft",
                                    "pass": "fwd+bwd" if backward else "fwd",
                                    **{f"{name} us": round(us, 1) for name, us in times.items()}})
    return records


def markdown(records: list[dict]) -> str:
    head = ["op", "shape", "dtype", "mode", "pass", "native us", "reference us", "compiled reference us",
            "reference / native", "compiled / native"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        native = r["native us"]
        lines.append("| " + " | ".join([r["op"], r["shape"], r["dtype"], r["mode"], r["pass"], f"{native:.1f}",
                                        f"{r['reference us']:.1f}", f"{r['compiled reference us']:.1f}",
                                        f"{r['reference us'] / native:.1f}x",
                                        f"{r['compiled reference us'] / native:.1f}x"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=[*CASES, "all"], default="all", help="which op's cases (default: all)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    ops = tuple(CASES) if args.op == "all" else (args.op,)
    table = markdown(run(ops))
    command = "python -m bench.bench_native_relaxed" + ("" if args.op == "all" else f" --op {args.op}")
    header = (f"{' and '.join(ops)} on CPU, 1 thread, us per call (torch {torch.__version__}, "
              f"native ISA {fused_gumbel._native.cpu_isa()}): `{command}`\n\n")
    print(header + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + table)


if __name__ == "__main__":
    main()
