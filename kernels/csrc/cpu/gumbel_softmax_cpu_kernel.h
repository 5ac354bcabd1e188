// The fused CPU Gumbel-Softmax kernel, compiled once per instruction set (the *_default.cpp,
// *_avx2.cpp and *_avx512.cpp wrappers define KERNEL_ISA and are compiled with their own flags).
//
// Per block of rows: Philox4x32-10 words for the block's consecutive counters (RNG spec v2,
// fused_gumbel/rng.py: element (r, k) is word k % 4 of call r * Q + k / 4, key seed ^ DOMAIN_TAG,
// counter (lo n, hi n, lo offset, hi offset)), the exact twin's noise for the words in use
// (v = min(w | 1, 2^32 - 2^8) 2^-32, a = 1 - v, E = v log(a) / (a - 1) (Goldberg's log1p; v when
// a rounds to 1), g = -log E), then x + g and each row's max (NaN-propagating), argmax, or
// exp((x + g - M) / tau) / S, as flat vector passes over the block (which stays in L1); rows of
// at most 16 float classes (AVX-512) take one masked vector per row for the per-row steps.
// Mode 3 (CPU only) writes the one-hot and the soft sample. The backward regenerates the same
// noise (hard) or reads y (soft, or the soft sample a mode-3 forward kept):
//   dx = y (dy - sum(dy y)) / tau,   dtau = -(sum(dy y t) - sum(dy y) sum(y t)) / tau,
// t = (x + g - M) / tau (log y for the soft backward), 0 where y == 0.
// Rows with a NaN or no finite max are invalid: NaN outputs (index -1), as the Triton kernels.

#include <optional>

#include "gumbel_softmax_cpu.h"
#include "kernel_common.h"

namespace fused_gumbel {
namespace cpu {
namespace KERNEL_ISA {

namespace {

constexpr uint32_t kTopNumerator = 4294967040u;  // 2^32 - 2^8
// Words (4 per Philox call) one block of rows aims for: the block's noise stays in L1.
constexpr int64_t kBlockWords = 1024;

}  // namespace

// Words of Philox calls first_call .. first_call + calls - 1 (the test hook of gumbel_softmax_cpu.h).
void philox_words(uint64_t seed, uint64_t offset, uint64_t first_call, int64_t calls, uint32_t* out) {
  philox_fill(seed, offset, first_call, calls, out);
}

namespace {

// Spec step 3 on eight / sixteen words: v = min(w | 1, 2^32 - 2^8) rounded once to float (times
// 2^-32 later, exact). AVX-512 converts unsigned words directly; AVX2 sums the exact halves
// with one FMA, which rounds once, as the scalar path does.
#if defined(__AVX512F__)
inline __m512 words_to_float(const uint32_t* w) {
  const __m512i u = _mm512_min_epu32(_mm512_or_si512(_mm512_loadu_si512(w), _mm512_set1_epi32(1)),
                                     _mm512_set1_epi32(int(kTopNumerator)));
  return _mm512_cvtepu32_ps(u);
}
#elif defined(__AVX2__)
inline __m256 words_to_float(const uint32_t* w) {
  const __m256i u = _mm256_min_epu32(_mm256_or_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)),
                                                     _mm256_set1_epi32(1)),
                                     _mm256_set1_epi32(int(kTopNumerator)));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(u, 16));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(u, _mm256_set1_epi32(0xFFFF)));
  return _mm256_fmadd_ps(hi, _mm256_set1_ps(65536.0f), lo);
}
#endif

