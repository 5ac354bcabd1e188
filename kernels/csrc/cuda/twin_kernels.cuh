// CUDA twin of kernels/gumbel_softmax.py: fused Gumbel-Softmax forward (soft / hard / index) and
// backward (soft / straight-through hard), one launch each way. No torch headers: this file and
// twin_launch.cuh compile to a cubin on their own (tests/test_cuda_twin_compile.py).
//
// Math (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017), per row of K classes, a = x + g:
//   soft:  y = 2^((a - M) c) / S, c = log2(e) / tau, M = max a, S the row sum;
//   hard:  y = one_hot(argmax a) (first maximal class); index: argmax a (int64, -1 if invalid);
//   backward: s = y (dy - sum(dy y)), dx = s / tau, dtau = -sum(s t) / tau, t = (a - M) / tau
//   (soft mode: t = log y, which differs by log S, cancelled by sum(s) = 0).
// Rows whose max is not finite or that hold a NaN are invalid: NaN outputs (index -1).
// Noise: RNG spec v2 (twin_rng.cuh); float32 math uses the fast twin (MUFU), float64 the exact.
//
// Three kernel shapes (twin_config.h chooses):
// - small_*:    K <= 16, one row per thread, K a template parameter (padding classes compile away);
// - resident_*: K <= 8192, TPR threads per row hold the row in registers (4 classes per Philox
//               call, CALLS calls each; width W of RESIDENT_WIDTHS); row reductions by warp shuffles
//               (TPR <= 32) or shared memory;
// - streamed_*: longer rows, one block per row in chunks. Every reduction except the chunk max is
//               kept per thread and reduced once per row: the soft forward writes each chunk scaled
//               by its block-wide chunk max (kept in shared memory) and rescales it in a second,
//               noise-free pass over its own writes; the hard backward regenerates the noise once,
//               parks unnormalised y in grad_x and finishes from L2. Needs no row statistics from
//               the forward (the Triton path keeps the row max for this).
// VEC (a template flag): the class dim is contiguous, K % 4 == 0 and rows start 4-aligned, so a
// Philox call's 4 classes are one vector load/store.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include "twin_config.h"
#include "twin_rng.cuh"

namespace fused_gumbel {
namespace twin {

constexpr int MODE_SOFT = 0, MODE_HARD = 1, MODE_INDEX = 2;  // kernels.gumbel_softmax.MODE_*

template <typename T> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

struct View {  // (outer, class, inner) strides of a [outer, K, inner] view, in elements
  int64_t s_outer, s_k, s_inner;
};

// Row r = o * inner + i split into (o, i) by a multiply-high (Granlund & Montgomery 1994, as
// PyTorch's IntDivider): o = (umulhi(r, magic) + r) >> shift, exact for r < 2**31 (the launch
// layer refuses more rows). inner == 1 gives magic 1, shift 0: o = r.
struct RowDivider {
  uint32_t divisor, magic, shift;
};

inline RowDivider make_row_divider(uint32_t divisor) {
  uint32_t shift = 0;
  while (shift < 32 && (uint64_t(1) << shift) < divisor) ++shift;
  const uint64_t magic = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - divisor)) / divisor + 1;
  return RowDivider{divisor, static_cast<uint32_t>(magic), shift};
}

template <typename C>
struct Tau {  // a float, a 0-dim tensor (s_row = 0) or a [rows] tensor (s_row = its stride)
  const C* ptr;
  C value;
  int64_t s_row;
  __device__ __forceinline__ C of(int64_t row) const { return ptr ? ptr[row * s_row] : value; }
};

template <typename C>
struct FwdParams {
  const void* x;
  void* y;         // soft / hard
  int64_t* index;  // index mode
  Tau<C> tau;
  int64_t rows, K, Q, inner, chunks;
  RowDivider div;  // by inner (the launch layer fills it)
  View xv, yv;
  uint64_t key, offset;  // key = seed ^ DOMAIN_TAG
  RoundKeys keys;        // of `key` (the launch layer fills them): the short-row kernels read them as operands
};

template <typename C>
struct BwdParams {
  const void* grad_y;
  const void* src;  // the soft output y, or the logits (REGEN)
  void* grad_x;
  C* grad_tau;      // [rows] partial temperature gradients, or null
  Tau<C> tau;
  int64_t rows, K, Q, inner, chunks;
  RowDivider div;  // by inner (the launch layer fills it)
  View gv, sv, xv;
  uint64_t key, offset;
  RoundKeys keys;
};

// ---- scalar helpers ---------------------------------------------------------------------------
template <typename T, typename C> __device__ __forceinline__ C load_c(const T* p) { return static_cast<C>(*p); }
template <> __device__ __forceinline__ float load_c<__nv_bfloat16, float>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <> __device__ __forceinline__ float load_c<__half, float>(const __half* p) { return __half2float(*p); }

