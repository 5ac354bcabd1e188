"""Fused Gumbel-Softmax kernels (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017) and launchers.

Forward, one launch: load the logits once, draw Gumbel noise g in registers (RNG spec v2 in
``fused_gumbel/rng.py``), and write one of
    soft:  y = softmax((x + g) / tau)        computed as 2^((x + g - M) c) / S, c = log2(e) / tau,
    hard:  y = one_hot(argmax(x + g))        exact 0/1 values,
    index: argmax(x + g)                     an exact categorical draw (Gumbel-max),
with M the row max of x + g and S the row sum. Rows whose max is not finite or that hold a
NaN are "invalid": NaN outputs (index -1), like ``torch.softmax`` on such rows.

Backward, one launch: with s = y * (dy - sum(dy * y)),
    dx = s / tau,    dtau = -sum(s * (x + g - M) / tau) / tau.
The soft mode reads its saved output y (then log y stands in for (x + g - M) / tau; the two
differ by log S, which sum(s) = 0 cancels). The hard (straight-through) mode saves no soft
tensor: it regenerates g and y from the logits and the call's (seed, offset), as in Triton's
low-memory-dropout tutorial.

Cost model (``python -m bench.static``): the budget is about 31 SASS instructions per bf16
element on an H200, so every element draws its noise exactly once per launch. Four kernel
shapes, chosen by ``tile_config``:
- Short rows (K <= ``SMALL_K`` = 16, e.g. the VAE's 10 classes): one row per thread, K a
  constexpr, every class its own register plane; padding classes compile away.
- Rows up to ``MAX_RESIDENT`` classes (``MAX_RESIDENT_SOFT_FORWARD`` in the soft forward) stay
  in registers: one load, one noise draw, one store.
  Tiles are ``[ROWS, BLOCK_Q, 4]``: word w of Philox call q of a row is class 4q + w, and the
  four word planes are computed separately (no shuffles), so a 4-class group is one vector load.
- Few long rows (fewer row programs than ``SPLIT_BELOW_PROGRAMS``) split into (row, segment)
  programs with a two-phase combine (``gumbel_softmax_split_*``): the last program of a row
  (a per-row ticket counter) merges the partial (max, sum, argmax) and finishes the row. The
  categorical's segments are one warp each; in the hard and index modes the last segment
  overlaps its neighbour rather than masking its lanes.
- Other rows longer than ``MAX_RESIDENT`` stream in chunks: the soft forward writes each chunk
  scaled by its own max and rescales it in a second, noise-free pass over the (L2-resident)
  output; the hard forward keeps the row max (4 bytes a row), with which the hard backward
  regenerates the noise once, sums the row, parks y in grad_x and finishes from L2.
- ``FAST`` (float32 on a GPU) puts the logarithms and exponentials on the MUFU unit
  (``kernels/rng.py``); the interpreter and float64 run the exact twin.

Seeds: the 64-bit Philox seed and stream offset arrive as four 32-bit words (always typed i32,
never value-specialised), plus ``rng_ptr`` (an int64 ``[2]`` tensor) and a *runtime* ``rng_mode``:
``RNG_SCALAR`` uses the words (eager calls, one launch); ``RNG_FROM_PTR`` reads (seed, offset)
from ``rng_ptr``, which is how a CUDA graph gets fresh noise on every replay (the tensor is
refilled by a graph-safe PyTorch RNG op); ``RNG_STORE`` uses the words and writes them to
``rng_ptr`` from program 0, so a compiled graph keeps the call's seed on the device for its
backward without an extra copy or launch. Because none of this changes the kernel's
specialisation, the binary that eager warm-up runs load is the one a graph capture launches:
loading a module (``cuModuleLoadData``) is forbidden while a stream is capturing.

Launch plans (tile, grid, constexprs) are made once per problem and module ``generation``:
setting any attribute of this module (a tunable, as tests and ``bench.static`` do) starts a new one.
"""
import functools
import os
import struct
import sys
import types
from typing import NamedTuple

import triton
import triton.language as tl

from .rng import ex2, gumbel_from_word, gumbel_noise, lg2, join_words, philox_words, split_words

MODE_SOFT = 0
MODE_HARD = 1
MODE_INDEX = 2

# Widest row (in classes) held in registers by one program; wider rows stream in chunks this wide.
MAX_RESIDENT = 16384
# The soft forward holds rows twice as wide (up to 32 warps of 32 elements): a streamed soft row
# costs a second, rescaling pass over its output, the others only a few row statistics.
MAX_RESIDENT_SOFT_FORWARD = 32768
# Elements per program that row packing aims for.
TARGET_TILE = 2048
# Elements per thread that num_warps aims for (registers: a few per element). The categorical
# (index) forward keeps one float per element and nothing else, so it holds four times as many,
# which spreads each thread's fixed costs (addresses, reductions, key schedule) thinner.
ELEMENTS_PER_THREAD = 32
INDEX_ELEMENTS_PER_THREAD = 128
# Elements per thread of a split program, whatever the mode: a split program is one row segment
# with nothing to pack, so it holds twice ELEMENTS_PER_THREAD, spreading each thread's fixed
# costs (key schedule, addresses, reductions, the ticket) over twice as many elements; the
# categorical's 128 would spill next to the segment's offsets and the combine's state.
SPLIT_ELEMENTS_PER_THREAD = 64
# The categorical splits its rows into one-warp segments (32 threads of SPLIT_ELEMENTS_PER_THREAD):
# its reductions are warp shuffles with no shared-memory round, the last segment pads a row by
# less than one warp's worth, and the finer grid fills the SMs more evenly. (The soft forward
# keeps wide segments: its last program rescales the whole row, segment by segment.)
INDEX_SPLIT_SEGMENT = 32 * SPLIT_ELEMENTS_PER_THREAD
# Few long rows are split across programs (two-phase combine) when the row programs alone would
# not give each SM of a 132-SM GPU two programs, in segments of at least SPLIT_MIN_SEGMENT classes.
SPLIT_BELOW_PROGRAMS = 264
SPLIT_MIN_SEGMENT = 2048
# Rows of at most this many classes run the one-row-per-thread kernels (K a constexpr).
SMALL_K = 16
# Rows per program of those kernels (two per thread with 4 warps).
SMALL_ROWS = 256


@triton.jit
def _row_offsets(rows, inner, s_outer, s_inner):
    """Memory offset of each logical row r = o * inner + i of a [outer, K, inner] view."""
    rows = rows.to(tl.int64)
    return (rows // inner) * s_outer + (rows % inner) * s_inner


@triton.jit
def _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS: tl.constexpr,
              TAU_FROM_PTR: tl.constexpr, COMPUTE: tl.constexpr):
    if TAU_FROM_PTR:
        tau = tl.load(tau_ptr + rows.to(tl.int64) * tau_s_row, mask=row_mask, other=1.0).to(COMPUTE)
    else:
        tau = tl.zeros([ROWS], COMPUTE) + tau_value
    return tau


@triton.jit
def _chunk_columns(chunk, K, row_mask, BLOCK_Q: tl.constexpr):
    cols = chunk * (4 * BLOCK_Q) + tl.arange(0, 4 * BLOCK_Q)
    return cols, row_mask[:, None] & (cols < K)[None, :]


@triton.jit
def _perturbed_logits(x_ptr, x_rows, x_s_k, rows, row_mask, chunk, K, Q, seed, offset,
                      ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr):
    """x + g for one ``[ROWS, 4 * BLOCK_Q]`` chunk (class-major, exact noise); -inf outside the
    tensor. Returns (x + g, cols, mask). Used by the top-k kernels."""
    cols, mask = _chunk_columns(chunk, K, row_mask, BLOCK_Q)
    x = tl.load(x_ptr + x_rows[:, None] + cols[None, :].to(tl.int64) * x_s_k, mask=mask,
                other=float("-inf")).to(COMPUTE)
    g = gumbel_noise(seed, offset, rows, chunk, Q, ROWS, BLOCK_Q, COMPUTE)
    return tl.where(mask, x + g, float("-inf")), cols, mask


@triton.jit
def _inverse_or_nan(row_sum, valid):
    """1 / row_sum, NaN for invalid rows (which must come out NaN), without dividing by zero
    (the interpreter evaluates padding rows too, and numpy would warn)."""
    return tl.where(valid, 1.0 / tl.where(valid, row_sum, 1.0), float("nan"))


@triton.jit
def _valid_rows(row_max, nan_count):
    return (nan_count == 0) & (tl.abs(row_max) < float("inf"))


@triton.jit
def _word_pair(lo, hi):
    """The uint64 with 32-bit halves ``lo`` and ``hi`` (int32 bit patterns)."""
    return (hi.to(tl.uint32).to(tl.uint64) << 32) | lo.to(tl.uint32).to(tl.uint64)


@triton.jit
def _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid):
    """(seed, offset) as uint64 for this launch; see "Seeds" in the module docstring."""
    seed = _word_pair(seed_lo, seed_hi)
    offset = _word_pair(offset_lo, offset_hi)
    if rng_mode == 1:
        seed = tl.load(rng_ptr).to(tl.uint64, bitcast=True)
        offset = tl.load(rng_ptr + 1).to(tl.uint64, bitcast=True)
    if rng_mode == 2:
        if pid == 0:
            tl.store(rng_ptr, seed.to(tl.int64, bitcast=True))
            tl.store(rng_ptr + 1, offset.to(tl.int64, bitcast=True))
    return seed, offset


_SEED_ARGS = ["seed_lo", "seed_hi", "offset_lo", "offset_hi", "rng_mode"]


@triton.jit
def _log2e(COMPUTE: tl.constexpr):
    # A float literal would be typed float32 and cost float64 math 8 digits.
    return tl.full([], 1.4426950408889634, COMPUTE)


@triton.jit
def _ln2(COMPUTE: tl.constexpr):
    return tl.full([], 0.6931471805599453, COMPUTE)


# ---- word-plane tiles: [ROWS, BLOCK_Q] planes w = 0..3 hold classes 4q + w ----------------------

@triton.jit
def _tile_at(rows_base, start, s_k, BLOCK_Q: tl.constexpr):
    """Offsets of the [ROWS, BLOCK_Q, 4] tile of classes start + 4q + w (at [., q, w]), the
    columns 4q + w within it, and start + 4q. The start goes into the per-row base, so each
    element's offset within the tile is a compile-time constant (no per-element 64-bit index
    arithmetic for a runtime start)."""
    q4 = 4 * tl.arange(0, BLOCK_Q)
    cols = q4[None, :, None] + tl.arange(0, 4)[None, None, :]
    base = rows_base + start.to(tl.int64) * s_k
    return base[:, None, None] + cols.to(tl.int64) * s_k, cols, start + q4


