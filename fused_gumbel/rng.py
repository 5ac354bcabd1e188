"""The random-number spec (version 2) shared by the Triton kernels and the PyTorch reference.

Every random draw of this package is counter-based Philox4x32-10 (Salmon, Moraes, Dror, Shaw,
"Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011), the generator behind `tl.randint4x`
and PyTorch's CUDA RNG. A call is identified by a 64-bit ``seed`` and a 64-bit ``offset`` (a
stream id); the kernels (``kernels/rng.py``) and this module map an element to the same Philox
word, bit for bit, and to the same noise within a stated bound:

1. View the logits as ``[R, K]``: ``dim`` moved last, the other dims flattened row-major
   (independent of memory layout). Let ``Q = ceil(K / 4)``.
2. Element ``(r, k)`` uses word ``k % 4`` of the Philox call with counter
   ``n = r * Q + k // 4`` (64-bit), so one call feeds four neighbouring classes::

       (w0, w1, w2, w3) = Philox4x32_10(counter=(lo32(n), hi32(n), lo32(offset), hi32(offset)),
                                        key=(lo32(key), hi32(key)))   with key = seed ^ DOMAIN_TAG

   The domain tag (v2) keeps our counters apart from PyTorch's own CUDA Philox stream, whose
   key is the generator's seed itself: the same (seed, offset) can no longer yield the same words.
3. ``v = min(w | 1, 2**32 - 2**8) * 2**-32``: with ``b = w >> 1`` (31 bits) that is the midpoint
   ``(b + 1/2) * 2**-31`` of the draw's interval, so every ``b`` has the same mass and ``v`` lies
   in ``[2**-32, 1 - 2**-24]`` (the top clamp keeps ``1 - v`` nonzero in float32).
4. ``E = -log1p(-v)`` is Exp(1) and the Gumbel(0, 1) noise is ``g = -log(E)``: its definition is
   this formula in exact (float64) arithmetic. ``g`` lies in about [-2.8, 22.2]. Small ``v`` is
   the winning tail, resolved to 2**-31: a class d nats below the leader wins with probability
   1 / (1 + e^d) to within 0.004% up to d = 18 and -0.21% at d = 20 (the float32 twins: within
   0.015% up to d = 18, -0.22% to -0.21% at d = 20), counted exactly, not sampled, by
   ``python -m fused_gumbel.noise_fidelity``; the midpoints give (lam/2) / sinh(lam/2) times
   the continuous value, lam = e^d / 2**31. (Version 2 as first drafted took
   ``max(b, 1) * 2**-31``, which doubled the largest value's mass: +1.44% at d = 18.)
5. Implementations evaluate step 4 within a stated error of the definition:
   - exact twin (the reference, the CPU path, the Triton interpreter, float64 everywhere):
     Goldberg's log1p ``v * log(a) / (a - 1)`` with ``a = 1 - v`` (``v`` when ``a`` rounds to 1),
     within ``EXACT_NOISE_BOUND`` of the definition evaluated at its float32-rounded ``u`` (the
     AVX-512 CPU kernel takes both logs from Sleef's 3.5-ulp log: at most 1.97e-6 nats over all
     2**31 draws; the AVX2 kernel's inline logs: at most 9.83e-7; tests/test_native.py checks
     the bound on its noise);
   - fast twin (float32 Triton kernels on the GPU), in log2 units: ``E2 = E log2(e)`` is
     ``log2(e) v(1 + v/2 + v^2/3 + v^3/4)`` for ``v < 2**-6`` (coefficients folded with
     ``2**-32``), else ``-lg2.approx(1 - v)``; the kernels use ``-ln2 * lg2.approx(E2)``, which
     is ``g - ln(log2 e)``: a constant added to every class, which no sample, softmax or gradient
     can see. Within ``FAST_NOISE_BOUND`` nats of the definition at its float32-rounded ``u``.
   In float32 ``u`` itself rounds to 24 bits, which moves ``g`` by up to 0.0245 nats at the
   losing end (beyond the exact bound for ``v > 0.9973``, ``g < -1.78``, 0.11% of draws; beyond
   1e-3 nats only for ``1 - v < 2**-18.8``, ``g < -2.57``); everywhere else the bounds hold
   against the exact definition (``fused_gumbel.noise_fidelity``).
   Hard samples and categorical draws agree between implementations except on near-ties
   closer than the bound, which occur with probability about (number of classes) x bound.

Elementwise mapping (relaxed Bernoulli, ``fused_gumbel.relaxed_bernoulli`` / ``bernoulli``):
the logits are flattened row-major (any shape, independent of memory layout) and element
``e`` uses word ``e % 4`` of the Philox call with counter ``n = e // 4``, counter words and key
as in step 2. With ``b = max(w >> 1, 1)`` (31 bits, so ``1 <= b <= 2**31 - 1``),
``u = b * 2**-31`` and ``1 - u = (2**31 - b) * 2**-31`` are both taken from the integer, and
the Logistic(0, 1) noise is ``L = log(u) - log(1 - u)``: no floating-point ``1 - u`` and so no
cancellation near u = 1, exactly antisymmetric, within about +-21.49. The exact Bernoulli
draw is ``logits + L > 0`` (P = sigmoid(logits) up to 2**-31); the relaxed one is
``sigmoid((logits + L) / tau)``. ``fused_gumbel.gumbel_topk`` uses the Gumbel mapping above.

Conditional draws (Gumbel-Rao, ``fused_gumbel.reference_estimators``): draw ``k`` of element
``(r, c)`` takes word ``c % 4`` of the call with counter ``n = r * Q + c // 4 + (k + 1) * 2**48``
(key and offset as in step 2), then steps 3-5; the main counters stay below ``2**48``.

Counters never repeat within a call (64-bit ``n``) nor across calls (fresh ``offset`` or
``seed`` per call). Where ``seed`` and ``offset`` come from is ``draw_seed_offset``.
"""
from __future__ import annotations