template <typename T, typename C> __device__ __forceinline__ T to_store(C v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_store<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half to_store<__half, float>(float v) { return __float2half_rn(v); }

template <typename T> struct alignas(4 * sizeof(T)) Pack4 { T v[4]; };

// Four classes 4q .. 4q + 3 of a row at p (stride s_k); -inf / `fill` past K.
template <typename T, typename C, bool VEC>
__device__ __forceinline__ void load4(const T* p, int64_t s_k, int k0, int64_t K, bool ok, C fill, C out[4]) {
  if (VEC) {
    if (ok && k0 < static_cast<int>(K)) {  // K < 2**31: a 32-bit compare
      const Pack4<T> pk = *reinterpret_cast<const Pack4<T>*>(p + k0);
#pragma unroll
      for (int j = 0; j < 4; ++j) out[j] = load_c<T, C>(&pk.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) out[j] = fill;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = (ok && k0 + j < static_cast<int>(K)) ? load_c<T, C>(p + (k0 + j) * s_k) : fill;
  }
}

template <typename T, typename C, bool VEC>
__device__ __forceinline__ void store4(T* p, int64_t s_k, int k0, int64_t K, bool ok, const C v[4]) {
  if (VEC) {
    if (ok && k0 < static_cast<int>(K)) {  // K < 2**31: a 32-bit compare
      Pack4<T> pk;
#pragma unroll
      for (int j = 0; j < 4; ++j) pk.v[j] = to_store<T, C>(v[j]);
      *reinterpret_cast<Pack4<T>*>(p + k0) = pk;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (ok && k0 + j < static_cast<int>(K)) p[(k0 + j) * s_k] = to_store<T, C>(v[j]);
  }
}

__device__ __forceinline__ float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ double max_nan(double a, double b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ float ex2c(float x) { return fast_ex2(x); }
__device__ __forceinline__ double ex2c(double x) { return ::exp2(x); }
__device__ __forceinline__ float lg2c(float x) { return fast_lg2(x); }
__device__ __forceinline__ double lg2c(double x) { return ::log2(x); }
template <typename C> __device__ __forceinline__ C log2e() { return C(1.4426950408889634); }
template <typename C> __device__ __forceinline__ C ln2() { return C(0.6931471805599453); }
template <typename C> __device__ __forceinline__ C inf() { return C(CUDART_INF); }
template <typename C> __device__ __forceinline__ C nan() { return C(CUDART_NAN); }
template <typename C> __device__ __forceinline__ bool finite(C m) { return fabs(m) < inf<C>(); }  // NaN: false

__device__ __forceinline__ int64_t row_base(int64_t r, const RowDivider& d, const View& v) {
  const uint32_t r32 = static_cast<uint32_t>(r);
  const uint32_t o = (__umulhi(r32, d.magic) + r32) >> d.shift;
  return static_cast<int64_t>(o) * v.s_outer + static_cast<int64_t>(r32 - o * d.divisor) * v.s_inner;
}

// 1 / x: div.full.f32 in float32 (2 ulp, no slow path, as Triton's division), IEEE in float64.
__device__ __forceinline__ float recip(float x) {
  float y;
  asm("div.full.f32 %0, %1, %2;" : "=f"(y) : "f"(1.0f), "f"(x));
  return y;
}
__device__ __forceinline__ double recip(double x) { return 1.0 / x; }

__device__ __forceinline__ Words call_words(const RoundKeys& keys, uint64_t offset, int64_t row, int64_t Q, int64_t q) {
  return philox_words(keys, offset, static_cast<uint64_t>(row * Q + q));
}

template <typename C>
__device__ __forceinline__ void noise4(const Words& w, C g[4]) {
  g[0] = Noise<C>::of(w.w0);
  g[1] = Noise<C>::of(w.w1);
  g[2] = Noise<C>::of(w.w2);
  g[3] = Noise<C>::of(w.w3);
}

// ---- reductions over the TPR threads of a row ---------------------------------------------------
struct MaxNanOp { template <typename V> __device__ __forceinline__ V operator()(V a, V b) const { return max_nan(a, b); } };
struct SumOp { template <typename V> __device__ __forceinline__ V operator()(V a, V b) const { return a + b; } };
struct MinOp { __device__ __forceinline__ int operator()(int a, int b) const { return a < b ? a : b; } };

// TPR <= 32: shuffles within the row's group; else the block is one row: warp shuffles, then
// shared memory (`scratch`, 32 entries), with a barrier after so the scratch can be reused.
template <int TPR, typename V, typename Op>
__device__ __forceinline__ V row_reduce(V v, Op op, V* scratch) {
  constexpr int WIDTH = TPR < 32 ? TPR : 32;
#pragma unroll
  for (int off = WIDTH / 2; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  if constexpr (TPR > 32) {
    // The block may hold several rows (TPR = 64 in a 128-thread block): each reads its own warps.
    const int first = (threadIdx.x / TPR) * (TPR / 32);
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[first];
#pragma unroll
    for (int w = 1; w < TPR / 32; ++w) v = op(v, scratch[first + w]);
    __syncthreads();
  }
  return v;
}

// Max over a thread's classes; NaN sticks (so the row reads as invalid).
template <typename C, int CALLS>
__device__ __forceinline__ C thread_max(const C (&a)[CALLS][4]) {
  C m = a[0][0];
#pragma unroll
  for (int i = 0; i < CALLS; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) m = max_nan(m, a[i][j]);
  return m;
}

// First index among `a` (classes k0[i] + j) equal to m: a select chain from the last class down.
template <typename C, int CALLS>
__device__ __forceinline__ int first_max(const C (&a)[CALLS][4], const int (&k0)[CALLS], C m) {
  int best = 0x7fffffff;
#pragma unroll
  for (int i = CALLS - 1; i >= 0; --i)
#pragma unroll
    for (int j = 3; j >= 0; --j) best = a[i][j] == m ? k0[i] + j : best;
  return best;
}

// t = log2(e), 0 where e == 0 (zero-probability classes add nothing, not 0 * -inf). For the
// regenerated e = 2^((a - M) c) this is (a - M) / tau in log2 units; for a saved y it is log2 y,
// which differs by the row's log2 S, cancelled by sum(s) = 0.
template <typename C>
__device__ __forceinline__ C log2_or_zero(C e) {
  return e > C(0) ? lg2c(e > C(0) ? e : C(1)) : C(0);
}

// dtau = -sum(s t) / tau, s = y (dy - dot), t in nats; sums over e with y = e * scale, t in log2 units.
template <typename C>
__device__ __forceinline__ C tau_gradient(C dy_e_t, C e_t, C dot, C scale, C inv_tau) {
  return -(dy_e_t - dot * e_t) * (scale * ln2<C>() * inv_tau);
}

// ================================ short rows: one row per thread ================================
// a = x + g of a row's K classes (x at `x` with stride s_k); returns the row max (NaN sticks).
template <typename T, typename C, int K>
__device__ __forceinline__ C small_perturbed(const T* x, int64_t s_k, int64_t r, const RoundKeys& keys, uint64_t offset,
                                             C (&a)[K]) {
  constexpr int Q = (K + 3) / 4;
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    const Words w = call_words(keys, offset, r, Q, q);
    const uint32_t words[4] = {w.w0, w.w1, w.w2, w.w3};
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (4 * q + j < K) a[4 * q + j] = load_c<T, C>(x + (4 * q + j) * s_k) + Noise<C>::of(words[j]);
  }
  C m = a[0];
#pragma unroll
  for (int k = 1; k < K; ++k) m = max_nan(m, a[k]);
  return m;
}

// UNIT: the class stride of every view is 1 (contiguous classes, inner == 1), so addresses are
// constant offsets from the row start.
template <typename T, int K, int MODE, bool UNIT>
__device__ __forceinline__ void small_fwd_row(const FwdParams<typename ComputeOf<T>::type>& p, int64_t r,
                                              const RoundKeys& keys) {
  using C = typename ComputeOf<T>::type;
  C a[K];
  const C m = small_perturbed<T, C, K>(static_cast<const T*>(p.x) + row_base(r, p.div, p.xv), (UNIT ? 1 : p.xv.s_k), r,
                                       keys, p.offset, a);
  const bool valid = finite(m);
  if (MODE == MODE_SOFT) {
    const C c = log2e<C>() * recip(p.tau.of(r));
    const C shift = valid ? m * c : C(0);
    C sum = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      a[k] = ex2c(a[k] * c - shift);
      sum += a[k];
    }
    const C inv = valid ? recip(sum) : nan<C>();
    T* y = static_cast<T*>(p.y) + row_base(r, p.div, p.yv);
#pragma unroll
    for (int k = 0; k < K; ++k) y[k * (UNIT ? 1 : p.yv.s_k)] = to_store<T, C>(a[k] * inv);
  } else {
    int best = 0;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) best = a[k] == m ? k : best;
    if (MODE == MODE_INDEX) {
      p.index[r] = valid ? best : -1;
    } else {
      const C one = valid ? C(1) : nan<C>(), zero = valid ? C(0) : nan<C>();
      T* y = static_cast<T*>(p.y) + row_base(r, p.div, p.yv);
#pragma unroll
      for (int k = 0; k < K; ++k) y[k * (UNIT ? 1 : p.yv.s_k)] = to_store<T, C>(k == best ? one : zero);
    }
  }
}

// Each thread takes SMALL_ROWS_PER_THREAD rows (r, r + SMALL_THREADS, ...): its fixed costs
// (the key schedule, parameters, the row divider) are spread over that many rows.
template <typename T, int K, int MODE, bool UNIT>
__global__ void __launch_bounds__(SMALL_THREADS) small_fwd_kernel(FwdParams<typename ComputeOf<T>::type> p) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * (SMALL_THREADS * SMALL_ROWS_PER_THREAD) + threadIdx.x;
  const RoundKeys& keys = p.keys;
#pragma unroll
  for (int h = 0; h < SMALL_ROWS_PER_THREAD; ++h)
    if (first + h * SMALL_THREADS < p.rows) small_fwd_row<T, K, MODE, UNIT>(p, first + h * SMALL_THREADS, keys);
}

template <typename T, int K, bool REGEN, bool UNIT, bool TAU>
__device__ __forceinline__ void small_bwd_row(const BwdParams<typename ComputeOf<T>::type>& p, int64_t r,
                                              const RoundKeys& keys) {
  using C = typename ComputeOf<T>::type;
  const T* src = static_cast<const T*>(p.src) + row_base(r, p.div, p.sv);
  const T* dyp = static_cast<const T*>(p.grad_y) + row_base(r, p.div, p.gv);
  const C inv_tau = recip(p.tau.of(r));
  // e: the regenerated unnormalised 2^((a - M) c) (y = e * scale), or the saved y (scale 1).
  C e[K], scale = C(1);
  if (REGEN) {
    const C m = small_perturbed<T, C, K>(src, (UNIT ? 1 : p.sv.s_k), r, keys, p.offset, e);
    const bool valid = finite(m);
    const C c = log2e<C>() * inv_tau;
    const C shift = valid ? m * c : C(0);
    C sum = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      e[k] = ex2c(e[k] * c - shift);
      sum += e[k];
    }
    scale = valid ? recip(sum) : nan<C>();
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) e[k] = load_c<T, C>(src + k * (UNIT ? 1 : p.sv.s_k));
  }
  C dy[K], dot = 0;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    dy[k] = load_c<T, C>(dyp + k * (UNIT ? 1 : p.gv.s_k));
    dot += dy[k] * e[k];
  }
  dot *= scale;
  const C out_scale = scale * inv_tau;
  T* gx = static_cast<T*>(p.grad_x) + row_base(r, p.div, p.xv);
