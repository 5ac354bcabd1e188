"""Fused Gumbel-Softmax kernels (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017) and launchers.

Forward, one launch: load the logits once, draw Gumbel noise g in registers (RNG spec in
``fused_gumbel/rng.py``), and write one of
    soft:  y = softmax((x + g) / tau)        computed as exp((x + g - M) / tau) / S,
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

Seeds: the 64-bit Philox key and stream offset arrive as four 32-bit words (always typed i32,
never value-specialised), plus ``rng_ptr`` (an int64 ``[2]`` tensor) and a *runtime* ``rng_mode``:
``RNG_SCALAR`` uses the words (eager calls, one launch); ``RNG_FROM_PTR`` reads (key, offset)
from ``rng_ptr``, which is how a CUDA graph gets fresh noise on every replay (the tensor is
refilled by a graph-safe PyTorch RNG op); ``RNG_STORE`` uses the words and writes them to
``rng_ptr`` from program 0, so a compiled graph keeps the call's seed on the device for its
backward without an extra copy or launch. Because none of this changes the kernel's
specialisation, the binary that eager warm-up runs load is the one a graph capture launches:
loading a module (``cuModuleLoadData``) is forbidden while a stream is capturing.

Tiles are ``[ROWS, 4 * BLOCK_Q]``: many short rows per program for small class counts (the
VAE's 10 classes), one row in ``num_chunks`` chunks (online max/sum) for large vocabularies.
"""
import triton
import triton.language as tl

from .rng import gumbel_noise

MODE_SOFT = 0
MODE_HARD = 1
MODE_INDEX = 2

# Widest row (in classes) held in registers at once; wider rows loop over chunks this wide.
MAX_BLOCK_K = 8192
# Elements per program that row packing aims for.
TARGET_TILE = 2048


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
    """x + g for one chunk of columns; -inf outside the tensor. Returns (x + g, cols, mask)."""
    cols, mask = _chunk_columns(chunk, K, row_mask, BLOCK_Q)
    x = tl.load(x_ptr + x_rows[:, None] + cols[None, :].to(tl.int64) * x_s_k, mask=mask,
                other=float("-inf")).to(COMPUTE)
    g = gumbel_noise(seed, offset, rows, chunk, Q, ROWS, BLOCK_Q, COMPUTE)
    return tl.where(mask, x + g, float("-inf")), cols, mask


@triton.jit
def _update_row_stats(a, cols, tau, row_max, row_sum, best, nan_count, NEED_SUM: tl.constexpr):
    """Fold one chunk of x + g into the running max, softmax denominator, argmax and NaN count."""
    chunk_max = tl.max(a, axis=1)
    nan_count += tl.sum((a != a).to(tl.int32), axis=1)
    # First index of the maximum, as torch.argmax; strict '>' keeps the earlier chunk on ties.
    chunk_best = tl.min(tl.where(a == chunk_max[:, None], cols[None, :], 2147483647), axis=1)
    best = tl.where(chunk_max > row_max, chunk_best, best)
    new_max = tl.maximum(row_max, chunk_max)
    if NEED_SUM:
        # A row that is all -inf so far keeps sum 0 instead of producing (-inf) - (-inf).
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp((row_max - shift) / tau) + \
            tl.sum(tl.exp((a - shift[:, None]) / tau[:, None]), axis=1)
    return new_max, row_sum, best, nan_count


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


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_fwd_kernel(
    x_ptr, y_ptr, index_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, num_chunks,
    x_s_outer, x_s_k, x_s_inner, y_s_outer, y_s_k, y_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    MODE: tl.constexpr, TAU_FROM_PTR: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)

    row_max = tl.full([ROWS], float("-inf"), COMPUTE)
    row_sum = tl.zeros([ROWS], COMPUTE)
    best = tl.zeros([ROWS], tl.int32)
    nan_count = tl.zeros([ROWS], tl.int32)
    if SINGLE_CHUNK:
        a, cols, mask = _perturbed_logits(x_ptr, x_rows, x_s_k, rows, row_mask, 0, K, Q, seed, offset,
                                          ROWS, BLOCK_Q, COMPUTE)
        row_max, row_sum, best, nan_count = _update_row_stats(a, cols, tau, row_max, row_sum, best,
                                                              nan_count, MODE == 0)
    else:
        for chunk in range(0, num_chunks):
            a, cols, mask = _perturbed_logits(x_ptr, x_rows, x_s_k, rows, row_mask, chunk, K, Q, seed,
                                              offset, ROWS, BLOCK_Q, COMPUTE)
            row_max, row_sum, best, nan_count = _update_row_stats(a, cols, tau, row_max, row_sum, best,
                                                                  nan_count, MODE == 0)
    valid = _valid_rows(row_max, nan_count)
    row_sum = tl.where(valid, row_sum, 1.0)  # invalid rows are written as NaN below

    if MODE == 2:
        tl.store(index_ptr + rows, tl.where(valid, best, -1).to(tl.int64), mask=row_mask)
    else:
        y_rows = _row_offsets(rows, inner, y_s_outer, y_s_inner)
        shift = tl.where(valid, row_max, 0.0)
        if SINGLE_CHUNK:
            _store_sample(y_ptr, y_rows, y_s_k, a, cols, mask, shift, tau, row_sum, best, valid, MODE)
        else:
            for chunk in range(0, num_chunks):
                if MODE == 0:
                    a, cols, mask = _perturbed_logits(x_ptr, x_rows, x_s_k, rows, row_mask, chunk, K, Q,
                                                      seed, offset, ROWS, BLOCK_Q, COMPUTE)
                else:  # a one-hot needs no second look at the logits
                    cols, mask = _chunk_columns(chunk, K, row_mask, BLOCK_Q)
                    a = tl.zeros([ROWS, 4 * BLOCK_Q], COMPUTE)
                _store_sample(y_ptr, y_rows, y_s_k, a, cols, mask, shift, tau, row_sum, best, valid, MODE)


