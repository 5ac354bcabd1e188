"""The CUDA twin's RNG and kernel-shape choice, checked on the CPU.

``kernels/csrc/cuda/twin_rng.cuh`` is ``__host__ __device__``: ``bench.twin.host_library`` builds
the same source with g++ into a ctypes library, so its Philox words are compared bit for bit
with ``fused_gumbel.rng`` (RNG spec v2), its exact twin with the float64 definition, and its fast
twin (``log2f`` standing in for ``lg2.approx``, as Triton's FAST=1) with the definition at the
float32-rounded input, within the spec's bounds. No GPU and no nvcc needed.
"""
import shutil

import numpy as np
import pytest
import torch

from fused_gumbel import noise_fidelity, rng

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="needs a host C++ compiler (g++) to build the twin's host library")

twin = pytest.importorskip("bench.twin")

SEEDS = [0, 1, 12345, 2**63 - 1, 2**64 - 1, 0x2545F4914F6CDD1D]
OFFSETS = [0, 4, 2**32 + 8, 2**64 - 4]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_philox_words_bit_exact(seed, offset):
    counters = np.array([0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 17, 2**63 - 1],
                        dtype=np.uint64)
    key = rng.philox_key(seed)
    expected = rng.philox4x32_torch(key, offset, torch.from_numpy(counters.astype(np.int64))).numpy()
    assert np.array_equal(twin.philox_words(key, offset, counters).astype(np.int64), expected)


def test_philox_words_match_the_rows_layout():
    """Row r, class k of a [R, K] call takes word k % 4 of counter r * ceil(K / 4) + k // 4."""
    rows, classes, seed, offset = 5, 10, 77, 12
    calls = -(-classes // 4)
    counters = np.arange(rows * calls, dtype=np.uint64)
    words = twin.philox_words(rng.philox_key(seed), offset, counters).reshape(rows, calls * 4)[:, :classes]
    noise = twin.gumbel(words.reshape(-1), "exact64").reshape(rows, classes)
    expected = rng.gumbel_noise_rows_torch(rows, classes, seed, offset, torch.float64).numpy()
    np.testing.assert_allclose(noise, expected, rtol=0, atol=1e-13)


def _draws() -> np.ndarray:
    """31-bit draws b: both ends, the series/MUFU boundary (v = 2**-6 <=> b ~ 2**25), and random ones."""
    edges = [0, 1, 2, 3, 1000, 2**24, 2**25 - 2, 2**25 - 1, 2**25, 2**25 + 1, 2**30, 2**31 - 2**8, 2**31 - 2**7 - 1,
             2**31 - 2, 2**31 - 1]
    random = np.random.default_rng(0).integers(0, 2**31, size=200_000)
    small = np.random.default_rng(1).integers(0, 2**26, size=50_000)
    return np.unique(np.concatenate([edges, random, small]).astype(np.int64))


def test_exact_twin_float64_matches_the_reference():
    b = _draws()
    words = (2 * b).astype(np.uint32)  # w >> 1 == b
    expected = rng.gumbel_from_bits(torch.from_numpy(b), torch.float64).numpy()
    np.testing.assert_allclose(twin.gumbel(words, "exact64"), expected, rtol=1e-14, atol=1e-14)


def test_exact_twin_float32_within_the_exact_bound():
    b = _draws()
    g = twin.gumbel((2 * b).astype(np.uint32), "exact32").astype(np.float64)
    error = np.abs(g - noise_fidelity.definition_at_float32_input(b))
    assert error.max() <= rng.EXACT_NOISE_BOUND, f"max error {error.max():.3g} at b = {b[error.argmax()]}"
    # and it is the reference's float32 twin to a few ulp
    reference = rng.gumbel_from_bits(torch.from_numpy(b), torch.float32).numpy().astype(np.float64)
    assert np.abs(g - reference).max() <= 4 * np.spacing(np.float32(23.0))


def test_fast_twin_within_the_fast_bound():
    """The series below v = 2**-6, -log2(1 - v) above, lg2 of that times -ln 2: g - ln(log2 e)."""
    b = _draws()
    g = twin.gumbel((2 * b).astype(np.uint32), "fast").astype(np.float64) + noise_fidelity.FAST_SHIFT
    error = np.abs(g - noise_fidelity.definition_at_float32_input(b))
    assert error.max() <= rng.FAST_NOISE_BOUND, f"max error {error.max():.3g} at b = {b[error.argmax()]}"
    # the numpy emulation of the Triton fast twin with exact logarithms agrees to float32 rounding
    emulated = noise_fidelity.fast_twin(b, None)
    assert np.abs(g - emulated).max() <= 1e-5


def test_fast_twin_is_monotone_where_the_definition_separates_draws():
    b = np.arange(0, 2**31, 2**31 // 100_003, dtype=np.int64)
    g = twin.gumbel((2 * b).astype(np.uint32), "fast").astype(np.float64)
    assert np.all(np.diff(g) <= 2 * rng.FAST_NOISE_BOUND)  # decreasing in b up to the bound


@pytest.mark.parametrize("rows, classes, shape", [
    (65536, 10, "small"), (1, 1, "small"), (3000, 16, "small"), (7, 17, "resident"), (4096, 1024, "resident"),
    (8192, 8192, "resident"), (8192, 32000, "streamed"), (64, 128256, "streamed"), (2, 8193, "streamed"),
])
def test_config_covers_every_class(rows, classes, shape):
    cfg = twin.config(rows, classes)
    assert cfg["shape_name"] == shape
    calls = -(-classes // 4)
    if shape == "small":
        assert cfg["calls_per_thread"] == calls and cfg["grid"] * cfg["block"] >= rows
    elif shape == "resident":
        capacity = cfg["threads_per_row"] * cfg["calls_per_thread"]
        assert capacity >= calls and (capacity < 2 * calls or cfg["width"] == 0)  # pads to less than 2x
        rows_per_block = cfg["block"] // cfg["threads_per_row"]
        assert cfg["grid"] * rows_per_block >= rows
    else:
        assert cfg["grid"] == rows
        assert cfg["chunks"] * cfg["threads_per_row"] * cfg["calls_per_thread"] * 4 >= classes
        assert cfg["shared_bytes"] == 4 * cfg["chunks"]


def test_config_streams_past_max_resident():
    limit = twin.host_library().fg_twin_max_resident()
    assert twin.config(10, limit)["shape_name"] == "resident"
    assert twin.config(10, limit + 1)["shape_name"] == "streamed"
    streamed = twin.config(10, limit + 1, compute_bytes=8)
    assert streamed["shared_bytes"] == 8 * streamed["chunks"]
