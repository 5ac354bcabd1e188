// RNG spec v2 (fused_gumbel/rng.py) in C++ for the CUDA twin: Philox4x32-10 words and Gumbel noise.
//
// Port of kernels/rng.py. Every function here is `__host__ __device__` under nvcc and plain
// `inline` under a host compiler, so the same source is checked bit for bit against
// fused_gumbel.rng on a machine without a GPU (tests/test_cuda_twin_rng.py builds it with g++).
//
// - philox_words(key, offset, counter): the four 32-bit words of the Philox call with counter
//   words (lo n, hi n, lo offset, hi offset) and key (lo key, hi key). `key` is the call's
//   Philox key, seed ^ DOMAIN_TAG (rng.philox_key); the torch op takes the seed and XORs the tag in.
// - gumbel_exact<C>(word): the exact twin (spec step 5, Goldberg's log1p) in float or double.
// - gumbel_fast(word): the fast twin in float32: -log1p(-v) in log2 units as a four-term series
//   below v = 2**-6, else -lg2(1 - v); the result is g - ln(log2 e), a constant shift of every
//   class that no sample, softmax or gradient sees. On the device the logarithms run on the
//   MUFU unit (lg2.approx.ftz.f32), within rng.FAST_NOISE_BOUND; on the host log2f stands in
//   (the Triton FAST=1 twin), so the series and constants are tested on CPU.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FG_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define FG_HD inline
#endif

namespace fused_gumbel {
namespace twin {

constexpr uint32_t PHILOX_ROUND_A = 0xD2511F53u;
constexpr uint32_t PHILOX_ROUND_B = 0xCD9E8D57u;
constexpr uint32_t PHILOX_KEY_A = 0x9E3779B9u;
constexpr uint32_t PHILOX_KEY_B = 0xBB67AE85u;
constexpr uint64_t DOMAIN_TAG = 0x2545F4914F6CDD1Dull;  // rng.DOMAIN_TAG: key = seed ^ DOMAIN_TAG
constexpr uint32_t TOP_NUMERATOR = 4294967040u;         // 2**32 - 2**8: v <= 1 - 2**-24
constexpr float GUMBEL_SCALE = 2.3283064365386963e-10f;  // 2**-32
constexpr float SERIES_BELOW_BITS = 67108864.0f;         // v < 2**-6  <=>  u < 2**26
// log2(e) 2**-32k / k: the series -log2(1 - v) = log2(e) (v + v^2/2 + v^3/3 + v^4/4) in u = v 2**32.
// C4 is a float32 subnormal: the twin is compiled without -ftz (no --use_fast_math), like Triton.
constexpr float SERIES_C1 = 3.359036149664231e-10f;
constexpr float SERIES_C2 = 3.9104327439146944e-20f;
constexpr float SERIES_C3 = 6.069790484872172e-30f;
constexpr float SERIES_C4 = 1.059924919077691e-39f;
constexpr float LN2_F = 0.6931471805599453f;
constexpr float LOG2E_F = 1.4426950408889634f;

struct Words {
  uint32_t w0, w1, w2, w3;
};

FG_HD void mul_wide(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;  // with __umulhi, one IMAD.WIDE.U32 after ptxas
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

// The ten round keys of a Philox key: computed once per thread, so the calls a thread makes do
// not each redo the key schedule.
struct RoundKeys {
  uint32_t k0[10], k1[10];
};

FG_HD RoundKeys round_keys(uint64_t key) {
  RoundKeys keys;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = k0;
    keys.k1[round] = k1;
    k0 += PHILOX_KEY_A;
    k1 += PHILOX_KEY_B;
  }
  return keys;
}

// Philox4x32-10 of (c0, c1, c2, c3) under the round keys of (k0, k1).
FG_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, const RoundKeys& keys) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi_a, lo_a, hi_b, lo_b;
    mul_wide(c0, PHILOX_ROUND_A, hi_a, lo_a);
    mul_wide(c2, PHILOX_ROUND_B, hi_b, lo_b);
    c0 = hi_b ^ c1 ^ keys.k0[round];
    c2 = hi_a ^ c3 ^ keys.k1[round];
    c1 = lo_b;
    c3 = lo_a;
  }
  return Words{c0, c1, c2, c3};
}

// Spec step 2: the words of Philox call `counter` (64-bit n = row * Q + class / 4).
FG_HD Words philox_words(const RoundKeys& keys, uint64_t offset, uint64_t counter) {
  return philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), keys);
}

FG_HD Words philox_words(uint64_t key, uint64_t offset, uint64_t counter) {
  return philox_words(round_keys(key), offset, counter);
}

FG_HD uint32_t word_numerator(uint32_t word) {  // spec step 3: min(w | 1, 2**32 - 2**8)
  const uint32_t u = word | 1u;
  return u < TOP_NUMERATOR ? u : TOP_NUMERATOR;
}

// ---- elementary functions: MUFU on the device, libm on the host ----------------------------------
FG_HD float fast_lg2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::log2(x);
#endif
}

FG_HD float fast_ex2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

FG_HD double exact_log(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

FG_HD float exact_log(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  return std::log(x);
#endif
}

// Spec steps 3-5, exact twin: v = u 2**-32, E = -log1p(-v) by Goldberg (v * log(a) / (a - 1),
// a = 1 - v; v when a rounds to 1), g = -log(E).
template <typename C>
FG_HD C gumbel_exact(uint32_t word) {
  const C v = static_cast<C>(word_numerator(word)) * static_cast<C>(GUMBEL_SCALE);
  const C a = C(1) - v;
  const C exponential = a == C(1) ? v : v * exact_log(a) / (a - C(1));
  return -exact_log(exponential);
}

// Fast twin (float32): g - ln(log2 e). See the file comment.
FG_HD float gumbel_fast(uint32_t word) {
  const float u = static_cast<float>(word_numerator(word));
  const float series = u * (SERIES_C1 + u * (SERIES_C2 + u * (SERIES_C3 + u * SERIES_C4)));
  const float mufu = fast_lg2(1.0f - u * GUMBEL_SCALE);  // = -E2 above the series range
  const float negative = u < SERIES_BELOW_BITS ? -series : mufu;
  return fast_lg2(-negative) * -LN2_F;
}

// The twin the kernels use for compute dtype C: fast in float32, exact in float64.
template <typename C>
struct Noise;
template <>
struct Noise<float> {
  static FG_HD float of(uint32_t word) { return gumbel_fast(word); }
};
template <>
struct Noise<double> {
  static FG_HD double of(uint32_t word) { return gumbel_exact<double>(word); }
};

}  // namespace twin
}  // namespace fused_gumbel
