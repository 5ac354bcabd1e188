"""Estimators x seeds study of the categorical VAE: ``python -m fused_gumbel.vae.study``.

Trains one run of ``fused_gumbel.vae`` per (estimator, seed), sequentially, into
``OUT/<estimator>_s<seed>`` (``gumbel_rao_k<K>`` with ``--mc-samples K``), then summarises
them: for each estimator the mean +- sample standard deviation over seeds of the final test
negative ELBO (exact one-hot samples, nats per image) and of the training wall time per epoch,
as ``OUT/results.json`` and ``OUT/results.md`` with the git commit(s) the runs ran on, and a
plot of the test loss per epoch (mean over seeds, min-max band) into ``docs/img``.

It is resumable: a finished run is skipped, an unfinished one continues from its checkpoint
(every epoch re-seeds its shuffle and noise, so the result is the uninterrupted run's).
``--report`` only rebuilds the table and plot from the run directories there, and
``--update-docs`` rewrites the generated block ``<!-- vae-study:NAME:begin/end -->`` of
docs/vae.md (and of the README, where it has one), so the documented numbers are always these
outputs.

The estimators (``fused_gumbel.gumbel_softmax(..., hard=True, estimator=...)``): "st"
(straight-through Gumbel-Softmax, Jang et al. 2017), "gumbel_rao" (Paulus et al., ICLR 2021)
and "reinmax" (Liu et al., NeurIPS 2023). With a soft recipe (``--no-hard``) only "st" applies
and the study is a seeds study of that recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from fused_gumbel.vae.train import (
    ESTIMATORS,
    METRICS_NAME,
    RECIPES,
    TrainConfig,
    git_commit,
    load_checkpoint,
    run_training,
)
from fused_gumbel.vae.model import estimator_support_error

__all__ = ["StudySpec", "run_study", "collect_results", "results_markdown", "write_plot", "update_docs", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_PATH = REPO_ROOT / "docs" / "vae.md"
README_PATH = REPO_ROOT / "README.md"
IMG_DIR = REPO_ROOT / "docs" / "img"
RESULTS_JSON, RESULTS_MD, STUDY_JSON = "results.json", "results.md", "study.json"


def doc_markers(name: str) -> tuple[str, str]:
    return f"<!-- vae-study:{name}:begin -->", f"<!-- vae-study:{name}:end -->"


@dataclasses.dataclass
class StudySpec:
    """What the study trains: the run options shared by every run, and the grid."""

    out: str
    estimators: list[str]
    seeds: list[int]
    epochs: int
    recipe: str = "default"
    hard: bool | None = None  # None: the recipe's, made True when an estimator is not "st"
    mc_samples: int | None = None
    limit: int | None = None
    data_root: str | None = None
    device: str | None = None
    name: str | None = None

    @property
    def uses_hard_samples(self) -> bool:
        """Every run of a study samples alike, so that the estimators are the only difference:
        hard if asked, or if the recipe is, or if any estimator is not "st"."""
        if self.hard is not None:
            return self.hard
        return bool(RECIPES[self.recipe].get("hard", False)) or any(e != "st" for e in self.estimators)

    def unavailable(self) -> dict[str, str]:
        """Estimators this build's ``gumbel_softmax`` cannot run, with the reason."""
        reasons = {e: estimator_support_error("fused") for e in self.estimators if e != "st"}
        return {e: reason for e, reason in reasons.items() if reason}

    @property
    def study_name(self) -> str:
        return self.name or Path(self.out).name

    def label(self, estimator: str) -> str:
        if estimator == "gumbel_rao" and self.mc_samples is not None:
            return f"gumbel_rao_k{self.mc_samples}"
        return estimator

    def run_dir(self, estimator: str, seed: int) -> Path:
        return Path(self.out) / f"{self.label(estimator)}_s{seed}"

    def config(self, estimator: str, seed: int) -> TrainConfig:
        options: dict[str, Any] = dict(epochs=self.epochs, seed=seed, estimator=estimator, limit=self.limit,
                                       data_root=self.data_root, device=self.device, quiet=True,
                                       out=str(self.run_dir(estimator, seed)))
        options["hard"] = self.uses_hard_samples
        if estimator == "gumbel_rao" and self.mc_samples is not None:
            options["mc_samples"] = self.mc_samples
        return TrainConfig.from_recipe(recipe=self.recipe, **options)


