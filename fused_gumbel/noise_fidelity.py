"""How faithful is the noise? Host-side checks of spec v2 steps 3-5 (``fused_gumbel/rng.py``).

The spec maps a 32-bit Philox word ``w`` to Gumbel noise, defined in exact arithmetic::

    u = min(w | 1, 2**32 - 2**8),  v = u * 2**-32,  E = -log1p(-v),  g = -log(E)

Everything here is indexed by the 31-bit draw ``b = w >> 1`` (the low bit never matters):
``u = min(2 b + 1, TOP_NUMERATOR)``, so ``v`` is the midpoint ``(b + 1/2) 2**-31`` of ``b``'s
interval, every ``b`` in ``[0, 2**31)`` has mass ``2**-31``, and the top clamp merges the 128 draws
``b >= TOP_DRAW = 2**31 - 2**7`` into ``v = 1 - 2**-24``. Implementations evaluate ``g`` in
float32 within a stated error. This module holds

* :func:`definition` (float64), :func:`exact_twin` (numpy float32 mirror of
  ``rng.gumbel_from_bits`` and of ``gumbel_from_word(FAST=0)``) and :func:`fast_twin` (numpy
  float32 emulation of ``gumbel_from_word(FAST=2)`` whose ``lg2.approx`` error can be injected;
  with exact ``lg2`` it is ``FAST=1``); the fast kernels return ``g - ln(log2 e)``
  (:func:`fast_twin_raw`), :func:`fast_twin` adds the constant back;
* :func:`max_noise_error`: the largest ``|twin - definition|`` over every ``b <= 2**22``, a
  stride through the rest of the 31-bit range and the region boundaries. It splits the error in
  two: the *arithmetic* error (the twin against the definition evaluated at the twin's own
  float32 input ``float32(u)``) and the rest, which is the rounding of ``u`` to float32 (24
  significant bits) and only matters near ``v = 1`` (the losing end, ``g < -1.5``);
* :func:`win_probability`: P(a class ``d`` nats below the leader wins a two-class race) under the
  discrete noise distribution, with rigorous lower and upper bounds obtained by counting, not by
  sampling; :func:`midpoint_prediction` is its closed form for large ``d``.

``python -m fused_gumbel.noise_fidelity`` prints both tables (docs/api.md, "Noise fidelity").
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from fused_gumbel.rng import EXACT_NOISE_BOUND, FAST_NOISE_BOUND, FAST_SERIES_BELOW, GUMBEL_SCALE, TOP_NUMERATOR

TWO31 = 2**31
# The first draw b the top clamp catches: 2 b + 1 > TOP_NUMERATOR for b >= TOP_DRAW, so the
# draws [TOP_DRAW, 2**31) all give v = 1 - 2**-24 (128 draws, mass 2**-24).
TOP_DRAW = TOP_NUMERATOR // 2
# PTX ISA, lg2.approx.f32: "max absolute error 2^-22.6 for mantissa" (the error of the log2 of the
# significand; the exponent is exact). The CUDA C++ Programming Guide states 2^-22 for __log2f
# on [0.5, 2]; both are reported by the __main__ table.
LG2_APPROX_ERROR = 2.0**-22.6
LG2_GUIDE_ERROR = 2.0**-22
# The fast kernels compute -ln2 * lg2(E log2 e) = g - ln(log2 e): a constant shift of every class.
FAST_SHIFT = -math.log(math.log(2.0))  # ln(log2 e) = 0.3665...
# The float32 twins are monotone in b only up to rounding (and, for the fast twin, the small jump
# where the series hands over to lg2.approx at v = 2**-6). A twin within TWIN_SLACK_NATS of the
# definition at its float32 input can only reverse order between draws whose definition values
# differ by less than 2 * TWIN_SLACK_NATS; win_probability widens its counts by that many draws.
# Valid for both twins: their arithmetic errors are tested to be below the spec's bounds (<= 1e-5).
TWIN_SLACK_NATS = 1.5e-5

_F32 = np.float32
_LN2_F32 = _F32(math.log(2.0))
_SCALE_F32 = _F32(GUMBEL_SCALE)  # 2**-32, exact
_SERIES_BELOW_U = _F32(FAST_SERIES_BELOW / GUMBEL_SCALE)  # v < 2**-6  <=>  float32(u) < 2**26


def _series_constants() -> tuple:
    """``SERIES_C1..C4`` of kernels/rng.py (``log2(e) 2**-32k / k``) as float32, as the kernels
    round them (C4 is a float32 subnormal). Read from the kernels when triton is importable."""
    try:
        from fused_gumbel.kernels import rng as kernel_rng
        values = [getattr(kernel_rng, f"SERIES_C{k}") for k in range(1, 5)]
        values = [getattr(c, "value", c) for c in values]
    except ImportError:  # pragma: no cover - triton is absent off Linux
        values = [math.log2(math.e) * 2.0 ** (-32 * k) / k for k in range(1, 5)]
    return tuple(_F32(c) for c in values)


_SERIES_C = _series_constants()


def numerator(b) -> np.ndarray:
    """The spec's ``u = min(2 b + 1, TOP_NUMERATOR)`` of the 31-bit draws ``b`` (int64); ``2 b + 1``
    is ``w | 1`` for either word ``w`` with ``w >> 1 == b``."""
    b = np.asarray(b, dtype=np.int64)
    return np.minimum(2 * b + 1, TOP_NUMERATOR)


def _noise_of_numerator(u) -> np.ndarray:
    v = np.asarray(u, dtype=np.int64) * 2.0**-32  # exact: u < 2**32 fits a float64 significand
    return -np.log(-np.log1p(-v))


def definition(b) -> np.ndarray:
    """The spec's noise of the 31-bit draws ``b`` (int array in ``[0, 2**31)``), in float64."""
    return _noise_of_numerator(numerator(b))


