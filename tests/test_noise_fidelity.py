"""Spec v2 step 5, checked on the host (``fused_gumbel.noise_fidelity``): the float32 twins'
noise against the float64 definition, and the tail win probability of the discrete noise
against the continuous Gumbel value, by exact counting.

Two properties of spec v2 as written are pinned here rather than hidden (see docs/api.md,
"Noise fidelity"):

* both float32 twins round ``b`` to 24 significant bits before ``1 - v``; near the top clamp
  that moves ``g`` by up to 0.024 nats (the losing end, ``g < -1.5``). The stated bounds hold
  for the arithmetic, i.e. against the definition at the twin's own float32 input;
* ``b = 0`` is clamped to 1, so the largest noise value has twice the mass of the others and a
  class ``d`` nats behind wins ``lam e^-lam + lam / (e^lam - 1)`` times too often
  (``lam = e^d / 2**31``): +1.44% at d = 18, +7.2% at d = 20.
"""
import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from fused_gumbel import noise_fidelity as nf
from fused_gumbel import rng
from fused_gumbel.kernels.rng import gumbel_from_word, philox_words

PTX = nf.LG2_APPROX_ERROR


# ----------------------------------------------------------------------------- noise bound


def test_definition_matches_spec_formula_at_the_ends():
    b = np.array([0, 1, 2**31 - 2**7, 2**31 - 1])
    g = nf.definition(b)
    assert g[0] == g[1] == -math.log(-math.log1p(-(2.0**-31)))  # 0 is clamped to 1
    assert g[2] == g[3] == -math.log(-math.log1p(-(1 - 2.0**-24)))  # top clamp
    assert 21.48 < g[0] < 21.49 and -2.82 < g[2] < -2.81


def test_exact_twin_within_bound():
    result = nf.max_noise_error(nf.exact_twin)
    assert result.max_arithmetic_error <= rng.EXACT_NOISE_BOUND, result
    # Against the definition itself the only excess is float32(b) at the losing end (g < -1.5).
    assert result.max_error < 0.025, result
    assert nf.definition(result.at_b) < -1.5
    assert result.fraction_over < 0.002, result
    assert result.seconds < 20, result


@pytest.mark.parametrize("lg2_error", [(PTX, -PTX), (-PTX, PTX)], ids=["+-", "-+"])
def test_fast_twin_within_bound_with_worst_lg2_error(lg2_error):
    result = nf.max_noise_error(nf.fast_twin, lg2_error=lg2_error)
    assert result.max_arithmetic_error <= rng.FAST_NOISE_BOUND, result
    assert result.max_arithmetic_error < nf.TWIN_SLACK_NATS  # win_probability's slack holds
    assert result.max_error < 0.025, result
    assert result.fraction_over < 0.0005, result


def test_noise_error_check_can_fail():
    """An lg2 twice as bad as the PTX bound breaks the fast bound near v = 2**-6."""
    result = nf.max_noise_error(nf.fast_twin, exhaustive_below=2**16, stride=9973, lg2_error=(2 * PTX, -2 * PTX))
    assert result.max_arithmetic_error > rng.FAST_NOISE_BOUND
    assert abs(result.arithmetic_at_b * 2.0**-31 - rng.FAST_SERIES_BELOW) < 2**-12


def test_twins_monotone_up_to_their_slack():
    """Out-of-order pairs span a few draws (a float32 step of b, or the series/MUFU switch),
    far inside the slack ``win_probability`` allows."""
    for twin, kwargs in [(nf.exact_twin, {}), (nf.fast_twin, {"lg2_error": (PTX, -PTX)})]:
        for edge in [2**25, 2**29, 2**30]:
            b = np.arange(edge - 2**14, edge + 2**14)
            reach = nf._reach(twin(b, **kwargs))
            assert reach < nf._slack(np.array([edge]), nf.TWIN_SLACK_NATS)[0], (twin, edge, reach)


# ----------------------------------------------------------------------------- kernel == twin