@triton.jit
def _tile(rows_base, row_mask, chunk, K, s_k, BLOCK_Q: tl.constexpr):
    """Offsets and mask of the tile of chunk ``chunk`` (see ``_tile_at``), and 4q."""
    start = chunk * (4 * BLOCK_Q)
    offs, cols, q4 = _tile_at(rows_base, start, s_k, BLOCK_Q)
    return offs, row_mask[:, None, None] & (cols < K - start), q4


@triton.jit
def _widen(t, FAST: tl.constexpr, COMPUTE: tl.constexpr):
    """``t.to(COMPUTE)``. A bf16 pair shares a 32-bit register; widened by ``.to`` the high one
    costs a PRMT and a shift, so on the GPU (FAST == 2) the pair is split with one shift and one
    AND (bf16 -> float32 is exact: the same bits either way)."""
    if (FAST == 2 and t.dtype == tl.bfloat16) and COMPUTE == tl.float32:  # triton 3.2 rejects a chained `and`
        return tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [t],
                                         dtype=tl.float32, is_pure=True, pack=2)
    else:
        return t.to(COMPUTE)


@triton.jit
def _load_planes(ptr, offs, mask, other, COMPUTE: tl.constexpr, FAST: tl.constexpr = 0):
    return split_words(_widen(tl.load(ptr + offs, mask=mask, other=other), FAST, COMPUTE))


