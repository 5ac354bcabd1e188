// Helpers shared by the CPU kernels (gumbel_softmax_cpu_kernel.h, relaxed_bernoulli_cpu_kernel.h,
// gumbel_topk_cpu_kernel.h), compiled into each kernel's per-ISA build (the including file defines
// KERNEL_ISA): Philox4x32-10 words of consecutive counters (RNG spec v2, fused_gumbel/rng.py: counter
// (lo n, hi n, lo offset, hi offset), key seed ^ DOMAIN_TAG) in scalar, AVX2 and AVX-512 forms, the
// at::vec alias, the conversions between a tensor dtype and the compute dtype (flat and for a strided
// row), and a row's temperature. Everything is internal to the
// translation unit (an unnamed namespace): each ISA build gets its own copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fused_gumbel {
namespace cpu {
namespace KERNEL_ISA {
namespace {

constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
constexpr uint64_t kDomainTag = 0x2545F4914F6CDD1Dull;

inline void philox_scalar(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                          uint32_t* out) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t pa = uint64_t(c0) * kRoundA, pb = uint64_t(c2) * kRoundB;
    c0 = uint32_t(pb >> 32) ^ c1 ^ k0;
    c2 = uint32_t(pa >> 32) ^ c3 ^ k1;
    c1 = uint32_t(pb);
    c3 = uint32_t(pa);
    k0 += kKeyA;
    k1 += kKeyB;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// Words of Philox calls first_call .. first_call + calls - 1, four per call, in call order.
inline void philox_fill(uint64_t seed, uint64_t offset, uint64_t first_call, int64_t calls, uint32_t* out) {
  const uint64_t key = seed ^ kDomainTag;
  const uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  const uint32_t s0 = uint32_t(offset), s1 = uint32_t(offset >> 32);
  int64_t i = 0;
#if defined(__AVX2__)
  // The vector paths take the counters' high word as constant: true unless the low word wraps.
  const bool high_constant = uint64_t(uint32_t(first_call)) + uint64_t(calls) <= (uint64_t(1) << 32);
  const uint32_t n_hi = uint32_t(first_call >> 32), n_lo = uint32_t(first_call);
#endif
#if defined(__AVX512F__)
  if (high_constant) {
    const __m512i round_a = _mm512_set1_epi32(int(kRoundA)), round_b = _mm512_set1_epi32(int(kRoundB));
    const __m512i key_a = _mm512_set1_epi32(int(kKeyA)), key_b = _mm512_set1_epi32(int(kKeyB));
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Interleave indices: 32-bit pairs (w0 w1), (w2 w3) of calls 0-7 / 8-15, then 64-bit pairs.
    const __m512i pair_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i pair_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i quad_lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i quad_hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    for (; i + 16 <= calls; i += 16) {
      __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(int(n_lo + uint32_t(i))), lanes);
      __m512i c1 = _mm512_set1_epi32(int(n_hi));
      __m512i c2 = _mm512_set1_epi32(int(s0)), c3 = _mm512_set1_epi32(int(s1));
      __m512i q0 = _mm512_set1_epi32(int(k0)), q1 = _mm512_set1_epi32(int(k1));
      for (int round = 0; round < 10; ++round) {
        const __m512i even_a = _mm512_mul_epu32(c0, round_a);
        const __m512i odd_a = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), round_a);
        const __m512i even_b = _mm512_mul_epu32(c2, round_b);
        const __m512i odd_b = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), round_b);
        const __m512i hi_a = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even_a, 32), odd_a);
        const __m512i hi_b = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even_b, 32), odd_b);
        const __m512i lo_a = _mm512_mask_blend_epi32(0xAAAA, even_a, _mm512_slli_epi64(odd_a, 32));
        const __m512i lo_b = _mm512_mask_blend_epi32(0xAAAA, even_b, _mm512_slli_epi64(odd_b, 32));
        c0 = _mm512_ternarylogic_epi32(hi_b, c1, q0, 0x96);  // 0x96: a ^ b ^ c
        c2 = _mm512_ternarylogic_epi32(hi_a, c3, q1, 0x96);
        c1 = lo_b;
        c3 = lo_a;
        q0 = _mm512_add_epi32(q0, key_a);
        q1 = _mm512_add_epi32(q1, key_b);
      }
      const __m512i w01_lo = _mm512_permutex2var_epi32(c0, pair_lo, c1);
      const __m512i w01_hi = _mm512_permutex2var_epi32(c0, pair_hi, c1);
      const __m512i w23_lo = _mm512_permutex2var_epi32(c2, pair_lo, c3);
      const __m512i w23_hi = _mm512_permutex2var_epi32(c2, pair_hi, c3);
      uint32_t* dst = out + 4 * i;
      _mm512_storeu_si512(dst + 0, _mm512_permutex2var_epi64(w01_lo, quad_lo, w23_lo));
      _mm512_storeu_si512(dst + 16, _mm512_permutex2var_epi64(w01_lo, quad_hi, w23_lo));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi64(w01_hi, quad_lo, w23_hi));
      _mm512_storeu_si512(dst + 48, _mm512_permutex2var_epi64(w01_hi, quad_hi, w23_hi));
    }
  }
