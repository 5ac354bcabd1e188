"""Fused Gumbel top-k kernels: exact k-subsets and their relaxation (Xie & Ermon 2019).

With a = x + g (g the spec's Gumbel noise, ``fused_gumbel/rng.py``), the top-k indices of a
are a sample of k classes without replacement from softmax(x), drawn in Plackett-Luce order
(the Gumbel-top-k trick: Yellott 1977; Vieira 2014; Kool, van Hoof, Welling 2019). Modes:

    index:  the k indices, in decreasing order of a (ties: lowest index first),
    hard:   their k-hot vector (exact 0/1, exactly k ones),
    soft:   the relaxed k-hot of Xie & Ermon, "Reparameterizable Subset Sampling via
            Continuous Relaxations" (IJCAI 2019): alpha_1 = a and for j = 1..k
                p_j = softmax(alpha_j / tau),  y += p_j,  alpha_{j+1} = alpha_j + log(1 - p_j).

log(1 - p_j) is evaluated exactly, with no cancellation and no epsilon. Let m = max(alpha_j),
i* its first argmax, m2 the largest other entry (the runner-up), e'_i = exp((alpha_i - m2) / tau)
for i != i*, R' = sum e'_i (>= 1), c = exp((m2 - m) / tau) <= 1 and S = 1 + c R' (the softmax
denominator relative to m). Then p_i* = 1 / S, p_i = c e'_i / S elsewhere, and
    log(1 - p_i)   = log1p(-p_i)                       for i != i* (p_i <= 1/2; Goldberg's log1p),
    log(1 - p_i*)  = (m2 - m) / tau + log R' - log S,
exact however close p_i* is to 1 (no floating-point 1 - p, no underflow of c R'), so a taken
class is masked by its true complement mass at any logit gap; Xie & Ermon's log(max(1 - p,
eps)) instead stops masking once the gap exceeds about 87 tau (float32). A row with no other
live class (all others -inf: k exceeds its finite logits) leaves alpha_i* unchanged, and the
argmax takes the step's whole mass again.

The whole row lives in registers (K up to ``MAX_CLASSES``), one pass over it per step.
The forward saves (m, m2, R', i*) per row and step; the backward regenerates g, replays the
recursion elementwise from those statistics (no reductions: O(k^2) cheap steps, O(k) memory
per row) and runs the adjoint recursion from step k down to 1. With t = alpha_j / tau,
b = dL/dalpha_{j+1}, b* = b_i* (0 when no other class is live), G = dL/dy,
v_i = b_i p_i / (1 - p_i) for i != i* and V = sum v_i:
    dL/dt_i   = p_i (G_i - <G, p>) + p_i (V - b*) - v_i + b* e'_i / R'    (i != i*)
    dL/dt_i*  = p_i* (G_i* - <G, p>) + p_i* (V - b*)
    dL/dalpha_j = b + dL/dt / tau,   dL/dtau -= sum_i dL/dt_i (alpha_i - m) / tau^2.
Every term is bounded (e'_i / R' <= 1, p_i <= 1/2 off the argmax), so nothing large cancels.
"""
import triton
import triton.language as tl

from .gumbel_softmax import (_SEED_ARGS, _call_seed, _compute_dtype, _perturbed_logits, _row_offsets, _seed_args,
                             _tau_rows, _valid_rows, tile_config)

MODE_SOFT = 0
MODE_HARD = 1
MODE_INDEX = 2

# Widest row held in registers; wider rows (and k above MAX_K) use the PyTorch reference.
MAX_CLASSES = 4096
# Largest k the fused path takes: the backward replay costs O(k^2) elementwise steps.
MAX_K = 64


@triton.jit
def _log1m(p):
    """log(1 - p) for 0 <= p <= 1/2 by Goldberg's trick: log(a) * p / (1 - a) with a = 1 - p."""
    a = 1.0 - p
    exact = a == 1.0
    return tl.where(exact, -p, tl.log(a) * p / tl.where(exact, 1.0, 1.0 - a))