@triton.jit
def _store_planes(ptr, offs, mask, y0, y1, y2, y3):
    tl.store(ptr + offs, join_words(y0, y1, y2, y3).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _noise_planes(seed, offset, rows, q4, Q, FAST: tl.constexpr, COMPUTE: tl.constexpr,
                  COUNTER32: tl.constexpr = False):
    """Gumbel noise of the four word planes of the calls ``rows * Q + q4 // 4``."""
    if COUNTER32:  # every counter of the call fits 32 bits: its high word is the constant 0
        w0, w1, w2, w3 = philox_words(seed, offset, rows.to(tl.int32)[:, None] * Q + (q4 // 4)[None, :], True)
    else:
        w0, w1, w2, w3 = philox_words(seed, offset, rows.to(tl.int64)[:, None] * Q + (q4 // 4)[None, :])
    return (gumbel_from_word(w0, FAST, COMPUTE), gumbel_from_word(w1, FAST, COMPUTE),
            gumbel_from_word(w2, FAST, COMPUTE), gumbel_from_word(w3, FAST, COMPUTE))


@triton.jit
def _perturbed_planes(x_ptr, x_rows, x_s_k, rows, row_mask, chunk, K, Q, seed, offset,
                      BLOCK_Q: tl.constexpr, FAST: tl.constexpr, COMPUTE: tl.constexpr,
                      COUNTER32: tl.constexpr = False):
    """x + g for one chunk as four planes; -inf outside the tensor (masked loads give -inf)."""
    offs, mask, q4 = _tile(x_rows, row_mask, chunk, K, x_s_k, BLOCK_Q)
    x0, x1, x2, x3 = _load_planes(x_ptr, offs, mask, float("-inf"), COMPUTE, FAST)
    g0, g1, g2, g3 = _noise_planes(seed, offset, rows, q4, Q, FAST, COMPUTE, COUNTER32)
    return x0 + g0, x1 + g1, x2 + g2, x3 + g3, q4


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _planes_max(a0, a1, a2, a3):
    """Row max of four planes; NaN if any element is NaN (so the row reads as invalid)."""
    return tl.reduce(_max_nan(_max_nan(a0, a1), _max_nan(a2, a3)), 1, _max_nan)


@triton.jit
def _planes_sum(e0, e1, e2, e3):
    return tl.sum((e0 + e1) + (e2 + e3), axis=1)


@triton.jit
def _planes_argmax(a0, a1, a2, a3, q4, row_max):
    """First class index where the planes equal the row max (torch.argmax's tie rule): a select
    chain from the last plane down (two instructions an element), then one min over the tile."""
    m = row_max[:, None]
    k = q4[None, :]
    best = tl.where(a3 == m, k + 3, 2147483647)
    best = tl.where(a2 == m, k + 2, best)
    best = tl.where(a1 == m, k + 1, best)
    best = tl.where(a0 == m, k, best)
    return tl.min(best, axis=1)


@triton.jit
def _exp_planes(a0, a1, a2, a3, scale, shift, FAST: tl.constexpr):
    """2^(a * scale - shift) per plane; scale = log2(e) / tau and shift = M * scale per row."""
    c = scale[:, None]
    s = shift[:, None]
    return ex2(a0 * c - s, FAST), ex2(a1 * c - s, FAST), ex2(a2 * c - s, FAST), ex2(a3 * c - s, FAST)


@triton.jit
def _one_hot_planes(q4, best, one, zero):
    """Planes of the one-hot of ``best`` with per-row values ``one``/``zero`` (NaN for invalid rows)."""
    b = best[:, None]
    o = one[:, None]
    z = zero[:, None]
    k = q4[None, :]
    return tl.where(k == b, o, z), tl.where(k + 1 == b, o, z), tl.where(k + 2 == b, o, z), tl.where(k + 3 == b, o, z)


@triton.jit
def _online_update(row_max, row_sum, best, chunk_max, chunk_best, chunk_sum_at_chunk_max, scale):
    """Fold a chunk's (max, argmax, sum of 2^((a - chunk_max) scale)) into the running row stats.
    Strict '>' keeps the earlier chunk on ties (first index, as torch.argmax); NaN sticks."""
    new_max = _max_nan(row_max, chunk_max)
    best = tl.where(chunk_max > row_max, chunk_best, best)
    # A row that is all -inf so far keeps sum 0 instead of producing (-inf) - (-inf).
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    old = tl.where(row_sum == 0.0, 0.0, row_sum * tl.exp2((row_max - shift) * scale))
    fresh = tl.where(chunk_sum_at_chunk_max == 0.0, 0.0,
                     chunk_sum_at_chunk_max * tl.exp2((chunk_max - shift) * scale))
    return new_max, old + fresh, best


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_fwd_kernel(
    x_ptr, y_ptr, index_ptr, stats_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, num_chunks,
    x_s_outer, x_s_k, x_s_inner, y_s_outer, y_s_k, y_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    MODE: tl.constexpr, TAU_FROM_PTR: tl.constexpr, SINGLE_CHUNK: tl.constexpr, SAVE_STATS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr, FAST: tl.constexpr,
    COUNTER32: tl.constexpr = False,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    y_rows = _row_offsets(rows, inner, y_s_outer, y_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
    scale = _log2e(COMPUTE) / tau

    if SINGLE_CHUNK:
        a0, a1, a2, a3, q4 = _perturbed_planes(x_ptr, x_rows, x_s_k, rows, row_mask, 0, K, Q, seed, offset,
                                               BLOCK_Q, FAST, COMPUTE, COUNTER32)
        row_max = _planes_max(a0, a1, a2, a3)
        valid = tl.abs(row_max) < float("inf")  # NaN compares false
        if MODE != 0:
            best = _planes_argmax(a0, a1, a2, a3, q4, row_max)
            if MODE == 2:
                tl.store(index_ptr + rows, tl.where(valid, best, -1).to(tl.int64), mask=row_mask)
        if MODE == 0:
            shift = tl.where(valid, row_max * scale, 0.0)
            e0, e1, e2, e3 = _exp_planes(a0, a1, a2, a3, scale, shift, FAST)
            row_sum = _planes_sum(e0, e1, e2, e3)
        if MODE != 2:
            offs, mask, q4 = _tile(y_rows, row_mask, 0, K, y_s_k, BLOCK_Q)
            if MODE == 0:
                inv = _inverse_or_nan(row_sum, valid)[:, None]
                _store_planes(y_ptr, offs, mask, e0 * inv, e1 * inv, e2 * inv, e3 * inv)
            else:
                one = tl.where(valid, 1.0, float("nan"))
                zero = tl.where(valid, 0.0, float("nan"))
                y0, y1, y2, y3 = _one_hot_planes(q4, best, one, zero)
                _store_planes(y_ptr, offs, mask, y0, y1, y2, y3)
    else:
        # Streaming rows (ROWS == 1): one noise draw per element; soft chunks are written scaled by
        # their own max and rescaled in a noise-free second pass over the output.
        row_max = tl.full([ROWS], float("-inf"), COMPUTE)
        row_sum = tl.zeros([ROWS], COMPUTE)
        best = tl.zeros([ROWS], tl.int32)
        for chunk in range(0, num_chunks):
            a0, a1, a2, a3, q4 = _perturbed_planes(x_ptr, x_rows, x_s_k, rows, row_mask, chunk, K, Q, seed,
                                                   offset, BLOCK_Q, FAST, COMPUTE, COUNTER32)
            chunk_max = _planes_max(a0, a1, a2, a3)
            chunk_best = best
            if MODE != 0:
                chunk_best = _planes_argmax(a0, a1, a2, a3, q4, chunk_max)
            chunk_sum = row_sum
            if MODE == 0:
                chunk_shift = tl.where(tl.abs(chunk_max) < float("inf"), chunk_max * scale, 0.0)
                e0, e1, e2, e3 = _exp_planes(a0, a1, a2, a3, scale, chunk_shift, FAST)
                chunk_sum = _planes_sum(e0, e1, e2, e3)
                offs, mask, q4 = _tile(y_rows, row_mask, chunk, K, y_s_k, BLOCK_Q)
                _store_planes(y_ptr, offs, mask, e0, e1, e2, e3)
                tl.store(stats_ptr + (rows * num_chunks + chunk) * 2, chunk_max, mask=row_mask)
            row_max, row_sum, best = _online_update(row_max, row_sum, best, chunk_max, chunk_best, chunk_sum,
                                                    scale)
        valid = tl.abs(row_max) < float("inf")
        if MODE == 2:
            tl.store(index_ptr + rows, tl.where(valid, best, -1).to(tl.int64), mask=row_mask)
        if SAVE_STATS:  # the row max: the hard backward's shift (it sums the row itself)
            tl.store(stats_ptr + rows, row_max, mask=row_mask)
        if MODE != 2:
            tl.debug_barrier()  # pass 2 rewrites what other threads wrote in pass 1
            zero = tl.where(valid, 0.0, float("nan"))
            inv = _inverse_or_nan(row_sum, valid)
            for chunk in range(0, num_chunks):
                offs, mask, q4 = _tile(y_rows, row_mask, chunk, K, y_s_k, BLOCK_Q)
                if MODE == 0:
                    chunk_max = tl.load(stats_ptr + (rows * num_chunks + chunk) * 2, mask=row_mask, other=0.0)
                    # inv is NaN for invalid rows, which must come out NaN even where a chunk is all -inf.
                    factor = tl.where(chunk_max == float("-inf"), 0.0 * inv,
                                      tl.exp2((chunk_max - row_max) * scale) * inv)[:, None]
                    y0, y1, y2, y3 = _load_planes(y_ptr, offs, mask, 0.0, COMPUTE)
                    _store_planes(y_ptr, offs, mask, y0 * factor, y1 * factor, y2 * factor, y3 * factor)
                else:  # zeros (NaN for an invalid row): a store of a splat, no per-class work
                    z = tl.zeros([ROWS, BLOCK_Q], COMPUTE) + zero[:, None]
                    _store_planes(y_ptr, offs, mask, z, z, z, z)
            if MODE == 1:
                tl.debug_barrier()  # after every thread's zeros
                tl.store(y_ptr + y_rows + best.to(tl.int64) * y_s_k, tl.full([ROWS], 1.0, COMPUTE).to(
                    y_ptr.dtype.element_ty), mask=row_mask & valid)


@triton.jit
def _log_planes(y0, y1, y2, y3, FAST: tl.constexpr, COMPUTE: tl.constexpr):
    """log(y) per plane, 0 where y == 0 (zero-probability classes add nothing, not 0 * -inf).
    log y differs from (x + g - M) / tau by the per-row log S, which sum(s) = 0 cancels."""
    ln2 = _ln2(COMPUTE)
    return (tl.where(y0 > 0, lg2(tl.where(y0 > 0, y0, 1.0), FAST) * ln2, 0.0),
            tl.where(y1 > 0, lg2(tl.where(y1 > 0, y1, 1.0), FAST) * ln2, 0.0),
            tl.where(y2 > 0, lg2(tl.where(y2 > 0, y2, 1.0), FAST) * ln2, 0.0),
            tl.where(y3 > 0, lg2(tl.where(y3 > 0, y3, 1.0), FAST) * ln2, 0.0))


@triton.jit
def _bwd_chunk(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q, seed, offset,
               scale, shift, inv, REGENERATE: tl.constexpr, TAU_GRAD: tl.constexpr, BLOCK_Q: tl.constexpr,
               FAST: tl.constexpr, COMPUTE: tl.constexpr, COUNTER32: tl.constexpr = False):
    """y and dy of one chunk, with its share of dot = sum(dy * y), of the tau-gradient sums
    sum(dy * y * t), sum(y * t), t = (x + g - M) / tau (natural-log units), and of sum(y)."""
    offs_g, mask, q4 = _tile(g_rows, row_mask, chunk, K, g_s_k, BLOCK_Q)
    dy0, dy1, dy2, dy3 = _load_planes(grad_y_ptr, offs_g, mask, 0.0, COMPUTE)
    if REGENERATE:
        a0, a1, a2, a3, q4 = _perturbed_planes(src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q, seed,
                                               offset, BLOCK_Q, FAST, COMPUTE, COUNTER32)
        c = scale[:, None]
        s = shift[:, None]
        u0, u1, u2, u3 = a0 * c - s, a1 * c - s, a2 * c - s, a3 * c - s  # t / ln 2
        i = inv[:, None]
        y0, y1, y2, y3 = ex2(u0, FAST) * i, ex2(u1, FAST) * i, ex2(u2, FAST) * i, ex2(u3, FAST) * i
        if TAU_GRAD:
            ln2 = _ln2(COMPUTE)
            # Zero-probability classes (masked lanes, -inf logits) add nothing, not 0 * -inf.
            t0 = tl.where(y0 > 0, u0 * ln2, 0.0)
            t1 = tl.where(y1 > 0, u1 * ln2, 0.0)
            t2 = tl.where(y2 > 0, u2 * ln2, 0.0)
            t3 = tl.where(y3 > 0, u3 * ln2, 0.0)
    else:
        offs_s, mask, q4 = _tile(src_rows, row_mask, chunk, K, src_s_k, BLOCK_Q)
        y0, y1, y2, y3 = _load_planes(src_ptr, offs_s, mask, 0.0, COMPUTE)
        if TAU_GRAD:
            t0, t1, t2, t3 = _log_planes(y0, y1, y2, y3, FAST, COMPUTE)
    dot = _planes_sum(dy0 * y0, dy1 * y1, dy2 * y2, dy3 * y3)
    if TAU_GRAD:
        dy_y_t = _planes_sum(dy0 * y0 * t0, dy1 * y1 * t1, dy2 * y2 * t2, dy3 * y3 * t3)
        y_t = _planes_sum(y0 * t0, y1 * t1, y2 * t2, y3 * t3)
    else:
        dy_y_t = dot
        y_t = dot
    # With inv = 1 (streamed and split rows) y is the unnormalised 2^(t / ln 2) and y_sum the
    # chunk's share of the row sum S, which the caller divides everything by.
    y_sum = _planes_sum(y0, y1, y2, y3)
    return y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, dy_y_t, y_t, y_sum


@triton.jit
def _store_grad(grad_x_ptr, offs, mask, y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, inv_tau):
    """dx = y * (dy - dot) / tau."""
    d = dot[:, None]
    it = inv_tau[:, None]
    _store_planes(grad_x_ptr, offs, mask, y0 * (dy0 - d) * it, y1 * (dy1 - d) * it, y2 * (dy2 - d) * it,
                  y3 * (dy3 - d) * it)


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_bwd_kernel(
    grad_y_ptr, src_ptr, grad_x_ptr, grad_tau_ptr, stats_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, num_chunks,
    g_s_outer, g_s_k, g_s_inner, src_s_outer, src_s_k, src_s_inner,
    gx_s_outer, gx_s_k, gx_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    REGENERATE: tl.constexpr, TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
    FAST: tl.constexpr, COUNTER32: tl.constexpr = False,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    g_rows = _row_offsets(rows, inner, g_s_outer, g_s_inner)
    src_rows = _row_offsets(rows, inner, src_s_outer, src_s_inner)
    gx_rows = _row_offsets(rows, inner, gx_s_outer, gx_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
    scale = _log2e(COMPUTE) / tau
    inv_tau = 1.0 / tau
    shift = tl.zeros([ROWS], COMPUTE)
    inv = tl.full([ROWS], 1.0, COMPUTE)
    valid = row_mask
    if REGENERATE:
        if SINGLE_CHUNK:
            # The whole row is in registers: its statistics cost one reduction, no extra draw
            # (the chunk below recomputes x + g from the same registers' inputs; the compiler
            # shares the loads and the noise).
            a0, a1, a2, a3, q4 = _perturbed_planes(src_ptr, src_rows, src_s_k, rows, row_mask, 0, K, Q, seed,
                                                   offset, BLOCK_Q, FAST, COMPUTE, COUNTER32)
            row_max = _planes_max(a0, a1, a2, a3)
            valid = tl.abs(row_max) < float("inf")
            shift = tl.where(valid, row_max * scale, 0.0)
            e0, e1, e2, e3 = _exp_planes(a0, a1, a2, a3, scale, shift, FAST)
            row_sum = _planes_sum(e0, e1, e2, e3)
            inv = _inverse_or_nan(row_sum, valid)
        else:
            row_max = tl.load(stats_ptr + rows, mask=row_mask, other=0.0)
            valid = tl.abs(row_max) < float("inf")
            shift = tl.where(valid, row_max * scale, 0.0)
            inv = tl.full([ROWS], 1.0, COMPUTE)  # pass 1 sums the row; pass 2 normalises

    if SINGLE_CHUNK:
        y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, dy_y_t, y_t, y_sum = _bwd_chunk(
            grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, rows, row_mask, 0, K, Q, seed, offset,
            scale, shift, inv, REGENERATE, TAU_GRAD, BLOCK_Q, FAST, COMPUTE, COUNTER32)
        offs_x, mask, q4 = _tile(gx_rows, row_mask, 0, K, gx_s_k, BLOCK_Q)
        _store_grad(grad_x_ptr, offs_x, mask, y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, inv_tau)
    else:
        # Streamed rows. The hard mode regenerates unnormalised y = 2^((x + g - M) c) with the
        # forward's row max M, sums the row as it goes and parks y in grad_x; pass 2 reads it back
        # (from L2) instead of drawing the noise again, and normalises.
        dot = tl.zeros([ROWS], COMPUTE)
        dy_y_t = tl.zeros([ROWS], COMPUTE)
        y_t = tl.zeros([ROWS], COMPUTE)
        row_sum = tl.zeros([ROWS], COMPUTE)
        for chunk in range(0, num_chunks):
            y0, y1, y2, y3, dy0, dy1, dy2, dy3, part_dot, part_dy_y_t, part_y_t, part_sum = _bwd_chunk(
                grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q, seed, offset,
                scale, shift, inv, REGENERATE, TAU_GRAD, BLOCK_Q, FAST, COMPUTE, COUNTER32)
            dot += part_dot
            dy_y_t += part_dy_y_t
            y_t += part_y_t
            row_sum += part_sum
            if REGENERATE:
                offs_x, mask, q4 = _tile(gx_rows, row_mask, chunk, K, gx_s_k, BLOCK_Q)
                _store_planes(grad_x_ptr, offs_x, mask, y0, y1, y2, y3)
        norm = tl.full([ROWS], 1.0, COMPUTE)
        if REGENERATE:
            norm = _inverse_or_nan(row_sum, valid)
            dot = dot * norm
            dy_y_t = dy_y_t * norm
            y_t = y_t * norm
            tl.debug_barrier()  # pass 2 reads what other threads parked
        n = norm[:, None]
        for chunk in range(0, num_chunks):
            offs_g, mask, q4 = _tile(g_rows, row_mask, chunk, K, g_s_k, BLOCK_Q)
            dy0, dy1, dy2, dy3 = _load_planes(grad_y_ptr, offs_g, mask, 0.0, COMPUTE)
            offs_x, mask, q4 = _tile(gx_rows, row_mask, chunk, K, gx_s_k, BLOCK_Q)
            if REGENERATE:
                y0, y1, y2, y3 = _load_planes(grad_x_ptr, offs_x, mask, 0.0, COMPUTE)
                y0, y1, y2, y3 = y0 * n, y1 * n, y2 * n, y3 * n
            else:
                offs_s, mask, q4 = _tile(src_rows, row_mask, chunk, K, src_s_k, BLOCK_Q)
                y0, y1, y2, y3 = _load_planes(src_ptr, offs_s, mask, 0.0, COMPUTE)
            _store_grad(grad_x_ptr, offs_x, mask, y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, inv_tau)
    if TAU_GRAD:
        tl.store(grad_tau_ptr + rows, -(dy_y_t - dot * y_t) * inv_tau, mask=row_mask)


# ---- short rows (K <= SMALL_K): one row per thread, classes unrolled -----------------------------
# Every class of a row is its own [ROWS] register plane, so the row reductions need no shuffles and
# the padding classes K..15 (constexpr K) compile away: no lane draws noise for a missing class.

@triton.jit
def _small_word(x_ptr, x_rows, x_s_k, row_mask, word, k: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr,
                COMPUTE: tl.constexpr):
    if k < K:
        x = tl.load(x_ptr + x_rows + k * x_s_k, mask=row_mask, other=float("-inf")).to(COMPUTE)
        return x + gumbel_from_word(word, FAST, COMPUTE)
    else:
        return tl.full(x_rows.shape, float("-inf"), COMPUTE)


@triton.jit
def _small_call(x_ptr, x_rows, x_s_k, rows, row_mask, Q, seed, offset, q: tl.constexpr, K: tl.constexpr,
                FAST: tl.constexpr, COMPUTE: tl.constexpr, COUNTER32: tl.constexpr = False):
    """x + g of classes 4q .. 4q + 3 of each row (-inf past K)."""
    if 4 * q < K:
        if COUNTER32:
            w0, w1, w2, w3 = philox_words(seed, offset, rows.to(tl.int32) * Q + q, True)
        else:
            w0, w1, w2, w3 = philox_words(seed, offset, rows * Q + q)
    else:
        w0 = tl.zeros(x_rows.shape, tl.uint32)
        w1 = w0
        w2 = w0
        w3 = w0
    return (_small_word(x_ptr, x_rows, x_s_k, row_mask, w0, 4 * q, K, FAST, COMPUTE),
            _small_word(x_ptr, x_rows, x_s_k, row_mask, w1, 4 * q + 1, K, FAST, COMPUTE),
            _small_word(x_ptr, x_rows, x_s_k, row_mask, w2, 4 * q + 2, K, FAST, COMPUTE),
            _small_word(x_ptr, x_rows, x_s_k, row_mask, w3, 4 * q + 3, K, FAST, COMPUTE))


@triton.jit
def _max4(a, b, c, d):
    return _max_nan(_max_nan(a, b), _max_nan(c, d))


@triton.jit
def _small_exp(a, scale, shift, k: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr):
    if k < K:
        return ex2(a * scale - shift, FAST)
    else:
        return tl.zeros(a.shape, a.dtype)


@triton.jit
def _small_exp4(a0, a1, a2, a3, scale, shift, q: tl.constexpr, K: tl.constexpr, FAST: tl.constexpr):
    return (_small_exp(a0, scale, shift, 4 * q, K, FAST), _small_exp(a1, scale, shift, 4 * q + 1, K, FAST),
            _small_exp(a2, scale, shift, 4 * q + 2, K, FAST), _small_exp(a3, scale, shift, 4 * q + 3, K, FAST))


@triton.jit
def _small_best(best, a, row_max, k: tl.constexpr, K: tl.constexpr):
    # Called from the last class down, so the first maximal class wins (torch.argmax's tie rule).
    if k < K:
        best = tl.where(a == row_max, k, best)
    return best


@triton.jit
def _small_best4(best, a0, a1, a2, a3, row_max, q: tl.constexpr, K: tl.constexpr):
    best = _small_best(best, a3, row_max, 4 * q + 3, K)
    best = _small_best(best, a2, row_max, 4 * q + 2, K)
    best = _small_best(best, a1, row_max, 4 * q + 1, K)
    return _small_best(best, a0, row_max, 4 * q, K)


@triton.jit
def _small_store(ptr, rows_off, s_k, row_mask, value, k: tl.constexpr, K: tl.constexpr):
    if k < K:
        tl.store(ptr + rows_off + k * s_k, value.to(ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _small_store4(ptr, rows_off, s_k, row_mask, y0, y1, y2, y3, q: tl.constexpr, K: tl.constexpr):
    _small_store(ptr, rows_off, s_k, row_mask, y0, 4 * q, K)
    _small_store(ptr, rows_off, s_k, row_mask, y1, 4 * q + 1, K)
    _small_store(ptr, rows_off, s_k, row_mask, y2, 4 * q + 2, K)
    _small_store(ptr, rows_off, s_k, row_mask, y3, 4 * q + 3, K)


@triton.jit
def _small_one_hot4(ptr, rows_off, s_k, row_mask, best, one, zero, q: tl.constexpr, K: tl.constexpr):
    _small_store(ptr, rows_off, s_k, row_mask, tl.where(best == 4 * q, one, zero), 4 * q, K)
    _small_store(ptr, rows_off, s_k, row_mask, tl.where(best == 4 * q + 1, one, zero), 4 * q + 1, K)
    _small_store(ptr, rows_off, s_k, row_mask, tl.where(best == 4 * q + 2, one, zero), 4 * q + 2, K)
    _small_store(ptr, rows_off, s_k, row_mask, tl.where(best == 4 * q + 3, one, zero), 4 * q + 3, K)


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_small_fwd_kernel(
    x_ptr, y_ptr, index_ptr, tau_ptr, tau_value, n_rows, Q, inner,
    x_s_outer, x_s_k, x_s_inner, y_s_outer, y_s_k, y_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    K: tl.constexpr, MODE: tl.constexpr, TAU_FROM_PTR: tl.constexpr, ROWS: tl.constexpr,
    COMPUTE: tl.constexpr, FAST: tl.constexpr,
    COUNTER32: tl.constexpr = False,
):
    """The forward for rows of at most 16 classes (K constexpr): one row per thread."""
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    a00, a01, a02, a03 = _small_call(x_ptr, x_rows, x_s_k, rows, row_mask, Q, seed, offset, 0, K, FAST, COMPUTE, COUNTER32)
    a10, a11, a12, a13 = _small_call(x_ptr, x_rows, x_s_k, rows, row_mask, Q, seed, offset, 1, K, FAST, COMPUTE, COUNTER32)
    a20, a21, a22, a23 = _small_call(x_ptr, x_rows, x_s_k, rows, row_mask, Q, seed, offset, 2, K, FAST, COMPUTE, COUNTER32)
    a30, a31, a32, a33 = _small_call(x_ptr, x_rows, x_s_k, rows, row_mask, Q, seed, offset, 3, K, FAST, COMPUTE, COUNTER32)
    row_max = _max4(_max4(a00, a01, a02, a03), _max4(a10, a11, a12, a13), _max4(a20, a21, a22, a23),
                    _max4(a30, a31, a32, a33))
    valid = tl.abs(row_max) < float("inf")
    if MODE == 0:
        tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
        scale = _log2e(COMPUTE) / tau
        shift = tl.where(valid, row_max * scale, 0.0)
        e00, e01, e02, e03 = _small_exp4(a00, a01, a02, a03, scale, shift, 0, K, FAST)
        e10, e11, e12, e13 = _small_exp4(a10, a11, a12, a13, scale, shift, 1, K, FAST)
        e20, e21, e22, e23 = _small_exp4(a20, a21, a22, a23, scale, shift, 2, K, FAST)
        e30, e31, e32, e33 = _small_exp4(a30, a31, a32, a33, scale, shift, 3, K, FAST)
        row_sum = (((e00 + e01) + (e02 + e03)) + ((e10 + e11) + (e12 + e13))) + \
            (((e20 + e21) + (e22 + e23)) + ((e30 + e31) + (e32 + e33)))
        inv = _inverse_or_nan(row_sum, valid)
        y_rows = _row_offsets(rows, inner, y_s_outer, y_s_inner)
        _small_store4(y_ptr, y_rows, y_s_k, row_mask, e00 * inv, e01 * inv, e02 * inv, e03 * inv, 0, K)
        _small_store4(y_ptr, y_rows, y_s_k, row_mask, e10 * inv, e11 * inv, e12 * inv, e13 * inv, 1, K)
        _small_store4(y_ptr, y_rows, y_s_k, row_mask, e20 * inv, e21 * inv, e22 * inv, e23 * inv, 2, K)
        _small_store4(y_ptr, y_rows, y_s_k, row_mask, e30 * inv, e31 * inv, e32 * inv, e33 * inv, 3, K)
    else:
        best = tl.full([ROWS], -1, tl.int32)
        best = _small_best4(best, a30, a31, a32, a33, row_max, 3, K)
        best = _small_best4(best, a20, a21, a22, a23, row_max, 2, K)
        best = _small_best4(best, a10, a11, a12, a13, row_max, 1, K)
        best = _small_best4(best, a00, a01, a02, a03, row_max, 0, K)
        if MODE == 2:
            tl.store(index_ptr + rows, tl.where(valid, best, -1).to(tl.int64), mask=row_mask)
        else:
            one = tl.where(valid, 1.0, float("nan"))
            zero = tl.where(valid, 0.0, float("nan"))
            y_rows = _row_offsets(rows, inner, y_s_outer, y_s_inner)
            _small_one_hot4(y_ptr, y_rows, y_s_k, row_mask, best, one, zero, 0, K)
            _small_one_hot4(y_ptr, y_rows, y_s_k, row_mask, best, one, zero, 1, K)
            _small_one_hot4(y_ptr, y_rows, y_s_k, row_mask, best, one, zero, 2, K)
            _small_one_hot4(y_ptr, y_rows, y_s_k, row_mask, best, one, zero, 3, K)


@triton.jit
def _small_load(ptr, rows_off, s_k, row_mask, k: tl.constexpr, K: tl.constexpr, COMPUTE: tl.constexpr):
    if k < K:
        return tl.load(ptr + rows_off + k * s_k, mask=row_mask, other=0.0).to(COMPUTE)
    else:
        return tl.zeros(rows_off.shape, COMPUTE)


@triton.jit
def _small_grad_class(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a, scale, shift, inv,
                      k: tl.constexpr, K: tl.constexpr, REGENERATE: tl.constexpr, FAST: tl.constexpr,
                      COMPUTE: tl.constexpr):
    """(y, dy, t) of class k: y regenerated from x + g (t = (x + g - M) / tau) or the saved y
    (t = log y); zeros past K and for zero-probability classes."""
    dy = _small_load(grad_y_ptr, g_rows, g_s_k, row_mask, k, K, COMPUTE)
    if REGENERATE:
        u = a * scale - shift
        y = ex2(u, FAST) * inv
        t = tl.where(y > 0, u * _ln2(COMPUTE), 0.0)
    else:
        y = _small_load(src_ptr, src_rows, src_s_k, row_mask, k, K, COMPUTE)
        t = tl.where(y > 0, lg2(tl.where(y > 0, y, 1.0), FAST) * _ln2(COMPUTE), 0.0)
    if k >= K:
        y = tl.zeros(dy.shape, COMPUTE)
        t = y
    return y, dy, t


@triton.jit
def _small_grad_call(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a0, a1, a2, a3, scale, shift,
                     inv, q: tl.constexpr, K: tl.constexpr, REGENERATE: tl.constexpr, FAST: tl.constexpr,
                     COMPUTE: tl.constexpr):
    y0, dy0, t0 = _small_grad_class(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a0, scale, shift,
                                    inv, 4 * q, K, REGENERATE, FAST, COMPUTE)
    y1, dy1, t1 = _small_grad_class(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a1, scale, shift,
                                    inv, 4 * q + 1, K, REGENERATE, FAST, COMPUTE)
    y2, dy2, t2 = _small_grad_class(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a2, scale, shift,
                                    inv, 4 * q + 2, K, REGENERATE, FAST, COMPUTE)
    y3, dy3, t3 = _small_grad_class(grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a3, scale, shift,
                                    inv, 4 * q + 3, K, REGENERATE, FAST, COMPUTE)
    dot = (dy0 * y0 + dy1 * y1) + (dy2 * y2 + dy3 * y3)
    dy_y_t = (dy0 * y0 * t0 + dy1 * y1 * t1) + (dy2 * y2 * t2 + dy3 * y3 * t3)
    y_t = (y0 * t0 + y1 * t1) + (y2 * t2 + y3 * t3)
    return y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, dy_y_t, y_t


@triton.jit
def _small_grad_store(grad_x_ptr, gx_rows, gx_s_k, row_mask, y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, inv_tau,
                      q: tl.constexpr, K: tl.constexpr):
    _small_store4(grad_x_ptr, gx_rows, gx_s_k, row_mask, y0 * (dy0 - dot) * inv_tau, y1 * (dy1 - dot) * inv_tau,
                  y2 * (dy2 - dot) * inv_tau, y3 * (dy3 - dot) * inv_tau, q, K)


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_small_bwd_kernel(
    grad_y_ptr, src_ptr, grad_x_ptr, grad_tau_ptr, tau_ptr, tau_value, n_rows, Q, inner,
    g_s_outer, g_s_k, g_s_inner, src_s_outer, src_s_k, src_s_inner, gx_s_outer, gx_s_k, gx_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    K: tl.constexpr, REGENERATE: tl.constexpr, TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr, COMPUTE: tl.constexpr, FAST: tl.constexpr,
    COUNTER32: tl.constexpr = False,
):
    """The backward for rows of at most 16 classes (K constexpr): one row per thread."""
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    g_rows = _row_offsets(rows, inner, g_s_outer, g_s_inner)
    src_rows = _row_offsets(rows, inner, src_s_outer, src_s_inner)
    gx_rows = _row_offsets(rows, inner, gx_s_outer, gx_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
    scale = _log2e(COMPUTE) / tau
    inv_tau = 1.0 / tau
    shift = tl.zeros([ROWS], COMPUTE)
    inv = tl.zeros([ROWS], COMPUTE)
    if not REGENERATE:  # the saved soft output stands in for x + g
        a00, a01, a02, a03, a10, a11, a12, a13 = shift, shift, shift, shift, shift, shift, shift, shift
        a20, a21, a22, a23, a30, a31, a32, a33 = shift, shift, shift, shift, shift, shift, shift, shift
    if REGENERATE:
        a00, a01, a02, a03 = _small_call(src_ptr, src_rows, src_s_k, rows, row_mask, Q, seed, offset, 0, K, FAST,
                                         COMPUTE, COUNTER32)
        a10, a11, a12, a13 = _small_call(src_ptr, src_rows, src_s_k, rows, row_mask, Q, seed, offset, 1, K, FAST,
                                         COMPUTE, COUNTER32)
        a20, a21, a22, a23 = _small_call(src_ptr, src_rows, src_s_k, rows, row_mask, Q, seed, offset, 2, K, FAST,
                                         COMPUTE, COUNTER32)
        a30, a31, a32, a33 = _small_call(src_ptr, src_rows, src_s_k, rows, row_mask, Q, seed, offset, 3, K, FAST,
                                         COMPUTE, COUNTER32)
        row_max = _max4(_max4(a00, a01, a02, a03), _max4(a10, a11, a12, a13), _max4(a20, a21, a22, a23),
                        _max4(a30, a31, a32, a33))
        valid = tl.abs(row_max) < float("inf")
        shift = tl.where(valid, row_max * scale, 0.0)
        e00, e01, e02, e03 = _small_exp4(a00, a01, a02, a03, scale, shift, 0, K, FAST)
        e10, e11, e12, e13 = _small_exp4(a10, a11, a12, a13, scale, shift, 1, K, FAST)
        e20, e21, e22, e23 = _small_exp4(a20, a21, a22, a23, scale, shift, 2, K, FAST)
        e30, e31, e32, e33 = _small_exp4(a30, a31, a32, a33, scale, shift, 3, K, FAST)
        row_sum = (((e00 + e01) + (e02 + e03)) + ((e10 + e11) + (e12 + e13))) + \
            (((e20 + e21) + (e22 + e23)) + ((e30 + e31) + (e32 + e33)))
        inv = _inverse_or_nan(row_sum, valid)
    y00, y01, y02, y03, d00, d01, d02, d03, dot0, dyt0, yt0 = _small_grad_call(
        grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a00, a01, a02, a03, scale, shift, inv, 0, K,
        REGENERATE, FAST, COMPUTE)
    y10, y11, y12, y13, d10, d11, d12, d13, dot1, dyt1, yt1 = _small_grad_call(
        grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a10, a11, a12, a13, scale, shift, inv, 1, K,
        REGENERATE, FAST, COMPUTE)
    y20, y21, y22, y23, d20, d21, d22, d23, dot2, dyt2, yt2 = _small_grad_call(
        grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a20, a21, a22, a23, scale, shift, inv, 2, K,
        REGENERATE, FAST, COMPUTE)
    y30, y31, y32, y33, d30, d31, d32, d33, dot3, dyt3, yt3 = _small_grad_call(
        grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, row_mask, a30, a31, a32, a33, scale, shift, inv, 3, K,
        REGENERATE, FAST, COMPUTE)
    dot = (dot0 + dot1) + (dot2 + dot3)
    _small_grad_store(grad_x_ptr, gx_rows, gx_s_k, row_mask, y00, y01, y02, y03, d00, d01, d02, d03, dot, inv_tau, 0, K)
    _small_grad_store(grad_x_ptr, gx_rows, gx_s_k, row_mask, y10, y11, y12, y13, d10, d11, d12, d13, dot, inv_tau, 1, K)
    _small_grad_store(grad_x_ptr, gx_rows, gx_s_k, row_mask, y20, y21, y22, y23, d20, d21, d22, d23, dot, inv_tau, 2, K)
    _small_grad_store(grad_x_ptr, gx_rows, gx_s_k, row_mask, y30, y31, y32, y33, d30, d31, d32, d33, dot, inv_tau, 3, K)
    if TAU_GRAD:
        dy_y_t = (dyt0 + dyt1) + (dyt2 + dyt3)
        y_t = (yt0 + yt1) + (yt2 + yt3)
        tl.store(grad_tau_ptr + rows, -(dy_y_t - dot * y_t) * inv_tau, mask=row_mask)


# ---- split rows: few long rows, SEGMENTS programs per row ------------------------------------------
# A row of K classes is cut into segments of 4 * BLOCK_Q classes, one program each, held in
# registers. Each program writes its partial statistics (max, sum at that max, first argmax),
# then takes a ticket from a per-row counter (acq_rel atomic); the program that draws the last
# ticket combines them (as FlashInfer's and vLLM's large-vocabulary samplers do) and finishes
# the row. Soft segments are written scaled by their own max and rescaled by that last program
# from L2. Any execution order gives the same result, so the interpreter's sequential programs
# test exactly the combine the GPU runs.

@triton.jit
def _split_combine(partial_ptr, row, SEGMENTS: tl.constexpr, SEG_BLOCK: tl.constexpr, scale):
    """(M, S, best) of a row from its segments' (max, sum at that max, argmax) partials."""
    seg = tl.arange(0, SEG_BLOCK)
    present = seg < SEGMENTS
    base = partial_ptr + (row * SEGMENTS + seg) * 3
    maxima = tl.load(base, mask=present, other=float("-inf"), volatile=True)
    sums = tl.load(base + 1, mask=present, other=0.0, volatile=True)
    bests = tl.load(base + 2, mask=present, other=0.0, volatile=True).to(tl.int32)
    row_max = tl.reduce(maxima, 0, _max_nan)
    valid = tl.abs(row_max) < float("inf")
    weight = tl.where(sums == 0.0, 0.0, sums * tl.exp2((maxima - tl.where(valid, row_max, 0.0)) * scale))
    best = tl.min(tl.where(maxima == row_max, bests, 2147483647), axis=0)
    return row_max, tl.sum(weight, axis=0), best, valid


@triton.jit
def _last_ticket(counter_ptr, row, SEGMENTS: tl.constexpr):
    # acq_rel: this program's partials (and output) are visible before its ticket counts, and the
    # last program sees everyone's.
    return tl.atomic_add(counter_ptr + row, 1, sem="acq_rel") == SEGMENTS - 1


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_split_fwd_kernel(
    x_ptr, y_ptr, index_ptr, stats_ptr, partial_ptr, counter_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, n_segments,
    x_s_outer, x_s_k, x_s_inner, y_s_outer, y_s_k, y_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    MODE: tl.constexpr, TAU_FROM_PTR: tl.constexpr, SAVE_STATS: tl.constexpr, SEGMENTS: tl.constexpr,
    SEG_BLOCK: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr, FAST: tl.constexpr,
    COUNTER32: tl.constexpr = False, OVERLAP: tl.constexpr = False,
):
    """The forward for few long rows: program (row, segment) of a 2-D grid. ``OVERLAP`` (hard and
    index modes, K a multiple of 4): the last segment ends at K, overlapping its neighbour, so no
    lane is masked; the classes read twice draw the same noise and carry the same index, which
    changes neither the max nor the first argmax."""
    row = tl.program_id(0).to(tl.int64)
    segment = tl.program_id(1)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
                              tl.program_id(0) + segment)
    rows = row + tl.arange(0, 1)
    row_mask = rows < n_rows
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    y_rows = _row_offsets(rows, inner, y_s_outer, y_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, 1, TAU_FROM_PTR, COMPUTE)
    scale = _log2e(COMPUTE) / tau
    if OVERLAP:
        # (never negative: two segments fit in K; saying so keeps the counters' // 4 a shift)
        start = tl.maximum(tl.minimum(segment * (4 * BLOCK_Q), K - 4 * BLOCK_Q), 0)
        offs, cols, q4 = _tile_at(x_rows, start, x_s_k, BLOCK_Q)
        x0, x1, x2, x3 = split_words(_widen(tl.load(x_ptr + offs), FAST, COMPUTE))
        g0, g1, g2, g3 = _noise_planes(seed, offset, rows, q4, Q, FAST, COMPUTE, COUNTER32)
        a0, a1, a2, a3 = x0 + g0, x1 + g1, x2 + g2, x3 + g3
    else:
        a0, a1, a2, a3, q4 = _perturbed_planes(x_ptr, x_rows, x_s_k, rows, row_mask, segment, K, Q, seed, offset,
                                               BLOCK_Q, FAST, COMPUTE, COUNTER32)
    seg_max = _planes_max(a0, a1, a2, a3)
    seg_best = tl.zeros([1], tl.int32)
    if MODE != 0:
        seg_best = _planes_argmax(a0, a1, a2, a3, q4, seg_max)
    seg_sum = tl.zeros([1], COMPUTE)
    if MODE == 0:
        shift = tl.where(tl.abs(seg_max) < float("inf"), seg_max * scale, 0.0)
        e0, e1, e2, e3 = _exp_planes(a0, a1, a2, a3, scale, shift, FAST)
        seg_sum = _planes_sum(e0, e1, e2, e3)
    if MODE == 0:
        offs, mask, q4 = _tile(y_rows, row_mask, segment, K, y_s_k, BLOCK_Q)
        _store_planes(y_ptr, offs, mask, e0, e1, e2, e3)
    if MODE == 1:
        zero = tl.zeros([1, BLOCK_Q], COMPUTE)
        if OVERLAP:  # the overlap is zeroed twice, before either program's ticket: before the one
            offs, cols, q4 = _tile_at(y_rows, start, y_s_k, BLOCK_Q)
            tl.store(y_ptr + offs, join_words(zero, zero, zero, zero).to(y_ptr.dtype.element_ty))
        else:
            offs, mask, q4 = _tile(y_rows, row_mask, segment, K, y_s_k, BLOCK_Q)
            _store_planes(y_ptr, offs, mask, zero, zero, zero, zero)
    part = partial_ptr + (row * SEGMENTS + segment) * 3
    tl.store(part + tl.arange(0, 1), seg_max)
    tl.store(part + 1 + tl.arange(0, 1), seg_sum)
    tl.store(part + 2 + tl.arange(0, 1), seg_best.to(COMPUTE))
    tl.debug_barrier()  # every thread's part of the segment is written before the ticket releases it
    if _last_ticket(counter_ptr, row, SEGMENTS):
        tl.store(counter_ptr + row, 0)  # ready for the next launch: the counters need no memset
        row_max, row_sum, best, valid = _split_combine(partial_ptr, row, SEGMENTS, SEG_BLOCK, tl.sum(scale, axis=0))
        if MODE == 2:
            tl.store(index_ptr + row, tl.where(valid, best, -1).to(tl.int64))
        if SAVE_STATS:  # the row max: the hard backward's shift (it sums the row itself)
            tl.store(stats_ptr + row, row_max)
        y_row = tl.sum(y_rows, axis=0)
        if MODE == 1:
            if valid:
                tl.store(y_ptr + y_row + best.to(tl.int64) * y_s_k, tl.full([], 1.0, COMPUTE).to(y_ptr.dtype.element_ty))
            else:
                for seg in range(0, n_segments):  # == SEGMENTS; a runtime bound keeps it a loop
                    offs, mask, q4 = _tile(y_rows, row_mask, seg, K, y_s_k, BLOCK_Q)
                    nan = tl.full([1, BLOCK_Q], float("nan"), COMPUTE)
                    _store_planes(y_ptr, offs, mask, nan, nan, nan, nan)
        if MODE == 0:
            inv = _inverse_or_nan(row_sum, valid)
            for seg in range(0, SEGMENTS):
                seg_max = tl.load(partial_ptr + (row * SEGMENTS + seg) * 3 + tl.arange(0, 1), volatile=True)
                # inv is NaN for invalid rows, which must come out NaN even where a segment is all -inf.
                factor = tl.where(seg_max == float("-inf"), 0.0 * inv,
                                  tl.exp2((seg_max - row_max) * scale) * inv)[:, None]
                offs, mask, q4 = _tile(y_rows, row_mask, seg, K, y_s_k, BLOCK_Q)
                y0, y1, y2, y3 = _load_planes(y_ptr, offs, mask, 0.0, COMPUTE)
                _store_planes(y_ptr, offs, mask, y0 * factor, y1 * factor, y2 * factor, y3 * factor)


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_split_bwd_kernel(
    grad_y_ptr, src_ptr, grad_x_ptr, grad_tau_ptr, stats_ptr, partial_ptr, counter_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, n_segments,
    g_s_outer, g_s_k, g_s_inner, src_s_outer, src_s_k, src_s_inner,
    gx_s_outer, gx_s_k, gx_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    REGENERATE: tl.constexpr, TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr, SEGMENTS: tl.constexpr,
    SEG_BLOCK: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr, FAST: tl.constexpr,
    COUNTER32: tl.constexpr = False,
):
    """The backward for few long rows: each (row, segment) program adds its share of
    dot = sum(dy * y) (and the tau sums) and parks y in grad_x; the last program of a row writes
    dx = y (dy - dot) / tau from L2. The hard mode regenerates y unnormalised, shifted by the
    forward's row max, and also shares out the row sum that normalises it."""
    row = tl.program_id(0).to(tl.int64)
    segment = tl.program_id(1)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
                              tl.program_id(0) + segment)
    rows = row + tl.arange(0, 1)
    row_mask = rows < n_rows
    g_rows = _row_offsets(rows, inner, g_s_outer, g_s_inner)
    src_rows = _row_offsets(rows, inner, src_s_outer, src_s_inner)
    gx_rows = _row_offsets(rows, inner, gx_s_outer, gx_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, 1, TAU_FROM_PTR, COMPUTE)
    scale = _log2e(COMPUTE) / tau
    inv_tau = 1.0 / tau
    shift = tl.zeros([1], COMPUTE)
    valid = row_mask
    if REGENERATE:
        row_max = tl.load(stats_ptr + rows)
        valid = tl.abs(row_max) < float("inf")
        shift = tl.where(valid, row_max * scale, 0.0)
    y0, y1, y2, y3, dy0, dy1, dy2, dy3, dot, dy_y_t, y_t, y_sum = _bwd_chunk(
        grad_y_ptr, g_rows, g_s_k, src_ptr, src_rows, src_s_k, rows, row_mask, segment, K, Q, seed, offset,
        scale, shift, tl.full([1], 1.0, COMPUTE), REGENERATE, TAU_GRAD, BLOCK_Q, FAST, COMPUTE, COUNTER32)
    if REGENERATE:
        offs_x, mask, q4 = _tile(gx_rows, row_mask, segment, K, gx_s_k, BLOCK_Q)
        _store_planes(grad_x_ptr, offs_x, mask, y0, y1, y2, y3)
    part = partial_ptr + (row * SEGMENTS + segment) * 4
    tl.store(part + tl.arange(0, 1), dot)
    tl.store(part + 1 + tl.arange(0, 1), dy_y_t)
    tl.store(part + 2 + tl.arange(0, 1), y_t)
    tl.store(part + 3 + tl.arange(0, 1), y_sum)
    tl.debug_barrier()  # every thread's parked y is written before the ticket releases it
    if _last_ticket(counter_ptr, row, SEGMENTS):
        tl.store(counter_ptr + row, 0)  # ready for the next launch: the counters need no memset
        seg = tl.arange(0, SEG_BLOCK)
        present = seg < SEGMENTS
        base = partial_ptr + (row * SEGMENTS + seg) * 4
        norm = tl.full([1], 1.0, COMPUTE)
        if REGENERATE:
            row_sum = tl.sum(tl.load(base + 3, mask=present, other=0.0, volatile=True), axis=0)
            norm = _inverse_or_nan(row_sum, valid)
        total_dot = tl.sum(tl.load(base, mask=present, other=0.0, volatile=True), axis=0) * norm
        for s in range(0, n_segments):  # == SEGMENTS; a runtime bound keeps it a loop
            offs_g, mask, q4 = _tile(g_rows, row_mask, s, K, g_s_k, BLOCK_Q)
            dy0, dy1, dy2, dy3 = _load_planes(grad_y_ptr, offs_g, mask, 0.0, COMPUTE)
            offs_x, mask, q4 = _tile(gx_rows, row_mask, s, K, gx_s_k, BLOCK_Q)
            if REGENERATE:
                y0, y1, y2, y3 = _load_planes(grad_x_ptr, offs_x, mask, 0.0, COMPUTE)
                n = norm[:, None]
                y0, y1, y2, y3 = y0 * n, y1 * n, y2 * n, y3 * n
            else:
                offs_s, mask, q4 = _tile(src_rows, row_mask, s, K, src_s_k, BLOCK_Q)
                y0, y1, y2, y3 = _load_planes(src_ptr, offs_s, mask, 0.0, COMPUTE)
            _store_grad(grad_x_ptr, offs_x, mask, y0, y1, y2, y3, dy0, dy1, dy2, dy3, total_dot, inv_tau)
        if TAU_GRAD:
            total_dy_y_t = tl.sum(tl.load(base + 1, mask=present, other=0.0, volatile=True), axis=0) * norm
            total_y_t = tl.sum(tl.load(base + 2, mask=present, other=0.0, volatile=True), axis=0) * norm
            tl.store(grad_tau_ptr + rows, -(total_dy_y_t - total_dot * total_y_t) * inv_tau)


# ---- launchers ---------------------------------------------------------------------------------

def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tile_config(n_rows: int, classes: int, max_block_k: int | None = None, allow_small: bool = True,
                elements_per_thread: int | None = None, max_split_segment: int | None = None) -> dict:
    """Tile shape for a [n_rows, classes] problem: whole rows in registers when they fit in
    ``max_block_k`` classes (default ``MAX_RESIDENT``; packing rows up to ``TARGET_TILE``
    elements), otherwise one row per program streamed in chunks of ``max_block_k`` classes.
    Few long rows split into segments of at most ``max_split_segment`` classes (default
    ``max_block_k``). Rows of at most ``SMALL_K`` classes get the one-row-per-thread kernels
    (``SMALL``) unless ``allow_small`` is False. Cached: the launchers call it on every call."""
    max_block_k = MAX_RESIDENT if max_block_k is None else max_block_k
    return _tile_config(n_rows, classes, max_block_k, allow_small, SMALL_K, SPLIT_BELOW_PROGRAMS, SPLIT_MIN_SEGMENT,
                        elements_per_thread or ELEMENTS_PER_THREAD, SPLIT_ELEMENTS_PER_THREAD,
                        max_split_segment or max_block_k)


@functools.lru_cache(maxsize=4096)
def _tile_config(n_rows: int, classes: int, max_block_k: int, allow_small: bool, small_k: int,
                 split_below_programs: int, split_min_segment: int, per_thread: int, split_per_thread: int,
                 max_split_segment: int) -> dict:
    if classes <= small_k and allow_small:
        rows = max(32, min(SMALL_ROWS, _next_power_of_2(n_rows)))
        return dict(SMALL=True, SPLIT=False, Q=-(-classes // 4), num_chunks=1, SINGLE_CHUNK=True, ROWS=rows, BLOCK_Q=0,
                    num_warps=max(1, min(4, rows // 64)))
    calls_per_row = -(-classes // 4)
    block_q = _next_power_of_2(calls_per_row)
    if n_rows < split_below_programs and classes >= 2 * split_min_segment and allow_small:
        wanted = max(-(-split_below_programs // max(1, n_rows)), -(-classes // max_split_segment))
        segments = min(_next_power_of_2(wanted), _next_power_of_2(-(-classes // split_min_segment)))
        block_q = min(_next_power_of_2(-(-calls_per_row // segments)), max(1, max_split_segment // 4))
        segments = -(-calls_per_row // block_q)
        return dict(SMALL=False, SPLIT=True, SEGMENTS=segments, SEG_BLOCK=_next_power_of_2(segments),
                    Q=calls_per_row, num_chunks=1, SINGLE_CHUNK=True, ROWS=1, BLOCK_Q=block_q,
                    num_warps=min(16, max(1, 4 * block_q // (32 * split_per_thread))))
    if 4 * block_q <= max_block_k:
        num_chunks = 1
        target = TARGET_TILE * max(1, per_thread // ELEMENTS_PER_THREAD)
        rows = max(1, min(target // (4 * block_q), _next_power_of_2(n_rows)))
    else:
        block_q = max(1, _next_power_of_2(max_block_k) // 4)
        num_chunks = -(-calls_per_row // block_q)
        rows = 1
    tile = rows * 4 * block_q
    return dict(SMALL=False, SPLIT=False, Q=calls_per_row, num_chunks=num_chunks, SINGLE_CHUNK=num_chunks == 1, ROWS=rows,
                BLOCK_Q=block_q, num_warps=min(32, max(1, tile // (32 * per_thread))))


# The launchers take torch tensors; the kernels above do not need torch. Imported here once rather
# than in every launcher call (an import statement costs host time on every call).
import torch  # noqa: E402

# Read once, when this module is imported: that is when ``@triton.jit`` chose between the
# interpreter and the compiler for the kernels above, so a later change could not apply anyway.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (TRITON_INTERPRET=1 when this module was imported)."""
    return _INTERPRETED


def _compute_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _fast(dtype) -> int:
    """The noise twin (``kernels/rng.py``): 2, MUFU fast math, for float32 math on a GPU; 0, the
    exact twin, in the interpreter and for float64."""
    return 0 if dtype == torch.float64 or _interpreted() else 2


def _counter32(n_rows: int, cfg: dict) -> bool:
    """Whether every Philox counter n = r * Q + q the launch forms, padding lanes included, is
    below 2**31, so the kernels compute it in int32 with a constant-zero high word."""
    rows = -(-n_rows // cfg["ROWS"]) * cfg["ROWS"]
    lanes = max(4, cfg["BLOCK_Q"] * max(cfg["num_chunks"], cfg.get("SEGMENTS", 1)))
    return rows * cfg["Q"] + lanes < 2**31


def _tau_args(tau, like):
    """(pointer tensor, scalar, row stride, TAU_FROM_PTR) for a float or a 0-dim/[rows] tensor."""
    if isinstance(tau, float):
        return like, tau, 0, False
    return tau, 1.0, (tau.stride(0) if tau.dim() == 1 else 0), True


RNG_SCALAR = 0
RNG_FROM_PTR = 1
RNG_STORE = 2

_dummy = {}


def _dummy_tensor(like: torch.Tensor, dtype_name="int64"):
    """A tiny persistent tensor standing in for an unused pointer argument, one per device: that
    of ``like``, told by its device index (a fraction of the host time of its torch.device; the
    kernels launch on CPU tensors, index -1, and CUDA tensors only)."""
    key = like.get_device() if dtype_name == "int64" else (like.get_device(), dtype_name)
    tensor = _dummy.get(key)
    if tensor is None:
        tensor = _dummy[key] = torch.empty(2, dtype=getattr(torch, dtype_name), device=like.device)
    return tensor


_MASK64 = 0xFFFFFFFFFFFFFFFF
# Two 64-bit values as their four 32-bit words (low first), each read back as an int32 bit pattern
# (so Triton always types them i32, whatever the value): one pack and one unpack, a third of the
# host time of the same shifts and masks in Python.
_TWO_UINT64 = struct.Struct("<QQ")
_FOUR_INT32 = struct.Struct("<iiii")


def seed_words(seed: int, offset: int) -> tuple:
    """The four int32 words (seed low, seed high, offset low, offset high) the kernels take for a
    scalar (seed, offset) in [0, 2**64) (``fused_gumbel._C.launch_prelude`` computes the same)."""
    return _FOUR_INT32.unpack(_TWO_UINT64.pack(seed, offset))


def _seed_args(seed, offset, rng_out, like: torch.Tensor):
    """(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode) for an int seed (with
    ``offset``) or an int64 [2] device tensor (seed, offset); ``like``: a tensor on the launch's device."""
    if isinstance(seed, int):
        try:  # seeds and offsets are drawn in [0, 2**64): no masks needed
            words = _FOUR_INT32.unpack(_TWO_UINT64.pack(seed, offset))
        except struct.error:
            words = _FOUR_INT32.unpack(_TWO_UINT64.pack(seed & _MASK64, offset & _MASK64))
        if rng_out is None:
            # Always an int64 pointer, so eager and captured launches share one specialisation.
            return (*words, _dummy_tensor(like), RNG_SCALAR)
        return (*words, rng_out, RNG_STORE)
    if rng_out is not None:
        raise ValueError("rng_out records scalar seeds; a device seed tensor is already on the device")
    return 0, 0, 0, 0, seed, RNG_FROM_PTR


def forward_config(n_rows: int, classes: int, mode: int, max_block_k=None) -> dict:
    """The forward's ``tile_config`` for ``mode``: wider resident rows for the soft forward, more
    elements per thread and one-warp split segments for the categorical."""
    if max_block_k is None and mode == MODE_SOFT:
        max_block_k = MAX_RESIDENT_SOFT_FORWARD
    if mode == MODE_INDEX:
        return tile_config(n_rows, classes, max_block_k, elements_per_thread=INDEX_ELEMENTS_PER_THREAD,
                           max_split_segment=INDEX_SPLIT_SEGMENT)
    return tile_config(n_rows, classes, max_block_k)


def needs_row_stats(n_rows: int, classes: int, max_block_k=None) -> bool:
    """Whether the hard backward reads the row max saved by the forward: rows too long for
    one program's registers (streamed in chunks, or split across programs)."""
    cfg = tile_config(n_rows, classes, max_block_k)
    return cfg["SPLIT"] or not cfg["SINGLE_CHUNK"]


def stats_size(n_rows: int, classes: int, mode: int, max_block_k=None) -> int:
    """Words (compute dtype) of the ``stats`` buffer the forward of ``mode`` takes: per-chunk
    maxima for streamed soft rows (scratch), the row max for the hard/index modes of rows that
    need it (kept for the hard backward, which sums the row itself); 0: none. Planned once per
    problem, as the launches are (``_plan``)."""
    return _plan(_stats_size, n_rows, classes, mode, max_block_k)


def _stats_size(n_rows: int, classes: int, mode: int, max_block_k) -> int:
    cfg = forward_config(n_rows, classes, mode, max_block_k)
    if not (cfg["SPLIT"] or not cfg["SINGLE_CHUNK"]):  # needs_row_stats
        return 0
    if mode == MODE_SOFT:
        return 0 if cfg["SPLIT"] else 2 * n_rows * cfg["num_chunks"]
    return n_rows


_counters = {}


def _split_buffers(n_rows, segments, device, dtype):
    """Per-launch partials, and the per-row ticket counters of the split kernels. The counters
    are zero between launches (the last program of a row resets its own), so one buffer per device
    and stream serves every launch without a memset; launches on one stream never overlap."""
    partial = torch.empty(n_rows * segments * 4, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                          device=device)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    counters = _counters.get(key)
    if counters is None or counters.numel() < n_rows:
        counters = _counters[key] = torch.zeros(max(n_rows, 1024), dtype=torch.int32, device=device)
    return partial, counters


class LaunchPlan(NamedTuple):
    """What one launch needs besides its tensors, seed and strides: a function of the problem
    alone. ``kind`` names the kernel ("small", "split" or "rows"); ``head`` are the integer
    arguments before ``inner``, ``tail`` those after it (chunks or segments); ``consts`` the
    constexprs and launch options. Planned once per problem (``_plan``): a call pays one dict
    lookup instead of the tile choice, the counter-range check and the dtype maps."""
    kind: str
    grid: tuple
    head: tuple
    tail: tuple
    consts: dict
    needs_row_stats: bool
    stats_words: int = 0


# {problem: LaunchPlan}. The key holds the module's ``generation``, which every change of a
# module-level tunable (tests and the static model set them) advances, so a changed tunable plans
# afresh rather than reusing a stale plan.
_plans: dict = {}
_PLAN_CACHE_SIZE = 4096


class _Generations(types.ModuleType):
    """This module's type: setting or deleting any of its attributes (a tunable above, ``_fast``,
    ``_interpreted``, a launcher or a kernel, as tests and ``bench.static`` do) adds one to
    ``generation``. The host keeps what it derived from this module per call signature
    (``fused_gumbel.function.EagerCall``) only for the generation it was derived in, so such a
    change is seen without re-reading every tunable on every call."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        vars(self)["generation"] += 1

    def __delattr__(self, name):
        super().__delattr__(name)
        vars(self)["generation"] += 1


generation = 0
sys.modules[__name__].__class__ = _Generations


def _plan(make, *problem):
    """``make(*problem)``, computed once per problem and set of tunables."""
    key = (make, *problem, generation)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= _PLAN_CACHE_SIZE:  # many distinct shapes: start over rather than grow
            _plans.clear()
        plan = _plans[key] = make(*problem)
    return plan


def _make_plan(cfg, n_rows, classes, consts) -> LaunchPlan:
    """The plan of a ``tile_config`` ``cfg``; ``consts`` the pass's own constexprs."""
    needs_row_stats = cfg["SPLIT"] or not cfg["SINGLE_CHUNK"]
    consts["num_warps"] = cfg["num_warps"]
    consts["COUNTER32"] = _counter32(n_rows, cfg)
    if cfg["SMALL"]:
        consts.update(K=classes, ROWS=cfg["ROWS"])
        return LaunchPlan("small", (-(-n_rows // cfg["ROWS"]),), (n_rows, cfg["Q"]), (), consts, needs_row_stats)
    if cfg["SPLIT"]:
        consts.update(SEGMENTS=cfg["SEGMENTS"], SEG_BLOCK=cfg["SEG_BLOCK"], BLOCK_Q=cfg["BLOCK_Q"])
        return LaunchPlan("split", (n_rows, cfg["SEGMENTS"]), (n_rows, classes, cfg["Q"]), (cfg["SEGMENTS"],),
                          consts, needs_row_stats)
    consts.update(SINGLE_CHUNK=cfg["SINGLE_CHUNK"], ROWS=cfg["ROWS"], BLOCK_Q=cfg["BLOCK_Q"])
    return LaunchPlan("rows", (-(-n_rows // cfg["ROWS"]),), (n_rows, classes, cfg["Q"]), (cfg["num_chunks"],),
                      consts, needs_row_stats)


def forward_plan(n_rows: int, classes: int, mode: int, dtype, tau_from_ptr: bool, save_stats: bool,
                 max_block_k=None) -> LaunchPlan:
    """The forward launch of ``mode`` for a call that allocates its own ``stats``: ``stats_words``
    (``stats_size``; 0 in index mode unless ``save_stats``) words, passed back with the plan to
    ``gumbel_softmax_forward``. One planning lookup for both."""
    return _plan(_planned_forward, n_rows, classes, mode, dtype, max_block_k, tau_from_ptr, save_stats)


def _planned_forward(n_rows, classes, mode, dtype, max_block_k, tau_from_ptr, save_stats) -> LaunchPlan:
    words = stats_size(n_rows, classes, mode, max_block_k) if mode != MODE_INDEX or save_stats else 0
    return _forward_plan(n_rows, classes, mode, dtype, max_block_k, tau_from_ptr, words > 0)._replace(
        stats_words=words)


def _forward_plan(n_rows, classes, mode, dtype, max_block_k, tau_from_ptr, with_stats) -> LaunchPlan:
    cfg = forward_config(n_rows, classes, mode, max_block_k)
    streamed = not (cfg["SMALL"] or cfg["SPLIT"] or cfg["SINGLE_CHUNK"])
    if streamed and mode == MODE_SOFT and not with_stats:
        raise ValueError("the soft forward of streamed rows needs a scratch buffer (see stats_size)")
    consts = dict(MODE=mode, TAU_FROM_PTR=tau_from_ptr, COMPUTE=_compute_dtype(dtype), FAST=_fast(dtype))
    if cfg["SPLIT"]:
        consts.update(SAVE_STATS=with_stats and mode != MODE_SOFT,
                      OVERLAP=mode != MODE_SOFT and classes % 4 == 0 and cfg["SEGMENTS"] > 1)
    elif not cfg["SMALL"]:
        consts.update(SAVE_STATS=streamed and mode != MODE_SOFT and with_stats)
    return _make_plan(cfg, n_rows, classes, consts)


def _backward_plan(n_rows, classes, dtype, regenerate, max_block_k, tau_from_ptr, tau_grad) -> LaunchPlan:
    consts = dict(REGENERATE=regenerate, TAU_GRAD=tau_grad, TAU_FROM_PTR=tau_from_ptr, COMPUTE=_compute_dtype(dtype),
                  FAST=_fast(dtype))
    return _make_plan(tile_config(n_rows, classes, max_block_k), n_rows, classes, consts)


def gumbel_softmax_forward(x, x_strides, out, out_strides, index, tau, n_rows, classes, inner, seed, offset,
                           mode, max_block_k=None, rng_out=None, stats=None, plan=None):
    """Launch the forward kernel once. ``x``/``out`` are [outer, K, inner] views given by their
    (outer, class, inner) strides; ``index`` is an int64 [n_rows] tensor for ``MODE_INDEX``.
    ``seed`` is an int (with ``offset``), or an int64 [2] device tensor holding (seed, offset);
    ``rng_out`` (int64 [2], optional) receives the scalar (seed, offset) the kernel used.
    ``stats``: for streamed rows, float32 of ``stats_size`` words: required scratch in soft mode;
    in hard/index mode, optional, it receives the row maxima for the hard backward. ``plan``: the
    call's ``forward_plan`` (with ``stats`` of its ``stats_words``), else planned here."""
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, x)
    if plan is None:
        plan = _plan(_forward_plan, n_rows, classes, mode, x.dtype, max_block_k, tau_from_ptr, stats is not None)
    seed_args = _seed_args(seed, offset, rng_out, x)
    pointers = (x, x if out is None else out, x if index is None else index)
    if plan.kind == "small":
        gumbel_softmax_small_fwd_kernel[plan.grid](
            *pointers, tau_ptr, tau_value, *plan.head, inner, *x_strides, *out_strides, tau_stride, *seed_args,
            **plan.consts)
    elif plan.kind == "split":
        partial, counter = _split_buffers(n_rows, plan.tail[0], x.device, x.dtype)
        gumbel_softmax_split_fwd_kernel[plan.grid](
            *pointers, partial if stats is None else stats, partial, counter, tau_ptr, tau_value, *plan.head, inner,
            *plan.tail, *x_strides, *out_strides, tau_stride, *seed_args, **plan.consts)
    else:
        gumbel_softmax_fwd_kernel[plan.grid](
            *pointers, _dummy_tensor(x, "float32") if stats is None else stats, tau_ptr, tau_value,
            *plan.head, inner, *plan.tail, *x_strides, *out_strides, tau_stride, *seed_args, **plan.consts)


def backward_plan(n_rows: int, classes: int, dtype, regenerate: bool, tau_from_ptr: bool, tau_grad: bool,
                  max_block_k=None) -> LaunchPlan:
    """The backward launch for a problem; ``dtype``: the saved source's when ``regenerate``, else
    the gradient's (the compute dtype follows it)."""
    return _plan(_backward_plan, n_rows, classes, dtype, regenerate, max_block_k, tau_from_ptr, tau_grad)


def gumbel_softmax_backward(grad_y, grad_y_strides, src, src_strides, grad_x, grad_x_strides, grad_tau_rows,
                            tau, n_rows, classes, inner, seed, offset, regenerate, max_block_k=None, stats=None,
                            plan=None):
    """Launch the backward kernel once. ``src`` is the saved soft output, or the logits when
    ``regenerate`` (hard mode); ``grad_tau_rows`` ([n_rows], compute dtype) or None. ``seed``
    is an int (with ``offset``) or an int64 [2] device tensor holding (seed, offset); ``stats``
    the hard forward's row maxima when rows are streamed or split. ``plan``: the call's
    ``backward_plan``, else planned here."""
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, src)
    compute_from = src.dtype if regenerate else grad_x.dtype
    if plan is None:
        plan = backward_plan(n_rows, classes, compute_from, regenerate, tau_from_ptr, grad_tau_rows is not None,
                             max_block_k)
    if regenerate and stats is None and plan.needs_row_stats:
        raise ValueError("the hard backward of streamed rows needs the forward's row statistics")
    seed_args = _seed_args(seed, offset, None, src)
    pointers = (grad_y, src, grad_x, grad_x if grad_tau_rows is None else grad_tau_rows)
    strides = (*grad_y_strides, *src_strides, *grad_x_strides, tau_stride)
    if plan.kind == "small":
        gumbel_softmax_small_bwd_kernel[plan.grid](
            *pointers, tau_ptr, tau_value, *plan.head, inner, *strides, *seed_args, **plan.consts)
    elif plan.kind == "split":
        partial, counter = _split_buffers(n_rows, plan.tail[0], src.device, compute_from)
        gumbel_softmax_split_bwd_kernel[plan.grid](
            *pointers, partial if stats is None else stats, partial, counter, tau_ptr, tau_value, *plan.head, inner,
            *plan.tail, *strides, *seed_args, **plan.consts)
    else:
        gumbel_softmax_bwd_kernel[plan.grid](
            *pointers, _dummy_tensor(src, "float32") if stats is None else stats, tau_ptr, tau_value,
            *plan.head, inner, *plan.tail, *strides, *seed_args, **plan.consts)


def bound_forward(plan: LaunchPlan, inner: int, x_strides, out_strides, like: torch.Tensor):
    """``gumbel_softmax_forward`` of ``plan`` for a float tau and no ``rng_out``, with every argument
    that depends only on the problem bound once: ``launch(x, out, stats, tau, words)`` (``out``: the
    sample, or in index mode the int64 indices; ``words``: the four int32 seed words of
    ``_seed_args``; ``stats`` as there, or None).
    The host path of a repeated eager call (``fused_gumbel.function.EagerCall``) pays the launch
    alone. None for split plans, whose per-launch partials the general launcher allocates. Bound in
    one ``generation``: the kernel objects are those of that generation."""
    if plan.kind == "split":
        return None
    # tau's pointer argument is x and its stride 0, as _tau_args gives them for a float tau.
    strides = (*x_strides, *out_strides, 0)
    rng_tail = (_dummy_tensor(like), RNG_SCALAR)
    consts = plan.consts
    index = consts["MODE"] == MODE_INDEX  # the pointers are (x, out, index): x stands in for the unused one
    if plan.kind == "small":
        kernel = gumbel_softmax_small_fwd_kernel[plan.grid]
        middle = (*plan.head, inner, *strides)
        if index:
            def launch(x, out, stats, tau, words):
                kernel(x, x, out, x, tau, *middle, *words, *rng_tail, **consts)
        else:
            def launch(x, out, stats, tau, words):
                kernel(x, out, x, x, tau, *middle, *words, *rng_tail, **consts)
        return launch
    kernel = gumbel_softmax_fwd_kernel[plan.grid]
    middle = (*plan.head, inner, *plan.tail, *strides)
    no_stats = _dummy_tensor(like, "float32")
    if index:
        def launch(x, out, stats, tau, words):
            kernel(x, x, out, no_stats if stats is None else stats, x, tau, *middle, *words, *rng_tail, **consts)
    else:
        def launch(x, out, stats, tau, words):
            kernel(x, out, x, no_stats if stats is None else stats, x, tau, *middle, *words, *rng_tail, **consts)
    return launch


def bound_backward(plan: LaunchPlan, inner: int, grad_y_strides, src_strides, grad_x_strides, like: torch.Tensor):
    """``gumbel_softmax_backward`` of ``plan`` for a float tau and no tau gradient, bound as
    ``bound_forward``: ``launch(grad_y, src, grad_x, stats, tau, words)``; None for split plans."""
    if plan.kind == "split":
        return None
    strides = (*grad_y_strides, *src_strides, *grad_x_strides, 0)
    rng_tail = (_dummy_tensor(like), RNG_SCALAR)
    consts = plan.consts
    if plan.kind == "small":
        kernel = gumbel_softmax_small_bwd_kernel[plan.grid]
        middle = (*plan.head, inner, *strides)

        def launch(grad_y, src, grad_x, stats, tau, words):
            kernel(grad_y, src, grad_x, grad_x, src, tau, *middle, *words, *rng_tail, **consts)
        return launch
    kernel = gumbel_softmax_bwd_kernel[plan.grid]
    middle = (*plan.head, inner, *plan.tail, *strides)
    no_stats = _dummy_tensor(like, "float32")

    def launch(grad_y, src, grad_x, stats, tau, words):
        kernel(grad_y, src, grad_x, grad_x, no_stats if stats is None else stats, src, tau, *middle, *words,
               *rng_tail, **consts)
    return launch
