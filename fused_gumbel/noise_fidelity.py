"""How faithful is the noise? Host-side checks of spec v2 step 5 (``fused_gumbel/rng.py``).

The spec defines the Gumbel noise of a 31-bit draw ``b`` in exact arithmetic::

    b = min(max(b, 1), TOP_BITS),  v = b * 2**-31,  E = -log1p(-v),  g = -log(E)

and lets implementations evaluate it in float32 within a stated error. This module holds

* :func:`definition` (float64), :func:`exact_twin` (numpy float32 mirror of
  ``rng.gumbel_from_bits`` and of ``gumbel_from_word(FAST=False)``) and :func:`fast_twin` (numpy
  float32 emulation of ``gumbel_from_word(FAST=True)`` whose ``lg2.approx`` error can be injected);
* :func:`max_noise_error`: the largest ``|twin - definition|`` over every ``b <= 2**22``, a
  stride through the rest of the 31-bit range and the region boundaries. It splits the error in
  two: the *arithmetic* error (the twin against the definition evaluated at the twin's own
  float32 input ``float32(b)``) and the rest, which is the rounding of ``b`` to float32 (24
  significant bits) and only matters near ``v = 1`` (the losing end, ``g < -1.5``);
* :func:`win_probability`: P(a class ``d`` nats below the leader wins a two-class race) under the
  discrete noise distribution (each raw ``b`` in ``[0, 2**31)`` has mass ``2**-31``), with
  rigorous lower and upper bounds obtained by counting, not by sampling.

``python -m fused_gumbel.noise_fidelity`` prints both tables (docs/api.md, "Noise fidelity").
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from fused_gumbel.rng import EXACT_NOISE_BOUND, FAST_NOISE_BOUND, FAST_SERIES_BELOW, TOP_BITS

TWO31 = 2**31
# PTX ISA, lg2.approx.f32: "max absolute error 2^-22.6 for mantissa" (the error of the log2 of the
# significand; the exponent is exact). The CUDA C++ Programming Guide states 2^-22 for __log2f
# on [0.5, 2]; both are reported by the __main__ table.
LG2_APPROX_ERROR = 2.0**-22.6
LG2_GUIDE_ERROR = 2.0**-22
# The float32 twins are monotone in b only up to rounding (and, for the fast twin, the small jump
# where the series hands over to lg2.approx at v = 2**-6). A twin within TWIN_SLACK_NATS of the
# definition at its float32 input can only reverse order between draws whose definition values
# differ by less than 2 * TWIN_SLACK_NATS; win_probability widens its counts by that many draws.
# Valid for both twins: their arithmetic errors are tested to be below the spec's bounds (<= 1e-5).
TWIN_SLACK_NATS = 1.5e-5

_F32 = np.float32
_LN2_F32 = _F32(math.log(2.0))


def _clamped(b) -> np.ndarray:
    return np.clip(np.asarray(b, dtype=np.int64), 1, TOP_BITS)


def definition(b) -> np.ndarray:
    """The spec's noise of the 31-bit draws ``b`` (any int array; 0 maps like 1), in float64."""
    v = _clamped(b) * 2.0**-31  # exact: b < 2**31 fits a float64 significand
    return -np.log(-np.log1p(-v))


def float32_input(b) -> np.ndarray:
    """The draw the float32 twins actually see: ``b`` rounded to 24 significant bits (int64)."""
    return _clamped(b).astype(_F32).astype(np.int64)


def exact_twin(b) -> np.ndarray:
    """``rng.gumbel_from_bits(b, float32)`` / ``gumbel_from_word(FAST=False)`` in numpy float32:
    Goldberg's ``log1p``: ``E = v * log(a) / (a - 1)`` with ``a = 1 - v`` (``E = v`` when ``a == 1``)."""
    v = _clamped(b).astype(_F32) * _F32(2.0**-31)
    a = _F32(1.0) - v
    exact = a == _F32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponential = np.where(exact, v, v * np.log(a) / np.where(exact, _F32(1.0), a - _F32(1.0)))
    return (-np.log(exponential)).astype(_F32)


def _lg2(x: np.ndarray, error: float) -> np.ndarray:
    """``lg2.approx.f32`` with a chosen error: ``float32(log2(x) + error)``."""
    return (np.log2(x.astype(np.float64)) + error).astype(_F32)


