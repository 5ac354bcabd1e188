// Interface between the CPU Gumbel top-k op (gumbel_topk_cpu.cpp: argument checks, row views,
// threads) and its per-instruction-set kernel builds (gumbel_topk_cpu_kernel.h compiled once per
// ISA): plain pointers and row layouts, no Tensor headers.
#pragma once

#include <cstdint>

#include "gumbel_softmax_cpu.h"

namespace fused_gumbel {
namespace cpu {

struct TopkForwardArgs {
  const void* x; RowLayout x_layout;
  void* y; RowLayout y_layout;               // soft/hard k-hot, logits' dtype (null in index mode)
  int64_t* index; RowLayout index_layout;    // index mode: the k indices of row r at index_layout (null otherwise)
  void* stats;                               // compute-dtype [rows, k, 4] (m, m2, R', i*) per row and step, or null
  int64_t rows, classes, k;
  const void* tau_rows;  // compute-dtype [rows] temperatures, or null (use tau)
  double tau;
  int mode;              // 0 soft, 1 hard, 2 index
  uint64_t seed, offset; // the call's seed (the Philox key is seed ^ DOMAIN_TAG) and stream offset
  Dtype dtype;
};

struct TopkBackwardArgs {
  const void* grad_y; RowLayout g_layout;
  const void* x; RowLayout x_layout;         // the logits (the noise is regenerated)
  void* grad_x; RowLayout gx_layout;
  void* tau_grad_rows;                       // compute-dtype [rows] temperature gradients, or null
  const void* stats;                         // the forward's [rows, k, 4] statistics
  int64_t rows, classes, k;
  const void* tau_rows;
  double tau;
  uint64_t seed, offset;
  Dtype dtype;
};

// Each ISA build defines these in its own namespace; they process rows [begin, end).
#define FUSED_GUMBEL_DECLARE_TOPK_KERNELS(ISA)                                          \
  namespace ISA {                                                                       \
  void topk_forward_rows(const TopkForwardArgs& args, int64_t begin, int64_t end);      \
  void topk_backward_rows(const TopkBackwardArgs& args, int64_t begin, int64_t end);    \
  }
FUSED_GUMBEL_DECLARE_TOPK_KERNELS(DEFAULT)
#if defined(FUSED_GUMBEL_HAVE_AVX2)
FUSED_GUMBEL_DECLARE_TOPK_KERNELS(AVX2)
FUSED_GUMBEL_DECLARE_TOPK_KERNELS(AVX512)
#endif

}  // namespace cpu
}  // namespace fused_gumbel
