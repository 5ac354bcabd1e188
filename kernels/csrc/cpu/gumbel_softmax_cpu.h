// Interface between the CPU op (gumbel_softmax_cpu.cpp: argument checks, layouts, threads) and the
// per-instruction-set kernel builds (gumbel_softmax_cpu_kernel.h compiled once per ISA): plain
// pointers and strides, so the kernel translation units need no Tensor headers.
#pragma once

#include <cstdint>

namespace fused_gumbel {
namespace cpu {

enum class Dtype : int { Float, Double, Half, BFloat16 };

// Row r = o * inner + i of an [outer, K, inner] view (RNG-spec row order, fused_gumbel/_layout.py).
struct RowLayout {
  int64_t inner, s_outer, s_k, s_inner;
  int64_t row_offset(int64_t r) const { return (r / inner) * s_outer + (r % inner) * s_inner; }
};

struct ForwardArgs {
  const void* x; RowLayout x_layout;
  void* y; RowLayout y_layout;  // soft/hard output (null in index mode)
  int64_t* index;               // index mode output (null otherwise)
  void* soft;                   // mode 3: the soft sample, contiguous like y (null otherwise)
  int64_t rows, classes;
  const void* tau_rows;  // compute-dtype [rows] temperatures, or null (use tau)
  double tau;
  int mode;              // 0 soft, 1 hard, 2 index, 3 hard + soft sample
  uint64_t seed, offset; // the call's seed (the Philox key is seed ^ DOMAIN_TAG) and stream offset
  Dtype dtype;
};

struct BackwardArgs {
  const void* grad_y; RowLayout g_layout;
  const void* src; RowLayout src_layout;  // soft output y, or the logits when regenerate
  void* grad_x; RowLayout gx_layout;
  void* tau_grad_rows;  // compute-dtype [rows] partial temperature gradients, or null
  int64_t rows, classes;
  const void* tau_rows;
  double tau;
  bool regenerate;
  uint64_t seed, offset;
  Dtype dtype;
};

// Each ISA build defines these in its own namespace; they process rows [begin, end).
#define FUSED_GUMBEL_DECLARE_KERNELS(ISA)                                        \
  namespace ISA {                                                                \
  void forward_rows(const ForwardArgs& args, int64_t begin, int64_t end);        \
  void backward_rows(const BackwardArgs& args, int64_t begin, int64_t end);      \
  void philox_words(uint64_t seed, uint64_t offset, uint64_t first_call, int64_t calls, uint32_t* out); \
  void gumbel_noise(const uint32_t* words, float* out, int64_t n);              \
  void gumbel_noise(const uint32_t* words, double* out, int64_t n);             \
  }
FUSED_GUMBEL_DECLARE_KERNELS(DEFAULT)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_GUMBEL_HAVE_AVX2 1
FUSED_GUMBEL_DECLARE_KERNELS(AVX2)
FUSED_GUMBEL_DECLARE_KERNELS(AVX512)
#endif

}  // namespace cpu
}  // namespace fused_gumbel
