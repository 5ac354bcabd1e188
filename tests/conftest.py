"""Test setup: Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1).

TRITON_INTERPRET must be set before triton (or fused_gumbel, which imports it) is imported.
The GPU tests (marker ``gpu``) need real kernels: run them with ``TRITON_INTERPRET=0 pytest -m gpu``
on a CUDA machine (``bench/gpu_suite.sh`` does); elsewhere they are skipped.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist (the README's test command runs one worker per core) each worker, and each
# process a test starts, computes on one thread: more would only contend for the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and not interpreted():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device and TRITON_INTERPRET=0 (run bench/gpu_suite.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    """Where the kernels run: CUDA for real kernels, else CPU through the Triton interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() and not interpreted() else "cpu")