def fast_twin(b, lg2_error: float | tuple[float, float] = 0.0) -> np.ndarray:
    """``gumbel_from_word(FAST=True)`` in numpy float32, with ``lg2.approx`` replaced by
    ``float32(log2(x) + error)``. ``lg2_error`` is one error for both logarithms or a pair
    ``(error of lg2(1 - v), error of lg2(E))``; ``(+bound, -bound)`` is the worst case, the two
    errors then add up in ``g``.

    Each float32 operation is rounded separately (no FMA contraction); contraction changes the
    short series by an ulp, far below the bounds. The GPU test measures the real instruction.
    """
    inner, outer = (lg2_error, lg2_error) if np.isscalar(lg2_error) else lg2_error
    v = _clamped(b).astype(_F32) * _F32(2.0**-31)
    series = v * (_F32(1.0) + v * (_F32(0.5) + v * (_F32(0.3333333432674408) + v * _F32(0.25))))
    mufu = _lg2(_F32(1.0) - v, inner) * -_LN2_F32
    exponential = np.where(v < _F32(FAST_SERIES_BELOW), series, mufu)
    return _lg2(exponential, outer) * -_LN2_F32


def uniform24_twin(b) -> np.ndarray:
    """A deliberately broken twin: 24-bit uniforms ``v = max(b >> 7, 1) * 2**-24`` (as from a float32
    ``torch.rand``), so ``g <= 16.6`` and a class 18 nats behind can (almost) never win."""
    v = np.maximum(_clamped(b) >> 7, 1) * 2.0**-24
    return -np.log(-np.log1p(-np.minimum(v, 1 - 2.0**-24)))


# ----------------------------------------------------------------------------- noise error


@dataclass
class NoiseError:
    """What :func:`max_noise_error` measured for one twin (errors in nats)."""

    max_error: float              # max |twin(b) - definition(b)|
    at_b: int
    max_arithmetic_error: float   # max |twin(b) - definition(float32_input(b))|
    arithmetic_at_b: int
    fraction_over: float          # share of the 31-bit range (strided sample) where |error| > bound
    bound: float
    max_reach: int                # longest distance i - j with j < i and twin(i) > twin(j)
    checked: int                  # number of b evaluated
    seconds: float


def _reach(g: np.ndarray) -> int:
    """Longest ``i - j`` with ``j < i`` and ``g[i] > g[j]`` in a run of consecutive draws
    (0 if ``g`` is non-increasing)."""
    running_min = np.minimum.accumulate(g.astype(np.float64))
    # first j with running_min[j] < g[i]: that j has g[j] < g[i]
    first = np.searchsorted(-running_min, -g.astype(np.float64), side="right")
    gaps = np.arange(g.shape[0]) - first
    return int(max(gaps.max(), 0))


def _check_points(exhaustive_below: int, stride: int):
    """Chunks of b to check: (array, is_uniform_sample, is_consecutive)."""
    chunk = 2**22
    for lo in range(1, exhaustive_below + 1, chunk):
        yield np.arange(lo, min(lo + chunk, exhaustive_below + 1), dtype=np.int64), False, True
    start = exhaustive_below + 1
    step = chunk * stride
    for lo in range(start, TWO31, step):
        yield np.arange(lo, min(lo + step, TWO31), stride, dtype=np.int64), True, False
    # Boundaries, consecutive: where the float32 step of b doubles (2**23 ... 2**30, v = 1/2 last),
    # the series/MUFU switch at v = 2**-6 (= 2**25), and the top clamp (with raw b above it).
    edges = sorted({2**k for k in range(23, 31)} | {int(FAST_SERIES_BELOW * TWO31)})
    for edge in edges:
        yield np.arange(edge - 2**15, edge + 2**15, dtype=np.int64), False, True
    yield np.arange(TOP_BITS - 2**20, TWO31, dtype=np.int64), False, True


def max_noise_error(twin, exhaustive_below: int = 2**22, stride: int = 97, bound: float | None = None,
                    **twin_kwargs) -> NoiseError:
    """Largest ``|twin(b) - definition(b)|`` over every ``b`` in ``[1, exhaustive_below]``, every
    ``stride``-th ``b`` above it, and ``2**16`` consecutive draws around each region boundary
    (float32 ulp changes, ``v = 2**-6``, the top clamp). Chunked: peak memory below 0.5 GB.

    ``bound`` (default: the spec's bound for ``exact_twin`` / ``fast_twin``) sets ``fraction_over``,
    the share of the uniform strided sample whose error exceeds it.
    """
    if bound is None:
        bound = FAST_NOISE_BOUND if twin is fast_twin else EXACT_NOISE_BOUND
    start = time.perf_counter()
    worst = (-1.0, 0)
    worst_arith = (-1.0, 0)
    over = sampled = checked = reach = 0
    for b, uniform, consecutive in _check_points(exhaustive_below, stride):
        g = twin(b, **twin_kwargs).astype(np.float64)
        error = np.abs(g - definition(b))
        arith = np.abs(g - definition(float32_input(b)))
        i, j = int(error.argmax()), int(arith.argmax())
        worst = max(worst, (float(error[i]), int(b[i])))
        worst_arith = max(worst_arith, (float(arith[j]), int(b[j])))
        if uniform:
            over += int((error > bound).sum())
            sampled += b.shape[0]
        if consecutive:
            reach = max(reach, _reach(g))
        checked += b.shape[0]
    return NoiseError(worst[0], worst[1], worst_arith[0], worst_arith[1], over / max(sampled, 1), bound,
                      reach, checked, time.perf_counter() - start)


