"""Training loop for the categorical VAE (Jang, Gu & Poole, ICLR 2017) on MNIST.

Adam (lr 1e-3), batch 100, one relaxed Gumbel-Softmax sample per image. Each epoch
reports the three numbers of the classic PyTorch tutorial this reproduces: the training
loss with the relaxed sample (the objective being optimised), the training loss with an
exact one-hot categorical sample from the same encoder logits (the unrelaxed objective,
no gradient) and the test loss with one-hot samples. All three are the negative ELBO in
nats per image.

Three recipes: ``seed`` (the tutorial's configuration: ReLU on the encoder logits, fixed
tau = 1, soft samples), the default (no ReLU on the logits, tau annealed
``max(0.5, exp(-1e-4 t))`` every 100 steps as in Jang et al.) and ``reinmax`` (the MNIST-VAE
setting of Liu et al., NeurIPS 2023, "Bridging Discrete and Backpropagation: Straight-Through
and Beyond", from their scripts: hard samples with the ReinMax estimator, fixed tau 1.3,
RAdam lr 5e-4, 160 epochs).

``estimator`` picks the backward of hard samples (``fused_gumbel.gumbel_softmax(...,
hard=True, estimator=...)``): "st" (straight-through Gumbel-Softmax, the default),
"gumbel_rao" (Paulus et al., ICLR 2021, averaged over ``mc_samples`` conditional draws) or
"reinmax". The forward one-hot is the same for all three.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
DistributedDataParallel and the data sharded with a DistributedSampler; the global batch
stays ``batch_size``; each rank seeds its own noise; rank 0 writes all outputs.
``latent="bernoulli"`` (``--latent bernoulli``) swaps in the 200-binary-latent
``BernoulliVAE`` of ``fused_gumbel.vae.bernoulli`` (relaxed Bernoulli samples, Bernoulli(1/2)
prior); the loop, recipes and outputs are the same.
Reproducibility: the model is initialised from ``seed``, and at the start of every
epoch the noise RNG and the shuffle are re-seeded from ``(seed, rank, epoch)``, so a run
resumed from a checkpoint continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from fused_gumbel.schedules import ConstantSchedule, ExponentialDecay, TemperatureSchedule
from fused_gumbel.vae.bernoulli import LATENTS as BERNOULLI_LATENTS
from fused_gumbel.vae.bernoulli import BernoulliSampler, BernoulliVAE, negative_elbo_bernoulli
from fused_gumbel.vae.data import ImageTensorDataset, collate_batch, load_mnist
from fused_gumbel.vae.model import CategoricalVAE, LatentSampler, estimator_support_error, negative_elbo

__all__ = [
    "TrainConfig",
    "SEED_RECIPE",
    "DEFAULT_RECIPE",
    "Trainer",
    "DistributedContext",
    "run_training",
    "load_checkpoint",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
SAMPLES_NAME = "samples.png"
RECONSTRUCTIONS_NAME = "reconstructions.png"
LOSS_CURVE_NAME = "loss_curve.png"

# The tutorial's configuration, reproduced side by side with ours.
SEED_RECIPE: dict[str, Any] = dict(relu_logits=True, tau=1.0, anneal_rate=0.0, hard=False)
# Ours: unclipped logits, tau annealed 1.0 -> 0.5 with Jang et al.'s r = 1e-4.
DEFAULT_RECIPE: dict[str, Any] = dict(relu_logits=False, tau=1.0, anneal_rate=1e-4, min_tau=0.5, hard=False)
# Liu et al. 2023's MNIST-VAE (github.com/LiyuanLucasLiu/ReinMax, mnist_vae/reinmax_10_30.sh and
# gumbel_softmax_vae.py): same MLPs and loss, unclipped logits, fixed tau 1.3, RAdam 5e-4,
# batch 100, 160 epochs.
REINMAX_RECIPE: dict[str, Any] = dict(relu_logits=False, tau=1.3, anneal_rate=0.0, hard=True, estimator="reinmax",
                                      optimizer="radam", lr=5e-4, epochs=160)
RECIPES: dict[str, dict[str, Any]] = {"default": DEFAULT_RECIPE, "seed": SEED_RECIPE, "reinmax": REINMAX_RECIPE}
LATENT_KINDS = ("categorical", "bernoulli")
ESTIMATORS = ("st", "gumbel_rao", "reinmax")
OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    sampler: str = "fused"
    hard: bool = False
    tau: float = 1.0
    anneal_rate: float = 1e-4
    min_tau: float = 0.5
    anneal_every: int = 100
    learn_tau: bool = False
    seed_recipe: bool = False
    relu_logits: bool = False
    batch_size: int = 100
    lr: float = 1e-3
    latent_dim: int = 30
    categories: int = 10
    limit: int | None = None
    data_root: str | None = None
    out: str | None = None
    device: str | None = None
    amp: str = "none"
    quiet: bool = False
    latent: str = "categorical"
    estimator: str = "st"
    mc_samples: int | None = None
    optimizer: str = "adam"
    recipe: str = "default"

    def __post_init__(self) -> None:
        # Checkpoints from before ``recipe`` existed only recorded ``seed_recipe``.
        if self.seed_recipe and self.recipe == "default":
            self.recipe = "seed"

    @classmethod
    def from_recipe(cls, seed_recipe: bool = False, recipe: str | None = None, **overrides: Any) -> "TrainConfig":
        """A recipe (``RECIPES``; ``seed_recipe=True`` is ``recipe="seed"``), with explicitly
        chosen options on top."""
        if recipe is None:
            recipe = "seed" if seed_recipe else "default"
        elif seed_recipe and recipe != "seed":
            raise ValueError(f"--seed-recipe contradicts --recipe {recipe}")
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        values = dict(RECIPES[recipe])
        if overrides.get("learn_tau") and "anneal_rate" not in overrides:
            values["anneal_rate"] = 0.0  # a learned temperature replaces the schedule
        if overrides.get("latent") == "bernoulli":
            # Jang et al.'s Bernoulli VAE: 200 binary (two-class) latents.
            values.update(latent_dim=BERNOULLI_LATENTS, categories=2)
        values.update(overrides)
        config = cls(seed_recipe=recipe == "seed", recipe=recipe, **values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.sampler not in ("fused", "reference", "torch"):
            raise ValueError(f"unknown sampler {self.sampler!r}")
        if self.latent not in LATENT_KINDS:
            raise ValueError(f"unknown latent {self.latent!r}; choose from {', '.join(LATENT_KINDS)}")
        if self.latent == "bernoulli" and self.relu_logits:
            raise ValueError("the seed recipe's ReLU on the encoder logits is for --latent categorical only")
        if self.learn_tau and self.anneal_rate > 0:
            raise ValueError("--learn-tau and --anneal-rate > 0 are exclusive: the temperature is either learned or scheduled")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"--amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be a positive number of images")
        if not self.tau > 0:
            raise ValueError("--tau must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        self._validate_estimator()

    def _validate_estimator(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.mc_samples is not None:
            if self.estimator != "gumbel_rao":
                raise ValueError("--mc-samples is the number of Gumbel-Rao draws: it needs --estimator gumbel_rao")
            if self.mc_samples < 1:
                raise ValueError("--mc-samples must be >= 1")
        if self.estimator == "st":
            return
        if not self.hard:
            raise ValueError(f"--estimator {self.estimator} is a straight-through estimator (it replaces the "
                             "backward of hard one-hot samples); this recipe draws soft samples: add --hard, "
                             "or use --estimator st")
        if self.latent != "categorical":
            raise ValueError(f"--estimator {self.estimator} is for categorical latents; "
                             "--latent bernoulli supports st only")
        if self.sampler == "torch":
            raise ValueError(f"--estimator {self.estimator} needs --sampler fused or reference: "
                             "torch.nn.functional.gumbel_softmax has straight-through only")
        missing = estimator_support_error(self.sampler)
        if missing:
            raise ValueError(f"--estimator {self.estimator}: {missing}")

    def make_schedule(self) -> TemperatureSchedule:
        if self.anneal_rate > 0:
            return ExponentialDecay(tau0=self.tau, rate=self.anneal_rate, min_tau=self.min_tau, every=self.anneal_every)
        return ConstantSchedule(self.tau)


@dataclass
class DistributedContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistributedContext":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(world_size, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        if self.enabled:
            # gloo reduces on CPU; NCCL on the tensor's own CUDA device.
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


def _noise_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63 - 1)


def _shuffle_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + 7_919 * (epoch + 1)) % (2**63 - 1)


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for distribution in ("fused-gumbel", "triton", "torchvision"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    return versions


def git_commit() -> str | None:
    """HEAD of the source checkout this package runs from, with "-dirty" if the package's
    tracked files differ from it; None outside a git checkout."""
    import subprocess

    source = Path(__file__).resolve().parents[2]
    if not (source / "pyproject.toml").is_file():  # an installed copy, not a checkout
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "fused_gumbel", "kernels"],
                               cwd=source, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def resolve_device(requested: str | None, context: DistributedContext) -> torch.device:
    if requested is None:
        requested = f"cuda:{context.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", context.local_rank)
    return device


class Trainer:
    """Model, optimiser, temperature schedule and data of one run (one rank)."""

    def __init__(
        self,
        config: TrainConfig,
        train_images: Tensor,
        test_images: Tensor,
        device: torch.device,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.context = context or DistributedContext()
        if config.batch_size % self.context.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {self.context.world_size} processes")
        self.rank_batch_size = config.batch_size // self.context.world_size
        self.sampler: LatentSampler | BernoulliSampler
        self.model: CategoricalVAE | BernoulliVAE
        if config.latent == "bernoulli":
            self.sampler = BernoulliSampler(config.sampler)
            torch.manual_seed(config.seed)  # identical initial weights on every rank
            self.model = BernoulliVAE(config.latent_dim, learn_tau=config.learn_tau, initial_tau=config.tau).to(device)
            self.loss_fn = negative_elbo_bernoulli
        else:
            self.sampler = LatentSampler(config.sampler, config.estimator, config.mc_samples)
            torch.manual_seed(config.seed)  # identical initial weights on every rank
            self.model = CategoricalVAE(
                config.latent_dim, config.categories, relu_logits=config.relu_logits,
                learn_tau=config.learn_tau, initial_tau=config.tau,
            ).to(device)
            self.loss_fn = negative_elbo
        self.optimizer = OPTIMIZERS[config.optimizer](self.model.parameters(), lr=config.lr)
        self.schedule = config.make_schedule()
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        # MNIST fits in any accelerator's memory: keep it there, index batches in place.
        self.train_dataset = ImageTensorDataset(train_images.to(device))
        # Each rank evaluates a disjoint, exact shard of the test set.
        self.test_images = test_images[self.context.rank :: self.context.world_size].to(device)
        self.wrapped_model: torch.nn.Module = self.model
        if self.context.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [device.index] if device.type == "cuda" else None
            self.wrapped_model = DistributedDataParallel(self.model, device_ids=device_ids)

    # ---------------------------------------------------------------- state
    @property
    def tau(self) -> float:
        if self.model.learns_tau:
            return float(self.model.learned_tau().detach())
        return self.schedule.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "config": dataclasses.asdict(self.config),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    # ---------------------------------------------------------------- loops
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_loader(self, epoch: int) -> DataLoader:
        if self.context.enabled:
            sampler: Any = DistributedSampler(
                self.train_dataset, num_replicas=self.context.world_size, rank=self.context.rank,
                shuffle=True, seed=self.config.seed,
            )
            sampler.set_epoch(epoch)
        else:
            generator = torch.Generator().manual_seed(_shuffle_seed(self.config.seed, epoch))
            sampler = RandomSampler(self.train_dataset, generator=generator)
        batches = BatchSampler(sampler, self.rank_batch_size, drop_last=False)
        return DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=collate_batch)

    def train_epoch(self, progress: Any = None) -> dict[str, float]:
        """One pass over the training data; returns the epoch's mean relaxed and
        unrelaxed losses (over all ranks), tau, seconds and samples/s."""
        torch.manual_seed(_noise_seed(self.config.seed, self.context.rank, self.epoch))
        loader = self._train_loader(self.epoch)
        self.wrapped_model.train()
        loss_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # relaxed, unrelaxed
        images_seen = 0
        started = time.perf_counter()
        for batch_index, images in enumerate(loader):
            batch = images.shape[0]
            with self._autocast():
                decoder_logits, encoder_logits = self.wrapped_model(
                    images, self.sampler, self.schedule.value, self.config.hard
                )
            loss, _, _ = self.loss_fn(decoder_logits, images, encoder_logits)
            with torch.no_grad(), self._autocast():
                # The unrelaxed objective at the same parameters: an exact one-hot draw
                # from the same logits, through the decoder the relaxed loss just used.
                one_hot = self.sampler.discrete(encoder_logits.detach())
                unrelaxed, _, _ = self.loss_fn(self.model.decode_logits(one_hot), images, encoder_logits.detach())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            self.schedule.step()
            loss_sums += torch.stack([loss.detach().double(), unrelaxed.double()]) * batch
            images_seen += batch
            if progress is not None:
                progress.update(1)
                if batch_index % 20 == 0:
                    elapsed = time.perf_counter() - started
                    progress.set_postfix(
                        loss=f"{float(loss.detach()):.1f}", tau=f"{self.tau:.3f}",
                        samples_per_s=f"{self.context.world_size * images_seen / max(elapsed, 1e-9):.0f}",
                    )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        totals = self.context.all_reduce_sum(
            torch.cat([loss_sums, torch.tensor([float(images_seen)], dtype=torch.float64, device=self.device)]))
        all_ranks_images = float(totals[2])
        return {
            "train_loss_relaxed": float(totals[0]) / all_ranks_images,
            "train_loss_unrelaxed": float(totals[1]) / all_ranks_images,
            "tau": self.tau,
            "seconds": seconds,
            "samples_per_s": all_ranks_images / seconds,
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test negative ELBO with exact one-hot samples, over the whole test set."""
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, bce, kl
        for start in range(0, self.test_images.shape[0], self.rank_batch_size):
            images = self.test_images[start : start + self.rank_batch_size]
            with self._autocast():
                encoder_logits = self.model.encode(images)
                decoder_logits = self.model.decode_logits(self.sampler.discrete(encoder_logits))
            sums += torch.stack(self.loss_fn(decoder_logits, images, encoder_logits)).double() * images.shape[0]
        count = torch.tensor([float(self.test_images.shape[0])], dtype=torch.float64, device=self.device)
        totals = self.context.all_reduce_sum(torch.cat([sums, count]))
        loss, bce, kl = (float(total / totals[3]) for total in totals[:3])
        return {"test_loss": loss, "test_bce": bce, "test_kl": kl}

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def prior_samples(self, count: int = 64, seed: int = 0) -> Tensor:
        """Decoded images of latents drawn from the prior (uniform categorical, or
        Bernoulli(1/2)), ``[count, 1, 28, 28]``."""
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        if isinstance(self.model, BernoulliVAE):
            return self.model.decode(self.model.prior_codes(count, generator)).float().cpu().view(count, 1, 28, 28)
        classes = torch.randint(0, self.config.categories, (count, self.config.latent_dim), generator=generator)
        codes = torch.nn.functional.one_hot(classes, self.config.categories).float().to(self.device)
        return self.model.decode(codes).float().cpu().view(count, 1, 28, 28)

    @torch.no_grad()
    def reconstructions(self, per_row: int = 8, row_pairs: int = 2) -> Tensor:
        """Test images (one row) above their reconstructions from a one-hot sample
        (the next row), ``row_pairs`` times."""
        self.model.eval()
        images = self.test_images[: per_row * row_pairs].to(self.device)
        codes = self.sampler.discrete(self.model.encode(images).float())
        recon = self.model.decode(codes).float().cpu()
        rows = []
        for pair in range(row_pairs):
            rows.append(images[pair * per_row : (pair + 1) * per_row].cpu())
            rows.append(recon[pair * per_row : (pair + 1) * per_row])
        return torch.cat(rows).view(-1, 1, 28, 28)