@triton.jit
def _exp_rest(alpha, is_best, runner_up, tau):
    """e' = exp((alpha - m2) / tau) off the argmax; 0 on it and on -inf logits and padding
    lanes (no inf - inf)."""
    centred = alpha - runner_up[:, None]
    live = (centred > float("-inf")) & (is_best == 0)
    return tl.where(live, tl.exp(tl.where(live, centred, 0.0) / tau[:, None]), 0.0)


@triton.jit
def _step(e_rest, is_best, shift, runner_up, rest, tau):
    """p_j and log(1 - p_j) of one step from its statistics (m, m2, R'): elementwise only."""
    scale = tl.exp((runner_up - shift) / tau)
    total = 1.0 + scale * rest
    p = tl.where(is_best, 1.0, e_rest * scale[:, None]) / total[:, None]
    has_rest = rest > 0
    taken = tl.where(has_rest, (runner_up - shift) / tau + tl.log(tl.where(has_rest, rest, 1.0)) - tl.log(total),
                     0.0)
    return p, tl.where(is_best, taken[:, None], _log1m(tl.where(is_best, 0.0, p)))


@triton.jit
def _step_statistics(alpha, cols, tau):
    """The reductions of one step: m, its first argmax i*, the runner-up m2 (m when there is
    none), e' and R'."""
    shift = tl.max(alpha, axis=1)
    best = tl.min(tl.where(alpha == shift[:, None], cols[None, :], 2147483647), axis=1)
    is_best = cols[None, :] == best[:, None]
    runner_up = tl.max(tl.where(is_best, float("-inf"), alpha), axis=1)
    runner_up = tl.where(runner_up > float("-inf"), runner_up, shift)
    e_rest = _exp_rest(alpha, is_best, runner_up, tau)
    return shift, best, is_best, runner_up, e_rest, tl.sum(e_rest, axis=1)


@triton.jit
def _save_statistics(stats_ptr, at, row_mask, shift, runner_up, rest, best):
    """Statistics are one contiguous [n_rows, k, 4] buffer of the compute dtype: (m, m2, R', i*)
    of each row and step; i* is stored as a float (exact below 2**24, far above ``MAX_CLASSES``)."""
    tl.store(stats_ptr + 4 * at, shift, mask=row_mask)
    tl.store(stats_ptr + 4 * at + 1, runner_up, mask=row_mask)
    tl.store(stats_ptr + 4 * at + 2, rest, mask=row_mask)
    tl.store(stats_ptr + 4 * at + 3, best.to(shift.dtype), mask=row_mask)


