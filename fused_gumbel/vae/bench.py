"""Side-by-side VAE training speed (and test loss) of the latent samplers, in one process.

``python -m fused_gumbel.vae.bench --samplers fused torch --epochs 1 --repeats 3``
trains the categorical VAE for ``epochs`` epochs once per sampler per repeat, rotating
the order of the samplers between repeats so that drift in machine load (CPU cores
shared with other jobs) does not favour one of them, and reports for each sampler the
median training seconds per epoch, samples/s, and the mean test loss (negative ELBO,
one-hot samples) reached. It also times the sampler alone: forward + backward of a
``[batch, 30, 10]`` Gumbel-Softmax, the only part of a step that differs between them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from fused_gumbel.vae.data import load_mnist
from fused_gumbel.vae.model import SAMPLER_NAMES, LatentSampler
from fused_gumbel.vae.train import TrainConfig, Trainer, package_versions, resolve_device, DistributedContext

__all__ = ["benchmark_training", "benchmark_sampler", "main"]


def benchmark_sampler(name: str, batch: int = 100, latent_dim: int = 30, categories: int = 10,
                      iterations: int = 500, device: torch.device = torch.device("cpu"),
                      hard: bool = False, tau: float = 0.7) -> float:
    """Microseconds per forward + backward of the relaxed sample alone."""
    sampler = LatentSampler(name)
    logits = torch.randn(batch, latent_dim, categories, device=device, requires_grad=True)
    weights = torch.randn(batch, latent_dim, categories, device=device)

    def one_step() -> None:
        (sampler.relaxed(logits, tau, hard) * weights).sum().backward()

    for _ in range(max(10, iterations // 10)):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(iterations):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / iterations * 1e6


def benchmark_training(samplers: Sequence[str], base: TrainConfig, repeats: int,
                       train_images: torch.Tensor, test_images: torch.Tensor,
                       device: torch.device, log: Any = print) -> dict[str, dict[str, Any]]:
    seconds: dict[str, list[float]] = {name: [] for name in samplers}
    test_losses: dict[str, list[float]] = {name: [] for name in samplers}
    for repeat in range(repeats):
        shift = repeat % len(samplers)
        for name in list(samplers[shift:]) + list(samplers[:shift]):
            config = TrainConfig(**{**base.__dict__, "sampler": name})
            trainer = Trainer(config, train_images, test_images, device)
            for _ in range(config.epochs):
                metrics = trainer.train_epoch()
                trainer.epoch += 1
                seconds[name].append(metrics["seconds"])
            test_losses[name].append(trainer.evaluate()["test_loss"])
            log(f"repeat {repeat + 1}/{repeats} {name:9s} {statistics.median(seconds[name][-config.epochs:]):7.2f} s/epoch"
                f"  test loss {test_losses[name][-1]:.2f}")
    images = train_images.shape[0]
    return {
        name: {
            "seconds_per_epoch_median": statistics.median(seconds[name]),
            "seconds_per_epoch_all": seconds[name],
            "samples_per_s": images / statistics.median(seconds[name]),
            "test_loss_mean": statistics.fmean(test_losses[name]),
            "test_loss_all": test_losses[name],
        }
        for name in samplers
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fused_gumbel.vae.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samplers", nargs="+", choices=SAMPLER_NAMES, default=["fused", "torch"])
    parser.add_argument("--epochs", type=int, default=1, help="epochs per training run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-recipe", action="store_true")
    parser.add_argument("--hard", action="store_true")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--data-root")
    parser.add_argument("--device")
    parser.add_argument("--sampler-iterations", type=int, default=500, help="0 skips the sampler-only timing")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    base = TrainConfig.from_recipe(seed_recipe=args.seed_recipe, epochs=args.epochs, seed=args.seed,
                                   limit=args.limit, hard=args.hard, quiet=True)
    device = resolve_device(args.device, DistributedContext())
    train_images = load_mnist(args.data_root, train=True)
    test_images = load_mnist(args.data_root, train=False)
    if args.limit is not None:
        train_images = train_images[: args.limit]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": package_versions(),
        "config": base.__dict__,
        "repeats": args.repeats,
        "training": benchmark_training(args.samplers, base, args.repeats, train_images, test_images, device, log),
    }
    if args.sampler_iterations > 0:
        results["sampler_us_per_forward_backward"] = {
            name: benchmark_sampler(name, iterations=args.sampler_iterations, device=device, hard=args.hard)
            for name in args.samplers
        }
    print(f"{'sampler':10s} {'s/epoch':>8s} {'samples/s':>10s} {'test loss':>10s} {'sampler us':>11s}")
    for name, row in results["training"].items():
        micro = results.get("sampler_us_per_forward_backward", {}).get(name, float("nan"))
        print(f"{name:10s} {row['seconds_per_epoch_median']:8.2f} {row['samples_per_s']:10.0f} "
              f"{row['test_loss_mean']:10.2f} {micro:11.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
