"""Fused relaxed-Bernoulli (binary Concrete) kernels and launchers.

The binary Concrete / relaxed Bernoulli distribution (Maddison, Mnih, Teh 2017, section 3.3;
Jang, Gu, Poole 2017): with Logistic(0, 1) noise L = log(u) - log(1 - u),

    soft:  y = sigmoid((x + L) / tau),
    hard:  y = 1[x + L > 0]            exact 0/1 values, a Bernoulli(sigmoid(x)) draw,

elementwise over any shape, one launch each way. The noise follows the elementwise mapping of
the RNG spec (``fused_gumbel/rng.py``): flat element e takes word e % 4 of Philox call e // 4.

Backward, one launch, for both modes (hard is straight-through): regenerate L from the logits
and the call's (seed, offset), so no sample is saved, and with s = (x + L) / tau,

    dx = dy * sigmoid(s) * sigmoid(-s) / tau,    dtau = -dy * sigmoid(s) * sigmoid(-s) * s / tau.

sigmoid(-s) stands for 1 - y without its cancellation; elements with a zero slope (infinite
logits) contribute 0 rather than 0 * inf. NaN logits give NaN samples and gradients.
"""
import triton
import triton.language as tl

from .gumbel_softmax import _SEED_ARGS, _call_seed, _compute_dtype, _seed_args
from .rng import logistic_noise

MODE_SOFT = 0
MODE_HARD = 1

# Philox calls per program (4 elements each): 1024 elements per program.
BLOCK_Q = 256
NUM_WARPS = 4


@triton.jit
def _sigmoid(s):
    # 1 / (1 + exp(-s)) saturates to exactly 0 or 1 (exp overflows to inf, or is 0) with no NaN.
    return 1.0 / (1.0 + tl.exp(-s))


@triton.jit
def _load_tau(tau_ptr, tau_value, elements, mask, TAU_FROM_PTR: tl.constexpr, TAU_PER_ELEMENT: tl.constexpr,
              BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr):
    if TAU_FROM_PTR:
        if TAU_PER_ELEMENT:
            tau = tl.load(tau_ptr + elements, mask=mask, other=1.0).to(COMPUTE)
        else:
            tau = tl.zeros([4 * BLOCK_Q], COMPUTE) + tl.load(tau_ptr).to(COMPUTE)
    else:
        tau = tl.zeros([4 * BLOCK_Q], COMPUTE) + tau_value
    return tau