#if defined(__AVX512F__)
}  // namespace
}  // namespace KERNEL_ISA
}  // namespace cpu
}  // namespace fused_gumbel
// libtorch_cpu's Sleef, as at::vec's own log calls (its 1-ulp Sleef_logf16_u10).
extern "C" __m512 Sleef_logf16_u35(__m512);
namespace fused_gumbel {
namespace cpu {
namespace KERNEL_ISA {
namespace {
// Sleef's 3.5-ulp log for both logs of the noise on AVX-512 (about 3x faster than the 1-ulp one).
// Inside Goldberg's log1p only its relative error reaches E (E = v log(a) / (a - 1)): at most
// 2.1e-7 nats of g. The outer log's error is g's own: checked against EXACT_NOISE_BOUND (2e-6)
// over all 2^31 draws, at most 1.97e-6 (the command is in docs/benchmarks.md);
// tests/test_native.py repeats the check on every draw below 2^20, where g is largest, and every
// 997th above.
inline Vec<float> log_u35(const Vec<float>& a) { return Vec<float>(Sleef_logf16_u35(__m512(a))); }
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// The AVX2 build's logs, inline and without a division (Sleef's logf8 ends in one, and its call's
// long dependency chain stalled a Zen core: the two logs were ~half the forward). As Cephes' logf:
// a = 2^e m, m in [sqrt(1/2), sqrt(2)), x = m - 1 (exact), log(1 + x) = x + x^2 Q(x),
// Q(x) = x P(x) - 1/2, e ln 2 added in two parts (e ln2_hi is exact). P is a degree-6 weighted
// least-squares fit of (log1p(x) - x + x^2/2) / x^3 on that range (float32 log(m) within 3e-8;
// log(m) / x = 1 + x Q, below, within 1.2e-7 relative): ~1e-7 of the 2e-6 EXACT_NOISE_BOUND,
// which g's own rounding (half an ulp, 9.5e-7 at g > 16) dominates: 9.83e-7 at most over all
// 2^31 draws (Sleef's u35: 1.97e-6; the command is in docs/benchmarks.md).
// Zen 1's out-of-order window holds about two iterations of these passes, so their speed is
// their dependency chains' length: Q is one Estrin tree (x, x^2, x^4 and the coefficient pairs
// in parallel, three FMAs deep, -1/2 folded in), and every term that does not need Q (e ln 2, x,
// the far path's factor) is formed beside it, so one FMA follows Q.
struct LogParts {
  __m256 e, x, x2, q;  // exponent, m - 1, x^2, Q(x): log(m) = x + x2 q
};

inline LogParts log_parts(__m256 a) {  // a normal and positive
  const __m256i bits = _mm256_castps_si256(a), sqrt_half = _mm256_set1_epi32(0x3F3504F3);
  // Subtracting sqrt(1/2)'s bits moves the exponent boundary to sqrt(1/2): m = a 2^-e lands in [sqrt(1/2), sqrt(2)).
  const __m256i shifted = _mm256_sub_epi32(bits, sqrt_half);
  const __m256i m = _mm256_add_epi32(_mm256_and_si256(shifted, _mm256_set1_epi32(0x007FFFFF)), sqrt_half);
  const __m256 x = _mm256_sub_ps(_mm256_castsi256_ps(m), _mm256_set1_ps(1.0f));
  const __m256 x2 = _mm256_mul_ps(x, x), x4 = _mm256_mul_ps(x2, x2);
  const __m256 q01 = _mm256_fmadd_ps(_mm256_set1_ps(3.3334165398e-1f), x, _mm256_set1_ps(-0.5f));
  const __m256 q23 = _mm256_fmadd_ps(_mm256_set1_ps(1.9954894707e-1f), x, _mm256_set1_ps(-2.5001696547e-1f));
  const __m256 q45 = _mm256_fmadd_ps(_mm256_set1_ps(1.4977871089e-1f), x, _mm256_set1_ps(-1.6564502739e-1f));
  const __m256 q67 = _mm256_fmadd_ps(_mm256_set1_ps(8.6716983562e-2f), x, _mm256_set1_ps(-1.4378354940e-1f));
  const __m256 q = _mm256_fmadd_ps(_mm256_fmadd_ps(q67, x2, q45), x4, _mm256_fmadd_ps(q23, x2, q01));
  return {_mm256_cvtepi32_ps(_mm256_srai_epi32(shifted, 23)), x, x2, q};
}

// e ln2_hi + (e ln2_lo + x): log(a) but for the x^2 Q term (e ln2_hi is exact).
inline __m256 log_without_q(const LogParts& l) {
  return _mm256_fmadd_ps(l.e, _mm256_set1_ps(0.693359375f), _mm256_fmadd_ps(l.e, _mm256_set1_ps(-2.12194440e-4f), l.x));
}

// Goldberg's E = v log(a) / (a - 1), a = 1 - v rounded (v = uf 2^-32, uf the rounded word). Where
// e = 0 (a >= sqrt(1/2): most draws, the whole winning tail) a - 1 = x and E = v (1 + x Q): no
// division (a = 1: E = v). Below, with d = 1 - a and delta = v - d (both exact, Sterbenz),
// v / d = 1 + delta / d and |delta / d| <= 2^-25 / 0.29: E = -log(a) (1 + delta / d) with a
// 12-bit reciprocal of d costs < 1e-10; the factor -(1 + delta / d) multiplies log(a)'s two
// parts beside Q.
inline __m256 goldberg_e(__m256 uf) {
  const __m256 one = _mm256_set1_ps(1.0f);
  // v = uf 2^-32 by its exponent (uf >= 1: exact, as the product) and a = 1 - v rounded once: the
  // same values as a multiply and an FMA, off the multiply pipes (which this pass keeps busy).
  const __m256 v = _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_castps_si256(uf), _mm256_set1_epi32(32 << 23)));
  const __m256 a = _mm256_sub_ps(one, v);
  const LogParts l = log_parts(a);
  const __m256 d = _mm256_sub_ps(one, a), delta = _mm256_sub_ps(v, d);
  const __m256 neg_f = _mm256_fnmsub_ps(delta, _mm256_rcp_ps(d), one);  // -(1 + delta / d)
  const __m256 far = _mm256_fmadd_ps(_mm256_mul_ps(neg_f, l.x2), l.q, _mm256_mul_ps(neg_f, log_without_q(l)));
  const __m256 near = _mm256_fmadd_ps(_mm256_mul_ps(v, l.x), l.q, v);
  return _mm256_blendv_ps(far, near, _mm256_cmp_ps(l.e, _mm256_setzero_ps(), _CMP_EQ_OQ));
}

// -log(E), the sign folded in: -(e ln2_hi + (e ln2_lo + x + x^2 Q)), the x^2 Q term second to last.
inline __m256 neg_log(__m256 e) {
  const LogParts l = log_parts(e);
  const __m256 rest = _mm256_fnmsub_ps(l.e, _mm256_set1_ps(-2.12194440e-4f), l.x);  // -(e ln2_lo) - x
  return _mm256_fnmadd_ps(l.e, _mm256_set1_ps(0.693359375f), _mm256_fnmadd_ps(l.x2, l.q, rest));
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// The AVX2 noise of n words plus x (x + g: the logits' pass fused into the noise's last one), or g
// alone when x is null. Three flat passes over the block in L1 (the words as floats, E, then
// -log E): each iteration's dependency chain is short enough that the core overlaps several of
// them (on Zen 1, two passes fused into one run 27% slower, and converting the words apart from
// E's pass is 12% faster).
inline void gumbel_plus(const uint32_t* words, const float* x, float* g, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(g + i, words_to_float(words + i));
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(g + i, goldberg_e(_mm256_loadu_ps(g + i)));
  if (x) {
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(g + i, _mm256_add_ps(neg_log(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(x + i)));
  } else {
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(g + i, neg_log(_mm256_loadu_ps(g + i)));
  }
  for (; i < n; ++i) {
    const float v = float(std::min(words[i] | 1u, kTopNumerator)) * 2.3283064365386963e-10f;
    const float a = 1.0f - v;
    g[i] = -std::log(a == 1.0f ? v : v * std::log(a) / (a - 1.0f));
    if (x) g[i] += x[i];
  }
}
#endif

// Spec steps 3-5, exact twin: g[i] = -log(E), E = -log1p(-v) by Goldberg's v log(a) / (a - 1).
template <typename acc_t>
void gumbel_from_words(const uint32_t* words, acc_t* g, int64_t n) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float>) {
    gumbel_plus(words, nullptr, g, n);
    return;
  }
#elif defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float>) {  // words to noise in one vector pass, no staging store
    using V = Vec<float>;
    const V scale(2.3283064365386963e-10f), one(1.0f);
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) {
      const V v = V(words_to_float(words + i)) * scale;
      const V a = one - v;
      const V goldberg = v * log_u35(a) / (a - one);
      (-log_u35(V::blendv(goldberg, v, a == one))).store(g + i);
    }
    for (; i < n; ++i) {
      const float v = float(std::min(words[i] | 1u, kTopNumerator)) * 2.3283064365386963e-10f;
      const float a = 1.0f - v;
      g[i] = -std::log(a == 1.0f ? v : v * std::log(a) / (a - 1.0f));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = std::min(words[i] | 1u, kTopNumerator);
    // Both halves convert exactly and the sum rounds once: u rounded to acc_t, as the spec says.
    g[i] = acc_t(u >> 16) * acc_t(65536) + acc_t(u & 0xFFFFu);
  }
  const Vec<acc_t> scale(acc_t(2.3283064365386963e-10)), one(acc_t(1));
  int64_t i = 0;
  for (; i + Vec<acc_t>::size() <= n; i += Vec<acc_t>::size()) {
    const Vec<acc_t> v = Vec<acc_t>::loadu(g + i) * scale;
    const Vec<acc_t> a = one - v;
    const Vec<acc_t> goldberg = v * a.log() / (a - one);
    const Vec<acc_t> e = Vec<acc_t>::blendv(goldberg, v, a == one);
    (-e.log()).store(g + i);
  }
  for (; i < n; ++i) {
    const acc_t v = g[i] * acc_t(2.3283064365386963e-10);
    const acc_t a = acc_t(1) - v;
    const acc_t e = a == acc_t(1) ? v : v * std::log(a) / (a - acc_t(1));
    g[i] = -std::log(e);
  }
}

template <typename acc_t>
inline acc_t nan_max(acc_t a, acc_t b) {
  return (std::isnan(a) || std::isnan(b)) ? std::numeric_limits<acc_t>::quiet_NaN() : std::max(a, b);
}

template <typename acc_t>
acc_t row_max(const acc_t* a, int64_t n) {
  using V = Vec<acc_t>;
  int64_t k = 0;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  if (n >= V::size()) {
    V vm = V::loadu(a);
    for (k = V::size(); k + V::size() <= n; k += V::size()) vm = at::vec::maximum(vm, V::loadu(a + k));
    alignas(64) acc_t lanes[V::size()];
    vm.store(lanes);
    for (int j = 0; j < V::size(); ++j) m = nan_max(m, lanes[j]);
  }
  // Short tails (all of a row shorter than a vector) without branches: NaN is tracked apart.
  bool nan = std::isnan(m);
  for (; k < n; ++k) {
    m = a[k] > m ? a[k] : m;
    nan |= a[k] != a[k];
  }
  return nan ? std::numeric_limits<acc_t>::quiet_NaN() : m;
}

template <typename acc_t>
acc_t row_sum(const acc_t* a, int64_t n) {
  using V = Vec<acc_t>;
  int64_t k = 0;
  acc_t s = 0;
  if (n >= V::size()) {
    V vs = V::loadu(a);
    for (k = V::size(); k + V::size() <= n; k += V::size()) vs = vs + V::loadu(a + k);
    alignas(64) acc_t lanes[V::size()];
    vs.store(lanes);
    for (int j = 0; j < V::size(); ++j) s += lanes[j];
  }
  for (; k < n; ++k) s += a[k];
  return s;
}

#if defined(__AVX512F__)
// Rows of at most 16 float classes (the VAE's K = 10): one masked vector per row, so the per-row
// reductions are a few shuffles rather than scalar loops and fills of per-row terms.
constexpr int64_t kShortRow = 16;
inline __mmask16 short_mask(int64_t K) { return __mmask16((1u << K) - 1u); }

inline float short_row_max(const float* a, __mmask16 mask) {
  const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), mask, a);
  if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) return std::numeric_limits<float>::quiet_NaN();
  return _mm512_reduce_max_ps(v);
}