# -------------------------------------------------------------------- outputs
def _atomic_write_bytes(path: Path, write: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def write_metrics(out_dir: Path, trainer: Trainer, device: torch.device, finished: bool,
                  commit: str | None = None) -> None:
    metrics = {
        "config": dataclasses.asdict(trainer.config),
        "versions": package_versions(),
        "git_commit": commit,
        "device": str(device),
        "world_size": trainer.context.world_size,
        "train_images": len(trainer.train_dataset),
        "step": trainer.step,
        "finished": finished,
        "epochs": trainer.history,
    }
    text = json.dumps(metrics, indent=2)
    _atomic_write_bytes(out_dir / METRICS_NAME, lambda p: p.write_text(text))


def write_images(out_dir: Path, trainer: Trainer) -> None:
    from torchvision.utils import save_image

    save_image(trainer.prior_samples(64, seed=trainer.config.seed), out_dir / SAMPLES_NAME, nrow=8)
    save_image(trainer.reconstructions(), out_dir / RECONSTRUCTIONS_NAME, nrow=8)
    write_loss_curve(out_dir / LOSS_CURVE_NAME, trainer.history, title=_run_title(trainer.config))


def _run_title(config: TrainConfig) -> str:
    recipe = f"{config.recipe} recipe"
    mode = f"hard, {_estimator_label(config)}" if config.hard else "soft"
    tau = "learned tau" if config.learn_tau else (
        f"tau {config.tau:g}->{config.min_tau:g}" if config.anneal_rate > 0 else f"tau {config.tau:g}")
    return f"{config.latent} VAE, {recipe}, {mode}, {tau}, sampler {config.sampler}, seed {config.seed}"


def _estimator_label(config: TrainConfig) -> str:
    if config.estimator == "gumbel_rao" and config.mc_samples is not None:
        return f"gumbel_rao K={config.mc_samples}"
    return config.estimator


def write_loss_curve(path: Path, history: list[dict[str, Any]], title: str = "") -> None:
    # Figure + Agg canvas directly: no pyplot, no GUI backend, no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = [entry["epoch"] for entry in history]
    for key, label in (("train_loss_relaxed", "train, relaxed sample"),
                       ("train_loss_unrelaxed", "train, one-hot sample (unrelaxed)"),
                       ("test_loss", "test, one-hot sample")):
        axes.plot(epochs, [entry[key] for entry in history], marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("negative ELBO (nats / image)")
    if title:
        axes.set_title(title, fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def save_checkpoint(out_dir: Path, trainer: Trainer) -> None:
    state = trainer.state_dict()
    _atomic_write_bytes(out_dir / CHECKPOINT_NAME, lambda p: torch.save(state, p))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The checkpoint at ``path`` (a file, or a run directory holding checkpoint.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False), path


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# -------------------------------------------------------------------- driver
def _epoch_line(entry: dict[str, Any], total_epochs: int) -> str:
    return (f"epoch {entry['epoch']}/{total_epochs} step {entry['step']}  "
            f"train relaxed {entry['train_loss_relaxed']:.2f}  unrelaxed {entry['train_loss_unrelaxed']:.2f}  "
            f"test {entry['test_loss']:.2f}  tau {entry['tau']:.3f}  "
            f"{entry['seconds']:.1f} s  {entry['samples_per_s']:.0f} samples/s")


def _log(message: str, quiet: bool) -> None:
    if quiet:
        print(message, flush=True)
    else:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)


def _progress_bar(total: int, epoch: int, epochs: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="step", disable=disable,
                dynamic_ncols=True, leave=True)


def _iterate_epochs(trainer: Trainer) -> Iterator[int]:
    while trainer.epoch < trainer.config.epochs:
        yield trainer.epoch + 1


def run_training(config: TrainConfig, checkpoint: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or continue ``checkpoint``) until ``config.epochs``; returns the last
    epoch's metrics (empty if there was nothing left to do)."""
    context = DistributedContext.from_env()
    device = resolve_device(config.device, context)
    if context.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(config, checkpoint, out_dir, context, device)
    finally:
        if context.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _run(config: TrainConfig, checkpoint: dict[str, Any] | None, out_dir: str | os.PathLike | None,
         context: DistributedContext, device: torch.device) -> dict[str, Any]:
    out_path = Path(out_dir or config.out or default_out_dir())
    config.out = str(out_path)

    if not context.is_main:
        context.barrier()  # rank 0 downloads MNIST first, if it has to
    train_images = load_mnist(config.data_root, train=True)
    test_images = load_mnist(config.data_root, train=False)
    if context.is_main:
        context.barrier()
    if config.limit is not None:
        train_images = train_images[: config.limit]

    trainer = Trainer(config, train_images, test_images, device, context)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    if context.is_main:
        out_path.mkdir(parents=True, exist_ok=True)
        _log(f"{_run_title(config)}; {len(train_images)} training images, {context.world_size} process(es) "
             f"on {device}; step {trainer.step}, output in {out_path}", config.quiet)

    commit = git_commit() if context.is_main else None  # the code this run started on
    steps_per_epoch = math.ceil(math.ceil(len(train_images) / context.world_size) / trainer.rank_batch_size)
    last: dict[str, Any] = {}
    for epoch in _iterate_epochs(trainer):
        progress = _progress_bar(steps_per_epoch, epoch, config.epochs, disable=config.quiet or not context.is_main)
        try:
            train_metrics = trainer.train_epoch(progress)
        finally:
            progress.close()
        test_metrics = trainer.evaluate()
        trainer.epoch = epoch
        last = {"epoch": epoch, "step": trainer.step, **train_metrics, **test_metrics}
        trainer.history.append(last)
        if context.is_main:
            _log(_epoch_line(last, config.epochs), config.quiet)
            save_checkpoint(out_path, trainer)
            write_metrics(out_path, trainer, device, finished=trainer.epoch >= config.epochs, commit=commit)
            write_images(out_path, trainer)
        context.barrier()
    if context.is_main and not last:
        _log(f"nothing to do: the checkpoint already has {trainer.epoch} of {config.epochs} epochs", config.quiet)
    return last