@triton.jit
def _word_noise_kernel(seed, offset, words_ptr, noise_ptr, calls, BLOCK: tl.constexpr):
    counter = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = counter < calls
    w0, w1, w2, w3 = philox_words(seed, offset, counter)
    tl.store(words_ptr + counter * 4 + 0, w0.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(words_ptr + counter * 4 + 1, w1.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(words_ptr + counter * 4 + 2, w2.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(words_ptr + counter * 4 + 3, w3.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(noise_ptr + counter * 4 + 0, gumbel_from_word(w0, False, tl.float32), mask=mask)
    tl.store(noise_ptr + counter * 4 + 1, gumbel_from_word(w1, False, tl.float32), mask=mask)
    tl.store(noise_ptr + counter * 4 + 2, gumbel_from_word(w2, False, tl.float32), mask=mask)
    tl.store(noise_ptr + counter * 4 + 3, gumbel_from_word(w3, False, tl.float32), mask=mask)


@triton.jit
def _given_word_noise_kernel(words_ptr, noise_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    word = tl.load(words_ptr + i, mask=mask, other=0).to(tl.uint32)
    tl.store(noise_ptr + i, gumbel_from_word(word, False, tl.float32), mask=mask)


def test_interpreter_kernel_noise_is_the_exact_twin():
    """The kernels' FAST=False noise (what the interpreter runs) is exact_twin bit for bit, on
    Philox words drawn in the kernel and on hand-picked words at every boundary."""
    calls, seed, offset = 1024, 2**40 + 12345, 2**33 + 7
    words = torch.empty(calls * 4, dtype=torch.int64)
    noise = torch.empty(calls * 4, dtype=torch.float32)
    _word_noise_kernel[(triton.cdiv(calls, 256),)](seed, offset, words, noise, calls, BLOCK=256)
    expected_words = rng.philox4x32(rng.philox_key(seed), offset, torch.arange(calls)).reshape(-1)
    assert torch.equal(words, expected_words)
    np.testing.assert_array_equal(noise.numpy(), nf.exact_twin(words.numpy() >> 1))

    b = np.concatenate([np.arange(0, 64), 2**24 + np.arange(-32, 32), 2**25 + np.arange(-32, 32),
                        2**30 + np.arange(-32, 32), rng.TOP_BITS + np.arange(-320, 128)])
    picked = torch.from_numpy(np.concatenate([2 * b, 2 * b + 1]))  # the dropped low bit is ignored
    noise = torch.empty(picked.shape[0], dtype=torch.float32)
    _given_word_noise_kernel[(triton.cdiv(picked.shape[0], 256),)](picked, noise, picked.shape[0], BLOCK=256)
    np.testing.assert_array_equal(noise.numpy(), nf.exact_twin(picked.numpy() >> 1))


def _reference_twin(b):
    return rng.gumbel_from_bits(torch.from_numpy(np.asarray(b, dtype=np.int64)), torch.float32).numpy()


def test_reference_noise_is_the_exact_twin_up_to_the_platform_log():
    """``rng.gumbel_from_bits`` is the same float32 formula, but torch's log and numpy's may round
    differently: at most two ulp of max(|g|, 1) apart (near g = 0 an ulp of E ~ 1 is what shows),
    and the reference meets the exact bound itself."""
    generator = np.random.default_rng(0)
    b = np.concatenate([generator.integers(0, 2**31, 4000), np.arange(0, 100), rng.TOP_BITS + np.arange(-300, 127),
                        generator.integers(0, 2**20, 1000)])
    reference, twin = _reference_twin(b), nf.exact_twin(b)
    ulp = np.spacing(np.maximum(np.abs(twin), np.float32(1)))
    assert np.all(np.abs(reference - twin) <= 2 * ulp)
    result = nf.max_noise_error(_reference_twin, exhaustive_below=2**20, stride=997, bound=rng.EXACT_NOISE_BOUND)
    assert result.max_arithmetic_error <= rng.EXACT_NOISE_BOUND, result
    # ... and float64 reference noise is the definition.
    np.testing.assert_allclose(rng.gumbel_from_bits(torch.from_numpy(b), torch.float64).numpy(), nf.definition(b),
                               rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- tail fidelity


def clamp_prediction(d):
    """P_discrete / P_continuous of the spec for large d: b = 0 and b = 1 share v = 2**-31."""
    lam = math.exp(d) / 2**31
    return lam * math.exp(-lam) + lam / math.expm1(lam)


TWINS = {
    "definition": nf.definition,
    "exact": nf.exact_twin,
    "fast+-": lambda b: nf.fast_twin(b, lg2_error=(PTX, -PTX)),
    "fast-+": lambda b: nf.fast_twin(b, lg2_error=(-PTX, PTX)),
}


def _relative(d, twin):
    lower, upper = nf.win_probability(d, twin)
    assert lower <= upper
    exact = nf.continuous_win_probability(d)
    return lower / exact - 1, upper / exact - 1


@pytest.mark.parametrize("d", [5, 10, 15, 18, 20])
def test_tail_counting_matches_the_analytic_clamp_prediction(d):
    """The definition's bounds are tight (< 1e-4 apart) and agree with the closed form, an
    independent check of the counting."""
    lower, upper = _relative(d, nf.definition)
    assert upper - lower < 1e-4
    predicted = clamp_prediction(d) - 1
    assert lower - 3e-5 <= predicted <= upper + 3e-5, (lower, upper, predicted)


@pytest.mark.parametrize("name", list(TWINS))
@pytest.mark.parametrize("d", [
    5, 10, 15,
    pytest.param(18, marks=pytest.mark.xfail(
        strict=True, reason="spec v2 clamps b = 0 to 1: the top noise value has double mass, +1.44% at d = 18")),
])
def test_tail_within_one_percent(d, name):
    lower, upper = _relative(d, TWINS[name])
    assert -0.01 <= lower and upper <= 0.01, (lower, upper)


@pytest.mark.parametrize("name", ["exact", "fast+-"])
@pytest.mark.parametrize("d", [10, 18, 20])
def test_twins_tail_equals_the_definition(d, name):
    """Whatever the definition's own error, the float32 twins reproduce it to 0.02%."""
    lower, upper = _relative(d, TWINS[name])
    def_lower, def_upper = _relative(d, nf.definition)
    assert lower - 2e-4 <= def_lower and def_upper <= upper + 2e-4
    assert upper - lower < 4e-4


def test_d20_reported():
    """Above the truncation point the discrete tail is the clamp's: +7.2% at d = 20 (the continuous
    noise would exceed 21.5 = max g; the doubled atom at the top overcompensates)."""
    lower, upper = _relative(20, nf.definition)
    assert 0.07 < lower <= upper < 0.075


@pytest.mark.parametrize("d,expected", [(15, (0.06, 0.07)), (18, (-0.85, -0.83))])
def test_tail_check_fails_for_24_bit_uniforms(d, expected):
    """A twin with 24-bit uniforms (max noise 16.6) fails the 1% check from d = 15 on."""
    lower, upper = _relative(d, nf.uniform24_twin)
    assert expected[0] < lower <= upper < expected[1]
    assert not (-0.01 <= lower and upper <= 0.01)