inline int64_t short_first_index_of(const float* a, __mmask16 mask, float value) {
  const __mmask16 hit = _mm512_mask_cmp_ps_mask(mask, _mm512_maskz_loadu_ps(mask, a), _mm512_set1_ps(value), _CMP_EQ_OQ);
  return hit ? int64_t(__builtin_ctz(unsigned(hit))) : 0;
}
#elif defined(__AVX2__)
// Rows of at most 16 float classes (the VAE's K = 10) on AVX2: two vectors per row (lanes 0-7
// and 8-15, the lanes >= K masked out by blends), so the per-row reductions are a few shuffles
// rather than scalar loops and fills of per-row terms. There are no cheap masked stores (Zen's
// vmaskmovps store is microcoded): a row's two stores go to a buffer the pass does not read and
// spill up to 16 - K lanes into the next row, which that row's stores overwrite in turn; every
// buffer such a pass reads or writes has kRowSlack elements beyond its last row.
constexpr int64_t kShortRow = 16;

struct ShortMask {
  __m256 lo, hi;  // all-ones lanes k < K
};

inline ShortMask short_mask(int64_t K) {
  const __m256i k = _mm256_set1_epi32(int(K));
  return {_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))),
          _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)))};
}

// Whether rows [r0, r0 + count) can be written straight into a tensor by a thread that owns rows
// up to end: short rows store 16 lanes from each row's start, so the last row's spill (16 - K
// elements) must land on rows this thread writes later; longer rows do not spill.
inline bool spill_stays_in_range(int64_t r0, int64_t count, int64_t end, int64_t K) {
  return K > kShortRow || (r0 + count) * K + kShortRow - K <= end * K;
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

inline float hsum(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
}

// Sum of a row's K <= 16 values (lanes >= K dropped).
inline float short_row_sum(const float* a, const ShortMask& mask) {
  return hsum(_mm256_add_ps(_mm256_and_ps(_mm256_loadu_ps(a), mask.lo), _mm256_and_ps(_mm256_loadu_ps(a + 8), mask.hi)));
}

inline float short_row_max(const float* a, const ShortMask& mask) {
  const __m256 lo = _mm256_loadu_ps(a), hi = _mm256_loadu_ps(a + 8);
  const __m256 nan = _mm256_or_ps(_mm256_and_ps(_mm256_cmp_ps(lo, lo, _CMP_UNORD_Q), mask.lo),
                                  _mm256_and_ps(_mm256_cmp_ps(hi, hi, _CMP_UNORD_Q), mask.hi));
  if (_mm256_movemask_ps(nan)) return std::numeric_limits<float>::quiet_NaN();
  const __m256 low = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  return hmax(_mm256_max_ps(_mm256_blendv_ps(low, lo, mask.lo), _mm256_blendv_ps(low, hi, mask.hi)));
}

inline int64_t short_first_index_of(const float* a, const ShortMask& mask, float value) {
  const __m256 v = _mm256_set1_ps(value);
  const unsigned hit = unsigned(_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(a), v, _CMP_EQ_OQ), mask.lo))) |
                       unsigned(_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(a + 8), v, _CMP_EQ_OQ), mask.hi))) << 8;
  return hit ? int64_t(__builtin_ctz(hit)) : 0;
}

