"""Fused backward kernel of the Gumbel-Rao and ReinMax gradient estimators (one launch).

The math, papers and the RNG spec addition for the conditional draws are in
``fused_gumbel/reference_estimators.py``. The forward of every estimator is the hard
Gumbel-Softmax forward (``kernels.gumbel_softmax``, MODE_HARD); this backward reads only the
logits, ``dy`` and the call's (seed, offset), like the straight-through one: it regenerates the
Gumbel-max choice ``i = argmax(x + g)`` (same words and noise twin as the forward, so the same
class), and then per row

- ReinMax: ``pi0 = softmax(x)``, ``pi1 = (one_hot(i) + softmax(x / tau)) / 2``,
  ``dx = 2 pi1 (dy - <dy, pi1>) - pi0 (dy - <dy, pi0>) / 2``;
- Gumbel-Rao: for k < MC, fresh Gumbel noise ``e`` from counter ``r * Q + c // 4 + (k + 1) 2**48``,
  ``M = logsumexp(x) + e_i`` and ``t_c = -softplus(M - x_c - e_c) / tau`` (``t_i = 0``: the
  conditional perturbed logits minus their max M, over tau), ``y = softmax(t)``,
  ``s = y (dy - <dy, y>)``; ``dx = mean_k s / tau`` and ``dtau = -mean_k sum(s t) / tau``.
  The K draws live in registers one at a time: memory is independent of MC.

Whole rows sit in one program (``[ROWS, BLOCK_K]`` tiles, class c at column c, classes up to
``MAX_FUSED_CLASSES``); longer rows are the caller's business (``fused_gumbel/estimators.py``
falls back to PyTorch ops). ``FAST`` (float32 on a GPU) takes the fast noise twin, which shifts
every Gumbel draw by one constant that neither the argmax nor ``t`` (a difference of two draws'
sums) can see, and runs Gumbel-Rao's softplus and exponentials in log2 units on the MUFU unit.
"""
import triton
import triton.language as tl

from .gumbel_softmax import _SEED_ARGS, _call_seed, _compute_dtype, _fast, _perturbed_planes, _row_offsets, \
    _seed_args, _tau_args, _tau_rows
from .rng import LN2, LOG2E, ex2, gumbel_from_word, join_words, lg2, philox_words

ESTIMATOR_GUMBEL_RAO = 1
ESTIMATOR_REINMAX = 2
# Widest row (classes) the fused backward holds in registers (a few tiles of it: x, dy, accumulators).
MAX_FUSED_CLASSES = 4096
# Elements per program that row packing aims for.
TARGET_TILE = 1024
CONDITIONAL_COUNTER_SHIFT = tl.constexpr(48)  # counter offset of draw k: (k + 1) << 48


@triton.jit
def _noise_tile(seed, offset, first_call, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
                FAST: tl.constexpr):
    """Gumbel(0, 1) noise of a [ROWS, 4 * BLOCK_Q] tile whose row r uses the Philox calls
    ``first_call[r] + j`` (class 4 j + w takes word w)."""
    w0, w1, w2, w3 = philox_words(seed, offset, first_call[:, None] + tl.arange(0, BLOCK_Q)[None, :])
    g = join_words(gumbel_from_word(w0, FAST, COMPUTE), gumbel_from_word(w1, FAST, COMPUTE),
                   gumbel_from_word(w2, FAST, COMPUTE), gumbel_from_word(w3, FAST, COMPUTE))
    return tl.reshape(g, [ROWS, 4 * BLOCK_Q])


@triton.jit
def _softmax_rows(a):
    """softmax along axis 1 of a tile whose rows have a finite max (padding lanes are -inf)."""
    e = tl.exp(a - tl.max(a, axis=1)[:, None])
    return e * (1.0 / tl.sum(e, axis=1))[:, None]


