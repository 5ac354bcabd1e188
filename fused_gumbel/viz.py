"""Figures drawn from the package itself: ``python -m fused_gumbel.viz temperature``.

``temperature``: Figure 1 of Jang, Gu & Poole, "Categorical Reparameterization with
Gumbel-Softmax" (ICLR 2017), regenerated with ``fused_gumbel.gumbel_softmax``. For a
4-class categorical with probabilities ``p = softmax(logits)`` and temperatures
tau in {0.1, 0.5, 1, 10}, the top row shows the expectation of the Gumbel-Softmax sample
``y = softmax((logits + g) / tau)`` (a Monte Carlo mean over ``samples`` draws) and the
bottom row one sample, drawn from the same Gumbel noise ``g`` at every tau. As tau -> 0 the
samples become one-hot categorical draws and their expectation tends to ``p``; as
tau -> infinity every sample, and so the expectation, tends to the uniform (1/4, ...).
The leftmost column is the categorical itself: ``p``, and the one-hot of ``argmax(logits + g)``.
The noise is the RNG spec's stream for ``seed`` (``fused_gumbel.rng``), so the figure is the
same on every machine and backend.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["DEFAULT_LOGITS", "DEFAULT_TAUS", "temperature_data", "temperature_figure", "main"]

# The class probabilities of the figure: one dominant class, two middling, one rare.
DEFAULT_LOGITS = tuple(float(v) for v in torch.tensor([0.1, 0.5, 0.25, 0.15]).log())
DEFAULT_TAUS = (0.1, 0.5, 1.0, 10.0)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "temperature.png"


def temperature_data(logits: Sequence[float] = DEFAULT_LOGITS, taus: Sequence[float] = DEFAULT_TAUS,
                     samples: int = 100_000, seed: int = 0, backend: str | None = None) -> dict[str, Any]:
    """The numbers the figure plots (float64 tensors): ``probabilities`` [C]; for each tau,
    ``expectation`` [T, C] (mean of ``samples`` Gumbel-Softmax draws) and ``sample`` [T, C]
    (the first draw); ``categorical_sample`` [C], the one-hot of the same first noise."""
    import fused_gumbel

    if samples < 1:
        raise ValueError("samples must be >= 1")
    if not all(tau > 0 for tau in taus):
        raise ValueError("every tau must be positive")
    row = torch.tensor(logits, dtype=torch.float64)
    batch = row.expand(samples, row.numel()).contiguous()
    expectations, first_samples = [], []
    for tau in taus:
        # The same seed for every tau: one Gumbel draw, seen at each temperature.
        y = fused_gumbel.gumbel_softmax(batch, tau=float(tau), seed=seed, backend=backend)
        expectations.append(y.mean(dim=0))
        first_samples.append(y[0])
    categorical = fused_gumbel.categorical(batch[:1], seed=seed, one_hot=True, backend=backend)[0]
    return {
        "logits": row,
        "probabilities": torch.softmax(row, dim=-1),
        "taus": [float(tau) for tau in taus],
        "expectation": torch.stack(expectations),
        "sample": torch.stack(first_samples),
        "categorical_sample": categorical.to(torch.float64),
        "samples": samples,
        "seed": seed,
    }


def temperature_figure(out: str | Path = DEFAULT_OUT, **options: Any) -> dict[str, Any]:
    """Draw the figure into ``out`` (PNG) and return :func:`temperature_data`'s numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = temperature_data(**options)
    columns = [("Categorical", data["probabilities"], data["categorical_sample"])]
    columns += [(f"τ = {tau:g}", data["expectation"][i], data["sample"][i]) for i, tau in enumerate(data["taus"])]
    classes = list(range(1, data["probabilities"].numel() + 1))
    figure = Figure(figsize=(8.0, 3.3), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(columns), sharey=True)
    for column, (title, expectation, sample) in enumerate(columns):
        for row, values, color in ((0, expectation, "#4c72b0"), (1, sample, "#dd8452")):
            panel = axes[row][column]
            panel.bar(classes, values.tolist(), color=color, width=0.7)
            panel.set_ylim(0, 1)
            panel.set_xticks(classes)
            panel.tick_params(labelsize=7)
        axes[0][column].set_title(title, fontsize=9)
        axes[1][column].set_xlabel("category", fontsize=8)
    axes[0][0].set_ylabel("expectation", fontsize=8)
    axes[1][0].set_ylabel("sample", fontsize=8)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fused_gumbel.viz", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="figure", required=True)
    temperature = commands.add_parser("temperature", help="Jang et al. 2017, Fig. 1: tau from one-hot to uniform")
    temperature.add_argument("--out", default=str(DEFAULT_OUT), help="PNG path (default docs/img/temperature.png)")
    temperature.add_argument("--samples", type=int, default=100_000, help="draws averaged for the expectation")
    temperature.add_argument("--seed", type=int, default=0)
    temperature.add_argument("--taus", type=float, nargs="+", default=list(DEFAULT_TAUS))
    temperature.add_argument("--backend", choices=("auto", "triton", "reference"))
    args = parser.parse_args(argv)
    try:
        data = temperature_figure(args.out, taus=args.taus, samples=args.samples, seed=args.seed, backend=args.backend)
    except ValueError as error:
        parser.error(str(error))
    for tau, expectation in zip(data["taus"], data["expectation"]):
        print(f"tau {tau:g}: expectation " + " ".join(f"{v:.3f}" for v in expectation.tolist()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
