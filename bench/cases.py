"""What the suite measures: shapes, dtypes, modes, passes, and the minimal-bytes model.

A *case* is one (shape, dtype, mode, pass). Modes: ``soft`` (relaxed sample), ``hard``
(straight-through one-hot) and ``categorical`` (exact draw, int64 indices, no grad). Passes:
``fwd`` (inference: the input does not require grad) and ``fwd+bwd`` (forward, then
``torch.autograd.grad`` of the output with a fixed upstream gradient).

Minimal bytes (what any implementation must move, with N elements of itemsize s):
  fwd:      read logits + write output          = 2 N s   (categorical: N s + 8 rows)
  fwd+bwd:  fwd + read grad_out + read logits + write grad_in = 5 N s
Effective GB/s = minimal bytes / median time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

MODES = ("soft", "hard", "categorical")
PASSES = ("fwd", "fwd+bwd")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class Shape:
    """A logits tensor of ``sizes`` with the classes along ``dim``."""

    sizes: tuple[int, ...]
    dim: int = -1
    note: str = ""
    # For a shrunk CPU stand-in: the name of the GPU shape it replaces.
    stands_for: Optional[str] = None

    @property
    def name(self) -> str:
        text = "x".join(str(s) for s in self.sizes)
        return text if self.dim in (-1, len(self.sizes) - 1) else f"{text}:dim{self.dim}"

    @property
    def classes(self) -> int:
        return self.sizes[self.dim]

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    @property
    def rows(self) -> int:
        return self.numel // self.classes


# The shapes of the issue: the VAE (batch 100 x 30 latents of 10 classes), a big batch of the
# same, a mid-size softmax, two LLM vocabularies (Llama-2 32000, Llama-3 128256) and a softmax
# over a middle dimension (strided rows).
GPU_SHAPES = (
    Shape((3000, 10), note="VAE: batch 100 x 30 latents"),
    Shape((65536, 10)),
    Shape((4096, 1024)),
    Shape((8192, 32000), note="LLM vocab 32000"),
    Shape((256, 128256), note="LLM vocab 128256"),
    Shape((64, 512, 1024), dim=1, note="softmax over a middle dim"),
)

# On CPU the eager, compiled and reference providers take about a second per million
# elements on a shared core (the fused C++ kernel 5-10x less), so the default CPU run keeps
# every class count and the layout but shrinks the rows to at most ~256k elements per tensor.
# ``--full-shapes`` runs the GPU shapes instead.
CPU_SHAPES = (
    GPU_SHAPES[0],
    Shape((8192, 10), stands_for="65536x10"),
    Shape((256, 1024), stands_for="4096x1024"),
    Shape((8, 32000), note="LLM vocab 32000", stands_for="8192x32000"),
    Shape((2, 128256), note="LLM vocab 128256", stands_for="256x128256"),
    Shape((4, 512, 64), dim=1, note="softmax over a middle dim", stands_for="64x512x1024:dim1"),
)

# ``--quick``: tiny shapes covering the packed-rows, one-row and strided kernel layouts.
QUICK_SHAPES = (
    GPU_SHAPES[0],
    Shape((16, 256)),
    Shape((2, 16, 32), dim=1, note="softmax over a middle dim"),
)

# Run order on CUDA within a dtype: the goal shapes first, so that the torch.compile budget and
# the time budget are spent where the goals are measured. Tables keep the order above.
GPU_PRIORITY = ("8192x32000", "256x128256", "3000x10", "4096x1024", "64x512x1024:dim1", "65536x10")

GPU_DTYPES = (torch.bfloat16, torch.float32, torch.float16)
CPU_DTYPES = (torch.float32, torch.bfloat16)

# "Large" shapes for the bandwidth goals: at least 4M elements.
LARGE_NUMEL = 1 << 22


@dataclass(frozen=True)
class Case:
    shape: Shape
    dtype: torch.dtype
    mode: str
    pass_: str

    @property
    def backward(self) -> bool:
        return self.pass_ == "fwd+bwd"

    @property
    def hard(self) -> bool:
        return self.mode == "hard"

    @property
    def key(self) -> str:
        return f"{self.shape.name}/{DTYPE_NAMES[self.dtype]}/{self.mode}/{self.pass_}"

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def input_bytes(self) -> int:
        return self.shape.numel * self.itemsize

    @property
    def minimal_bytes(self) -> int:
        n_s = self.input_bytes
        if self.mode == "categorical":
            return n_s + 8 * self.shape.rows
        return 5 * n_s if self.backward else 2 * n_s


def cases(shapes, dtypes, modes=MODES, passes=PASSES) -> list[Case]:
    """Every (shape, dtype, mode, pass) in run order: dtype-major, so that a time budget that
    runs out drops the last dtype first. Categorical has no backward."""
    out = []
    for dtype in dtypes:
        for shape in shapes:
            for mode in modes:
                for pass_ in passes:
                    if mode == "categorical" and pass_ != "fwd":
                        continue
                    out.append(Case(shape, dtype, mode, pass_))
    return out


def run_order(todo: list[Case]) -> list[Case]:
    """``todo`` with, within each dtype, the ``GPU_PRIORITY`` shapes first (stable otherwise)."""
    dtypes = list(dict.fromkeys(c.dtype for c in todo))

    def rank(case):
        name = case.shape.name
        return (dtypes.index(case.dtype), GPU_PRIORITY.index(name) if name in GPU_PRIORITY else len(GPU_PRIORITY))

    return sorted(todo, key=rank)


def select_shapes(shapes, patterns: Optional[list[str]]):
    """Shapes whose name (or the GPU shape it stands for) contains one of ``patterns``."""
    if not patterns:
        return tuple(shapes)
    chosen = tuple(s for s in shapes if any(p in s.name or (s.stands_for and p in s.stands_for) for p in patterns))
    if not chosen:
        raise SystemExit(f"--shapes {patterns} matches none of {[s.name for s in shapes]}")
    return chosen


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    """(logits, grad_out) for a case, drawn on ``device``; logits ~ N(0, 2^2) so that samples
    are neither one-hot nor flat. grad_out is None for the forward pass."""
    generator = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(case.shape.sizes, generator=generator, device=device, dtype=torch.float32)
    logits = logits.mul_(2.0).to(case.dtype)
    grad_out = None
    if case.backward:
        grad_out = torch.randn(case.shape.sizes, generator=generator, device=device, dtype=case.dtype)
    return logits, grad_out
