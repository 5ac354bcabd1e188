"""Device half of the RNG spec written in ``fused_gumbel/rng.py``: Philox4x32-10 -> Gumbel noise.

Built from core ``tl`` ops only (no libdevice), so ``TRITON_INTERPRET=1`` runs exactly the
code that runs on the GPU.
"""
import triton
import triton.language as tl


@triton.jit
def gumbel_noise(seed, offset, rows, chunk, Q, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr,
                 COMPUTE: tl.constexpr):
    """Gumbel(0, 1) noise for a ``[ROWS, 4 * BLOCK_Q]`` tile: columns ``4 * j + w`` of ``rows``,
    for the Philox calls ``j = chunk * BLOCK_Q + arange(BLOCK_Q)`` of each row."""
    calls = chunk * BLOCK_Q + tl.arange(0, BLOCK_Q)
    counter = (rows.to(tl.int64)[:, None] * Q + calls[None, :]).to(tl.uint64)
    c0 = counter.to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    stream = tl.to_tensor(offset).to(tl.uint64)
    c2 = c0 * 0 + stream.to(tl.uint32)
    c3 = c0 * 0 + (stream >> 32).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    # join(join(w0, w2), join(w1, w3)) flattens to w0, w1, w2, w3 along the last axis, so the
    # tile's column 4 * j + w holds word w of call j (spec step 2).
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [ROWS, 4 * BLOCK_Q])
    bits = (words >> 1).to(tl.int32)
    v = tl.maximum(bits, 1).to(COMPUTE) * 4.656612873077393e-10  # 2**-31
    v = tl.minimum(v, 0.9999999403953552)  # 1 - 2**-24
    a = 1.0 - v
    exact = a == 1.0
    exponential = tl.where(exact, v, v * tl.log(a) / tl.where(exact, 1.0, a - 1.0))
    return -tl.log(exponential)


@triton.jit
def philox_words(seed, offset, counter):
    """The four 32-bit words of the Philox calls ``counter`` (an integer tensor, 64-bit
    counters), counter words (lo n, hi n, lo offset, hi offset) and key ``seed`` (spec step 2)."""
    counter = counter.to(tl.int64).to(tl.uint64)
    c0 = counter.to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    stream = tl.to_tensor(offset).to(tl.uint64)
    c2 = c0 * 0 + stream.to(tl.uint32)
    c3 = c0 * 0 + (stream >> 32).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def logistic_noise(seed, offset, first_call, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr):
    """Logistic(0, 1) noise of the elementwise mapping for the ``4 * BLOCK_Q`` flat elements
    ``4 * first_call + arange(4 * BLOCK_Q)``: element ``e`` takes word ``e % 4`` of call ``e // 4``."""
    calls = first_call + tl.arange(0, BLOCK_Q)
    w0, w1, w2, w3 = philox_words(seed, offset, calls)
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [4 * BLOCK_Q])
    b = tl.maximum((words >> 1).to(tl.int32), 1)
    # 2**31 - b without overflowing int32; exact, so log(1 - u) has no cancellation near u = 1.
    complement = (2147483647 - b) + 1
    u = b.to(COMPUTE) * 4.656612873077393e-10  # 2**-31
    v = complement.to(COMPUTE) * 4.656612873077393e-10
    return tl.log(u) - tl.log(v)
