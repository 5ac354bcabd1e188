"""Command line for the categorical VAE: ``python -m fused_gumbel.vae`` / ``fused-gumbel-vae``.

Trains the Gumbel-Softmax VAE of Jang, Gu & Poole (ICLR 2017) on MNIST and writes a run
directory (metrics.json, checkpoint.pt, samples.png, reconstructions.png,
loss_curve.png). Under ``torchrun --nproc_per_node N`` it trains with
DistributedDataParallel. Options left unset take their value from the recipe
(``--seed-recipe`` or the default one) or, with ``--resume``, from the checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

__all__ = ["build_parser", "config_from_args", "resumed_config", "main"]

# Options that may differ when a run is continued; the rest must match the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "out", "device", "amp", "quiet", "data_root")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fused-gumbel-vae",
        description="Categorical (30x10) Gumbel-Softmax VAE on MNIST with the fused sampler.",
    )
    # Every default is None so that "not given" can be told apart from "given":
    # the recipe, or the checkpoint being resumed, fills in the rest.
    add = parser.add_argument
    add("--epochs", type=int, help="total epochs to train (default 10; with --resume, the new total)")
    add("--seed", type=int, help="seed for weights, shuffling and noise (default 0)")
    add("--latent", choices=("categorical", "bernoulli"),
        help="30x10 categorical latents (default) or Jang et al.'s 200 binary latents (relaxed Bernoulli)")
    add("--sampler", choices=("fused", "reference", "torch"),
        help="fused_gumbel.gumbel_softmax (default), fused_gumbel.reference or torch.nn.functional")
    add("--hard", action=argparse.BooleanOptionalAction, help="straight-through one-hot samples")
    add("--tau", type=float, help="initial temperature (default 1.0)")
    add("--anneal-rate", type=float,
        help="r in tau = max(min_tau, tau * exp(-r * step)), updated every 100 steps (default 1e-4; 0 = fixed tau)")
    add("--min-tau", type=float, help="annealing floor (default 0.5)")
    add("--learn-tau", action=argparse.BooleanOptionalAction,
        help="learn the temperature as a parameter (through the gradient w.r.t. tau) instead of annealing")
    add("--seed-recipe", action="store_true",
        help="the seed tutorial's configuration: ReLU on the encoder logits, fixed tau 1.0, soft samples "
             "(same as --recipe seed)")
    add("--recipe", choices=("default", "seed", "reinmax"),
        help="default: tau annealed 1.0 -> 0.5, soft; seed: the tutorial's; reinmax: Liu et al. 2023's "
             "MNIST-VAE (hard, --estimator reinmax, fixed tau 1.3, RAdam 5e-4, 160 epochs)")
    add("--estimator", choices=("st", "gumbel_rao", "reinmax"),
        help="gradient of hard samples: straight-through Gumbel-Softmax (default), Gumbel-Rao or ReinMax; "
             "gumbel_rao and reinmax need --hard")
    add("--mc-samples", type=int, help="Gumbel-Rao: conditional Gumbel draws averaged per gradient (K)")
    add("--optimizer", choices=("adam", "radam"), help="default adam (radam in --recipe reinmax)")
    add("--batch-size", type=int, help="global batch size (default 100)")
    add("--lr", type=float, help="Adam learning rate (default 1e-3)")
    add("--limit", type=int, help="train on the first N training images only (smoke tests)")
    add("--data-root", help="directory holding MNIST/raw (default $FUSED_GUMBEL_DATA, else ./data)")
    add("--out", help="run directory (default runs/<timestamp>; with --resume, the resumed run's)")
    add("--resume", help="continue from a checkpoint file or a run directory holding checkpoint.pt")
    add("--device", help="cpu, cuda, cuda:1, ... (default: the local GPU if any, else cpu)")
    add("--amp", choices=("none", "bf16"), help="bf16 autocast for the MLPs (meant for GPUs)")
    add("--quiet", action=argparse.BooleanOptionalAction, help="plain log lines instead of progress bars")
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """``(config, checkpoint)`` from parsed arguments; ``checkpoint`` is None unless resuming."""
    from fused_gumbel.vae.train import TrainConfig, load_checkpoint

    given: dict[str, Any] = {key: value for key, value in vars(args).items()
                             if value is not None and key not in ("resume", "seed_recipe", "recipe")}
    if args.resume is None:
        try:
            return TrainConfig.from_recipe(seed_recipe=args.seed_recipe, recipe=args.recipe, **given), None
        except ValueError as error:
            parser.error(str(error))

    try:
        checkpoint, checkpoint_path = load_checkpoint(args.resume)
    except FileNotFoundError as error:
        parser.error(str(error))
    try:
        return resumed_config(checkpoint, checkpoint_path, given, args.seed_recipe, args.recipe), checkpoint
    except ValueError as error:
        parser.error(str(error))


def resumed_config(checkpoint: dict[str, Any], checkpoint_path, given: dict[str, Any],
                   seed_recipe: bool = False, recipe: str | None = None):
    """The config that continues ``checkpoint``: its own, with the ``given`` options of
    ``RESUMABLE_OVERRIDES`` on top; ValueError if ``given`` changes anything else."""
    from fused_gumbel.vae.train import TrainConfig

    # A checkpoint written before a config field existed ran with that field's default.
    stored = {**dataclasses.asdict(TrainConfig()), **checkpoint["config"]}
    conflicting = sorted(key for key in given if key not in RESUMABLE_OVERRIDES and given[key] != stored[key])
    if seed_recipe and not checkpoint["config"].get("seed_recipe"):
        conflicting.append("seed_recipe")
    if recipe is not None and recipe != TrainConfig(**checkpoint["config"]).recipe:
        conflicting.append("recipe")
    if conflicting:
        raise ValueError("cannot change " + ", ".join("--" + key.replace("_", "-") for key in conflicting)
                         + " when resuming; only " + ", ".join("--" + k.replace("_", "-") for k in RESUMABLE_OVERRIDES)
                         + " may differ")
    values = dict(checkpoint["config"])
    values["out"] = str(checkpoint_path.parent)
    values.update({key: given[key] for key in RESUMABLE_OVERRIDES if key in given})
    config = TrainConfig(**values)
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config, checkpoint = config_from_args(args, parser)

    from fused_gumbel.vae.data import MNISTUnavailableError
    from fused_gumbel.vae.train import run_training

    try:
        run_training(config, checkpoint)
    except MNISTUnavailableError as error:
        print(f"fused-gumbel-vae: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fused-gumbel-vae: interrupted; the last finished epoch is in the checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
