"""Benchmarks of the binary and subset relaxations: ``relaxed_bernoulli`` and ``gumbel_topk``.

``run(device, quick) -> list[dict]`` times, per case (shape, dtype, mode, pass):

* relaxed Bernoulli (soft and hard): ``fused`` (``fused_gumbel.relaxed_bernoulli``) against
  ``torch_dist`` (``torch.distributions.RelaxedBernoulli(tau, logits=...).rsample()``; for
  hard, thresholded at 0.5 with a straight-through gradient) and a ``sigmoid`` yardstick
  (``torch.sigmoid(logits / tau)``: the same bytes, no noise);
* Gumbel top-k (soft, hard, index): ``fused`` (``fused_gumbel.gumbel_topk`` /
  ``sample_subset``) against ``reference`` (``fused_gumbel.reference_relaxed``) and
  ``torch_topk`` (``torch.topk`` of logits + Gumbel noise, scattered to a k-hot for hard;
  forward only, it has no relaxed gradient).

Passes are ``fwd`` and ``fwd+bwd`` (``torch.autograd.grad`` with a fixed upstream gradient).
On CPU "fused" is what "auto" picks without a GPU: the C++ kernel of ``fused_gumbel._C`` for the
relaxed Bernoulli (where it is built) and the PyTorch reference path for top-k, so CPU ratios
compare implementations of the same math, not the Triton kernels (``bench.bench_native_relaxed``
times the relaxed Bernoulli kernel against the reference on one thread). Each record holds the
providers' median/p20/p80 ms and ``speedup`` (provider median / fused median).
``python -m bench.bench_relaxed --device cuda [--quick]`` prints the records as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from fused_gumbel.reference import StraightThrough

from .timing import CudaTimer, WallClockTimer, error_record

TAU = 0.5
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}

# (sizes, note): the VAE's 100 x 200 binary latents (Jang et al.'s Bernoulli VAE), and a large map.
BERNOULLI_SHAPES = {
    "cuda": [((100, 200), "VAE: batch 100 x 200 binary latents"), ((4096, 4096), "16M elements")],
    "cpu": [((100, 200), "VAE: batch 100 x 200 binary latents"), ((512, 1024), "512K elements")],
}
# (sizes, k, note)
TOPK_SHAPES = {
    "cuda": [((3000, 10), 3, "short rows"), ((4096, 1000), 10, "mid-size"), ((1024, 4096), 64, "largest fused")],
    "cpu": [((3000, 10), 3, "short rows"), ((256, 1000), 10, "mid-size")],
}


def _torch_relaxed_bernoulli(logits, hard):
    soft = torch.distributions.RelaxedBernoulli(torch.tensor(TAU, device=logits.device), logits=logits).rsample()
    if not hard:
        return soft
    return StraightThrough.apply(soft, (soft > 0.5).to(soft.dtype))


def _torch_gumbel_topk_khot(logits, k):
    gumbel = -torch.empty_like(logits, dtype=torch.float32).exponential_().log()
    index = torch.topk(logits.float() + gumbel, k, dim=-1).indices
    return torch.zeros_like(logits).scatter_(-1, index, 1.0)


def _with_backward(fn, logits, grad_out):
    x = logits.detach().requires_grad_()

    def call():
        return torch.autograd.grad(fn(x), x, grad_out)

    return call


def _calls(providers: dict, logits, grad_out, pass_):
    if pass_ == "fwd":
        return {name: (lambda fn=fn: fn(logits)) for name, fn in providers.items()}
    return {name: _with_backward(fn, logits, grad_out) for name, fn in providers.items()}


def _bernoulli_providers(mode):
    import fused_gumbel

    hard = mode == "hard"
    return {
        "fused": lambda x: fused_gumbel.relaxed_bernoulli(x, TAU, hard=hard),
        "torch_dist": lambda x: _torch_relaxed_bernoulli(x, hard),
        "sigmoid": lambda x: torch.sigmoid(x / TAU),
    }


def _topk_providers(mode, k, pass_):
    import fused_gumbel
    from fused_gumbel import reference_relaxed

    if mode == "index":
        return {"fused": lambda x: fused_gumbel.sample_subset(x, k),
                "reference": lambda x: reference_relaxed.sample_subset(x, k),
                "torch_topk": lambda x: torch.topk(x.float() - torch.empty_like(x, dtype=torch.float32)
                                                   .exponential_().log(), k, dim=-1).indices}
    hard = mode == "hard"
    providers = {"fused": lambda x: fused_gumbel.gumbel_topk(x, k, TAU, hard=hard),
                 "reference": lambda x: reference_relaxed.gumbel_topk(x, k, TAU, hard=hard)}
    if hard and pass_ == "fwd":
        providers["torch_topk"] = lambda x: _torch_gumbel_topk_khot(x, k)
    return providers


def _record(op, sizes, k, note, dtype, mode, pass_, entries):
    fused = entries.get("fused", {}).get("median_ms")
    speedup = {name: entry["median_ms"] / fused for name, entry in entries.items()
               if name != "fused" and fused and "median_ms" in entry}
    key = f"{op}/{'x'.join(map(str, sizes))}{'' if k is None else f'/k{k}'}/{DTYPE_NAMES[dtype]}/{mode}/{pass_}"
    return {"key": key, "op": op, "sizes": list(sizes), "k": k, "note": note, "dtype": DTYPE_NAMES[dtype],
            "mode": mode, "pass": pass_, "providers": entries, "speedup": speedup}


def _measure(timer, calls):
    entries = {}
    live = {}
    for name, call in calls.items():
        try:
            call()  # fail fast (and compile kernels) before timing
            live[name] = call
        except Exception as error:  # a failing provider is recorded, never fatal
            entries[name] = error_record(error)
    entries.update(timer.measure(live))
    return {name: entries[name] for name in calls}


def run(device: str | torch.device = "cuda", quick: bool = False) -> list[dict]:
    """Time every case on ``device``; ``quick`` shortens the timing (and the CPU case list)."""
    device = torch.device(device)
    if device.type == "cuda":
        timer = CudaTimer(warmup_ms=10 if quick else 25, rep_ms=25 if quick else 100)
    else:
        timer = WallClockTimer(device, budget_s=0.2 if quick else 1.0)
    kind = "cuda" if device.type == "cuda" else "cpu"
    dtypes = [torch.float32] if quick or device.type != "cuda" else [torch.float32, torch.bfloat16]
    gen = torch.Generator(device=device).manual_seed(0)
    records = []
    for sizes, note in BERNOULLI_SHAPES[kind]:
        for dtype in dtypes:
            logits = (torch.randn(sizes, generator=gen, device=device) * 2).to(dtype)
            grad_out = torch.randn(sizes, generator=gen, device=device).to(dtype)
            for mode in ("soft", "hard"):
                for pass_ in ("fwd", "fwd+bwd"):
                    entries = _measure(timer, _calls(_bernoulli_providers(mode), logits, grad_out, pass_))
                    records.append(_record("relaxed_bernoulli", sizes, None, note, dtype, mode, pass_, entries))
    for sizes, k, note in TOPK_SHAPES[kind]:
        for dtype in dtypes:
            logits = (torch.randn(sizes, generator=gen, device=device) * 2).to(dtype)
            grad_out = torch.randn(sizes, generator=gen, device=device).to(dtype)
            for mode, pass_ in (("soft", "fwd"), ("soft", "fwd+bwd"), ("hard", "fwd"), ("hard", "fwd+bwd"),
                                ("index", "fwd")):
                entries = _measure(timer, _calls(_topk_providers(mode, k, pass_), logits, grad_out, pass_))
                records.append(_record("gumbel_topk", sizes, k, note, dtype, mode, pass_, entries))
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for record in run(args.device, args.quick):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    from . import unset_triton_interpreter

    unset_triton_interpreter()
    sys.exit(main())
