"""Test setup: without a CUDA device, Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton (or fused_gumbel, which imports it) is imported.
"""
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run bench/gpu_suite.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    """Where the kernels run: CUDA if present, else CPU through the Triton interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