@triton.jit
def _load_statistics(stats_ptr, at, row_mask):
    shift = tl.load(stats_ptr + 4 * at, mask=row_mask, other=0.0)
    runner_up = tl.load(stats_ptr + 4 * at + 1, mask=row_mask, other=0.0)
    rest = tl.load(stats_ptr + 4 * at + 2, mask=row_mask, other=0.0)
    best = tl.load(stats_ptr + 4 * at + 3, mask=row_mask, other=0.0).to(tl.int32)
    return shift, runner_up, rest, best


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_topk_fwd_kernel(
    x_ptr, y_ptr, index_ptr, stats_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, k,
    x_s_outer, x_s_k, x_s_inner, y_s_outer, y_s_k, y_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    MODE: tl.constexpr, SAVE_STATS: tl.constexpr, TAU_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    a, cols, mask = _perturbed_logits(x_ptr, x_rows, x_s_k, rows, row_mask, 0, K, Q, seed, offset,
                                      ROWS, BLOCK_Q, COMPUTE)
    valid = _valid_rows(tl.max(a, axis=1), tl.sum((a != a).to(tl.int32), axis=1))
    stat_rows = rows * k

    y = tl.zeros([ROWS, 4 * BLOCK_Q], COMPUTE)
    if MODE == 0 or SAVE_STATS:
        tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
        # Invalid rows (written as NaN below) run on zeros, padding lanes on -inf.
        alpha = tl.where(valid[:, None] | (mask == 0), a, 0.0)
        for j in range(0, k):
            shift, best, is_best, runner_up, e_rest, rest = _step_statistics(alpha, cols, tau)
            p, log_complement = _step(e_rest, is_best, shift, runner_up, rest, tau)
            y += p
            alpha += log_complement
            if SAVE_STATS:
                _save_statistics(stats_ptr, stat_rows + j, row_mask, shift, runner_up, rest, best)

    if MODE != 0:
        # Exact top-k of a: k rounds of "first argmax among the classes not yet taken".
        taken = tl.broadcast_to(cols[None, :] >= K, [ROWS, 4 * BLOCK_Q])
        for j in range(0, k):
            candidates = tl.where(taken, float("-inf"), a)
            top = tl.max(candidates, axis=1)
            best = tl.min(tl.where((candidates == top[:, None]) & (taken == 0), cols[None, :], 2147483647),
                          axis=1)
            taken = taken | (cols[None, :] == best[:, None])
            if MODE == 2:
                tl.store(index_ptr + stat_rows + j, tl.where(valid, best, -1).to(tl.int64), mask=row_mask)
        y = tl.where(taken, 1.0, 0.0)

    if MODE != 2:
        y = tl.where(valid[:, None], y, float("nan"))
        y_rows = _row_offsets(rows, inner, y_s_outer, y_s_inner)
        tl.store(y_ptr + y_rows[:, None] + cols[None, :].to(tl.int64) * y_s_k, y.to(y_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit(do_not_specialize=_SEED_ARGS)
def gumbel_topk_bwd_kernel(
    grad_y_ptr, x_ptr, grad_x_ptr, grad_tau_ptr, stats_ptr, tau_ptr, tau_value,
    n_rows, K, Q, inner, k,
    g_s_outer, g_s_k, g_s_inner, x_s_outer, x_s_k, x_s_inner, gx_s_outer, gx_s_k, gx_s_inner, tau_s_row,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    x_rows = _row_offsets(rows, inner, x_s_outer, x_s_inner)
    tau = _tau_rows(tau_ptr, tau_value, tau_s_row, rows, row_mask, ROWS, TAU_FROM_PTR, COMPUTE)
    a, cols, mask = _perturbed_logits(x_ptr, x_rows, x_s_k, rows, row_mask, 0, K, Q, seed, offset,
                                      ROWS, BLOCK_Q, COMPUTE)
    valid = _valid_rows(tl.max(a, axis=1), tl.sum((a != a).to(tl.int32), axis=1))
    a = tl.where(valid[:, None] | (mask == 0), a, 0.0)
    g_rows = _row_offsets(rows, inner, g_s_outer, g_s_inner)
    grad_out = tl.load(grad_y_ptr + g_rows[:, None] + cols[None, :].to(tl.int64) * g_s_k, mask=mask,
                       other=0.0).to(COMPUTE)
    stat_rows = rows * k

    adjoint = tl.zeros([ROWS, 4 * BLOCK_Q], COMPUTE)  # dL/dalpha_{j+1}
    grad_tau = tl.zeros([ROWS], COMPUTE)
    for step in range(0, k):
        j = k - 1 - step
        # Replay alpha_j from alpha_1 = a with the saved statistics, bit for bit as the forward.
        alpha = a
        for i in range(0, j):
            shift_i, runner_up_i, rest_i, best_i = _load_statistics(stats_ptr, stat_rows + i, row_mask)
            is_best_i = cols[None, :] == best_i[:, None]
            e_rest_i = _exp_rest(alpha, is_best_i, runner_up_i, tau)
            p_i, log_complement_i = _step(e_rest_i, is_best_i, shift_i, runner_up_i, rest_i, tau)
            alpha += log_complement_i
        shift, runner_up, rest, best = _load_statistics(stats_ptr, stat_rows + j, row_mask)
        is_best = cols[None, :] == best[:, None]
        e_rest = _exp_rest(alpha, is_best, runner_up, tau)
        p, log_complement = _step(e_rest, is_best, shift, runner_up, rest, tau)

        has_rest = rest > 0
        adjoint_best = tl.where(has_rest, tl.sum(tl.where(is_best, adjoint, 0.0), axis=1), 0.0)
        p_other = tl.where(is_best, 0.0, p)
        v = adjoint * p_other / (1.0 - p_other)
        share = e_rest / tl.where(has_rest, rest, 1.0)[:, None]
        grad_t = p * (grad_out - tl.sum(grad_out * p, axis=1)[:, None]) \
            + p * (tl.sum(v, axis=1) - adjoint_best)[:, None] - v + adjoint_best[:, None] * share
        adjoint += grad_t / tau[:, None]
        if TAU_GRAD:
            # Classes without weight in this step add nothing, also where alpha - m overflowed.
            grad_tau -= tl.sum(tl.where(grad_t == 0.0, 0.0, grad_t * (alpha - shift[:, None])), axis=1) / (tau * tau)

    adjoint = tl.where(valid[:, None], adjoint, float("nan"))
    gx_rows = _row_offsets(rows, inner, gx_s_outer, gx_s_inner)
    tl.store(grad_x_ptr + gx_rows[:, None] + cols[None, :].to(tl.int64) * gx_s_k,
             adjoint.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if TAU_GRAD:
        tl.store(grad_tau_ptr + rows, tl.where(valid, grad_tau, float("nan")), mask=row_mask)


def topk_tile_config(n_rows: int, classes: int) -> dict:
    """Whole rows in registers (``MAX_CLASSES`` at most), several short rows per program."""
    if classes > MAX_CLASSES:
        raise ValueError(f"the fused top-k holds a row in registers: at most {MAX_CLASSES} classes, got {classes}")
    return tile_config(n_rows, classes, MAX_CLASSES, allow_small=False)


def _tau_args(tau, like):
    if isinstance(tau, float):
        return like, tau, 0, False
    return tau, 1.0, (tau.stride(0) if tau.dim() == 1 else 0), True


def gumbel_topk_forward(x, x_strides, out, out_strides, index, stats, tau, n_rows, classes, inner, k, seed, offset,
                        mode, rng_out=None):
    """Launch the forward kernel once. ``x``/``out`` are [outer, K, inner] views given by their
    strides; ``index`` is an int64 [n_rows, k] tensor for ``MODE_INDEX``; ``stats`` is None or
    the contiguous [n_rows, k, 4] buffer (compute dtype) the backward needs. ``seed`` is an int
    (with ``offset``) or an int64 [2] device tensor (seed, offset), as for gumbel_softmax;
    ``rng_out`` (int64 [2], optional) receives the scalar (seed, offset) the kernel used."""
    cfg = topk_tile_config(n_rows, classes)
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, x)
    out = x if out is None else out
    index = x if index is None else index
    gumbel_topk_fwd_kernel[(triton.cdiv(n_rows, cfg["ROWS"]),)](
        x, out, index, x if stats is None else stats, tau_ptr, tau_value,
        n_rows, classes, cfg["Q"], inner, k,
        *x_strides, *out_strides, tau_stride,
        *_seed_args(seed, offset, rng_out, x),
        MODE=mode, SAVE_STATS=stats is not None, TAU_FROM_PTR=tau_from_ptr, ROWS=cfg["ROWS"],
        BLOCK_Q=cfg["BLOCK_Q"], COMPUTE=_compute_dtype(x.dtype), num_warps=cfg["num_warps"],
    )


def gumbel_topk_backward(grad_y, grad_y_strides, x, x_strides, grad_x, grad_x_strides, grad_tau_rows, stats, tau,
                         n_rows, classes, inner, k, seed, offset):
    """Launch the backward kernel once; ``grad_tau_rows`` is None or [n_rows] (compute dtype)."""
    cfg = topk_tile_config(n_rows, classes)
    tau_ptr, tau_value, tau_stride, tau_from_ptr = _tau_args(tau, x)
    gumbel_topk_bwd_kernel[(triton.cdiv(n_rows, cfg["ROWS"]),)](
        grad_y, x, grad_x, grad_x if grad_tau_rows is None else grad_tau_rows, stats, tau_ptr, tau_value,
        n_rows, classes, cfg["Q"], inner, k,
        *grad_y_strides, *x_strides, *grad_x_strides, tau_stride,
        *_seed_args(seed, offset, None, x),
        TAU_GRAD=grad_tau_rows is not None, TAU_FROM_PTR=tau_from_ptr, ROWS=cfg["ROWS"],
        BLOCK_Q=cfg["BLOCK_Q"], COMPUTE=_compute_dtype(x.dtype), num_warps=cfg["num_warps"],
    )