#pragma unroll
  for (int k = 0; k < K; ++k) gx[k * (UNIT ? 1 : p.xv.s_k)] = to_store<T, C>(e[k] * (dy[k] - dot) * out_scale);
  if (TAU) {
    C dy_e_t = 0, e_t = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const C t = log2_or_zero(e[k]);
      dy_e_t += dy[k] * e[k] * t;
      e_t += e[k] * t;
    }
    p.grad_tau[r] = tau_gradient(dy_e_t, e_t, dot, scale, inv_tau);
  }
}

// TAU: write the per-row temperature gradient (a template flag, so calls without it carry no code for it).
template <typename T, int K, bool REGEN, bool UNIT, bool TAU>
__global__ void __launch_bounds__(SMALL_THREADS) small_bwd_kernel(BwdParams<typename ComputeOf<T>::type> p) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * (SMALL_THREADS * SMALL_ROWS_PER_THREAD) + threadIdx.x;
  const RoundKeys& keys = p.keys;
#pragma unroll
  for (int h = 0; h < SMALL_ROWS_PER_THREAD; ++h)
    if (first + h * SMALL_THREADS < p.rows) small_bwd_row<T, K, REGEN, UNIT, TAU>(p, first + h * SMALL_THREADS, keys);
}

// ================================ resident rows: TPR threads per row =============================
// Thread `lane` of a row holds Philox calls q = lane + i * TPR (i < CALLS): classes 4q .. 4q + 3.
template <int W>  // RESIDENT_WIDTHS[W]
struct RowThreads {
  static constexpr int TPR = RESIDENT_WIDTHS[W].threads;
  static constexpr int BLOCK = block_threads(TPR);
  static constexpr int CALLS = RESIDENT_WIDTHS[W].calls;
  static constexpr int ROWS_PER_BLOCK = BLOCK / TPR;
  __device__ __forceinline__ static int64_t row() {
    return static_cast<int64_t>(blockIdx.x) * ROWS_PER_BLOCK + threadIdx.x / TPR;
  }
  __device__ __forceinline__ static int lane() { return threadIdx.x % TPR; }
};

