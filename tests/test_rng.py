"""The RNG spec: Philox known answers, torch Philox == tl.philox, kernel noise == reference noise,
the noise's distribution, and how seeds and offsets come from torch generators."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from scipy import stats

from fused_gumbel import rng
from fused_gumbel.kernels.rng import gumbel_noise


# Random123's known-answer vectors for Philox4x32-10: (counter words, key words) -> output words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("philox", [rng.philox4x32, rng.philox4x32_torch])
@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(philox, counter, key, expected):
    n = counter[0] | counter[1] << 32
    n = n - 2**64 if n >= 2**63 else n  # the int64 tensor holds the same 64 bits
    words = philox(key[0] | key[1] << 32, counter[2] | counter[3] << 32, torch.tensor([n]))
    assert tuple(words[0].tolist()) == expected


def test_compiled_cpu_philox_matches_torch_ops():
    if rng.numba is None:
        pytest.skip("numba not installed: the torch-ops Philox is the only CPU path")
    counters = torch.randint(0, 2**62, (3, 1000))
    for seed, offset in [(0, 0), (2**63 - 1, 2**63 - 1), (123456789, 2**40 + 3)]:
        assert torch.equal(rng.philox4x32(seed, offset, counters), rng.philox4x32_torch(seed, offset, counters))


@triton.jit
def _randint4x_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    w0, w1, w2, w3 = tl.randint4x(seed, offsets)
    for word, value in enumerate((w0, w1, w2, w3)):
        tl.store(out_ptr + offsets * 4 + word, value.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)


def test_torch_philox_matches_triton_randint4x():
    n, seed = 100, 0x1234_5678_9ABC
    out = torch.empty(n, 4, dtype=torch.int64)
    _randint4x_kernel[(triton.cdiv(n, 64),)](out, seed, n, BLOCK=64)
    expected = rng.philox4x32(seed, 0, torch.arange(n))
    assert torch.equal(out, expected)


@triton.jit
def _noise_kernel(out_ptr, seed, offset, n_rows, K, Q, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr,
                  COMPUTE: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    for chunk in range(0, tl.cdiv(Q, BLOCK_Q)):
        g = gumbel_noise(seed, offset, rows, chunk, Q, ROWS, BLOCK_Q, COMPUTE)
        cols = chunk * 4 * BLOCK_Q + tl.arange(0, 4 * BLOCK_Q)
        mask = (rows < n_rows)[:, None] & (cols < K)[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], g, mask=mask)


def kernel_noise(rows, K, seed, offset, dtype, block_q=None):
    Q = triton.cdiv(K, 4)
    block_q = block_q or triton.next_power_of_2(Q)
    out = torch.empty(rows, K, dtype=dtype)
    compute = tl.float64 if dtype == torch.float64 else tl.float32
    _noise_kernel[(triton.cdiv(rows, 4),)](out, seed, offset, rows, K, Q, ROWS=4, BLOCK_Q=block_q, COMPUTE=compute)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,K,block_q", [(5, 1, None), (9, 10, None), (3, 37, None), (2, 300, 16)])
def test_kernel_noise_matches_reference_noise(rows, K, block_q, dtype):
    seed, offset = 2**40 + 12345, 2**33 + 7  # both words of key and stream in use
    got = kernel_noise(rows, K, seed, offset, dtype, block_q)
    expected = rng.gumbel_noise_rows_torch(rows, K, seed, offset, dtype)
    # Same bits; the only freedom left is the last ulp of the platform's log.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got, expected, rtol=4 * eps, atol=4 * eps)
    assert torch.isfinite(got).all()


def test_noise_is_gumbel_distributed():
    noise = rng.gumbel_noise_rows(2000, 50, seed=7, offset=3, dtype=torch.float64).flatten().numpy()
    result = stats.kstest(noise, "gumbel_r")
    assert result.pvalue > 1e-3, result
    # The winning tail is resolved: the largest value possible is -log(-log1p(-2**-32)) ~ 22.18.
    assert noise.max() < 22.2 and noise.min() > -3.0


def test_uniform_mapping_extremes_are_finite():
    bits = torch.tensor([0, 1, 2, 2**30, 2**31 - 129, 2**31 - 128, 2**31 - 1])
    for dtype in (torch.float32, torch.float64):
        g = rng.gumbel_from_bits(bits, dtype)
        assert torch.isfinite(g).all()
        assert g[0] > g[1]  # midpoints: b = 0 is its own step, (0 + 1/2) 2**-31
        assert torch.all(g[:-1] >= g[1:])  # more bits -> larger u -> smaller noise
        assert g[-2] == g[-1]  # the top clamp: v = 1 - 2**-24 for b >= 2**31 - 128
    # The tail (small v) is exact: -log(-log1p(-v)) for v = (b + 1/2) 2**-31.
    for b in (0, 1, 1000):
        expected = -np.log(-np.log1p(-(b + 0.5) * 2.0**-31))
        assert abs(rng.gumbel_from_bits(torch.tensor([b]), torch.float64).item() - expected) < 1e-12


def test_counters_distinct_across_rows_and_calls():
    a = rng.gumbel_noise_rows(4, 10, seed=1, offset=0, dtype=torch.float32)
    b = rng.gumbel_noise_rows(4, 10, seed=1, offset=1, dtype=torch.float32)
    assert not torch.equal(a, b)
    assert len(torch.unique(a)) == a.numel()


def test_cpu_generator_seed_offset_reproducible_and_advancing():
    torch.manual_seed(123)
    first, second = rng.draw_seed_offset(torch.device("cpu")), rng.draw_seed_offset(torch.device("cpu"))
    assert first != second
    torch.manual_seed(123)
    assert rng.draw_seed_offset(torch.device("cpu")) == first
    state = torch.random.get_rng_state()
    third = rng.draw_seed_offset(torch.device("cpu"))
    torch.random.set_rng_state(state)
    assert rng.draw_seed_offset(torch.device("cpu")) == third
    gen = torch.Generator().manual_seed(5)
    drawn = rng.draw_seed_offset(torch.device("cpu"), gen)
    assert drawn == rng.draw_seed_offset(torch.device("cpu"), torch.Generator().manual_seed(5))
    assert all(0 <= v < 2**63 for v in drawn)


def test_generator_on_wrong_device_raises():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to hold a mismatched generator")
    with pytest.raises(ValueError, match="generator"):
        rng.draw_seed_offset(torch.device("cpu"), torch.Generator(device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_cpu_noise_matches_torch_definition(dtype):
    if rng.numba is None:
        pytest.skip("numba not installed")
    for rows, K, seed, offset in [(7, 1, 1, 2), (50, 10, 2**62 + 5, 2**36), (3, 301, 9, 0)]:
        fast = rng.gumbel_noise_rows(rows, K, seed, offset, dtype)
        slow = rng.gumbel_noise_rows_torch(rows, K, seed, offset, dtype)
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(fast, slow, rtol=2 * eps, atol=2 * eps)


_NUMBA_FIRST_CALL = """
import json, time, torch
from fused_gumbel import rng
start = time.perf_counter()
rng.gumbel_noise_rows(3, 5, 1, 2, torch.float32)
rng.gumbel_noise_rows(3, 5, 1, 2, torch.float64)
rng.philox4x32(1, 2, torch.arange(4))
seconds = time.perf_counter() - start
stats = [rng._gumbel_rows_numba.stats, rng._philox_numba.stats]
print(json.dumps({"seconds": seconds, "hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


def test_numba_cache_hits_in_a_fresh_process(tmp_path):
    """The compiled CPU noise is cached on disk once: a second fresh process loads it (no compile,
    no new cache file), so the cache does not grow per process."""
    pytest.importorskip("numba")
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def fresh_process():
        done = subprocess.run([sys.executable, "-c", _NUMBA_FIRST_CALL], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), sorted(p.name for p in tmp_path.rglob("*"))

    first, files_after_first = fresh_process()
    second, files_after_second = fresh_process()
    assert first["misses"] == 3 and any(name.endswith(".nbc") for name in files_after_first)
    assert second["misses"] == 0 and second["hits"] == 3, (first, second)
    assert files_after_second == files_after_first