def _run_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def run_study(spec: StudySpec, log: Any = print) -> list[Path]:
    """Train every (estimator, seed) run that is not finished yet; returns the run dirs."""
    from fused_gumbel.vae.__main__ import resumed_config

    unavailable = spec.unavailable()
    for estimator, reason in unavailable.items():
        log(f"{spec.label(estimator)}: skipped, {reason}")
    configs = [spec.config(estimator, seed) for estimator in spec.estimators if estimator not in unavailable
               for seed in spec.seeds]
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    (Path(spec.out) / STUDY_JSON).write_text(json.dumps(dataclasses.asdict(spec), indent=2))
    for index, config in enumerate(configs, 1):
        run_dir = Path(config.out)
        where = f"[{index}/{len(configs)}] {run_dir.name}"
        state = _run_state(run_dir)
        if state is not None and len(state["epochs"]) >= config.epochs:
            log(f"{where}: finished ({len(state['epochs'])} epochs), skipped")
            continue
        checkpoint = None
        if (run_dir / "checkpoint.pt").is_file():
            checkpoint, checkpoint_path = load_checkpoint(run_dir)
            wanted = {key: value for key, value in dataclasses.asdict(config).items() if key != "seed_recipe"}
            # Refuses a run directory that was made with other options than this study's.
            config = resumed_config(checkpoint, checkpoint_path, wanted)
            log(f"{where}: resuming at epoch {checkpoint['epoch']} of {config.epochs}")
        else:
            log(f"{where}: training {config.epochs} epochs")
        last = run_training(config, checkpoint)
        if last:
            log(f"{where}: test loss {last['test_loss']:.2f}")
    return [Path(config.out) for config in configs]


# ------------------------------------------------------------------------ results
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def collect_results(spec: StudySpec) -> dict[str, Any]:
    """The study's table from its run directories (finished runs only; the rest are listed
    as missing)."""
    rows: dict[str, Any] = {}
    commits: set[str] = set()
    missing: list[str] = []
    for estimator in spec.estimators:
        per_seed: dict[str, Any] = {}
        for seed in spec.seeds:
            run_dir = spec.run_dir(estimator, seed)
            state = _run_state(run_dir)
            if state is None or len(state["epochs"]) < spec.epochs:
                done = 0 if state is None else len(state["epochs"])
                missing.append(f"{run_dir.name} ({done}/{spec.epochs} epochs)")
                continue
            epochs = state["epochs"][: spec.epochs]
            commits.add(state.get("git_commit") or "unknown")
            per_seed[str(seed)] = {
                "test_loss": epochs[-1]["test_loss"],
                "train_loss_relaxed": epochs[-1]["train_loss_relaxed"],
                "train_loss_unrelaxed": epochs[-1]["train_loss_unrelaxed"],
                "seconds_per_epoch": statistics.fmean(e["seconds"] for e in epochs),
                "test_loss_curve": [e["test_loss"] for e in epochs],
                "tau_end": epochs[-1]["tau"],
                "device": state.get("device"),
                "train_images": state.get("train_images"),
            }
        summary: dict[str, Any] = {"seeds": per_seed}
        for key in ("test_loss", "train_loss_relaxed", "train_loss_unrelaxed", "seconds_per_epoch"):
            mean, std = _mean_std([run[key] for run in per_seed.values()])
            summary[key] = {"mean": mean, "std": std}
        rows[spec.label(estimator)] = summary
    # "st" runs on every build and shares all the options that the table describes.
    example = TrainConfig.from_recipe(recipe=spec.recipe, hard=spec.uses_hard_samples, limit=spec.limit)
    return {
        "study": spec.study_name,
        "spec": dataclasses.asdict(spec),
        "config": {key: getattr(example, key) for key in (
            "recipe", "hard", "tau", "anneal_rate", "min_tau", "relu_logits", "optimizer", "lr", "batch_size",
            "latent_dim", "categories", "sampler", "limit")},
        "git_commits": sorted(commits),
        "report_commit": git_commit(),
        "missing": missing,
        "unavailable": spec.unavailable(),
        "estimators": rows,
    }


