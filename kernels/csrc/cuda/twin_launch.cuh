// Launch layer of the CUDA twin (no torch): picks the kernel shape (twin_config.h) and the
// template instance for a call and launches it once. twin_<dtype>.cu instantiate it per storage
// dtype (each compiles to a cubin without torch: exactly the kernels the extension can launch);
// gumbel_softmax_cuda.cu wraps them in the fused_gumbel::kernel_forward / kernel_backward ops.
#pragma once

#include <type_traits>

#include "twin_kernels.cuh"

namespace fused_gumbel {
namespace twin {

// Whether a Philox call's 4 classes are one aligned vector access in every view of the call:
// contiguous classes, K % 4 == 0, 4-aligned row starts and base pointers aligned to 4 elements.
inline bool vector_ok(int64_t K, int64_t rows, int64_t inner, const View* views, const void* const* ptrs, int n,
                      int elem_bytes) {
  if (K % 4 != 0) return false;
  for (int i = 0; i < n; ++i) {
    if (views[i].s_k != 1) return false;
    if (rows > 1 && inner == 1 && views[i].s_outer % 4 != 0) return false;
    if (inner > 1) return false;  // s_k == 1 with inner > 1 is an unusual layout: take the plain path
    if (reinterpret_cast<uintptr_t>(ptrs[i]) % (4 * elem_bytes) != 0) return false;
  }
  return true;
}

inline bool unit_strides(const View* views, int n) {
  for (int i = 0; i < n; ++i)
    if (views[i].s_k != 1) return false;
  return true;
}

template <typename Kernel, typename P>
inline cudaError_t launch(Kernel kernel, const Config& cfg, const P& p, cudaStream_t stream) {
  if (cfg.grid == 0) return cudaSuccess;
  if (cfg.shared_bytes > STREAM_MAX_SHARED_BYTES) return cudaErrorInvalidValue;
  kernel<<<static_cast<unsigned>(cfg.grid), cfg.block, cfg.shared_bytes, stream>>>(p);
  return cudaGetLastError();
}

// f(std::integral_constant<int, V>{}) for the template value V equal to `value` (one of VALUES).
template <int... VALUES, typename F>
inline cudaError_t with_value(int value, F&& f) {
  cudaError_t err = cudaErrorInvalidValue;
  ((value == VALUES ? (err = f(std::integral_constant<int, VALUES>{}), true) : false) || ...);
  return err;
}

template <typename F>
inline cudaError_t with_small_k(int64_t K, F&& f) {
  return with_value<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16>(static_cast<int>(K), f);
}

template <typename F>
inline cudaError_t with_width(int width, F&& f) {
  static_assert(RESIDENT_WIDTH_COUNT == 9, "with_width lists every resident width");
  return with_value<0, 1, 2, 3, 4, 5, 6, 7, 8>(width, f);
}

// ---- forward ----------------------------------------------------------------------------------
template <typename T, int MODE>
inline cudaError_t forward_small(const Config& cfg, bool unit, const FwdParams<typename ComputeOf<T>::type>& p,
                                 cudaStream_t s) {
  return with_small_k(p.K, [&](auto k) {
    return unit ? launch(small_fwd_kernel<T, decltype(k)::value, MODE, true>, cfg, p, s)
                : launch(small_fwd_kernel<T, decltype(k)::value, MODE, false>, cfg, p, s);
  });
}

template <typename T, int MODE, bool VEC>
inline cudaError_t forward_resident(const Config& cfg, const FwdParams<typename ComputeOf<T>::type>& p,
                                    cudaStream_t s) {
  return with_width(cfg.width, [&](auto w) {
    return launch(resident_fwd_kernel<T, decltype(w)::value, MODE, VEC>, cfg, p, s);
  });
}

template <typename T, int MODE>
inline cudaError_t forward_mode(const Config& cfg, bool unit, bool vec,
                                const FwdParams<typename ComputeOf<T>::type>& p, cudaStream_t s) {
  if (cfg.shape == SHAPE_SMALL) return forward_small<T, MODE>(cfg, unit, p, s);
  if (cfg.shape == SHAPE_RESIDENT)
    return vec ? forward_resident<T, MODE, true>(cfg, p, s) : forward_resident<T, MODE, false>(cfg, p, s);
  Config streamed = cfg;
  if (MODE != MODE_SOFT) streamed.shared_bytes = 0;  // the chunk maxima are the soft forward's
  return vec ? launch(streamed_fwd_kernel<T, MODE, true>, streamed, p, s)
             : launch(streamed_fwd_kernel<T, MODE, false>, streamed, p, s);
}

// The launch-derived fields of a call's parameters (Q, the row divider, the round keys); false
// when the call is too large for the kernels' 32-bit row and class indices.
template <typename P>
inline bool prepare(P& p) {
  if (p.rows >= (int64_t(1) << 31) || p.K >= (int64_t(1) << 31) - 16) return false;
  p.Q = (p.K + 3) / 4;
  p.div = make_row_divider(static_cast<uint32_t>(p.inner));
  p.keys = round_keys(p.key);
  return true;
}

// `p.Q`, `p.chunks`, `p.div`, `p.keys` are filled in here.
template <typename T>
inline cudaError_t forward(int mode, FwdParams<typename ComputeOf<T>::type> p, cudaStream_t s) {
  using C = typename ComputeOf<T>::type;
  if (!prepare(p)) return cudaErrorInvalidValue;
  const Config cfg = choose_config(p.rows, p.K, sizeof(C));
  p.chunks = cfg.chunks;
  const View views[2] = {p.xv, p.yv};
  const void* ptrs[2] = {p.x, p.y};
  const int n = mode == MODE_INDEX ? 1 : 2;
  const bool vec = vector_ok(p.K, p.rows, p.inner, views, ptrs, n, sizeof(T));
  const bool unit = unit_strides(views, n);
  if (mode == MODE_SOFT) return forward_mode<T, MODE_SOFT>(cfg, unit, vec, p, s);
  if (mode == MODE_HARD) return forward_mode<T, MODE_HARD>(cfg, unit, vec, p, s);
  return forward_mode<T, MODE_INDEX>(cfg, unit, vec, p, s);
}

// ---- backward ---------------------------------------------------------------------------------
template <typename T, bool REGEN, bool TAU>
inline cudaError_t backward_small(const Config& cfg, bool unit, const BwdParams<typename ComputeOf<T>::type>& p,
                                  cudaStream_t s) {
  return with_small_k(p.K, [&](auto k) {
    return unit ? launch(small_bwd_kernel<T, decltype(k)::value, REGEN, true, TAU>, cfg, p, s)
                : launch(small_bwd_kernel<T, decltype(k)::value, REGEN, false, TAU>, cfg, p, s);
  });
}

template <typename T, bool REGEN, bool VEC, bool TAU>
inline cudaError_t backward_resident(const Config& cfg, const BwdParams<typename ComputeOf<T>::type>& p,
                                     cudaStream_t s) {
  return with_width(cfg.width, [&](auto w) {
    return launch(resident_bwd_kernel<T, decltype(w)::value, REGEN, VEC, TAU>, cfg, p, s);
  });
}

template <typename T, bool REGEN, bool TAU>
inline cudaError_t backward_variant(const Config& cfg, bool unit, bool vec,
                                    const BwdParams<typename ComputeOf<T>::type>& p, cudaStream_t s) {
  if (cfg.shape == SHAPE_SMALL) return backward_small<T, REGEN, TAU>(cfg, unit, p, s);
  if (cfg.shape == SHAPE_RESIDENT)
    return vec ? backward_resident<T, REGEN, true, TAU>(cfg, p, s) : backward_resident<T, REGEN, false, TAU>(cfg, p, s);
  Config streamed = cfg;
  if (!REGEN) streamed.shared_bytes = 0;  // the chunk maxima are the regenerating pass's
  return vec ? launch(streamed_bwd_kernel<T, REGEN, true, TAU>, streamed, p, s)
             : launch(streamed_bwd_kernel<T, REGEN, false, TAU>, streamed, p, s);
}

template <typename T>
inline cudaError_t backward(bool regenerate, BwdParams<typename ComputeOf<T>::type> p, cudaStream_t s) {
  using C = typename ComputeOf<T>::type;
  if (!prepare(p)) return cudaErrorInvalidValue;
  const Config cfg = choose_config(p.rows, p.K, sizeof(C));
  p.chunks = cfg.chunks;
  const View views[3] = {p.gv, p.sv, p.xv};
  const void* ptrs[3] = {p.grad_y, p.src, p.grad_x};
  const bool vec = vector_ok(p.K, p.rows, p.inner, views, ptrs, 3, sizeof(T));
  const bool unit = unit_strides(views, 3);
  if (p.grad_tau)
    return regenerate ? backward_variant<T, true, true>(cfg, unit, vec, p, s)
                      : backward_variant<T, false, true>(cfg, unit, vec, p, s);
  return regenerate ? backward_variant<T, true, false>(cfg, unit, vec, p, s)
                    : backward_variant<T, false, false>(cfg, unit, vec, p, s);
}

// One translation unit per storage dtype (twin_f32.cu, ...) defines these, so the extension's
// kernels build in parallel and a cubin of one dtype builds alone.
cudaError_t forward_f32(int mode, const FwdParams<float>& p, cudaStream_t s);
cudaError_t forward_f64(int mode, const FwdParams<double>& p, cudaStream_t s);
cudaError_t forward_f16(int mode, const FwdParams<float>& p, cudaStream_t s);
cudaError_t forward_bf16(int mode, const FwdParams<float>& p, cudaStream_t s);
cudaError_t backward_f32(bool regenerate, const BwdParams<float>& p, cudaStream_t s);
cudaError_t backward_f64(bool regenerate, const BwdParams<double>& p, cudaStream_t s);
cudaError_t backward_f16(bool regenerate, const BwdParams<float>& p, cudaStream_t s);
cudaError_t backward_bf16(bool regenerate, const BwdParams<float>& p, cudaStream_t s);

}  // namespace twin
}  // namespace fused_gumbel

#define FUSED_GUMBEL_TWIN_DEFINE(T, SUFFIX)                                                                   \
  namespace fused_gumbel {                                                                                   \
  namespace twin {                                                                                           \
  cudaError_t forward_##SUFFIX(int mode, const FwdParams<ComputeOf<T>::type>& p, cudaStream_t s) {           \
    return forward<T>(mode, p, s);                                                                           \
  }                                                                                                          \
  cudaError_t backward_##SUFFIX(bool regenerate, const BwdParams<ComputeOf<T>::type>& p, cudaStream_t s) {   \
    return backward<T>(regenerate, p, s);                                                                    \
  }                                                                                                          \
  }                                                                                                          \
  }