// exp inline (at::vec's is a call to Sleef's expf8_u10, whose chain stalls as its log did), as
// Cephes' expf: t = n ln 2 + r, |r| <= ln 2 / 2, exp(r) by a degree-7 polynomial (~1 ulp), times
// 2^n built in the exponent bits. t below -87.3 (where 2^n would leave the normal range) gives 0
// (Sleef gives a subnormal there: < 1.2e-38, invisible next to a row's largest term, exp(0) = 1);
// t = -inf gives 0 and NaN stays NaN (max/min return their second operand on NaN). In two halves
// (exp_reduce: n, r and 2^n; exp_finish: the polynomial times 2^n) that run as separate passes
// over a block or row: as for the noise, Zen 1 overlaps short chains better (7-9% faster forward).
struct ExpParts {
  __m256 r, scale;  // exp(t) = exp(r) scale
};

inline ExpParts exp_reduce(__m256 t) {
  const __m256 floor_t = _mm256_set1_ps(-87.33654f);
  const __m256 x = _mm256_min_ps(_mm256_set1_ps(88.37626f), _mm256_max_ps(floor_t, t));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  // t below the floor: a zero scale, so exp(t) = 0 (exp(r) is finite); NaN stays NaN through r.
  return {r, _mm256_andnot_ps(_mm256_cmp_ps(t, floor_t, _CMP_LT_OQ), _mm256_castsi256_ps(scale))};
}

inline __m256 exp_finish(__m256 r, __m256 scale) {
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  return _mm256_mul_ps(p, scale);
}

// exp over n floats of t into out (may be t), in two flat passes (the reduction, then the
// polynomial and scale; scale: n floats of scratch): shorter chains, as for the noise.
inline void exp_flat(const float* t, float* out, float* scale, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const ExpParts e = exp_reduce(_mm256_loadu_ps(t + i));
    _mm256_storeu_ps(out + i, e.r);
    _mm256_storeu_ps(scale + i, e.scale);
  }
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp_finish(_mm256_loadu_ps(out + i), _mm256_loadu_ps(scale + i)));
  for (; i < n; ++i) out[i] = std::exp(t[i]);
}
#endif


// Rows that follow each other densely: a block of them is one flat [count, K] array.
inline bool dense_rows(const RowLayout& layout, int64_t K) {
  return layout.inner == 1 && layout.s_k == 1 && layout.s_outer == K;
}

// 1 / tau of row r, with one division per call for a scalar tau (a division per row was a
// visible part of the short-row passes at 3000 x 10).
template <typename acc_t>
struct InverseTau {
  const acc_t* rows;
  acc_t scalar;
  InverseTau(const void* tau_rows, double tau)
      : rows(static_cast<const acc_t*>(tau_rows)), scalar(rows ? acc_t(0) : acc_t(1) / acc_t(tau)) {}
  acc_t operator()(int64_t r) const { return rows ? acc_t(1) / rows[r] : scalar; }
};

template <typename acc_t>
inline void add_into(acc_t* a, const acc_t* b, int64_t n) {
  using V = Vec<acc_t>;
  int64_t k = 0;
  for (; k + V::size() <= n; k += V::size()) (V::loadu(a + k) + V::loadu(b + k)).store(a + k);
  for (; k < n; ++k) a[k] += b[k];
}

// Elements past a block's last row in its flat buffers: the AVX2 short-row path reads and writes
// 16 lanes per row of K <= 16.
constexpr int64_t kRowSlack = 16;

// Per-block scratch of one thread: Philox words, x + g, and one row in the compute dtype.
template <typename acc_t>
struct Scratch {
  std::vector<uint32_t> words;
  std::vector<acc_t> a, expand_a, expand_b, row, row_max;
  Scratch(int64_t per_block, int64_t K)
      : words(per_block * 4 * ((K + 3) / 4)), a(words.size() + kRowSlack), expand_a(a.size()), expand_b(a.size()),
        row(K), row_max(per_block) {}
};

// Rows per block: enough that the block's noise is one flat vectorised pass (short rows), one
// row at a time for long rows. The AVX2 build rounds it down to a multiple of 8 rows, so that a
// block's Philox calls (8 per vector step) and elements (8 per vector) leave no scalar tails: at
// K = 10, 85 rows left 7 scalar Philox calls and 2 scalar noise and exp elements per block.
inline int64_t block_rows(int64_t K) {
  const int64_t rows = std::max<int64_t>(1, kBlockWords / (4 * ((K + 3) / 4)));
#if defined(__AVX2__) && !defined(__AVX512F__)
  if (rows >= 8) return rows / 8 * 8;
#endif
  return rows;
}

// Each row's max of the block s.a ([count, K]; NaN if the row holds a NaN) into s.row_max.
template <typename acc_t>
void row_maxima(Scratch<acc_t>& s, int64_t count, int64_t K) {
  const acc_t* a = s.a.data();
#if defined(__AVX2__)  // AVX-512 too: each build's own short_mask / short_row_max
  if constexpr (std::is_same_v<acc_t, float>) {
    if (K <= kShortRow) {
      const auto mask = short_mask(K);
      for (int64_t j = 0; j < count; ++j) s.row_max[j] = short_row_max(a + j * K, mask);
      return;
    }
  }
#endif
  for (int64_t j = 0; j < count; ++j) s.row_max[j] = row_max(a + j * K, K);
}

// x + g for rows [r0, r0 + count) into s.a ([count, K]) and each row's max (NaN if it holds a NaN).
template <typename scalar_t, typename acc_t>
void perturbed_block(uint64_t seed, uint64_t offset, const scalar_t* x, const RowLayout& layout, int64_t r0,
                     int64_t count, int64_t K, Scratch<acc_t>& s) {
  const int64_t Q = (K + 3) / 4, padded = 4 * Q;
  uint32_t* words = s.words.data();
  philox_words(seed, offset, uint64_t(r0) * uint64_t(Q), count * Q, words);
  if (padded != K) {  // drop the padding words of each row: no noise is computed for them
#if defined(__AVX2__) && !defined(__AVX512F__)
    if (K > 8 && K < 16) {  // two 8-word copies per row, [0, 8) and [K - 8, K), both loaded first: no call per row
      for (int64_t j = 1; j < count; ++j) {
        const __m256i* src = reinterpret_cast<const __m256i*>(words + j * padded);
        const __m256i head = _mm256_loadu_si256(src);
        const __m256i tail = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + j * padded + K - 8));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + j * K), head);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + j * K + K - 8), tail);
      }
    } else