def _format(stat: dict[str, float | None], digits: int) -> str:
    if stat["mean"] is None:
        return "–"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def study_command(spec: StudySpec) -> str:
    parts = ["python -m fused_gumbel.vae.study", "--recipe", spec.recipe, "--estimators", *spec.estimators,
             "--seeds", *map(str, spec.seeds), "--epochs", str(spec.epochs), "--out", spec.out]
    if spec.hard is not None:
        parts.append("--hard" if spec.hard else "--no-hard")
    if spec.mc_samples is not None:
        parts += ["--mc-samples", str(spec.mc_samples)]
    if spec.limit is not None:
        parts += ["--limit", str(spec.limit)]
    if spec.name is not None:
        parts += ["--name", spec.name]
    return " ".join(parts)


def _config_line(results: dict[str, Any]) -> str:
    c = results["config"]
    tau = (f"tau {c['tau']:g} annealed to {c['min_tau']:g}" if c["anneal_rate"] > 0 else f"fixed tau {c['tau']:g}")
    mode = "hard one-hot samples" if c["hard"] else "soft samples"
    data = "full MNIST" if c["limit"] is None else f"first {c['limit']} training images"
    return (f"recipe `{c['recipe']}`: {mode}, {tau}, {'ReLU on' if c['relu_logits'] else 'unclipped'} encoder logits, "
            f"{c['optimizer']} lr {c['lr']:g}, batch {c['batch_size']}, {c['latent_dim']}x{c['categories']} latents, "
            f"sampler `{c['sampler']}`, {data}")


