"""End to end: training steps/s of the categorical MNIST VAE with each sampler.

The model and loss are ``fused_gumbel.vae`` 's (Jang, Gu & Poole 2017: MLP 784-512-256-(30x10)
encoder, (30x10)-256-512-784 decoder, negative ELBO against a uniform prior). One step:
encode a batch, draw a relaxed (soft, tau = 1) Gumbel-Softmax sample of the [batch, 30, 10]
logits, decode, loss, backward, Adam update. Images are random binary tensors: the data do
not change the cost of a step, and the suite needs no dataset. Only the sampler differs
between providers; every provider starts from the same initial weights.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

import fused_gumbel
from fused_gumbel import reference

from .timing import WallClockTimer, error_record, synchronize

LATENTS, CATEGORIES, PIXELS = 30, 10, 784
TAU = 1.0
VAE_SAMPLERS = ("fused", "eager", "compile", "reference")


def _relaxed_sampler(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "fused":
        return lambda logits: fused_gumbel.gumbel_softmax(logits, TAU, hard=False)
    if name == "reference":
        return lambda logits: reference.gumbel_softmax(logits, TAU, hard=False)
    if name == "eager":
        return lambda logits: F.gumbel_softmax(logits, TAU, hard=False)
    if name == "compile":
        def eager(logits):
            return F.gumbel_softmax(logits, TAU, hard=False)
        return torch.compile(eager, dynamic=False)
    raise ValueError(f"unknown VAE sampler {name!r}")


def _training_step(name: str, batch: int, device: torch.device, seed: int) -> Callable[[], None]:
    from fused_gumbel.vae.model import CategoricalVAE, negative_elbo

    torch.manual_seed(seed)
    model = CategoricalVAE(latent_dim=LATENTS, categories=CATEGORIES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, PIXELS, generator=torch.Generator().manual_seed(seed)).round().to(device)
    sample = _relaxed_sampler(name)

    def step() -> None:
        encoder_logits = model.encode(images)
        codes = sample(encoder_logits)
        loss, _, _ = negative_elbo(model.decode_logits(codes), images, encoder_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run(device: torch.device, batches=(100, 1024), samplers=VAE_SAMPLERS, steps: int = 20,
        budget_s: float = 3.0, seed: int = 0, log=print) -> list[dict]:
    """Steps/s per (batch, sampler); a sampler that fails (or cannot compile) is recorded as an error."""
    records = []
    for batch in batches:
        calls, errors = {}, {}
        for name in samplers:
            try:
                if name == "compile":
                    torch._dynamo.reset()
                calls[name] = _training_step(name, batch, device, seed)
                calls[name]()  # the first step compiles (torch.compile) and allocates Adam state
                synchronize(device)
            except Exception as error:
                errors[name] = error_record(error)
                calls.pop(name, None)
        timer = WallClockTimer(device, min_rounds=min(steps, 5), max_rounds=steps, budget_s=budget_s)
        timings = timer.measure(calls)
        eager_ms = timings.get("eager", {}).get("median_ms")
        for name in samplers:
            record = {"batch": batch, "sampler": name, **errors.get(name, {}), **timings.get(name, {})}
            if "median_ms" in record:
                record["steps_per_s"] = 1e3 / record["median_ms"]
                if eager_ms:
                    record["speedup_vs_eager"] = eager_ms / record["median_ms"]
            records.append(record)
            log(f"  vae batch {batch:5d} {name:9s} " + (f"{record['steps_per_s']:8.1f} steps/s" if "steps_per_s" in record
                                                        else record.get("error", "")))
        del calls
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records