// a <- 2^((a - M) c) in place (M the row max, a shift of 0 for invalid rows); returns the row sum.
template <int TPR, typename C, int CALLS>
__device__ __forceinline__ C exp_row(C (&a)[CALLS][4], C c, C m, bool valid, C* scratch) {
  const C shift = valid ? m * c : C(0);
  C sum = 0;
#pragma unroll
  for (int i = 0; i < CALLS; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      a[i][j] = ex2c(a[i][j] * c - shift);
      sum += a[i][j];
    }
  return row_reduce<TPR>(sum, SumOp(), scratch);
}

template <typename T, typename C, int TPR, int CALLS, bool VEC>
__device__ __forceinline__ void perturbed_row(const T* x, int64_t s_k, int64_t r, bool ok, int64_t K, int64_t Q,
                                              int lane, int64_t first_call, uint64_t key, uint64_t offset,
                                              C (&a)[CALLS][4], int (&k0)[CALLS]) {
  const RoundKeys keys = round_keys(key);
  const int q0 = static_cast<int>(first_call) + lane;          // calls < 2**29 per row
  const uint64_t counter0 = static_cast<uint64_t>(r * Q + q0);  // one 64-bit product per thread
#pragma unroll
  for (int i = 0; i < CALLS; ++i) {
    k0[i] = 4 * (q0 + i * TPR);
    load4<T, C, VEC>(x, s_k, k0[i], K, ok, -inf<C>(), a[i]);
    // Padding lanes draw noise too (-inf + g stays -inf): no branch around the Philox rounds.
    C g[4];
    noise4(philox_words(keys, offset, counter0 + static_cast<uint64_t>(i * TPR)), g);
#pragma unroll
    for (int j = 0; j < 4; ++j) a[i][j] += g[j];
  }
}