def results_markdown(results: dict[str, Any], plot_link: str | None = None) -> str:
    spec = results["spec"]
    seeds = spec["seeds"]
    header = ["estimator", "seeds done", f"test -ELBO, epoch {spec['epochs']} (mean ± std)",
              *[f"seed {s}" for s in seeds], "train, training sample", "train, one-hot sample", "s / epoch"]
    lines = [f"**{results['study']}**: {_config_line(results)}; {spec['epochs']} epochs.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in results["estimators"].items():
        per_seed = row["seeds"]
        # Soft samples have no straight-through estimator: the row is the recipe itself.
        name = f"`{label}`" if results["config"]["hard"] else "soft samples"
        cells = [name, f"{len(per_seed)}/{len(seeds)}", f"**{_format(row['test_loss'], 2)}**",
                 *[f"{per_seed[str(s)]['test_loss']:.2f}" if str(s) in per_seed else "–" for s in seeds],
                 _format(row["train_loss_relaxed"], 2), _format(row["train_loss_unrelaxed"], 2),
                 _format(row["seconds_per_epoch"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    commits = ", ".join(f"`{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}`" for c in results["git_commits"])
    devices = sorted({run["device"] for row in results["estimators"].values() for run in row["seeds"].values()})
    lines += ["", f"Runs on commit {commits or '–'}, device {', '.join(devices) or '–'}; "
              "test -ELBO = negative ELBO with exact one-hot samples over the 10,000 test images, nats per image; "
              "std = sample standard deviation over seeds; train = the last epoch's mean training loss with the "
              "sample the model trained on (relaxed, or one-hot when hard) and with a fresh exact one-hot sample; "
              "s / epoch = training wall time per epoch (mean over epochs and seeds)."]
    if results["missing"]:
        lines += ["", "Not run yet (the same command trains them, resuming): " + ", ".join(results["missing"]) + "."]
    for label, reason in results.get("unavailable", {}).items():
        lines += ["", f"`{label}` could not run on the commit of this report: {reason}."]
    lines += ["", "```bash", study_command(StudySpec(**spec)), "```"]
    if plot_link:
        lines += ["", f"![test loss per epoch, {results['study']}]({plot_link})"]
    return "\n".join(lines) + "\n"


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Test loss per epoch for each estimator: the mean over seeds, and the min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 3.8), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, row in results["estimators"].items():
        curves = [run["test_loss_curve"] for run in row["seeds"].values()]
        if not curves:
            continue
        epochs = list(range(1, len(curves[0]) + 1))
        columns = list(zip(*curves))
        mean = [statistics.fmean(column) for column in columns]
        name = label if results["config"]["hard"] else "soft samples"
        (line,) = axes.plot(epochs, mean, marker="o", markersize=3, label=f"{name} (n={len(curves)})")
        if len(curves) > 1:
            axes.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns],
                              color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test negative ELBO (nats / image)")
    axes.set_title(f"{results['study']}: mean over seeds, band = min..max", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def has_block(docs_path: Path, name: str) -> bool:
    begin, end = doc_markers(name)
    text = docs_path.read_text()
    return begin in text and end in text


def update_docs(results: dict[str, Any], markdown: str, docs_path: Path = DOCS_PATH) -> bool:
    """Replace the study's generated block in ``docs_path``; True if the file changed.
    ValueError if the file has no block for this study (add the two marker lines first)."""
    begin, end = doc_markers(results["study"])
    if not has_block(docs_path, results["study"]):
        raise ValueError(f"{docs_path} has no {begin} ... {end} block for study {results['study']!r}")
    text = docs_path.read_text()
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    new = head + begin + "\n" + markdown + end + tail
    if new == text:
        return False
    docs_path.write_text(new)
    return True


def report(spec: StudySpec, img_dir: Path = IMG_DIR, docs: Sequence[Path] = (), log: Any = print) -> dict[str, Any]:
    """Write results.json / results.md into the study directory and the plot into ``img_dir``;
    rewrite the study's block in those of ``docs`` that have one (the plot linked relative to
    each); ValueError if ``docs`` is given and none has a block."""
    results = collect_results(spec)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = img_dir / f"vae_study_{results['study']}.png"
    write_plot(results, plot_path)
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2))
    (out / RESULTS_MD).write_text(results_markdown(results, str(plot_path)))
    log(f"wrote {out / RESULTS_JSON}, {out / RESULTS_MD} and {plot_path}")
    targets = [path for path in docs if has_block(path, results["study"])]
    if docs and not targets:
        begin, end = doc_markers(results["study"])
        raise ValueError(f"none of {', '.join(map(str, docs))} has a {begin} ... {end} block "
                         f"for study {results['study']!r}")
    for path in targets:
        link = _relative_link(plot_path, path.parent)
        changed = update_docs(results, results_markdown(results, link), path)
        log(f"{path}: {'updated' if changed else 'already up to date'}")
    return results


def _relative_link(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve()).replace(os.sep, "/")


# ------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fused_gumbel.vae.study", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--epochs", type=int, default=10)
    add("--recipe", choices=tuple(RECIPES), default="default")
    add("--hard", action=argparse.BooleanOptionalAction,
        help="hard samples (default: the recipe's, and hard whenever an estimator is not st)")
    add("--mc-samples", type=int, help="Gumbel-Rao: conditional draws per gradient (K)")
    add("--limit", type=int, help="train on the first N images only (tests)")
    add("--data-root", help="directory holding MNIST/raw (default $FUSED_GUMBEL_DATA, else ./data)")
    add("--device", help="cpu, cuda, ... (default: the local GPU if any, else cpu)")
    add("--out", default="runs/study", help="study directory: one run directory per estimator and seed")
    add("--name", help="study name in the plot file and the docs block (default: the --out folder's name)")
    add("--report", action="store_true", help="train nothing: rebuild the table and plot from the run directories")
    add("--update-docs", action="store_true",
        help="also rewrite the study's generated block in those of the --docs files that have one")
    add("--img-dir", default=str(IMG_DIR), help="where the plot goes (default docs/img)")
    add("--docs", nargs="+", default=[str(DOCS_PATH), str(README_PATH)],
        help="markdown files --update-docs looks in (default docs/vae.md README.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    spec = StudySpec(out=args.out, estimators=list(dict.fromkeys(args.estimators)),
                     seeds=list(dict.fromkeys(args.seeds)), epochs=args.epochs, recipe=args.recipe, hard=args.hard,
                     mc_samples=args.mc_samples, limit=args.limit, data_root=args.data_root, device=args.device,
                     name=args.name)
    if not spec.uses_hard_samples and any(e != "st" for e in spec.estimators):
        parser.error("gumbel_rao and reinmax are straight-through estimators of hard samples: drop --no-hard")
    try:
        # Every run's options are checked before the first one trains.
        for estimator in set(spec.estimators) - set(spec.unavailable()):
            spec.config(estimator, spec.seeds[0])
    except ValueError as error:
        parser.error(str(error))

    from fused_gumbel.vae.data import MNISTUnavailableError

    if not args.report:
        try:
            run_study(spec)
        except MNISTUnavailableError as error:
            print(f"fused_gumbel.vae.study: {error}", file=sys.stderr)
            return 2
        except ValueError as error:  # a run directory made with other options
            print(f"fused_gumbel.vae.study: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("fused_gumbel.vae.study: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
    try:
        report(spec, Path(args.img_dir), [Path(path) for path in args.docs] if args.update_docs else ())
    except ValueError as error:
        print(f"fused_gumbel.vae.study: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