#endif
#if defined(__AVX2__)
  // Four calls per vector, one per 64-bit lane with its state words in the low halves:
  // vpmuludq reads only those, so each product's low word is already in place and its high word
  // one move away, and the high halves' leftovers are never read: no blends, and one move per
  // product where eight 32-bit lanes took three shifts and two blends. Zen 1 runs vector shifts
  // on one pipe and shuffles on two, so half the moves are each (19% faster there than the
  // 8-lane form, and 6% faster than shifts alone). Two such groups per step.
  // Only the counter's low word differs between the calls of a run: round 0's product of c2 (the
  // offset's low word) and hence round 1's product of c0 are the same for every call, computed
  // once here (two of the twenty products per call), and the round keys are precomputed.
  const uint64_t pb0 = uint64_t(s0) * kRoundB;
  const uint32_t c0_r1 = uint32_t(pb0 >> 32) ^ n_hi ^ k0, c1_r1 = uint32_t(pb0);  // round 0's c0, c1
  const uint64_t pa1 = uint64_t(c0_r1) * kRoundA;                                 // round 1's product of c0
  const __m256i round_a = _mm256_set1_epi64x(kRoundA), round_b = _mm256_set1_epi64x(kRoundB);
  const __m256i c2_xor_r0 = _mm256_set1_epi32(int(s1 ^ k1));                                  // round 0: c2 = hi(pa) ^ c3 ^ k1
  const __m256i c0_xor_r1 = _mm256_set1_epi32(int(c1_r1 ^ (k0 + kKeyA)));                      // round 1: c0 = hi(pb) ^ c1 ^ k0'
  const __m256i c2_xor_r1 = _mm256_set1_epi32(int(uint32_t(pa1 >> 32) ^ (k1 + kKeyB)));       // round 1: c2 = hi(pa) ^ c3 ^ k1'
  const __m256i c3_r1 = _mm256_set1_epi32(int(uint32_t(pa1)));                                 // round 1: c3 = lo(pa)
  __m256i key0[8], key1[8];  // rounds 2-9
  for (int round = 2; round < 10; ++round) {
    key0[round - 2] = _mm256_set1_epi32(int(k0 + uint32_t(round) * kKeyA));
    key1[round - 2] = _mm256_set1_epi32(int(k1 + uint32_t(round) * kKeyB));
  }
  const __m256i lanes_lo = _mm256_setr_epi64x(0, 1, 2, 3), lanes_hi = _mm256_setr_epi64x(4, 5, 6, 7);
  for (; high_constant && i + 8 <= calls; i += 8) {
    const __m256i first = _mm256_set1_epi64x(uint32_t(n_lo + uint32_t(i)));
    // Round 0: c2 = hi(c0 A) ^ c3 ^ k1, c3 = lo(c0 A); its c0 and c1 (from c2 B) are constants.
    const __m256i pa0 = _mm256_mul_epu32(_mm256_add_epi32(first, lanes_lo), round_a);
    const __m256i ra0 = _mm256_mul_epu32(_mm256_add_epi32(first, lanes_hi), round_a);
    // Round 1: c0 = hi(c2 B) ^ c1 ^ k0', c2 = hi(A c0) ^ c3 ^ k1' (A c0 constant), c1 = lo(c2 B).
    const __m256i pb1 = _mm256_mul_epu32(_mm256_xor_si256(_mm256_srli_epi64(pa0, 32), c2_xor_r0), round_b);
    const __m256i rb1 = _mm256_mul_epu32(_mm256_xor_si256(_mm256_shuffle_epi32(ra0, 0xF5), c2_xor_r0), round_b);
    __m256i c0 = _mm256_xor_si256(_mm256_shuffle_epi32(pb1, 0xF5), c0_xor_r1);
    __m256i d0 = _mm256_xor_si256(_mm256_srli_epi64(rb1, 32), c0_xor_r1);
    __m256i c1 = pb1, d1 = rb1;
    __m256i c2 = _mm256_xor_si256(pa0, c2_xor_r1), d2 = _mm256_xor_si256(ra0, c2_xor_r1);
    __m256i c3 = c3_r1, d3 = c3_r1;
    for (int round = 2; round < 10; ++round) {
      const __m256i q0 = key0[round - 2], q1 = key1[round - 2];
      const __m256i pa = _mm256_mul_epu32(c0, round_a), pb = _mm256_mul_epu32(c2, round_b);
      const __m256i ra = _mm256_mul_epu32(d0, round_a), rb = _mm256_mul_epu32(d2, round_b);
      c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_shuffle_epi32(pb, 0xF5), c1), q0);
      c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa, 32), c3), q1);
      d0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(rb, 32), d1), q0);
      d2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_shuffle_epi32(ra, 0xF5), d3), q1);
      c1 = pb;
      c3 = pa;
      d1 = rb;
      d3 = ra;
    }
    // Per 64-bit lane (w0 w1) and (w2 w3) of one call, then two calls per 256-bit store.
    const auto store4 = [](__m256i w0, __m256i w1, __m256i w2, __m256i w3, uint32_t* dst) {
      const __m256i p01 = _mm256_blend_epi32(w0, _mm256_slli_epi64(w1, 32), 0xAA);
      const __m256i p23 = _mm256_blend_epi32(w2, _mm256_slli_epi64(w3, 32), 0xAA);
      const __m256i even = _mm256_unpacklo_epi64(p01, p23), odd = _mm256_unpackhi_epi64(p01, p23);  // calls 0|2, 1|3
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute2x128_si256(even, odd, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8), _mm256_permute2x128_si256(even, odd, 0x31));
    };
    store4(c0, c1, c2, c3, out + 4 * i);
    store4(d0, d1, d2, d3, out + 4 * i + 16);
  }