@triton.jit(do_not_specialize=_SEED_ARGS)
def relaxed_bernoulli_fwd_kernel(
    x_ptr, y_ptr, tau_ptr, tau_value, numel,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    MODE: tl.constexpr, TAU_FROM_PTR: tl.constexpr, TAU_PER_ELEMENT: tl.constexpr,
    BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    first_call = pid.to(tl.int64) * BLOCK_Q
    elements = first_call * 4 + tl.arange(0, 4 * BLOCK_Q)
    mask = elements < numel
    x = tl.load(x_ptr + elements, mask=mask, other=0.0).to(COMPUTE)
    z = x + logistic_noise(seed, offset, first_call, BLOCK_Q, COMPUTE)
    if MODE == 0:
        tau = _load_tau(tau_ptr, tau_value, elements, mask, TAU_FROM_PTR, TAU_PER_ELEMENT, BLOCK_Q, COMPUTE)
        y = _sigmoid(z / tau)
    else:
        y = tl.where(z > 0, 1.0, 0.0)
        y = tl.where(x == x, y, float("nan"))
    tl.store(y_ptr + elements, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SEED_ARGS)
def relaxed_bernoulli_bwd_kernel(
    grad_y_ptr, x_ptr, grad_x_ptr, grad_tau_ptr, tau_ptr, tau_value, numel,
    seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode,
    TAU_GRAD: tl.constexpr, TAU_FROM_PTR: tl.constexpr, TAU_PER_ELEMENT: tl.constexpr,
    BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    seed, offset = _call_seed(seed_lo, seed_hi, offset_lo, offset_hi, rng_ptr, rng_mode, pid)
    first_call = pid.to(tl.int64) * BLOCK_Q
    elements = first_call * 4 + tl.arange(0, 4 * BLOCK_Q)
    mask = elements < numel
    x = tl.load(x_ptr + elements, mask=mask, other=0.0).to(COMPUTE)
    dy = tl.load(grad_y_ptr + elements, mask=mask, other=0.0).to(COMPUTE)
    tau = _load_tau(tau_ptr, tau_value, elements, mask, TAU_FROM_PTR, TAU_PER_ELEMENT, BLOCK_Q, COMPUTE)
    s = (x + logistic_noise(seed, offset, first_call, BLOCK_Q, COMPUTE)) / tau
    slope = _sigmoid(s) * _sigmoid(-s)
    # NaN logits keep a NaN slope (slope == slope is False), saturated ones a zero gradient.
    flat = slope == 0.0
    grad_z = dy * slope / tau
    tl.store(grad_x_ptr + elements, grad_z.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if TAU_GRAD:
        grad_tau = -grad_z * tl.where(flat, 0.0, s)
        if TAU_PER_ELEMENT:
            tl.store(grad_tau_ptr + elements, grad_tau, mask=mask)
        else:
            # One partial sum per program, summed on the host: deterministic, no atomics.
            tl.store(grad_tau_ptr + pid, tl.sum(tl.where(mask, grad_tau, 0.0), axis=0))


def num_programs(numel: int) -> int:
    return triton.cdiv(numel, 4 * BLOCK_Q)


def _tau_args(tau, like):
    """(pointer, scalar, TAU_FROM_PTR, TAU_PER_ELEMENT) for a float, a 0-dim or a [numel] tensor."""
    if isinstance(tau, float):
        return like, tau, False, False
    return tau, 1.0, True, tau.dim() > 0


def relaxed_bernoulli_forward(x, out, tau, seed, offset, mode, rng_out=None):
    """Launch the forward kernel once on contiguous ``x`` and ``out`` (same numel). ``seed`` is
    an int (with ``offset``) or an int64 [2] device tensor (seed, offset), as for gumbel_softmax;
    ``rng_out`` (int64 [2], optional) receives the scalar (seed, offset) the kernel used."""
    numel = x.numel()
    tau_ptr, tau_value, tau_from_ptr, per_element = _tau_args(tau, x)
    relaxed_bernoulli_fwd_kernel[(num_programs(numel),)](
        x, out, tau_ptr, tau_value, numel, *_seed_args(seed, offset, rng_out, x),
        MODE=mode, TAU_FROM_PTR=tau_from_ptr, TAU_PER_ELEMENT=per_element, BLOCK_Q=BLOCK_Q,
        COMPUTE=_compute_dtype(x.dtype), num_warps=NUM_WARPS,
    )


def relaxed_bernoulli_backward(grad_y, x, grad_x, grad_tau, tau, seed, offset):
    """Launch the backward kernel once (contiguous tensors). ``grad_tau``: None, a [numel]
    tensor for a per-element tau, or a [num_programs(numel)] tensor of partial sums for a
    0-dim tau (compute dtype)."""
    numel = x.numel()
    tau_ptr, tau_value, tau_from_ptr, per_element = _tau_args(tau, x)
    relaxed_bernoulli_bwd_kernel[(num_programs(numel),)](
        grad_y, x, grad_x, grad_x if grad_tau is None else grad_tau, tau_ptr, tau_value, numel,
        *_seed_args(seed, offset, None, x),
        TAU_GRAD=grad_tau is not None, TAU_FROM_PTR=tau_from_ptr, TAU_PER_ELEMENT=per_element,
        BLOCK_Q=BLOCK_Q, COMPUTE=_compute_dtype(x.dtype), num_warps=NUM_WARPS,
    )