template <typename T, int W, int MODE, bool VEC>
__global__ void __launch_bounds__(block_threads(RESIDENT_WIDTHS[W].threads))
    resident_fwd_kernel(FwdParams<typename ComputeOf<T>::type> p) {
  using C = typename ComputeOf<T>::type;
  using R = RowThreads<W>;
  constexpr int CALLS = R::CALLS, TPR = R::TPR;
  __shared__ C scratch[32];
  __shared__ int scratch_i[32];
  const int64_t r = R::row();
  const bool ok = r < p.rows;  // no early exit: the row's threads reduce together
  const int lane = R::lane();
  C a[CALLS][4];
  int k0[CALLS];
  perturbed_row<T, C, TPR, CALLS, VEC>(static_cast<const T*>(p.x) + (ok ? row_base(r, p.div, p.xv) : 0), p.xv.s_k,
                                       r, ok, p.K, p.Q, lane, 0, p.key, p.offset, a, k0);
  const C m = row_reduce<TPR>(thread_max(a), MaxNanOp(), scratch);
  const bool valid = finite(m);
  if (MODE == MODE_SOFT) {
    const C sum = exp_row<TPR>(a, log2e<C>() * recip(ok ? p.tau.of(r) : C(1)), m, valid, scratch);
    const C inv = valid ? recip(sum) : nan<C>();
    T* y = static_cast<T*>(p.y) + (ok ? row_base(r, p.div, p.yv) : 0);
#pragma unroll
    for (int i = 0; i < CALLS; ++i) {
      C v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = a[i][j] * inv;
      store4<T, C, VEC>(y, p.yv.s_k, k0[i], p.K, ok, v);
    }
  } else {
    const int best = row_reduce<TPR>(first_max<C, CALLS>(a, k0, m), MinOp(), scratch_i);
    if (MODE == MODE_INDEX) {
      if (ok && lane == 0) p.index[r] = valid ? best : -1;
    } else {
      const C one = valid ? C(1) : nan<C>(), zero = valid ? C(0) : nan<C>();
      T* y = static_cast<T*>(p.y) + (ok ? row_base(r, p.div, p.yv) : 0);
#pragma unroll
      for (int i = 0; i < CALLS; ++i) {
        C v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = k0[i] + j == best ? one : zero;
        store4<T, C, VEC>(y, p.yv.s_k, k0[i], p.K, ok, v);
      }
    }
  }
}