#endif
    for (int64_t j = 1; j < count; ++j) std::memmove(words + j * K, words + j * padded, K * sizeof(uint32_t));
  }
  acc_t* a = s.a.data();
#if defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (dense_rows(layout, K)) {  // x + g in the noise's last pass
      const scalar_t* base = x + layout.row_offset(r0);
      const float* logits = nullptr;
      if constexpr (std::is_same_v<scalar_t, float>) {
        logits = base;
      } else {
        to_compute(base, s.expand_a.data(), count * K);
        logits = s.expand_a.data();
      }
      gumbel_plus(words, logits, a, count * K);
      row_maxima(s, count, K);
      return;
    }
  }
#endif
  gumbel_from_words(words, a, count * K);
  if (dense_rows(layout, K)) {
    const scalar_t* base = x + layout.row_offset(r0);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      add_into(a, base, count * K);
    } else {
      to_compute(base, s.expand_a.data(), count * K);
      add_into(a, s.expand_a.data(), count * K);
    }
  } else {
    for (int64_t j = 0; j < count; ++j) {
      load_row(x + layout.row_offset(r0 + j), layout.s_k, K, s.row.data());
      add_into(a + j * K, s.row.data(), K);
    }
  }
  row_maxima(s, count, K);
}

template <typename acc_t>
inline bool finite_max(acc_t m) {
  return std::abs(m) < std::numeric_limits<acc_t>::infinity();  // false for NaN too
}

template <typename acc_t>
inline int64_t first_index_of(const acc_t* a, int64_t n, acc_t value) {
  for (int64_t k = 0; k < n; ++k) {
    if (a[k] == value) return k;
  }
  return 0;
}

// The soft sample of a perturbed block: exp((a - M_j) / tau_j) / S_j (NaN rows for invalid rows)
// into out ([count, K], dense), or in place in s.a when out is null. The exponentials run as one
// flat pass over the block. The AVX2 build's float paths write out directly (its short-row form
// stores 16 lanes from each row's start: out must have 16 - K elements past its last row that
// nothing else writes later); the others copy the block there.
template <typename acc_t>
void soft_block(Scratch<acc_t>& s, int64_t r0, int64_t count, int64_t K, const void* tau_rows, double tau,
                acc_t* out = nullptr) {
  acc_t* a = s.a.data();
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (K <= kShortRow) {
      // One masked vector per row for (a - M) / tau and for the sum and scale, the exponentials as
      // one flat pass. Each pass stores to a buffer it does not load: a masked store blocks any
      // later load of its 64 bytes until it retires, whatever the masks, and rows are < 64 bytes apart.
      const __mmask16 mask = short_mask(K);
      const int64_t n = count * K;
      float* t = s.expand_a.data();
      for (int64_t j = 0; j < count; ++j) {
        const float m = s.row_max[j], inv_tau = 1.0f / row_tau<float>(tau_rows, tau, r0 + j);
        const __m512 v = _mm512_maskz_loadu_ps(mask, a + j * K);
        _mm512_mask_storeu_ps(t + j * K, mask, _mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(finite_max(m) ? m : 0.0f)),
                                                            _mm512_set1_ps(inv_tau)));
      }
      using V = Vec<float>;
      int64_t i = 0;
      for (; i + V::size() <= n; i += V::size()) V::loadu(t + i).exp().store(t + i);
      for (; i < n; ++i) t[i] = std::exp(t[i]);
      for (int64_t j = 0; j < count; ++j) {
        const __m512 e = _mm512_maskz_loadu_ps(mask, t + j * K);
        const float inv = finite_max(s.row_max[j]) ? 1.0f / _mm512_mask_reduce_add_ps(mask, e) : nan;
        _mm512_mask_storeu_ps(a + j * K, mask, _mm512_mul_ps(e, _mm512_set1_ps(inv)));
      }
      if (out) std::copy(a, a + n, out);
      return;
    }
  }
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<acc_t, float>) {
    float* dst = out ? out : a;
    if (K <= kShortRow) {
      // Two vectors per row for (a - M) / tau (into t) and for the sum and scale (back into a), the
      // exponentials as one flat pass over t.
      const ShortMask mask = short_mask(K);
      const int64_t n = count * K;
      float* t = s.expand_a.data();
      const InverseTau<float> inverse_tau(tau_rows, tau);
      for (int64_t j = 0; j < count; ++j) {
        const float m = s.row_max[j];
        const __m256 shift = _mm256_set1_ps(finite_max(m) ? m : 0.0f);
        const __m256 inv_tau = _mm256_set1_ps(inverse_tau(r0 + j));
        _mm256_storeu_ps(t + j * K, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(a + j * K), shift), inv_tau));
        _mm256_storeu_ps(t + j * K + 8, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(a + j * K + 8), shift), inv_tau));
      }
      float* inv = s.expand_b.data();  // free again after exp_flat: 1 / S per row, or NaN
      exp_flat(t, t, inv, n);
      for (int64_t j = 0; j < count; ++j) inv[j] = short_row_sum(t + j * K, mask);
      // The reciprocals eight rows a vector (a scalar division per row stalled this pass).
      const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
      int64_t j = 0;
      for (; j + 8 <= count; j += 8) {
        const __m256 valid = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_loadu_ps(s.row_max.data() + j)), inf, _CMP_LT_OQ);
        _mm256_storeu_ps(inv + j, _mm256_blendv_ps(_mm256_set1_ps(nan), _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(inv + j)), valid));
      }
      for (; j < count; ++j) inv[j] = finite_max(s.row_max[j]) ? 1.0f / inv[j] : nan;
      for (j = 0; j < count; ++j) {
        _mm256_storeu_ps(dst + j * K, _mm256_mul_ps(_mm256_loadu_ps(t + j * K), _mm256_set1_ps(inv[j])));
        _mm256_storeu_ps(dst + j * K + 8, _mm256_mul_ps(_mm256_loadu_ps(t + j * K + 8), _mm256_set1_ps(inv[j])));
      }
      return;
    }
    // Longer rows, over each row in L1: the exponent's reduction of (a - M) / tau, then exp and
    // its sum (two passes: shorter chains, as exp_flat), then the scale.
    float* scale = s.expand_b.data();
    const InverseTau<float> inverse_tau(tau_rows, tau);
    for (int64_t j = 0; j < count; ++j) {
      float* row = a + j * K;
      const float m = s.row_max[j];
      const __m256 shift = _mm256_set1_ps(finite_max(m) ? m : 0.0f);
      const float inv_tau = inverse_tau(r0 + j);
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) {
        const ExpParts e = exp_reduce(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + k), shift), _mm256_set1_ps(inv_tau)));
        _mm256_storeu_ps(row + k, e.r);
        _mm256_storeu_ps(scale + k, e.scale);
      }
      __m256 sum = _mm256_setzero_ps();
      for (k = 0; k + 8 <= K; k += 8) {
        const __m256 e = exp_finish(_mm256_loadu_ps(row + k), _mm256_loadu_ps(scale + k));
        sum = _mm256_add_ps(sum, e);
        _mm256_storeu_ps(row + k, e);
      }
      float total = hsum(sum);
      for (; k < K; ++k) total += row[k] = std::exp((row[k] - (finite_max(m) ? m : 0.0f)) * inv_tau);
      const __m256 inv = _mm256_set1_ps(finite_max(m) ? 1.0f / total : nan);
      float* dst_row = dst + j * K;
      for (k = 0; k + 8 <= K; k += 8) _mm256_storeu_ps(dst_row + k, _mm256_mul_ps(_mm256_loadu_ps(row + k), inv));
      for (; k < K; ++k) dst_row[k] = row[k] * _mm256_cvtss_f32(inv);
    }
    return;
  }