#endif
  for (; i < calls; ++i) {
    const uint64_t n = first_call + uint64_t(i);
    philox_scalar(k0, k1, uint32_t(n), uint32_t(n >> 32), s0, s1, out + 4 * i);
  }
}

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

// Element conversions between the tensor dtype and the compute dtype (vectorised for bf16/fp16).
template <typename scalar_t, typename acc_t>
inline void to_compute(const scalar_t* src, acc_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(dst, src, n * sizeof(acc_t));
  } else {
    using V = Vec<float>;
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) {
      V v;
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        at::vec::load_fp32_from_bf16(src + i, v);
      } else {
        at::vec::load_fp32_from_fp16(src + i, v);
      }
      v.store(dst + i);
    }
    for (; i < n; ++i) dst[i] = acc_t(src[i]);
  }
}

template <typename scalar_t, typename acc_t>
inline void from_compute(const acc_t* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(dst, src, n * sizeof(acc_t));
  } else {
    at::vec::convert(src, dst, n);
  }
}

// One row of a strided view (class stride s_k) to and from a compute-dtype buffer of n values.
template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* p, int64_t s_k, int64_t n, acc_t* out) {
  if (s_k == 1) {
    to_compute(p, out, n);
  } else {
    for (int64_t k = 0; k < n; ++k) out[k] = acc_t(p[k * s_k]);
  }
}

template <typename scalar_t, typename acc_t>
inline void store_row(const acc_t* in, int64_t n, scalar_t* p, int64_t s_k) {
  if (s_k == 1) {
    from_compute(in, p, n);
  } else {
    for (int64_t k = 0; k < n; ++k) p[k * s_k] = scalar_t(in[k]);
  }
}

// Row r's temperature: from the compute-dtype [rows] tensor, or the scalar.
template <typename acc_t>
inline acc_t row_tau(const void* tau_rows, double tau, int64_t r) {
  return tau_rows ? static_cast<const acc_t*>(tau_rows)[r] : acc_t(tau);
}

}  // namespace
}  // namespace KERNEL_ISA
}  // namespace cpu
}  // namespace fused_gumbel