def float32_numerator(b) -> np.ndarray:
    """The numerator the float32 twins actually see: ``u`` rounded to 24 significant bits (int64)."""
    return numerator(b).astype(_F32).astype(np.int64)


def definition_at_float32_input(b) -> np.ndarray:
    """The definition evaluated at ``float32(u)``: what the twins' arithmetic error is measured against."""
    return _noise_of_numerator(float32_numerator(b))


def exact_twin(b) -> np.ndarray:
    """``rng.gumbel_from_bits(b, float32)`` / ``gumbel_from_word(FAST=0)`` in numpy float32:
    Goldberg's ``log1p``: ``E = v * log(a) / (a - 1)`` with ``a = 1 - v`` (``E = v`` when ``a == 1``)."""
    v = numerator(b).astype(_F32) * _SCALE_F32
    a = _F32(1.0) - v
    exact = a == _F32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponential = np.where(exact, v, v * np.log(a) / np.where(exact, _F32(1.0), a - _F32(1.0)))
    return (-np.log(exponential)).astype(_F32)


def _lg2(x: np.ndarray, error: float | None) -> np.ndarray:
    """``lg2.approx.f32`` with a chosen error: ``float32(log2(x) + error)``; ``None``: numpy's
    float32 ``log2`` (not correctly rounded: up to 2 ulp off), which the interpreter runs for ``tl.log2``."""
    if error is None:
        return np.log2(x.astype(_F32))
    return (np.log2(x.astype(np.float64)) + error).astype(_F32)


def fast_twin_raw(b, lg2_error: float | tuple[float, float] | None = 0.0) -> np.ndarray:
    """What ``gumbel_from_word(FAST=2)`` stores, in numpy float32: ``g - ln(log2 e)``, with
    ``lg2.approx`` replaced by ``float32(log2(x) + error)``. ``lg2_error`` is one error for both
    logarithms or a pair ``(error of lg2(1 - v), error of lg2(E2))``; ``(+bound, -bound)`` is the
    worst case, the two errors then add up in ``g``. ``lg2_error=0`` is ``FAST=1`` with a correctly
    rounded log2; ``None`` is ``FAST=1`` as the interpreter runs it (numpy's float32 ``log2``).

    The kernel: ``uf = float32(u)``; ``series = uf*(C1 + uf*(C2 + uf*(C3 + uf*C4)))`` (= ``E2 = E
    log2 e`` for ``uf < 2**26``, i.e. ``v < 2**-6``); ``mufu = lg2(1 - uf 2**-32)`` (the product is
    exact, one rounding); ``neg = -series if uf < 2**26 else mufu``; ``lg2(-neg) * -ln2``.
    Each float32 operation is rounded separately (no FMA contraction, as the interpreter runs it);
    contraction on the GPU moves the series by an ulp, far below the bounds. The GPU test
    measures the real instructions.
    """
    inner, outer = (lg2_error, lg2_error) if lg2_error is None or np.isscalar(lg2_error) else lg2_error
    c1, c2, c3, c4 = _SERIES_C
    uf = numerator(b).astype(_F32)
    series = uf * (c1 + uf * (c2 + uf * (c3 + uf * c4)))
    mufu = _lg2(_F32(1.0) - uf * _SCALE_F32, inner)
    negative = np.where(uf < _SERIES_BELOW_U, -series, mufu)
    return (_lg2(-negative, outer) * -_LN2_F32).astype(_F32)