#endif
  const int64_t n = count * K;
  acc_t *shift = s.expand_a.data(), *scale = s.expand_b.data();
  for (int64_t j = 0; j < count; ++j) {  // per-row terms spread over the row: the passes below are flat
    const acc_t m = s.row_max[j];
    std::fill(shift + j * K, shift + (j + 1) * K, finite_max(m) ? m : acc_t(0));
    std::fill(scale + j * K, scale + (j + 1) * K, acc_t(1) / row_tau<acc_t>(tau_rows, tau, r0 + j));
  }
  using V = Vec<acc_t>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size())
    ((V::loadu(a + i) - V::loadu(shift + i)) * V::loadu(scale + i)).exp().store(a + i);
  for (; i < n; ++i) a[i] = std::exp((a[i] - shift[i]) * scale[i]);
  for (int64_t j = 0; j < count; ++j) {
    const acc_t inv = finite_max(s.row_max[j]) ? acc_t(1) / row_sum(a + j * K, K) : nan;
    std::fill(scale + j * K, scale + (j + 1) * K, inv);
  }
  i = 0;
  for (; i + V::size() <= n; i += V::size()) (V::loadu(a + i) * V::loadu(scale + i)).store(a + i);
  for (; i < n; ++i) a[i] *= scale[i];
  if (out) std::copy(a, a + n, out);
}

// Copy rows [r0, r0 + count) of a strided view into a flat [count, K] compute-dtype block.
template <typename scalar_t, typename acc_t>
inline void load_block(const scalar_t* p, const RowLayout& layout, int64_t r0, int64_t count, int64_t K, acc_t* out) {
  if (dense_rows(layout, K)) {
    to_compute(p + layout.row_offset(r0), out, count * K);
  } else {
    for (int64_t j = 0; j < count; ++j) load_row(p + layout.row_offset(r0 + j), layout.s_k, K, out + j * K);
  }
}

template <typename scalar_t, typename acc_t>
inline void store_block(const acc_t* in, int64_t r0, int64_t count, int64_t K, scalar_t* p, const RowLayout& layout) {
  if (dense_rows(layout, K)) {
    from_compute(in, p + layout.row_offset(r0), count * K);
  } else {
    for (int64_t j = 0; j < count; ++j) store_row(in + j * K, K, p + layout.row_offset(r0 + j), layout.s_k);
  }
}

template <typename scalar_t, typename acc_t>
void forward_impl(const ForwardArgs& args, int64_t begin, int64_t end) {
  // Blocks no larger than this range: a tiny call allocates (and zeroes) tiny scratch.
  const int64_t K = args.classes, per_block = std::min(block_rows(K), end - begin);
  const auto* x = static_cast<const scalar_t*>(args.x);
  auto* y = static_cast<scalar_t*>(args.y);
  Scratch<acc_t> s(per_block, K);
  std::vector<int64_t> best(per_block);
  const scalar_t zero(0.0f), one(1.0f), nan_out(std::numeric_limits<float>::quiet_NaN());
  for (int64_t r0 = begin; r0 < end; r0 += per_block) {
    const int64_t count = std::min(per_block, end - r0);
    perturbed_block(args.seed, args.offset, x, args.x_layout, r0, count, K, s);
    if (args.mode != 0) {
      for (int64_t j = 0; j < count; ++j) {
        const acc_t m = s.row_max[j];
#if defined(__AVX2__)  // AVX-512 too: each build's own short_mask / short_first_index_of
        if constexpr (std::is_same_v<acc_t, float>) {
          if (K <= kShortRow) {
            best[j] = finite_max(m) ? short_first_index_of(s.a.data() + j * K, short_mask(K), m) : -1;
            continue;
          }
        }
#endif
        best[j] = finite_max(m) ? first_index_of(s.a.data() + j * K, K, m) : -1;
      }
    }
    if (args.mode == 2) {
      std::copy(best.begin(), best.begin() + count, args.index + r0);
      continue;
    }
    if (args.mode == 0 || args.mode == 3) {
      auto* soft = static_cast<scalar_t*>(args.mode == 0 ? args.y : args.soft);
      bool direct = false;
#if defined(__AVX2__) && !defined(__AVX512F__)
      // Dense float32 output: the soft rows go straight there, not through s.a and a copy, unless
      // the short-row stores' spill (16 - K elements) would reach past this thread's rows.
      if constexpr (std::is_same_v<scalar_t, float>) {
        direct = dense_rows(args.y_layout, K) && spill_stays_in_range(r0, count, end, K);
        if (direct) soft_block(s, r0, count, K, args.tau_rows, args.tau, soft + args.y_layout.row_offset(r0));
      }
#endif
      if (!direct) {
        soft_block(s, r0, count, K, args.tau_rows, args.tau);
        store_block(s.a.data(), r0, count, K, soft, args.y_layout);
      }
      if (args.mode == 0) continue;
    }
    for (int64_t j = 0; j < count; ++j) {  // the one-hot, in the output dtype: exact 0/1, NaN rows where invalid
      scalar_t* out = y + args.y_layout.row_offset(r0 + j);
      const int64_t s_k = args.y_layout.s_k;
      const scalar_t fill = best[j] >= 0 ? zero : nan_out;
      if (s_k == 1) {
        std::fill(out, out + K, fill);
      } else {
        for (int64_t k = 0; k < K; ++k) out[k * s_k] = fill;
      }
      if (best[j] >= 0) out[best[j] * s_k] = one;
    }
  }
}

