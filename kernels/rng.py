"""Device half of the RNG spec (version 2) written in ``fused_gumbel/rng.py``: Philox4x32-10 -> noise.

Philox words are bit-exact on every path. The noise has two twins selected by the constexpr
``FAST``:

- ``FAST=0`` (the interpreter, float64, and the reference's float32 arithmetic): core ``tl``
  ops only, Goldberg's log1p, so ``TRITON_INTERPRET=1`` runs it in numpy.
- ``FAST=2`` (float32 on the GPU): the logarithms and exponentials run on the MUFU unit
  (``lg2.approx``/``ex2.approx``) and the small-``v`` tail of ``-log1p(-v)`` is a short series,
  within the spec's stated bound (``rng.FAST_NOISE_BOUND``) of the float64 definition.
- ``FAST=1``: the ``FAST=2`` algorithm with ``tl.log2``/``tl.exp2``, so the interpreter tests
  its series and constants; inline PTX itself only compiles (the sm_90 compile tests).

Philox is written out here (rather than ``tl.philox``) so each round is two 32x32->64-bit
multiplies (one ``IMAD.WIDE.U32`` each) and two three-input XORs.
"""
import triton
import triton.language as tl

# Spec v2 domain tag: the Philox key is seed ^ DOMAIN_TAG, so our counters never coincide with
# PyTorch's own CUDA Philox stream (key = the generator's seed). Same value as rng.DOMAIN_TAG.
DOMAIN_TAG_LO = tl.constexpr(0x4F6CDD1D)
DOMAIN_TAG_HI = tl.constexpr(0x2545F491)

PHILOX_ROUND_A = tl.constexpr(0xD2511F53)
PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)
PHILOX_KEY_A = tl.constexpr(0x9E3779B9)
PHILOX_KEY_B = tl.constexpr(0xBB67AE85)
LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
UNIFORM_SCALE = tl.constexpr(4.656612873077393e-10)  # 2**-31
# Spec step 3: v = min(w | 1, TOP_NUMERATOR) * 2**-32, the midpoint of b = w >> 1's interval.
TOP_NUMERATOR = tl.constexpr(4294967040)  # 2**32 - 2**8: v <= 1 - 2**-24, so 1 - v > 0 in float32
GUMBEL_SCALE = tl.constexpr(2.3283064365386963e-10)  # 2**-32
# FAST: -log1p(-v) = v (1 + v/2 + v^2/3 + v^3/4 + ...); below 2**-6 four terms leave a relative
# error under v^4/5 < 2**-26, above it log2(1 - v) on the MUFU unit is accurate to ~2**-17.
SERIES_BELOW_BITS = tl.constexpr(67108864.0)  # v < 2**-6  <=>  w | 1 < 2**26
# The series in the numerator u = w | 1 (v = u 2**-32), with log2(e) folded in: the fast twin
# works with E2 = E log2(e) = -log2(1 - v), which saves the MUFU branch a multiply; lg2(E2)
# differs from lg2(E) by the constant lg2(log2 e), which shifts every class's g alike.
SERIES_C1 = tl.constexpr(3.359036149664231e-10)  # log2(e) 2**-32 / 1
SERIES_C2 = tl.constexpr(3.9104327439146944e-20)  # log2(e) 2**-64 / 2
SERIES_C3 = tl.constexpr(6.069790484872172e-30)  # log2(e) 2**-96 / 3
SERIES_C4 = tl.constexpr(1.059924919077691e-39)  # log2(e) 2**-128 / 4


@triton.jit
def _umul_wide(a, b: tl.constexpr):
    p = a.to(tl.uint64) * b
    return (p >> 32).to(tl.uint32), p.to(tl.uint32)


@triton.jit
def philox4x32(k0, k1, c0, c1, c2, c3):
    """Philox4x32-10 of the counters (c0, c1, c2, c3) (uint32 tensors) under the key (k0, k1)."""
    for _ in tl.static_range(10):
        hi_a, lo_a = _umul_wide(c0, PHILOX_ROUND_A)
        hi_b, lo_b = _umul_wide(c2, PHILOX_ROUND_B)
        c0 = hi_b ^ c1 ^ k0
        c2 = hi_a ^ c3 ^ k1
        c1 = lo_b
        c3 = lo_a
        k0 = k0 + PHILOX_KEY_A
        k1 = k1 + PHILOX_KEY_B
    return c0, c1, c2, c3


@triton.jit
def philox_words(seed, offset, counter, COUNTER32: tl.constexpr = False):
    """The four 32-bit words of the Philox calls ``counter`` (an integer tensor, 64-bit
    counters): counter words (lo n, hi n, lo offset, hi offset), key ``seed ^ DOMAIN_TAG`` (spec step 2).
    ``COUNTER32``: the caller guarantees 0 <= counter < 2**31, so hi n is the constant 0 and the
    first rounds' products of uniform words stay uniform (one IMAD.WIDE fewer per call)."""
    if COUNTER32:
        c0 = counter.to(tl.uint32)
        c1 = tl.zeros(c0.shape, tl.uint32)
    else:
        counter = counter.to(tl.int64).to(tl.uint64)
        c0 = counter.to(tl.uint32)
        c1 = (counter >> 32).to(tl.uint32)
    stream = offset.to(tl.uint64)
    c2 = c1 * 0 + stream.to(tl.uint32)
    c3 = c1 * 0 + (stream >> 32).to(tl.uint32)
    seed = seed.to(tl.uint64)
    return philox4x32(seed.to(tl.uint32) ^ DOMAIN_TAG_LO, (seed >> 32).to(tl.uint32) ^ DOMAIN_TAG_HI, c0, c1, c2, c3)