# ----------------------------------------------------------------------------- tail fidelity


def _count_below(twin, t: np.ndarray, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """``#{raw b in [0, 2**31) : twin(b) < t}`` (``<=`` when not ``strict``) for each ``t``, and
    the crossing (the smallest clamped ``b`` counted), assuming ``twin`` non-increasing in ``b``:
    a vectorised bisection over the clamped range ``[1, TOP_BITS]``."""
    t = np.asarray(t, dtype=np.float64)
    # Invariant: not counted at lo, counted at hi (lo = 0 / hi = TOP + 1 stand for "none").
    lo = np.zeros(t.shape, dtype=np.int64)
    hi = np.full(t.shape, TOP_BITS + 1, dtype=np.int64)
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            break
        mid = (lo + hi) // 2
        g = twin(np.where(open_, mid, 1)).astype(np.float64)
        counted = open_ & ((g < t) if strict else (g <= t))
        hi = np.where(counted, mid, hi)
        lo = np.where(open_ & ~counted, mid, lo)
    # Raw b >= hi clamp to >= hi and are counted; raw 0 acts as 1.
    count = np.where(hi <= 1, TWO31, np.where(hi > TOP_BITS, 0, TWO31 - hi)).astype(np.int64)
    return count, hi


def _slack(b: np.ndarray, nats: float) -> np.ndarray:
    """Draws around ``b`` over which a twin within ``nats`` of the definition can be out of order:
    the span of b where the definition moves by ``2 * nats`` (twice, for margin), plus two float32
    steps of ``b`` (the twins see ``float32(b)``)."""
    if nats == 0:
        return np.zeros(np.shape(b), dtype=np.int64)
    b = _clamped(b)
    g = definition(b)
    dv_dg = np.exp(-g - np.exp(-g))  # v = 1 - exp(-exp(-g))
    step = np.maximum(1, 2.0 ** (np.frexp(b.astype(np.float64))[1] - 1 - 23)).astype(np.int64)
    return np.ceil(TWO31 * 4 * nats * dv_dg).astype(np.int64) + 2 * step + 2


def _block_edges(start: int, end: int, ratio: float) -> np.ndarray:
    """Edges of consecutive blocks covering ``[start, end)``, each about ``ratio * b`` wide."""
    edges = [start]
    while edges[-1] < end:
        edges.append(min(end, edges[-1] + max(1, int(edges[-1] * ratio))))
    return np.asarray(edges, dtype=np.int64)


def win_probability(d: float, twin=definition, exact_below: int = 2**17, block_ratio: float = 2.0**-14,
                    slack_nats: float | None = None) -> tuple[float, float]:
    """Bounds ``(lower, upper)`` on P(class B, ``d`` nats below class A, wins) when both draw
    independent noise ``twin(b)`` from the discrete distribution of the spec (raw ``b`` uniform on
    ``[0, 2**31)``, 0 clamped like 1, above ``TOP_BITS`` like ``TOP_BITS``). The continuous
    Gumbel value is ``1 / (1 + e**d)`` (:func:`continuous_win_probability`).

    P = 2**-62 * sum over b_B of #{b_A : g(b_A) < g(b_B) - d}. Each count is exact, by bisection
    over the noise, non-increasing in ``b``. Draws ``b_B < exact_below`` (the large noise that wins
    at large ``d``) are summed one by one; above, they are grouped into blocks ``[lo, hi)`` about
    ``block_ratio * lo`` wide, where monotonicity bounds each term between its values at the
    block's last draw and its first. Ties (equal sums) are losses in ``lower``, wins in ``upper``.

    ``slack_nats``: a float32 twin is monotone only up to its error; counts and block ends are
    widened by the draws over which a twin within ``slack_nats`` of the definition can be out
    of order (:func:`_slack`). Default ``TWIN_SLACK_NATS``, and 0 for :func:`definition` and
    :func:`uniform24_twin`, which are monotone.
    """
    if slack_nats is None:
        slack_nats = 0.0 if twin in (definition, uniform24_twin) else TWIN_SLACK_NATS

    def counts(b, strict, sign):
        c, crossing = _count_below(twin, twin(b).astype(np.float64) - d, strict)
        widen = np.where((c > 0) & (c < TWO31), sign * _slack(crossing, slack_nats), 0)
        if sign > 0:  # a count of 0 may hide draws just above the top
            widen = np.where(c == 0, _slack(np.full_like(c, TOP_BITS), slack_nats), widen)
        return np.clip(c + widen, 0, TWO31).astype(np.float64)

    # Draws b_B that can win at all: g(b_B) - d >= min g = g(TOP); above `last` none does.
    g_min = float(twin(np.array([TOP_BITS]))[0])
    below, crossing = _count_below(twin, np.array([g_min + d]), strict=False)
    last = TWO31 - int(below[0]) + int(_slack(crossing, slack_nats)[0]) + 1
    last = min(max(last, 2), TWO31)

    lower = upper = 0.0
    exact_end = min(exact_below, last)
    b = np.arange(0, exact_end, dtype=np.int64)
    lower += float(counts(b, True, -1).sum())
    upper += float(counts(b, False, +1).sum())
    if last > exact_end:
        edges = _block_edges(exact_end, last, block_ratio)
        lo, hi = edges[:-1], edges[1:]
        width = (hi - lo).astype(np.float64)
        # A block's largest noise is at its first draw, its smallest at its last one (up to slack).
        first = np.maximum(lo - _slack(lo, slack_nats), 0)
        final = np.minimum(hi - 1 + _slack(hi - 1, slack_nats), TWO31 - 1)
        lower += float((width * counts(final, True, -1)).sum())
        upper += float((width * counts(first, False, +1)).sum())
    return lower * 2.0**-62, upper * 2.0**-62


def continuous_win_probability(d: float) -> float:
    """P(a class ``d`` nats behind wins) for exact Gumbel noise: the softmax weight ``1 / (1 + e**d)``."""
    return 1.0 / (1.0 + math.exp(d))


# ----------------------------------------------------------------------------- report

TAIL_DS = (5, 10, 15, 18, 20)


def _twins():
    bound = LG2_APPROX_ERROR
    guide = LG2_GUIDE_ERROR
    return [
        ("definition (float64)", definition, {}),
        ("exact twin (float32)", exact_twin, {}),
        ("fast twin, lg2 exact", fast_twin, {"lg2_error": 0.0}),
        ("fast twin, lg2 +-2^-22.6 (PTX)", fast_twin, {"lg2_error": (bound, -bound)}),
        ("fast twin, lg2 -+2^-22.6 (PTX)", fast_twin, {"lg2_error": (-bound, bound)}),
        ("fast twin, lg2 +-2^-22 (CUDA guide)", fast_twin, {"lg2_error": (guide, -guide)}),
    ]


def noise_table(stride: int = 97) -> str:
    lines = ["| noise | max \\|g - def\\| (at b) | arithmetic error (at b) | stated bound | share of b over bound "
             "| monotone reach | time |", "|---|---|---|---|---|---|---|"]
    for name, twin, kwargs in _twins()[1:]:
        r = max_noise_error(twin, stride=stride, **kwargs)
        lines.append(f"| {name} | {r.max_error:.3g} ({r.at_b}) | {r.max_arithmetic_error:.3g} ({r.arithmetic_at_b}) "
                     f"| {r.bound:.0e} | {r.fraction_over:.2%} | {r.max_reach} | {r.seconds:.1f} s |")
    return "\n".join(lines)


def tail_table(ds=TAIL_DS) -> str:
    twins = [t for t in _twins() if t[0] != "fast twin, lg2 -+2^-22.6 (PTX)"]
    twins.append(("broken: 24-bit uniforms", uniform24_twin, {}))
    header = "| d | 1/(1+e^d) | " + " | ".join(name for name, _, _ in twins) + " |"
    lines = [header, "|---" * (len(twins) + 2) + "|"]
    for d in ds:
        exact = continuous_win_probability(d)
        cells = []
        for _, twin, kwargs in twins:
            fn = (lambda b, _t=twin, _k=kwargs: _t(b, **_k)) if kwargs else twin
            lo, hi = win_probability(d, fn, slack_nats=0.0 if twin in (definition, uniform24_twin) else None)
            cells.append(f"{lo / exact - 1:+.3%} / {hi / exact - 1:+.3%}")
        lines.append(f"| {d} | {exact:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=97, help="stride of the check above 2**22 (default 97)")
    args = parser.parse_args(argv)
    print("Noise error against the float64 definition (nats); arithmetic error = against the definition "
          "at the twin's float32 input float32(b)\n")
    print(noise_table(args.stride))
    print("\nP(a class d nats behind wins), relative error of the lower / upper bound against 1/(1+e^d)\n")
    print(tail_table())


if __name__ == "__main__":
    main()