// Elementwise over a flat block: out = f(a, b, c) on vectors, the same on the scalar tail.
template <typename acc_t, typename Op>
inline void map3(acc_t* out, const acc_t* a, const acc_t* b, const acc_t* c, int64_t n, const Op& op) {
  using V = Vec<acc_t>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) op(V::loadu(a + i), V::loadu(b + i), V::loadu(c + i)).store(out + i);
  for (; i < n; ++i) out[i] = op(a[i], b[i], c[i]);
}

// Each row's value repeated over its K classes, so that row-dependent terms run as flat vector passes.
template <typename acc_t>
inline void expand_rows(const acc_t* per_row, int64_t count, int64_t K, acc_t* out) {
  for (int64_t j = 0; j < count; ++j) std::fill(out + j * K, out + (j + 1) * K, per_row[j]);
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// The soft backward without the temperature gradient on count rows of y and dy:
// dx = (dy - sum(dy y)) y / tau. Rows of K <= 16: two vectors per row (dot, then dx, no per-row
// fills); each row's 16-lane loads and stores reach 16 - K elements past it, so dx must not alias
// y or dy (a row's spill lands on the next row's dx before that row is written, in row order).
// Longer rows: dot, then dx, one pass each per row; dx may be dy.
inline void soft_dx(const float* y, const float* dy, float* dx, int64_t count, int64_t K, const float* tau_inv) {
  if (K <= kShortRow) {
    const ShortMask mask = short_mask(K);
    for (int64_t j = 0; j < count; ++j) {
      const float* d = dy + j * K;
      const float* v = y + j * K;
      const __m256 d_lo = _mm256_loadu_ps(d), d_hi = _mm256_loadu_ps(d + 8);
      const __m256 v_lo = _mm256_loadu_ps(v), v_hi = _mm256_loadu_ps(v + 8);
      const __m256 dot_j = _mm256_set1_ps(hsum(_mm256_add_ps(_mm256_and_ps(_mm256_mul_ps(d_lo, v_lo), mask.lo),
                                                             _mm256_and_ps(_mm256_mul_ps(d_hi, v_hi), mask.hi))));
      const __m256 it = _mm256_set1_ps(tau_inv[j]);
      _mm256_storeu_ps(dx + j * K, _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(d_lo, dot_j), it), v_lo));
      _mm256_storeu_ps(dx + j * K + 8, _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(d_hi, dot_j), it), v_hi));
    }
    return;
  }
  for (int64_t j = 0; j < count; ++j) {
    const float* d = dy + j * K;
    const float* v = y + j * K;
    float* out = dx + j * K;
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(d + k), _mm256_loadu_ps(v + k), acc);
    float dot_j = hsum(acc);
    for (; k < K; ++k) dot_j += d[k] * v[k];
    const __m256 dot_v = _mm256_set1_ps(dot_j), it = _mm256_set1_ps(tau_inv[j]);
    for (k = 0; k + 8 <= K; k += 8)
      _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(d + k), dot_v), it), _mm256_loadu_ps(v + k)));
    for (; k < K; ++k) out[k] = (d[k] - dot_j) * tau_inv[j] * v[k];
  }
}
#endif

// The backward's per-block scratch beyond 1 / tau: the forward's (for a regenerated y), dy, dx and
// the flat passes' terms ([block, K] plus kRowSlack), and per-row sums.
template <typename acc_t>
struct BackwardScratch {
  Scratch<acc_t> s;
  std::vector<acc_t> dy, prod, row_value, inv_tau, t;
  std::vector<acc_t> dot, sum_a, sum_b;
  BackwardScratch(int64_t per_block, int64_t K, bool tau_grad)
      : s(per_block, K), dy(s.a.size()), prod(s.a.size()), row_value(s.a.size()), inv_tau(s.a.size()),
        t(tau_grad ? s.a.size() : 0), dot(per_block), sum_a(per_block), sum_b(per_block) {}
};

