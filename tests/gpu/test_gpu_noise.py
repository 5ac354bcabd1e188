"""GPU noise fidelity: the compiled ``gumbel_from_word`` against the float64 spec, for ALL 2**31 draws.

Run on a CUDA machine with TRITON_INTERPRET=0 (``bench/gpu_suite.sh`` runs ``pytest -m gpu``;
add ``-s`` to see the measured maxima). A small kernel evaluates
``kernels.rng.gumbel_from_word`` on the words ``w = 2 * b`` (so ``w >> 1 == b`` and
``w | 1 == 2 b + 1``) for every draw ``b`` in ``[0, 2**31)``, in chunks of 2**26, and torch
computes the definition ``u = min(2 b + 1, 2**32 - 2**8)``, ``v = u 2**-32``,
``g = -log(-log1p(-v))`` in float64 on the device (``fused_gumbel.noise_fidelity`` is the host
twin of this check):

* the arithmetic error, against the definition at the kernel's own float32 input
  ``float32(u)``, is within ``FAST_NOISE_BOUND`` (``FAST=2``: MUFU ``lg2.approx``; ``FAST=1``:
  the same algorithm with ``tl.log2``) and ``EXACT_NOISE_BOUND`` (``FAST=0``, libdevice logs).
  The fast kernels return ``g - ln(log2 e)``; the constant (``noise_fidelity.FAST_SHIFT``) is
  added back before comparing;
* against the definition itself the excess is the float32 rounding of ``u`` near the top clamp
  (at most about 0.0245 nats, at ``b = 2**31 - 192``, ``g ~ -2.79``), as on the CPU;
* ``lg2.approx.ftz.f32`` itself, on every float32 in [1, 2), is within the documented error.
"""
import math

import pytest
import torch
import triton
import triton.language as tl

from fused_gumbel import noise_fidelity, rng
from fused_gumbel.kernels.rng import gumbel_from_word, lg2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_suite.sh)"),
]

CUDA = "cuda"
CHUNK = 2**26
BLOCK = 1024
# The float32 rounding of u near the top clamp, measured on the host twins (max_noise_error:
# 0.02451 at b = 2**31 - 192 for both).
QUANTISATION_MAX = 0.0246


@triton.jit
def _noise_of_draws_kernel(out_ptr, first, n, FAST: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    word = ((first.to(tl.int64) + i) * 2).to(tl.uint32)  # w >> 1 == b, w | 1 == 2 b + 1
    tl.store(out_ptr + i, gumbel_from_word(word, FAST, tl.float32), mask=mask)


@triton.jit
def _lg2_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    tl.store(out_ptr + i, lg2(tl.load(x_ptr + i, mask=mask, other=1.0), 2), mask=mask)  # FAST=2: MUFU


def _numerator(b: torch.Tensor) -> torch.Tensor:
    return (2 * b + 1).clamp_max(rng.TOP_NUMERATOR)


def _noise_of_numerator(u: torch.Tensor) -> torch.Tensor:
    v = u.double() * rng.GUMBEL_SCALE  # exact: u < 2**32
    return -torch.log(-torch.log1p(-v))


@pytest.mark.parametrize("fast", [2, 1, 0], ids=["mufu", "fast-log2", "exact"])
def test_noise_of_every_draw_within_bound(fast):
    bound = rng.FAST_NOISE_BOUND if fast else rng.EXACT_NOISE_BOUND
    shift = noise_fidelity.FAST_SHIFT if fast else 0.0
    out = torch.empty(CHUNK, dtype=torch.float32, device=CUDA)
    worst, worst_b = 0.0, 0
    worst_arith, worst_arith_b = 0.0, 0
    over = 0
    for first in range(0, 2**31, CHUNK):
        n = min(CHUNK, 2**31 - first)
        _noise_of_draws_kernel[(triton.cdiv(n, BLOCK),)](out, first, n, FAST=fast, BLOCK=BLOCK)
        b = torch.arange(first, first + n, dtype=torch.int64, device=CUDA)
        g = out[:n].double() + shift
        u = _numerator(b)
        error = (g - _noise_of_numerator(u)).abs_()
        # The kernel's float32 input: u rounded to 24 significant bits (round to nearest even).
        arith = (g - _noise_of_numerator(u.float().long())).abs_()
        over += int((error > bound).sum())
        i, j = int(error.argmax()), int(arith.argmax())
        if error[i].item() > worst:
            worst, worst_b = error[i].item(), first + i
        if arith[j].item() > worst_arith:
            worst_arith, worst_arith_b = arith[j].item(), first + j
    summary = (f"FAST={fast}: max |g - def| = {worst:.3g} at b = {worst_b}; arithmetic error {worst_arith:.3g} "
               f"at b = {worst_arith_b} (bound {bound:g}); share of b over the bound {over / 2**31:.3%}")
    print(summary)
    assert worst_arith <= bound, summary
    assert worst <= QUANTISATION_MAX, summary
    assert over / 2**31 < 0.002, summary


def test_lg2_approx_error_on_every_mantissa():
    """``lg2.approx.ftz.f32`` on all 2**23 floats in [1, 2), against float64 log2. The PTX ISA
    states 2**-22.6 (``noise_fidelity.LG2_APPROX_ERROR``); the CUDA guide 2**-22 (asserted)."""
    x = (torch.arange(2**23, dtype=torch.int32, device=CUDA) | 0x3F800000).view(torch.float32)
    out = torch.empty_like(x)
    _lg2_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), BLOCK=BLOCK)
    error = (out.double() - torch.log2(x.double())).abs()
    worst = error.max().item()
    print(f"lg2.approx.ftz.f32 on [1, 2): max abs error {worst:.3g} = 2^{math.log2(worst):.2f} "
          f"(PTX 2^-22.6 = {noise_fidelity.LG2_APPROX_ERROR:.3g})")
    assert worst <= noise_fidelity.LG2_GUIDE_ERROR