@triton.jit
def _store_sample(y_ptr, y_rows, y_s_k, a, cols, mask, shift, tau, row_sum, best, valid,
                  MODE: tl.constexpr):
    if MODE == 0:
        y = tl.exp((a - shift[:, None]) / tau[:, None]) / row_sum[:, None]
    else:
        y = tl.where(cols[None, :] == best[:, None], 1.0, 0.0)
    y = tl.where(valid[:, None], y, float("nan"))
    tl.store(y_ptr + y_rows[:, None] + cols[None, :].to(tl.int64) * y_s_k, y.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _soft_sample_chunk(src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q, seed, offset, tau,
                       shift, row_sum, REGENERATE: tl.constexpr, ROWS: tl.constexpr,
                       BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr):
    """y and its log-scale logits t for one chunk: regenerated from the logits, or the saved y."""
    if REGENERATE:
        a, cols, mask = _perturbed_logits(src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q, seed,
                                          offset, ROWS, BLOCK_Q, COMPUTE)
        t = (a - shift[:, None]) / tau[:, None]
        y = tl.exp(t) / row_sum[:, None]
    else:
        cols, mask = _chunk_columns(chunk, K, row_mask, BLOCK_Q)
        y = tl.load(src_ptr + src_rows[:, None] + cols[None, :].to(tl.int64) * src_s_k, mask=mask,
                    other=0.0).to(COMPUTE)
        t = tl.log(tl.where(y > 0, y, 1.0))
    # Zero-probability classes (masked lanes, -inf logits) contribute nothing, not 0 * -inf.
    t = tl.where(y > 0, t, 0.0)
    return y, t, cols, mask


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_softmax_bwd_kernel(
    grad_y_ptr, src_ptr, grad_x_ptr, grad_tau_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, num_chunks,
    g_s_outer, g_s_k, g_s_inner, src_s_outer, src_s_k, src_s_inner,
    gx_s_outer, gx_s_k, gx_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    REGENERATE: tl.constexpr, TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    g_rows = _row_offsets(rows, inner, g_s_outer, g_s_inner)
    src_rows = _row_offsets(rows, inner, src_s_outer, src_s_inner)
    gx_rows = _row_offsets(rows, inner, gx_s_outer, gx_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)

    shift = tl.zeros([ROWS], COMPUTE)
    row_sum = tl.zeros([ROWS], COMPUTE)
    if REGENERATE:
        row_max = tl.full([ROWS], float("-inf"), COMPUTE)
        best = tl.zeros([ROWS], tl.int32)
        nan_count = tl.zeros([ROWS], tl.int32)
        for chunk in range(0, num_chunks):
            a, cols, mask = _perturbed_logits(src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q, seed,
                                              offset, ROWS, BLOCK_Q, COMPUTE)
            row_max, row_sum, best, nan_count = _update_row_stats(a, cols, tau, row_max, row_sum, best,
                                                                  nan_count, True)
        valid = _valid_rows(row_max, nan_count)
        shift = tl.where(valid, row_max, 0.0)
        row_sum = tl.where(valid, row_sum, float("nan"))

    if SINGLE_CHUNK:
        y, t, cols, mask = _soft_sample_chunk(src_ptr, src_rows, src_s_k, rows, row_mask, 0, K, Q, seed,
                                              offset, tau, shift, row_sum, REGENERATE, ROWS, BLOCK_Q,
                                              COMPUTE)
        dy = tl.load(grad_y_ptr + g_rows[:, None] + cols[None, :].to(tl.int64) * g_s_k, mask=mask,
                     other=0.0).to(COMPUTE)
        s = y * (dy - tl.sum(dy * y, axis=1)[:, None])
        tl.store(grad_x_ptr + gx_rows[:, None] + cols[None, :].to(tl.int64) * gx_s_k,
                 (s / tau[:, None]).to(grad_x_ptr.dtype.element_ty), mask=mask)
        if TAU_GRAD:
            tl.store(grad_tau_ptr + rows, -tl.sum(s * t, axis=1) / tau, mask=row_mask)
    else:
        dot = tl.zeros([ROWS], COMPUTE)
        dy_y_t = tl.zeros([ROWS], COMPUTE)
        y_t = tl.zeros([ROWS], COMPUTE)
        for chunk in range(0, num_chunks):
            y, t, cols, mask = _soft_sample_chunk(src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q,
                                                  seed, offset, tau, shift, row_sum, REGENERATE, ROWS,
                                                  BLOCK_Q, COMPUTE)
            dy = tl.load(grad_y_ptr + g_rows[:, None] + cols[None, :].to(tl.int64) * g_s_k, mask=mask,
                         other=0.0).to(COMPUTE)
            dot += tl.sum(dy * y, axis=1)
            if TAU_GRAD:
                dy_y_t += tl.sum(dy * y * t, axis=1)
                y_t += tl.sum(y * t, axis=1)
        for chunk in range(0, num_chunks):
            y, t, cols, mask = _soft_sample_chunk(src_ptr, src_rows, src_s_k, rows, row_mask, chunk, K, Q,
                                                  seed, offset, tau, shift, row_sum, REGENERATE, ROWS,
                                                  BLOCK_Q, COMPUTE)
            dy = tl.load(grad_y_ptr + g_rows[:, None] + cols[None, :].to(tl.int64) * g_s_k, mask=mask,
                         other=0.0).to(COMPUTE)
            tl.store(grad_x_ptr + gx_rows[:, None] + cols[None, :].to(tl.int64) * gx_s_k,
                     (y * (dy - dot[:, None]) / tau[:, None]).to(grad_x_ptr.dtype.element_ty), mask=mask)
        if TAU_GRAD:
            tl.store(grad_tau_ptr + rows, -(dy_y_t - dot * y_t) / tau, mask=row_mask)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tile_config(n_rows: int, classes: int, max_block_k: int | None = None) -> dict:
    """Tile shape for a [n_rows, classes] problem: whole rows in registers when they fit in
    ``max_block_k`` (packing rows up to ``TARGET_TILE`` elements), otherwise one row per
    program in chunks of ``max_block_k`` classes."""
    max_block_k = MAX_BLOCK_K if max_block_k is None else max_block_k
    calls_per_row = triton.cdiv(classes, 4)
    block_q = _next_power_of_2(calls_per_row)
    if 4 * block_q <= max_block_k:
        num_chunks = 1
        rows = max(1, min(TARGET_TILE // (4 * block_q), _next_power_of_2(n_rows)))
    else:
        block_q = max(1, _next_power_of_2(max_block_k) // 4)
        num_chunks = triton.cdiv(calls_per_row, block_q)
        rows = 1
    tile = rows * 4 * block_q
    return dict(Q=calls_per_row, num_chunks=num_chunks, SINGLE_CHUNK=num_chunks == 1, ROWS=rows,
                BLOCK_Q=block_q, num_warps=min(8, max(1, tile // 512)))


def _compute_dtype(dtype):
    import torch

    return tl.float64 if dtype == torch.float64 else tl.float32


def _tau_args(tau, like):
    """(pointer tensor, scalar, row stride, TAU_FROM_PTR) for a float or a 0-dim/[rows] tensor."""
    if isinstance(tau, float):
        return like, tau, 0, False
    return tau, 1.0, (tau.stride(0) if tau.dim() == 1 else 0), True


RNG_SCALAR = 0
RNG_FROM_PTR = 1
RNG_STORE = 2

_dummy_rng = {}


def _int32_words(value: int) -> tuple[int, int]:
    """The low and high 32-bit words of a 64-bit value as int32 bit patterns (so Triton always
    types them i32, whatever the value)."""
    value &= 0xFFFFFFFFFFFFFFFF
    lo, hi = value & 0xFFFFFFFF, value >> 32
    return lo - (lo >> 31 << 32), hi - (hi >> 31 << 32)


def _seed_args(seed, offset, rng_out, device):
    """(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode) for an int seed (with
    ``offset``) or an int64 [2] device tensor (key, offset)."""
    if isinstance(seed, int):
        if rng_out is None:
            # Always an int64 pointer, so eager and captured launches share one specialisation.
            rng_out = _dummy_rng.get(device)
            if rng_out is None:
                import torch

                rng_out = _dummy_rng[device] = torch.empty(2, dtype=torch.int64, device=device)
            mode = RNG_SCALAR
        else:
            mode = RNG_STORE
        return (*_int32_words(seed), *_int32_words(offset), rng_out, mode)
    if rng_out is not None:
        raise ValueError("rng_out records scalar seeds; a device seed tensor is already on the device")
    return 0, 0, 0, 0, seed, RNG_FROM_PTR


def gumbel_softmax_forward(x, x_strides, out, out_strides, index, tau, n_rows, classes, inner, seed, offset,
                           mode, max_block_k=None, rng_out=None):
    """Launch the forward kernel once. ``x``/``out`` are [outer, K, inner] views given by their
    (outer, class, inner) strides; ``index`` is an int64 [n_rows] tensor for ``MODE_INDEX``.
    ``seed`` is an int (with ``offset``), or an int64 [2] device tensor holding (seed, offset);
    ``rng_out`` (int64 [2], optional) receives the scalar (seed, offset) the kernel used."""
    cfg = tile_config(n_rows, classes, max_block_k)
    seed_args = _seed_args(seed, offset, rng_out, x.device)
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, x)
    out = x if out is None else out
    index = x if index is None else index
    grid = (triton.cdiv(n_rows, cfg["ROWS"]),)
    gumbel_softmax_fwd_kernel[grid](
        x, out, index, tau_ptr, tau_value,
        n_rows, classes, cfg["Q"], inner, cfg["num_chunks"],
        *x_strides, *out_strides, tau_stride,
        *seed_args,
        MODE=mode, TAU_FROM_PTR=tau_from_ptr, SINGLE_CHUNK=cfg["SINGLE_CHUNK"], ROWS=cfg["ROWS"],
        BLOCK_Q=cfg["BLOCK_Q"], COMPUTE=_compute_dtype(x.dtype), num_warps=cfg["num_warps"],
    )


def gumbel_softmax_backward(grad_y, grad_y_strides, src, src_strides, grad_x, grad_x_strides, grad_tau_rows,
                            tau, n_rows, classes, inner, seed, offset, regenerate, max_block_k=None):
    """Launch the backward kernel once. ``src`` is the saved soft output, or the logits when
    ``regenerate`` (hard mode); ``grad_tau_rows`` ([n_rows], compute dtype) or None. ``seed``
    is an int (with ``offset``) or an int64 [2] device tensor holding (seed, offset)."""
    cfg = tile_config(n_rows, classes, max_block_k)
    seed_args = _seed_args(seed, offset, None, src.device)
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, src)
    grid = (triton.cdiv(n_rows, cfg["ROWS"]),)
    gumbel_softmax_bwd_kernel[grid](
        grad_y, src, grad_x, grad_x if grad_tau_rows is None else grad_tau_rows, tau_ptr, tau_value,
        n_rows, classes, cfg["Q"], inner, cfg["num_chunks"],
        *grad_y_strides, *src_strides, *grad_x_strides, tau_stride,
        *seed_args,
        REGENERATE=regenerate, TAU_GRAD=grad_tau_rows is not None, TAU_FROM_PTR=tau_from_ptr,
        SINGLE_CHUNK=cfg["SINGLE_CHUNK"], ROWS=cfg["ROWS"], BLOCK_Q=cfg["BLOCK_Q"],
        COMPUTE=_compute_dtype(src.dtype if regenerate else grad_x.dtype), num_warps=cfg["num_warps"],
    )