def fast_twin(b, lg2_error: float | tuple[float, float] = 0.0) -> np.ndarray:
    """:func:`fast_twin_raw` plus the constant ``ln(log2 e)`` (in float64): comparable with the definition."""
    return fast_twin_raw(b, lg2_error).astype(np.float64) + FAST_SHIFT


def uniform24_twin(b) -> np.ndarray:
    """A deliberately broken twin: 24-bit uniforms ``v = max(w >> 8, 1) * 2**-24`` (as from a float32
    ``torch.rand``), so ``g <= 16.6`` and a class 18 nats behind can (almost) never win."""
    v = np.maximum(np.asarray(b, dtype=np.int64) >> 7, 1) * 2.0**-24
    return -np.log(-np.log1p(-np.minimum(v, 1 - 2.0**-24)))


# ----------------------------------------------------------------------------- noise error


@dataclass
class NoiseError:
    """What :func:`max_noise_error` measured for one twin (errors in nats)."""

    max_error: float              # max |twin(b) - definition(b)|
    at_b: int
    max_arithmetic_error: float   # max |twin(b) - definition_at_float32_input(b)|
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
    for lo in range(0, exhaustive_below + 1, chunk):
        yield np.arange(lo, min(lo + chunk, exhaustive_below + 1), dtype=np.int64), False, True
    start = exhaustive_below + 1
    step = chunk * stride
    for lo in range(start, TWO31, step):
        yield np.arange(lo, min(lo + step, TWO31), stride, dtype=np.int64), True, False
    # Boundaries, consecutive: where the float32 step of u = 2 b + 1 doubles (u = 2**24 ... 2**31,
    # i.e. b = 2**23 ... 2**30, v = 1/2 last), the series/MUFU switch at v = 2**-6 (b = 2**25),
    # and the top clamp (with the merged draws above it).
    edges = sorted({2**k for k in range(23, 31)} | {int(FAST_SERIES_BELOW * TWO31)})
    for edge in edges:
        yield np.arange(edge - 2**15, edge + 2**15, dtype=np.int64), False, True
    yield np.arange(TOP_DRAW - 2**20, TWO31, dtype=np.int64), False, True