template <typename T, int W, bool REGEN, bool VEC, bool TAU>
__global__ void __launch_bounds__(block_threads(RESIDENT_WIDTHS[W].threads))
    resident_bwd_kernel(BwdParams<typename ComputeOf<T>::type> p) {
  using C = typename ComputeOf<T>::type;
  using R = RowThreads<W>;
  constexpr int CALLS = R::CALLS, TPR = R::TPR;
  __shared__ C scratch[32];
  const int64_t r = R::row();
  const bool ok = r < p.rows;
  const int lane = R::lane();
  const T* src = static_cast<const T*>(p.src) + (ok ? row_base(r, p.div, p.sv) : 0);
  const C inv_tau = recip(ok ? p.tau.of(r) : C(1));
  // e: the regenerated unnormalised 2^((a - M) c) (y = e * scale), or the saved y (scale 1).
  C e[CALLS][4], scale = C(1);
  int k0[CALLS];
  if (REGEN) {
    perturbed_row<T, C, TPR, CALLS, VEC>(src, p.sv.s_k, r, ok, p.K, p.Q, lane, 0, p.key, p.offset, e, k0);
    const C m = row_reduce<TPR>(thread_max(e), MaxNanOp(), scratch);
    const bool valid = finite(m);
    const C sum = exp_row<TPR>(e, log2e<C>() * inv_tau, m, valid, scratch);
    scale = valid ? recip(sum) : nan<C>();
  } else {
#pragma unroll
    for (int i = 0; i < CALLS; ++i) {
      const int64_t q = lane + static_cast<int64_t>(i) * TPR;
      k0[i] = static_cast<int>(4 * q);
      load4<T, C, VEC>(src, p.sv.s_k, k0[i], p.K, ok, C(0), e[i]);
    }
  }
  const T* dyp = static_cast<const T*>(p.grad_y) + (ok ? row_base(r, p.div, p.gv) : 0);
  C dy[CALLS][4], dot = 0;
#pragma unroll
  for (int i = 0; i < CALLS; ++i) {
    load4<T, C, VEC>(dyp, p.gv.s_k, k0[i], p.K, ok, C(0), dy[i]);
#pragma unroll
    for (int j = 0; j < 4; ++j) dot += dy[i][j] * e[i][j];
  }
  dot = row_reduce<TPR>(dot, SumOp(), scratch) * scale;
  const C out_scale = scale * inv_tau;
  T* gx = static_cast<T*>(p.grad_x) + (ok ? row_base(r, p.div, p.xv) : 0);
#pragma unroll
  for (int i = 0; i < CALLS; ++i) {
    C v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = e[i][j] * (dy[i][j] - dot) * out_scale;
    store4<T, C, VEC>(gx, p.xv.s_k, k0[i], p.K, ok, v);
  }
  if (TAU) {
    C dy_e_t = 0, e_t = 0;
#pragma unroll
    for (int i = 0; i < CALLS; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const C t = log2_or_zero(e[i][j]);
        dy_e_t += dy[i][j] * e[i][j] * t;
        e_t += e[i][j] * t;
      }
    dy_e_t = row_reduce<TPR>(dy_e_t, SumOp(), scratch);
    e_t = row_reduce<TPR>(e_t, SumOp(), scratch);
    if (ok && lane == 0) p.grad_tau[r] = tau_gradient(dy_e_t, e_t, dot, scale, inv_tau);
  }
}