@triton.jit
def _log1p(v):
    """log(1 + v) for v >= 0 to full relative precision (Goldberg), as torch.log1p."""
    a = 1.0 + v
    exact = a == 1.0
    return tl.where(exact, v, v * tl.log(a) / tl.where(exact, 1.0, a - 1.0))


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_estimator_bwd_kernel(
    grad_y_ptr, x_ptr, grad_x_ptr, grad_tau_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, mc_samples,
    g_s_outer, g_s_k, g_s_inner, x_s_outer, x_s_k, x_s_inner, gx_s_outer, gx_s_k, gx_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    ESTIMATOR: tl.constexpr, TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr, FAST: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    cols = tl.arange(0, 4 * BLOCK_Q)
    mask = row_mask[:, None] & (cols < K)[None, :]
    col_offs = cols[None, :].to(tl.int64)
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    x = tl.load(x_ptr + x_rows[:, None] + col_offs * x_s_k, mask=mask, other=float("-inf")).to(COMPUTE)
    dy = tl.load(grad_y_ptr + _row_offsets(rows, inner, g_s_outer, g_s_inner)[:, None] + col_offs * g_s_k, mask=mask,
                 other=0.0).to(COMPUTE)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
    first_call = rows * Q

    # The forward's choice: first index of the max of x + g (torch.argmax's tie rule). x + g comes from
    # the forward kernels' own helper, x + gumbel_from_word(word) per class as there (a separate
    # add after a reshape could round differently where the compiler fuses it), so the choice is the
    # forward's, near-ties included.
    a0, a1, a2, a3, q4 = _perturbed_planes(x_ptr, x_rows, x_s_k, rows, row_mask, 0, K, Q, seed, offset, BLOCK_Q, FAST,
                                           COMPUTE)
    a = tl.reshape(join_words(a0, a1, a2, a3), [ROWS, 4 * BLOCK_Q])
    a_max = tl.max(a, axis=1)
    nan_count = tl.sum((a != a).to(tl.int32), axis=1)
    valid = (nan_count == 0) & (tl.abs(a_max) < float("inf"))
    best = tl.min(tl.where(a == a_max[:, None], cols[None, :], 2147483647), axis=1)
    chosen = cols[None, :] == best[:, None]
    # Invalid and padding rows compute on zeros (no inf - inf for the interpreter's numpy to warn
    # about) and store NaN; `live` masks the padding classes of the others.
    x_safe = tl.where(valid[:, None], x, 0.0)
    live = (cols < K)[None, :]

    if ESTIMATOR == 2:  # ReinMax
        pi0 = _softmax_rows(tl.where(live, x_safe, float("-inf")))
        pi_tau = _softmax_rows(tl.where(live, x_safe / tau[:, None], float("-inf")))
        pi1 = (pi_tau + tl.where(chosen, 1.0, 0.0)) * 0.5
        dot1 = tl.sum(dy * pi1, axis=1)[:, None]
        dot0 = tl.sum(dy * pi0, axis=1)[:, None]
        grad = 2.0 * pi1 * (dy - dot1) - 0.5 * pi0 * (dy - dot0)
    else:  # Gumbel-Rao
        xm = tl.max(tl.where(live, x_safe, float("-inf")), axis=1)
        log_z = xm + tl.log(tl.sum(tl.exp(tl.where(live, x_safe, float("-inf")) - xm[:, None]), axis=1))
        inv_tau = 1.0 / tau
        grad = tl.zeros([ROWS, 4 * BLOCK_Q], COMPUTE)
        s_t = tl.zeros([ROWS], COMPUTE)
        for k in range(0, mc_samples):
            draw = tl.zeros([], tl.int64) + (k + 1)
            e = _noise_tile(seed, offset, first_call + (draw << CONDITIONAL_COUNTER_SHIFT), ROWS, BLOCK_Q, COMPUTE,
                            FAST)
            top = log_z + tl.sum(tl.where(chosen, e, 0.0), axis=1)  # M = logZ + e_i
            d = top[:, None] - (x_safe + e)  # +inf for -inf logits and padding lanes
            d = tl.where(live, d, float("inf"))
            # t <= 0 with t_i = 0, so exp(t) needs no further shift. The fast twin works in log2
            # units on the MUFU unit (t2 = t log2 e); the exact one keeps log1p's precision.
            if FAST:
                d2 = d * LOG2E
                t = tl.where(chosen, 0.0, -(tl.maximum(d2, 0.0) + lg2(1.0 + ex2(-tl.abs(d2), FAST), FAST)))
                t = t * inv_tau[:, None]
                y = ex2(t, FAST)
            else:
                t = tl.where(chosen, 0.0, -(tl.maximum(d, 0.0) + _log1p(tl.exp(-tl.abs(d))))) * inv_tau[:, None]
                y = tl.exp(t)
            y = y * (1.0 / tl.sum(y, axis=1))[:, None]
            s = y * (dy - tl.sum(dy * y, axis=1)[:, None])
            grad += s
            if TAU_GRAD:  # zero-probability classes add nothing, not 0 * -inf
                s_t += tl.sum(s * tl.where(y > 0, t, 0.0), axis=1)
        grad = grad * (inv_tau / mc_samples)[:, None]
        if TAU_GRAD:
            if FAST:
                s_t = s_t * LN2  # back from log2 units
            tl.store(grad_tau_ptr + rows, tl.where(valid, -s_t * inv_tau / mc_samples, float("nan")), mask=row_mask)
    grad = tl.where(valid[:, None], grad, float("nan"))
    tl.store(grad_x_ptr + _row_offsets(rows, inner, gx_s_outer, gx_s_inner)[:, None] + col_offs * gx_s_k,
             grad.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tile_config(n_rows: int, classes: int) -> dict:
    """Whole rows per program: BLOCK_Q Philox calls (4 BLOCK_Q classes) per row, rows packed up to
    ``TARGET_TILE`` elements."""
    block_q = _next_power_of_2(-(-classes // 4))
    rows = max(1, min(TARGET_TILE // (4 * block_q), _next_power_of_2(n_rows)))
    return dict(Q=-(-classes // 4), ROWS=rows, BLOCK_Q=block_q, num_warps=min(8, max(1, rows * 4 * block_q // 256)))


def fits(classes: int) -> bool:
    """Whether the fused backward takes rows of ``classes`` classes."""
    return classes <= MAX_FUSED_CLASSES


def estimator_backward(grad_y, grad_y_strides, x, x_strides, grad_x, grad_x_strides, grad_tau_rows, tau, n_rows,
                       classes, inner, seed, offset, estimator, mc_samples, fast=None):
    """Launch the backward once. Tensors are [outer, K, inner] views given by their strides;
    ``x`` the logits; ``grad_tau_rows`` ([n_rows], compute dtype; Gumbel-Rao only) or None;
    ``seed`` an int (with ``offset``) or an int64 [2] device tensor holding (seed, offset);
    ``fast`` overrides the noise and math twin (``kernels/rng.py``'s FAST; tests run 1 on the CPU)."""
    if not fits(classes):
        raise ValueError(f"the fused estimator backward takes rows of up to {MAX_FUSED_CLASSES} classes, got {classes}")
    cfg = tile_config(n_rows, classes)
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, x)
    grid = (-(-n_rows // cfg["ROWS"]),)
    gumbel_estimator_bwd_kernel[grid](
        grad_y, x, grad_x, grad_x if grad_tau_rows is None else grad_tau_rows, tau_ptr, tau_value,
        n_rows, classes, cfg["Q"], inner, mc_samples, *grad_y_strides, *x_strides, *grad_x_strides, tau_stride,
        *_seed_args(seed, offset, None, x),
        ESTIMATOR=estimator, TAU_GRAD=grad_tau_rows is not None, TAU_FROM_PTR=tau_from_ptr, ROWS=cfg["ROWS"],
        BLOCK_Q=cfg["BLOCK_Q"], COMPUTE=_compute_dtype(x.dtype), FAST=_fast(x.dtype) if fast is None else fast,
        num_warps=cfg["num_warps"],
    )


def _mc_trip_counts(launch, loops):
    # ReinMax has no loop; Gumbel-Rao's one loop runs once per conditional draw.
    return [launch.args["mc_samples"]] * len(loops)


# Loop trip counts for ``python -m bench.static`` (its hook convention: launch, loops -> counts).
STATIC_TRIP_COUNTS = {"gumbel_estimator_bwd_kernel": _mc_trip_counts}