import numpy as np
import torch

try:  # optional: compiles the CPU backend's Philox loop (the same integers as the torch ops)
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

PHILOX_ROUNDS = 10
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
WORDS_PER_CALL = 4
UNIFORM_SCALE = 2.0**-31
# CUDA generators hand out offsets in multiples of 4 (one Philox block per thread); we
# advance by the same amount per call so our streams interleave cleanly with PyTorch's.
CUDA_OFFSET_INCREMENT = 4

_MASK32 = 0xFFFFFFFF

SPEC_VERSION = 2
# XOR-ed into every seed to form the Philox key (spec step 2); kernels/rng.py holds its two halves.
DOMAIN_TAG = 0x2545F4914F6CDD1D
# Spec step 3: v = min(word | 1, TOP_NUMERATOR) * GUMBEL_SCALE, the midpoint (b + 1/2) 2**-31 of
# b = word >> 1, clamped to TOP_NUMERATOR * 2**-32 = 1 - 2**-24.
GUMBEL_SCALE = 2.0**-32
TOP_NUMERATOR = 2**32 - 2**8
# Stated bounds on |g - g_definition| in nats (spec step 5), for float32 noise. The exact twin's
# bound is a few ulp of |g| <= 22.2 plus the log's own error; the fast twin's comes from the
# MUFU lg2 error (about 2**-22 absolute) divided by E >= 2**-6 * ln 2 on the MUFU branch.
EXACT_NOISE_BOUND = 2e-6
FAST_NOISE_BOUND = 1e-5
FAST_SERIES_BELOW = 2.0**-6


def philox_key(seed: int) -> int:
    """The 64-bit Philox key of a call with ``seed`` (spec step 2: ``seed ^ DOMAIN_TAG``)."""
    return (seed ^ DOMAIN_TAG) & 0xFFFFFFFFFFFFFFFF


def philox4x32(seed: int, offset: int, counter: torch.Tensor, rounds: int = PHILOX_ROUNDS) -> torch.Tensor:
    """Philox4x32-``rounds`` of each int64 ``counter`` (the low 64 bits of the 128-bit counter)
    under the raw key ``seed`` (callers pass :func:`philox_key` of a call's seed).

    Returns an int64 tensor of shape ``counter.shape + (4,)`` holding the four 32-bit words.
    CPU counters go through a numba-compiled loop when numba is installed; it gives the same
    integers as the torch ops.
    """
    if _philox_numba is not None and counter.device.type == "cpu" and rounds == PHILOX_ROUNDS:
        flat = counter.reshape(-1).to(torch.int64).numpy()
        words = np.empty((flat.shape[0], WORDS_PER_CALL), dtype=np.int64)
        _philox_numba(flat, words, seed & _MASK32, (seed >> 32) & _MASK32, offset & _MASK32,
                      (offset >> 32) & _MASK32)
        return torch.from_numpy(words).reshape(*counter.shape, WORDS_PER_CALL)
    return philox4x32_torch(seed, offset, counter, rounds)