// ================================ streamed rows: one block per row ===============================
template <typename T, int MODE, bool VEC>
__global__ void __launch_bounds__(STREAM_THREADS) streamed_fwd_kernel(FwdParams<typename ComputeOf<T>::type> p) {
  using C = typename ComputeOf<T>::type;
  constexpr int CALLS = STREAM_CALLS, TPR = STREAM_THREADS;
  extern __shared__ unsigned char shared_raw[];
  C* chunk_max = reinterpret_cast<C*>(shared_raw);  // soft: [chunks]
  __shared__ C scratch[32];
  __shared__ int scratch_i[32];
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x;
  const T* x = static_cast<const T*>(p.x) + row_base(r, p.div, p.xv);
  T* y = MODE == MODE_INDEX ? nullptr : static_cast<T*>(p.y) + row_base(r, p.div, p.yv);
  const C c = MODE == MODE_SOFT ? log2e<C>() * recip(p.tau.of(r)) : C(1);
  // Soft: the running row max (block-uniform) and this thread's share of the sum at that max.
  // Hard/index: this thread's running max (NaN sticks) and its first maximal class.
  C m = -inf<C>(), sum = 0;
  int best = 0x7fffffff;
  for (int64_t chunk = 0; chunk < p.chunks; ++chunk) {
    C a[CALLS][4];
    int k0[CALLS];
    perturbed_row<T, C, TPR, CALLS, VEC>(x, p.xv.s_k, r, true, p.K, p.Q, lane, chunk * (CALLS * TPR), p.key,
                                         p.offset, a, k0);
    C cm = thread_max(a);
    if (MODE == MODE_SOFT) {
      cm = row_reduce<TPR>(cm, MaxNanOp(), scratch);
      const C shift = finite(cm) ? cm * c : C(0);
      C part = 0;
#pragma unroll
      for (int i = 0; i < CALLS; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          a[i][j] = ex2c(a[i][j] * c - shift);
          part += a[i][j];
        }
        store4<T, C, VEC>(y, p.yv.s_k, k0[i], p.K, true, a[i]);
      }
      if (lane == 0) chunk_max[chunk] = cm;
      // Online merge (Milakov & Gimelshein 2018): rescale both sums to the new running max.
      const C new_m = max_nan(m, cm);
      const C ref = finite(new_m) ? new_m : C(0);
      sum = (sum == C(0) ? C(0) : sum * ex2c((m - ref) * c)) + (part == C(0) ? C(0) : part * ex2c((cm - ref) * c));
      m = new_m;
    } else {
      // Strict '>' keeps this thread's earlier class on ties; NaN replaces and sticks.
      const int cb = first_max<C, CALLS>(a, k0, cm);
      if (cm > m || (cm != cm && m == m)) {
        m = cm;
        best = cb;
      }
      if (MODE == MODE_HARD) {
#pragma unroll
        for (int i = 0; i < CALLS; ++i) {
          const C z[4] = {0, 0, 0, 0};
          store4<T, C, VEC>(y, p.yv.s_k, k0[i], p.K, true, z);
        }
      }
    }
  }
  if (MODE == MODE_SOFT) {
    sum = row_reduce<TPR>(sum, SumOp(), scratch);
    const bool valid = finite(m);
    const C inv = valid ? recip(sum) : nan<C>();
    __syncthreads();  // chunk_max written by thread 0
    for (int64_t chunk = 0; chunk < p.chunks; ++chunk) {
      const C cm = chunk_max[chunk];
      // inv is NaN for invalid rows, which must come out NaN even where a chunk is all -inf.
      const C factor = cm == -inf<C>() ? C(0) * inv : ex2c((cm - m) * c) * inv;
#pragma unroll
      for (int i = 0; i < CALLS; ++i) {  // this thread's own writes of pass 1: no barrier needed
        const int k0 = static_cast<int>(4 * (chunk * (CALLS * TPR) + lane + static_cast<int64_t>(i) * TPR));
        C v[4];
        load4<T, C, VEC>(y, p.yv.s_k, k0, p.K, true, C(0), v);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] *= factor;
        store4<T, C, VEC>(y, p.yv.s_k, k0, p.K, true, v);
      }
    }
  } else {
    const C row_m = row_reduce<TPR>(m, MaxNanOp(), scratch);
    const bool valid = finite(row_m);
    const int row_best = row_reduce<TPR>(m == row_m ? best : 0x7fffffff, MinOp(), scratch_i);
    if (MODE == MODE_INDEX) {
      if (lane == 0) p.index[r] = valid ? row_best : -1;
    } else if (valid) {
      __syncthreads();  // after every thread's zeros
      if (lane == 0) y[static_cast<int64_t>(row_best) * p.yv.s_k] = to_store<T, C>(C(1));
    } else {
      for (int64_t k = lane; k < p.K; k += TPR) y[k * p.yv.s_k] = to_store<T, C>(nan<C>());
    }
  }
}