@triton.jit
def lg2(x, FAST: tl.constexpr):
    """log2; on the MUFU unit when FAST == 2 (a GPU), else tl.log2 (the interpreter can run it)."""
    if FAST == 2:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def neg_lg2(x, FAST: tl.constexpr):
    """log2(-x). On the MUFU unit the negation sits inside the asm block, where ptxas folds it
    into the instruction's source modifier (``MUFU.LG2 R, -R``); a separate ``-x`` stays a
    sign-flipping LOP3 per element. Negation is exact, so this equals ``lg2(-x, FAST)``."""
    if FAST == 2:
        return tl.inline_asm_elementwise("{ .reg .f32 t; neg.f32 t, $1; lg2.approx.ftz.f32 $0, t; }", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(-x)


@triton.jit
def ex2(x, FAST: tl.constexpr):
    """2^x; on the MUFU unit when FAST == 2, else tl.exp2."""
    if FAST == 2:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def gumbel_from_word(word, FAST: tl.constexpr, COMPUTE: tl.constexpr):
    """Spec steps 3-5: one Philox word to Gumbel(0, 1) noise in ``COMPUTE``. ``FAST``: 0 the
    exact twin; 1 the fast twin's algorithm with exact logarithms (runs in the interpreter, so
    CPU tests check its series and constants); 2 the fast twin on the MUFU unit (GPU float32).
    The fast twins return g - ln(log2 e) (a constant shift: no softmax, argmax or gradient sees it)."""
    u = tl.minimum(word | 1, tl.full([], TOP_NUMERATOR, tl.uint32)).to(COMPUTE)  # unsigned: u < 2**32
    if FAST:
        # E2 = -log2(1 - v): the series below v = 2**-6, else lg2(1 - v). Both are selected
        # negated (the series' sign goes into the select's multiply) and the second logarithm
        # takes the negation as its input modifier, so the sign costs no instruction.
        series = u * (SERIES_C1 + u * (SERIES_C2 + u * (SERIES_C3 + u * SERIES_C4)))
        mufu = lg2(1.0 - u * GUMBEL_SCALE, FAST)
        negative = tl.where(u < SERIES_BELOW_BITS, -series, mufu)
        return neg_lg2(negative, FAST) * -LN2
    else:
        v = u * GUMBEL_SCALE
        a = 1.0 - v
        exact = a == 1.0
        exponential = tl.where(exact, v, v * tl.log(a) / tl.where(exact, 1.0, a - 1.0))
        return -tl.log(exponential)


@triton.jit
def split_words(t):
    """A ``[..., 4]`` tensor as its four ``[...]`` slices (word 0, 1, 2, 3 of each Philox call)."""
    even, odd = tl.split(tl.reshape(t, t.shape[:-1] + [2, 2]))
    w0, w2 = tl.split(even)
    w1, w3 = tl.split(odd)
    return w0, w1, w2, w3


@triton.jit
def join_words(w0, w1, w2, w3):
    """Inverse of :func:`split_words`."""
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), w0.shape + [4])


@triton.jit
def gumbel_noise(seed, offset, rows, chunk, Q, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr,
                 COMPUTE: tl.constexpr, FAST: tl.constexpr = 0):
    """Gumbel(0, 1) noise for a ``[ROWS, 4 * BLOCK_Q]`` tile: columns ``4 * j + w`` of ``rows``,
    for the Philox calls ``j = chunk * BLOCK_Q + arange(BLOCK_Q)`` of each row."""
    calls = chunk * BLOCK_Q + tl.arange(0, BLOCK_Q)
    w0, w1, w2, w3 = philox_words(seed, offset, rows.to(tl.int64)[:, None] * Q + calls[None, :])
    g = join_words(gumbel_from_word(w0, FAST, COMPUTE), gumbel_from_word(w1, FAST, COMPUTE),
                   gumbel_from_word(w2, FAST, COMPUTE), gumbel_from_word(w3, FAST, COMPUTE))
    return tl.reshape(g, [ROWS, 4 * BLOCK_Q])


@triton.jit
def logistic_noise(seed, offset, first_call, BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr):
    """Logistic(0, 1) noise of the elementwise mapping for the ``4 * BLOCK_Q`` flat elements
    ``4 * first_call + arange(4 * BLOCK_Q)``: element ``e`` takes word ``e % 4`` of call ``e // 4``."""
    calls = first_call + tl.arange(0, BLOCK_Q)
    w0, w1, w2, w3 = philox_words(seed, offset, calls)
    words = tl.reshape(join_words(w0, w1, w2, w3), [4 * BLOCK_Q])
    b = tl.maximum((words >> 1).to(tl.int32), 1)
    # 2**31 - b without overflowing int32; exact, so log(1 - u) has no cancellation near u = 1.
    complement = (2147483647 - b) + 1
    u = b.to(COMPUTE) * UNIFORM_SCALE
    v = complement.to(COMPUTE) * UNIFORM_SCALE
    return tl.log(u) - tl.log(v)