def philox4x32_torch(seed: int, offset: int, counter: torch.Tensor, rounds: int = PHILOX_ROUNDS) -> torch.Tensor:
    """:func:`philox4x32` in torch integer ops, for any device.

    Arithmetic is in int64: products of two 32-bit values wrap modulo 2**64, and the high and
    low halves are recovered with shifts and masks, which reproduces ``tl.philox`` exactly.
    """
    flat = counter.reshape(-1).to(torch.int64)
    c0, c1 = flat & _MASK32, (flat >> 32) & _MASK32
    c2 = torch.full_like(flat, offset & _MASK32)
    c3 = torch.full_like(flat, (offset >> 32) & _MASK32)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(rounds):
        # In-place where the old value is dead: this loop is the CPU backend's hot path.
        product_a = c0.mul_(PHILOX_ROUND_A)
        product_b = c2.mul_(PHILOX_ROUND_B)
        c0 = (product_b >> 32).bitwise_and_(_MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        c2 = (product_a >> 32).bitwise_and_(_MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c1 = product_b.bitwise_and_(_MASK32)
        c3 = product_a.bitwise_and_(_MASK32)
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    words = torch.stack((c0, c1, c2, c3), dim=-1)
    return words.reshape(*counter.shape, WORDS_PER_CALL)


# The numba functions live at module level, not in a closure: numba's on-disk cache (cache=True)
# is keyed by the function's qualified name and source location, and a closure is a new,
# uncacheable function in every process (each process recompiled it, 0.7-1.6 s, and wrote
# another .nbc file into __pycache__). At module level the second process loads the cache.
if numba is not None:
    @numba.njit(cache=True, nogil=True, inline="always")
    def _philox_call(n, k0, k1, s0, s1):  # pragma: no cover - compiled
        mask, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
        c0, c1, c2, c3 = n & mask, n >> shift, s0, s1
        for _ in range(PHILOX_ROUNDS):
            product_a, product_b = np.uint64(PHILOX_ROUND_A) * c0, np.uint64(PHILOX_ROUND_B) * c2
            c0 = (product_b >> shift) ^ c1 ^ k0
            c2 = (product_a >> shift) ^ c3 ^ k1
            c1 = product_b & mask
            c3 = product_a & mask
            k0 = (k0 + np.uint64(PHILOX_KEY_A)) & mask
            k1 = (k1 + np.uint64(PHILOX_KEY_B)) & mask
        return c0, c1, c2, c3

    @numba.njit(cache=True, nogil=True)
    def _philox_numba(counters, out, k0, k1, s0, s1):  # pragma: no cover - compiled
        for i in range(counters.shape[0]):
            words = _philox_call(np.uint64(counters[i]), np.uint64(k0), np.uint64(k1), np.uint64(s0), np.uint64(s1))
            for w in range(4):
                out[i, w] = np.int64(words[w])

    @numba.njit(cache=True, nogil=True)
    def _gumbel_rows_numba(out, constants, k0, k1, s0, s1):  # pragma: no cover - compiled
        """Spec steps 2-5 for an [R, K] array; ``constants`` = (1, 2**-32, unused) in its dtype."""
        rows, classes = out.shape
        calls_per_row = (classes + 3) // 4
        one, scale = constants[0], constants[1]
        bits_as_float = constants[:1].copy()  # int -> out's dtype, rounded once, as in the torch ops
        for r in range(rows):
            for j in range(calls_per_row):
                words = _philox_call(np.uint64(r * calls_per_row + j), np.uint64(k0), np.uint64(k1), np.uint64(s0),
                                     np.uint64(s1))
                for w in range(min(4, classes - 4 * j)):
                    bits_as_float[0] = float(min(words[w] | np.uint64(1), np.uint64(TOP_NUMERATOR)))
                    v = bits_as_float[0] * scale
                    a = one - v
                    exponential = v if a == one else v * np.log(a) / (a - one)
                    out[r, 4 * j + w] = -np.log(exponential)
else:  # pragma: no cover - exercised where numba is absent
    _philox_numba = _gumbel_rows_numba = None



def gumbel_from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Steps 3-5 of the spec (exact twin): ``b = word >> 1`` (int64 tensor) to Gumbel(0, 1) noise
    in ``dtype``, through ``v = min(2 b + 1, 2**32 - 2**8) * 2**-32`` (``word | 1`` is ``2 b + 1``)."""
    v = (2 * bits + 1).clamp_max(TOP_NUMERATOR).to(dtype) * GUMBEL_SCALE
    a = 1.0 - v
    exact = a == 1.0
    exponential = torch.where(exact, v, v * torch.log(a) / torch.where(exact, torch.ones_like(a), a - 1.0))
    return -torch.log(exponential)


def gumbel_noise_rows(rows: int, classes: int, seed: int, offset: int, dtype: torch.dtype,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``[rows, classes]`` Gumbel noise of the spec for one call ``(seed, offset)``.

    On CPU with numba installed this is one compiled pass (the CPU backend's hot path); its
    bits are identical to :func:`gumbel_noise_rows_torch` and its logs agree to the last ulp.
    """
    seed = philox_key(seed)
    if _gumbel_rows_numba is not None and torch.device(device).type == "cpu":
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        out = np.empty((rows, classes), dtype=np_dtype)
        constants = np.array([1.0, GUMBEL_SCALE, 0.0], dtype=np_dtype)
        _gumbel_rows_numba(out, constants, seed & _MASK32, (seed >> 32) & _MASK32, offset & _MASK32, (offset >> 32) & _MASK32)
        return torch.from_numpy(out).to(dtype)
    return _gumbel_noise_rows_keyed(rows, classes, seed, offset, dtype, device)


def gumbel_noise_rows_torch(rows: int, classes: int, seed: int, offset: int, dtype: torch.dtype,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`gumbel_noise_rows` in torch ops, for any device: the readable definition."""
    return _gumbel_noise_rows_keyed(rows, classes, philox_key(seed), offset, dtype, device)


def _gumbel_noise_rows_keyed(rows, classes, key, offset, dtype, device):
    calls_per_row = -(-classes // WORDS_PER_CALL)
    counters = torch.arange(rows * calls_per_row, dtype=torch.int64, device=device)
    words = philox4x32(key, offset, counters).reshape(rows, calls_per_row * WORDS_PER_CALL)
    return gumbel_from_bits(words[:, :classes] >> 1, dtype)


def default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    raise ValueError(f"fused_gumbel supports CPU and CUDA tensors, got device {device}")


def draw_seed_offset(device: torch.device, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Take ``(seed, offset)`` for one call from ``generator`` (default: the device's) and advance it.

    CUDA generators are Philox generators themselves: the key is their seed and the offset is
    reserved by advancing theirs, with no device synchronisation. CPU generators (Mersenne
    Twister) draw a fresh 63-bit key and offset with one ``torch.randint``. Either way
    ``torch.manual_seed`` / ``set_rng_state`` reproduce the call exactly. (``fused_gumbel._C``'s
    ``draw_key_offset`` computes the CPU draw without a tensor: the same two ``random64() % (2**63
    - 1)`` values torch.randint takes, tested equal, generator state included.)
    """
    if generator is None:
        generator = default_generator(device)
    elif generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the logits are on {device}; "
            "pass a generator of the logits' device")
    if generator.device.type == "cuda":
        offset = generator.get_offset()
        generator.set_offset(offset + CUDA_OFFSET_INCREMENT)
        return generator.initial_seed(), offset
    seed, offset = torch.randint(0, 2**63 - 1, (2,), generator=generator, dtype=torch.int64).tolist()
    return seed, offset


# Second mapping (elementwise draws: relaxed Bernoulli / logistic noise), see the module docstring.
UNIFORM_BITS = 31


def uniform_bits_flat(numel: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 31-bit integers ``b`` (int64) of the elementwise mapping: element ``e`` of a
    row-major-flattened tensor takes word ``e % 4`` of the Philox call with counter ``e // 4``."""
    calls = -(-numel // WORDS_PER_CALL)
    words = philox4x32(philox_key(seed), offset, torch.arange(calls, dtype=torch.int64, device=device))
    return words.reshape(calls * WORDS_PER_CALL)[:numel] >> 1


def logistic_from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Logistic(0, 1) noise ``log(u) - log(1 - u)`` from 31 random bits (int64 tensor), in ``dtype``.

    ``u = b * 2**-31`` and ``1 - u = (2**31 - b) * 2**-31`` are both formed from the integer
    ``b`` (clamped to [1, 2**31 - 1]), so neither logarithm suffers the cancellation of a
    floating-point ``1 - u``: the noise is accurate to a few ulp at both ends and exactly
    antisymmetric (``b`` and ``2**31 - b`` give opposite values), within about +-21.49.
    """
    b = bits.clamp(1, 2**UNIFORM_BITS - 1)
    u = b.to(dtype) * UNIFORM_SCALE
    complement = (2**UNIFORM_BITS - b).to(dtype) * UNIFORM_SCALE
    return torch.log(u) - torch.log(complement)


def logistic_noise_flat(numel: int, seed: int, offset: int, dtype: torch.dtype,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``[numel]`` logistic noise of the elementwise mapping for one call ``(seed, offset)``."""
    return logistic_from_bits(uniform_bits_flat(numel, seed, offset, device), dtype)