template <typename T, bool REGEN, bool VEC, bool TAU>
__global__ void __launch_bounds__(STREAM_THREADS) streamed_bwd_kernel(BwdParams<typename ComputeOf<T>::type> p) {
  using C = typename ComputeOf<T>::type;
  constexpr int CALLS = STREAM_CALLS, TPR = STREAM_THREADS;
  extern __shared__ unsigned char shared_raw[];
  C* chunk_max = reinterpret_cast<C*>(shared_raw);  // REGEN: [chunks]
  __shared__ C scratch[32];
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x;
  const T* src = static_cast<const T*>(p.src) + row_base(r, p.div, p.sv);
  const T* dyp = static_cast<const T*>(p.grad_y) + row_base(r, p.div, p.gv);
  T* gx = static_cast<T*>(p.grad_x) + row_base(r, p.div, p.xv);
  const C inv_tau = recip(p.tau.of(r));
  const C c = log2e<C>() * inv_tau;
  // This thread's sums: dot = sum(dy y), dy_y_t = sum(dy y t), y_t = sum(y t); REGEN: also
  // sum = sum(y), all relative to the running row max m (t in log2 units until the end).
  C m = -inf<C>(), sum = 0, dot = 0, dy_y_t = 0, y_t = 0;
  constexpr bool tau_grad = TAU;
  for (int64_t chunk = 0; chunk < p.chunks; ++chunk) {
    C y[CALLS][4], dy[CALLS][4];
    int k0[CALLS];
    C cm = 0, shift = 0;
    if (REGEN) {
      perturbed_row<T, C, TPR, CALLS, VEC>(src, p.sv.s_k, r, true, p.K, p.Q, lane, chunk * (CALLS * TPR), p.key,
                                           p.offset, y, k0);
      cm = row_reduce<TPR>(thread_max(y), MaxNanOp(), scratch);
      shift = finite(cm) ? cm * c : C(0);
      if (lane == 0) chunk_max[chunk] = cm;
    } else {
#pragma unroll
      for (int i = 0; i < CALLS; ++i) {
        k0[i] = static_cast<int>(4 * (chunk * (CALLS * TPR) + lane + static_cast<int64_t>(i) * TPR));
        load4<T, C, VEC>(src, p.sv.s_k, k0[i], p.K, true, C(0), y[i]);
      }
    }
    C p_sum = 0, p_dot = 0, p_dyt = 0, p_yt = 0;
#pragma unroll
    for (int i = 0; i < CALLS; ++i) {
      load4<T, C, VEC>(dyp, p.gv.s_k, k0[i], p.K, true, C(0), dy[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        C t;
        if (REGEN) {
          t = y[i][j] * c - shift;
          y[i][j] = ex2c(t);
          p_sum += y[i][j];
        } else {
          t = y[i][j] > C(0) ? lg2c(y[i][j] > C(0) ? y[i][j] : C(1)) : C(0);
        }
        t = y[i][j] > C(0) ? t : C(0);
        p_dot += dy[i][j] * y[i][j];
        if (tau_grad) {
          p_dyt += dy[i][j] * y[i][j] * t;
          p_yt += y[i][j] * t;
        }
      }
      if (REGEN) store4<T, C, VEC>(gx, p.xv.s_k, k0[i], p.K, true, y[i]);  // parked, unnormalised
    }
    if (REGEN) {
      // Merge the chunk (relative to cm) into the running sums (relative to m): each side is
      // scaled by f = 2^(d) with d = (its max - new max) c, and t shifts by d: sum(y (t + d)).
      const C new_m = max_nan(m, cm);
      const C ref = finite(new_m) ? new_m : C(0);
      const C d_old = (m - ref) * c, d_new = (cm - ref) * c;
      const C f_old = sum == C(0) ? C(0) : ex2c(d_old), f_new = p_sum == C(0) ? C(0) : ex2c(d_new);
      const C o_old = sum == C(0) ? C(0) : d_old, o_new = p_sum == C(0) ? C(0) : d_new;
      dy_y_t = f_old * (dy_y_t + o_old * dot) + f_new * (p_dyt + o_new * p_dot);
      y_t = f_old * (y_t + o_old * sum) + f_new * (p_yt + o_new * p_sum);
      dot = f_old * dot + f_new * p_dot;
      sum = f_old * sum + f_new * p_sum;
      m = new_m;
    } else {
      dot += p_dot;
      dy_y_t += p_dyt;
      y_t += p_yt;
    }
  }
  C norm = 1;
  if (REGEN) {
    sum = row_reduce<TPR>(sum, SumOp(), scratch);
    norm = finite(m) ? recip(sum) : nan<C>();
  }
  dot = row_reduce<TPR>(dot, SumOp(), scratch) * norm;
  if (REGEN) __syncthreads();  // chunk_max written by thread 0
  for (int64_t chunk = 0; chunk < p.chunks; ++chunk) {
    C factor = 1;
    if (REGEN) {
      const C cm = chunk_max[chunk];
      factor = cm == -inf<C>() ? C(0) * norm : ex2c((cm - m) * c) * norm;
    }
#pragma unroll
    for (int i = 0; i < CALLS; ++i) {
      const int k0 = static_cast<int>(4 * (chunk * (CALLS * TPR) + lane + static_cast<int64_t>(i) * TPR));
      C y[4], dy[4], v[4];
      // REGEN: y is this thread's own parked write of pass 1 (no barrier needed).
      load4<T, C, VEC>(REGEN ? static_cast<const T*>(gx) : src, REGEN ? p.xv.s_k : p.sv.s_k, k0, p.K, true, C(0), y);
      load4<T, C, VEC>(dyp, p.gv.s_k, k0, p.K, true, C(0), dy);
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = y[j] * factor * (dy[j] - dot) * inv_tau;
      store4<T, C, VEC>(gx, p.xv.s_k, k0, p.K, true, v);
    }
  }
  if (tau_grad) {
    dy_y_t = row_reduce<TPR>(dy_y_t, SumOp(), scratch) * norm * ln2<C>();
    y_t = row_reduce<TPR>(y_t, SumOp(), scratch) * norm * ln2<C>();
    if (lane == 0) p.grad_tau[r] = -(dy_y_t - dot * y_t) * inv_tau;
  }
}

}  // namespace twin
}  // namespace fused_gumbel