template <typename scalar_t, typename acc_t>
void backward_impl(const BackwardArgs& args, int64_t begin, int64_t end) {
  // Blocks no larger than this range: a tiny call allocates (and zeroes) tiny scratch.
  const int64_t K = args.classes, per_block = std::min(block_rows(K), end - begin);
  const auto* src = static_cast<const scalar_t*>(args.src);
  const auto* grad_y = static_cast<const scalar_t*>(args.grad_y);
  auto* grad_x = static_cast<scalar_t*>(args.grad_x);
  auto* tau_grad = static_cast<acc_t*>(args.tau_grad_rows);
  std::vector<acc_t> tau_inv(per_block);
  // Made (and zeroed) at the first block that needs it: the AVX2 float32 soft backward needs none.
  std::optional<BackwardScratch<acc_t>> scratch;
  const InverseTau<acc_t> inverse_tau(args.tau_rows, args.tau);
  for (int64_t r0 = begin; r0 < end; r0 += per_block) {
    const int64_t count = std::min(per_block, end - r0), n = count * K;
    for (int64_t j = 0; j < count; ++j) tau_inv[j] = inverse_tau(r0 + j);
#if defined(__AVX2__) && !defined(__AVX512F__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      // Dense float32 rows and a saved y: dx from the tensors themselves, without copying y and
      // dy into scratch and dx out of it (a third of this backward at 3000 x 10). Short rows
      // read and write 16 lanes (kShortRow) from each row's start: the last rows of this thread's
      // range, whose lanes would reach past it (into another thread's rows, or past the tensor),
      // go through padded copies.
      if (!args.regenerate && !tau_grad && dense_rows(args.src_layout, K) && dense_rows(args.g_layout, K) &&
          dense_rows(args.gx_layout, K)) {
        const float* y_rows = src + args.src_layout.row_offset(r0);
        const float* dy_rows = grad_y + args.g_layout.row_offset(r0);
        float* dx_rows = grad_x + args.gx_layout.row_offset(r0);
        int64_t direct = count;
        while (direct > 0 && !spill_stays_in_range(r0, direct, end, K)) --direct;
        soft_dx(y_rows, dy_rows, dx_rows, direct, K, tau_inv.data());
        if (direct < count) {  // at most 15 elements (kShortRow - 1): those rows reach past by < 16 - K lanes each
          const int64_t first = direct * K, n_tail = n - first;
          float y_pad[2 * kShortRow] = {}, dy_pad[2 * kShortRow] = {}, dx_pad[2 * kShortRow];
          std::copy(y_rows + first, y_rows + n, y_pad);
          std::copy(dy_rows + first, dy_rows + n, dy_pad);
          soft_dx(y_pad, dy_pad, dx_pad, count - direct, K, tau_inv.data() + direct);
          std::copy(dx_pad, dx_pad + n_tail, dx_rows + first);
        }
        continue;
      }
    }
#endif
    if (!scratch) scratch.emplace(per_block, K, tau_grad != nullptr);
    auto& [s, dy, prod, row_value, inv_tau, t, dot, sum_a, sum_b] = *scratch;
    acc_t* y = s.a.data();
    if (args.regenerate) {
      perturbed_block(args.seed, args.offset, src, args.src_layout, r0, count, K, s);
      if (tau_grad) {  // t = (x + g - M) / tau before soft_block overwrites x + g with y
        for (int64_t j = 0; j < count; ++j) sum_a[j] = finite_max(s.row_max[j]) ? s.row_max[j] : acc_t(0);
        expand_rows(sum_a.data(), count, K, row_value.data());
        expand_rows(tau_inv.data(), count, K, inv_tau.data());
        map3(t.data(), y, row_value.data(), inv_tau.data(), n, [](auto a, auto m, auto it) { return (a - m) * it; });
      }
      soft_block(s, r0, count, K, args.tau_rows, args.tau);
    } else {
      load_block(src, args.src_layout, r0, count, K, y);
      if (tau_grad) {  // log y stands in for t: they differ by log S per row, which sum(s) = 0 cancels
        for (int64_t i = 0; i < n; ++i) t[i] = y[i] > 0 ? std::log(y[i]) : acc_t(0);
      }
    }
    load_block(grad_y, args.g_layout, r0, count, K, dy.data());
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (K <= kShortRow && !tau_grad) {  // one masked vector per row: dot, then dx, no per-row fills
        const __mmask16 mask = short_mask(K);
        for (int64_t j = 0; j < count; ++j) {
          const __m512 d = _mm512_maskz_loadu_ps(mask, dy.data() + j * K);
          const __m512 v = _mm512_maskz_loadu_ps(mask, y + j * K);
          const __m512 dot_j = _mm512_set1_ps(_mm512_mask_reduce_add_ps(mask, _mm512_mul_ps(d, v)));
          const __m512 dx = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(d, dot_j), _mm512_set1_ps(tau_inv[j])), v);
          // Into another buffer: a masked store near the next row's masked loads would stall them.
          _mm512_mask_storeu_ps(prod.data() + j * K, mask, dx);
        }
        store_block(prod.data(), r0, count, K, grad_x, args.gx_layout);
        continue;
      }
    }
#elif defined(__AVX2__)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (!tau_grad) {
        // Short rows write dx to another buffer (their stores spill into the next row, see soft_dx).
        float* dx = K <= kShortRow ? prod.data() : dy.data();
        soft_dx(y, dy.data(), dx, count, K, tau_inv.data());
        store_block(dx, r0, count, K, grad_x, args.gx_layout);
        continue;
      }
    }
#endif
    map3(prod.data(), dy.data(), y, y, n, [](auto d, auto v, auto) { return d * v; });
    for (int64_t j = 0; j < count; ++j) dot[j] = row_sum(prod.data() + j * K, K);
    expand_rows(dot.data(), count, K, row_value.data());
    if (!(args.regenerate && tau_grad)) expand_rows(tau_inv.data(), count, K, inv_tau.data());
    // dx = y (dy - dot) / tau, written over dy (no longer needed after the tau-gradient sums below)
    if (tau_grad) {
      // Zero-probability classes add nothing (not 0 * -inf): t is zeroed where y == 0.
      for (int64_t i = 0; i < n; ++i) t[i] = y[i] > 0 ? t[i] : acc_t(0);
      map3(prod.data(), prod.data(), t.data(), t.data(), n, [](auto p, auto tk, auto) { return p * tk; });
      map3(t.data(), t.data(), y, y, n, [](auto tk, auto v, auto) { return tk * v; });
      for (int64_t j = 0; j < count; ++j) {
        sum_a[j] = row_sum(prod.data() + j * K, K);  // sum(dy y t)
        sum_b[j] = row_sum(t.data() + j * K, K);     // sum(y t)
        tau_grad[r0 + j] = -(sum_a[j] - dot[j] * sum_b[j]) * tau_inv[j];
      }
    }
    map3(dy.data(), dy.data(), row_value.data(), inv_tau.data(), n, [](auto d, auto dt, auto it) { return (d - dt) * it; });
    map3(dy.data(), dy.data(), y, y, n, [](auto g, auto v, auto) { return g * v; });
    store_block(dy.data(), r0, count, K, grad_x, args.gx_layout);
  }
}

}  // namespace

void forward_rows(const ForwardArgs& args, int64_t begin, int64_t end) {
  switch (args.dtype) {
    case Dtype::Float: return forward_impl<float, float>(args, begin, end);
    case Dtype::Double: return forward_impl<double, double>(args, begin, end);
    case Dtype::Half: return forward_impl<c10::Half, float>(args, begin, end);
    case Dtype::BFloat16: return forward_impl<c10::BFloat16, float>(args, begin, end);
  }
}

// The noise of raw Philox words, on the forward's own code path (a test hook, and the top-k kernel's noise).
void gumbel_noise(const uint32_t* words, float* out, int64_t n) { gumbel_from_words<float>(words, out, n); }
void gumbel_noise(const uint32_t* words, double* out, int64_t n) { gumbel_from_words<double>(words, out, n); }

void backward_rows(const BackwardArgs& args, int64_t begin, int64_t end) {
  switch (args.dtype) {
    case Dtype::Float: return backward_impl<float, float>(args, begin, end);
    case Dtype::Double: return backward_impl<double, double>(args, begin, end);
    case Dtype::Half: return backward_impl<c10::Half, float>(args, begin, end);
    case Dtype::BFloat16: return backward_impl<c10::BFloat16, float>(args, begin, end);
  }
}

}  // namespace KERNEL_ISA
}  // namespace cpu
}  // namespace fused_gumbel
