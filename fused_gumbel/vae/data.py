"""MNIST for the categorical VAE: ``torchvision.datasets.MNIST`` held in memory as
``float32`` intensities in [0, 1] (pixel / 255, as ``ToTensor`` gives; no
normalisation), flattened to ``[N, 784]``.

The data root is ``--data-root`` if given, else ``$FUSED_GUMBEL_DATA``, else ``./data``.
torchvision reads the four uncompressed IDX files from ``<root>/MNIST/raw`` and writes
nothing when they are there, so a read-only root works. When they are missing it
downloads them; if that fails (offline), :class:`MNISTUnavailableError` carries a short
message saying where to put the files.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DATA_ENV_VAR",
    "RAW_FILES",
    "MNISTUnavailableError",
    "resolve_data_root",
    "load_mnist",
    "ImageTensorDataset",
    "collate_batch",
]

DATA_ENV_VAR = "FUSED_GUMBEL_DATA"
DEFAULT_DATA_ROOT = "./data"
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTUnavailableError(RuntimeError):
    """MNIST is not on disk and could not be downloaded."""


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else ``$FUSED_GUMBEL_DATA``, else ``./data``."""
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_ROOT
    return Path(data_root).expanduser()


def _unavailable_message(root: Path, reason: str) -> str:
    raw_dir = root.absolute() / "MNIST" / "raw"
    return (
        f"MNIST is not under {raw_dir} and downloading it failed ({reason}).\n"
        f"Put the four raw files {', '.join(RAW_FILES)} (uncompressed, as from the .gz "
        f"archives) in {raw_dir},\n"
        f"or point {DATA_ENV_VAR} (or --data-root) at a directory that has MNIST/raw/ with them, "
        f"e.g. `export {DATA_ENV_VAR}=/path/to/data`."
    )


def _short_reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torchvision reports one line per mirror; the last one says what went wrong.
    reason = lines[-1] if lines else type(error).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def load_mnist(data_root: str | os.PathLike | None = None, train: bool = True, download: bool = True) -> Tensor:
    """Images of the MNIST train or test split as a ``[N, 784]`` float32 tensor in [0, 1]."""
    from torchvision.datasets import MNIST

    root = resolve_data_root(data_root)
    try:
        dataset = MNIST(str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:  # torchvision wraps URLError in RuntimeError
        raise MNISTUnavailableError(_unavailable_message(root, _short_reason(error))) from error
    images = dataset.data
    return images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)


class ImageTensorDataset(Dataset):
    """An in-memory image tensor with a batched ``__getitems__``, so a ``DataLoader``
    gathers a batch with one index operation instead of collating 100 single images."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]

    def __getitems__(self, indices: list[int]) -> Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long, device=self.images.device)]


def collate_batch(batch: Tensor) -> Tensor:
    """``__getitems__`` already returns the stacked batch."""
    return batch