def max_noise_error(twin, exhaustive_below: int = 2**22, stride: int = 97, bound: float | None = None,
                    **twin_kwargs) -> NoiseError:
    """Largest ``|twin(b) - definition(b)|`` over every ``b`` in ``[0, exhaustive_below]``, every
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
        g = np.asarray(twin(b, **twin_kwargs), dtype=np.float64)
        error = np.abs(g - definition(b))
        arith = np.abs(g - definition_at_float32_input(b))
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
    """``#{b in [0, 2**31) : twin(b) < t}`` (``<=`` when not ``strict``) for each ``t``, and the
    crossing (the smallest draw counted, ``TOP_DRAW + 1`` for none), assuming ``twin``
    non-increasing in ``b``: a vectorised bisection over ``[0, TOP_DRAW]`` (the draws above
    ``TOP_DRAW`` have its value)."""
    t = np.asarray(t, dtype=np.float64)
    # Invariant: not counted at lo, counted at hi (lo = -1 / hi = TOP + 1 stand for "none").
    lo = np.full(t.shape, -1, dtype=np.int64)
    hi = np.full(t.shape, TOP_DRAW + 1, dtype=np.int64)
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            break
        mid = (lo + hi) // 2
        g = np.asarray(twin(np.where(open_, mid, 0)), dtype=np.float64)
        counted = open_ & ((g < t) if strict else (g <= t))
        hi = np.where(counted, mid, hi)
        lo = np.where(open_ & ~counted, mid, lo)
    # Every draw b >= hi is counted (those above TOP_DRAW with TOP_DRAW's value).
    count = np.where(hi > TOP_DRAW, 0, TWO31 - hi).astype(np.int64)
    return count, hi


def _slack(b: np.ndarray, nats: float) -> np.ndarray:
    """Draws around ``b`` over which a twin within ``nats`` of the definition can be out of order:
    the span of b where the definition moves by ``2 * nats`` (twice, for margin), plus two float32
    steps of ``u`` in draws (the twins see ``float32(u)``)."""
    if nats == 0:
        return np.zeros(np.shape(b), dtype=np.int64)
    b = np.clip(np.asarray(b, dtype=np.int64), 0, TWO31 - 1)
    g = definition(b)
    dv_dg = np.exp(-g - np.exp(-g))  # v = 1 - exp(-exp(-g)), db = 2**31 dv
    # float32 spacing of u in [2**(e-1), 2**e) is 2**(e-24) numerators, half as many draws
    step = np.maximum(1, 2.0 ** (np.frexp(numerator(b).astype(np.float64))[1] - 25)).astype(np.int64)
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
    independent noise ``twin(b)`` from the discrete distribution of the spec (``b`` uniform on
    ``[0, 2**31)``, each with mass ``2**-31``; the draws above ``TOP_DRAW`` share its value). The
    continuous Gumbel value is ``1 / (1 + e**d)`` (:func:`continuous_win_probability`).

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
        c, crossing = _count_below(twin, np.asarray(twin(b), dtype=np.float64) - d, strict)
        widen = np.where((c > 0) & (c < TWO31), sign * _slack(crossing, slack_nats), 0)
        if sign > 0:  # a count of 0 may hide draws just above the top
            widen = np.where(c == 0, _slack(np.full_like(c, TOP_DRAW), slack_nats), widen)
        return np.clip(c + widen, 0, TWO31).astype(np.float64)

    # Draws b_B that can win at all: g(b_B) - d >= min g = g(TOP_DRAW); above `last` none does.
    g_min = float(np.asarray(twin(np.array([TOP_DRAW])), dtype=np.float64)[0])
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


def midpoint_prediction(d: float) -> float:
    """P_discrete / P_continuous of the definition for large ``d``: ``(lam/2) / sinh(lam/2)`` with
    ``lam = e**d / 2**31``. For small ``v``, B wins with probability about ``exp(-e**d v_B)``;
    summed over the midpoints ``v_B = (b + 1/2) 2**-31`` that is ``2**-31 / (2 sinh(lam/2))``
    against the integral ``e**-d``. (The top clamp moves at most 128 draws of each count.)"""
    lam = math.exp(d) / TWO31
    return (lam / 2) / math.sinh(lam / 2)


# ----------------------------------------------------------------------------- report

TAIL_DS = (5, 10, 15, 18, 20)


def _twins():
    bound = LG2_APPROX_ERROR
    guide = LG2_GUIDE_ERROR
    return [
        ("definition (float64)", definition, {}),
        ("exact twin (float32)", exact_twin, {}),
        ("fast twin, lg2 exact (FAST=1)", fast_twin, {"lg2_error": 0.0}),
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


def native_twin(b: np.ndarray) -> np.ndarray:
    """The C++ CPU kernel's float32 noise (``fused_gumbel._C``, the build this CPU runs) for draws ``b``."""
    import torch

    words = torch.from_numpy(2 * np.asarray(b, dtype=np.int64))  # w = 2 b: w | 1 is the draw's midpoint
    return torch.ops.fused_gumbel._cpu_gumbel_noise(words).numpy()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=97, help="stride of the check above 2**22 (default 97)")
    parser.add_argument("--native", action="store_true",
                        help="check only the C++ CPU kernel's noise (the ISA build this CPU runs) against the "
                             "exact bound; with --stride 1 over all 2**31 draws (minutes)")
    args = parser.parse_args(argv)
    if args.native:
        from . import _native

        if not _native.available("cpu"):
            raise SystemExit(f"fused_gumbel._C is not available: {_native.unavailable_reason('cpu')}")
        exhaustive_below = TWO31 - 1 if args.stride == 1 else 2**22
        r = max_noise_error(native_twin, exhaustive_below=exhaustive_below, stride=args.stride, bound=EXACT_NOISE_BOUND)
        # The bound holds for the arithmetic error: against the definition at the float32 input float32(u).
        verdict = "within" if r.max_arithmetic_error <= r.bound else "OVER"
        print(f"C++ CPU kernel ({_native.cpu_isa()} build): arithmetic error {r.max_arithmetic_error:.4g} nats at "
              f"b = {r.arithmetic_at_b} ({verdict} the exact bound {r.bound:.0e}); max |g - def| {r.max_error:.4g} "
              f"at b = {r.at_b} (float32(u) near v = 1); {r.checked} draws checked in {r.seconds:.0f} s")
        return
    print("Noise error against the float64 definition (nats); arithmetic error = against the definition "
          "at the twin's float32 input float32(u); b = w >> 1 is the 31-bit draw\n")
    print(noise_table(args.stride))
    print("\nP(a class d nats behind wins), relative error of the lower / upper bound against 1/(1+e^d)\n")
    print(tail_table())


if __name__ == "__main__":
    main()
