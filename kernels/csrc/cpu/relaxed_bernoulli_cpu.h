// Interface between the CPU relaxed-Bernoulli op (relaxed_bernoulli_cpu.cpp: argument checks,
// threads) and its per-instruction-set kernel builds (relaxed_bernoulli_cpu_kernel.h compiled once
// per ISA): plain pointers over the row-major flattened elements, no Tensor headers.
#pragma once

#include <cstdint>

#include "gumbel_softmax_cpu.h"

namespace fused_gumbel {
namespace cpu {

// Elements per block: 256 Philox calls of 4 words. Blocks start at multiples of it, so a block's
// words are whole calls and its scratch stays in L1; the 0-dim tau's gradient is one partial sum
// per block, summed in block order (the same value for any number of threads).
constexpr int64_t kBernoulliBlock = 1024;

struct BernoulliForwardArgs {
  const void* x;          // contiguous logits
  void* y;                // contiguous output, logits' dtype
  int64_t numel;
  const void* tau_elems;  // compute-dtype [numel] temperatures, or null (use tau)
  double tau;
  int mode;               // 0 soft, 1 hard (the exact draw)
  uint64_t seed, offset;  // the call's seed (the Philox key is seed ^ DOMAIN_TAG) and stream offset
  Dtype dtype;
};

struct BernoulliBackwardArgs {
  const void* grad_y;     // contiguous, logits' dtype
  const void* x;          // contiguous logits
  void* grad_x;           // contiguous, logits' dtype
  void* tau_grad;         // compute dtype: [numel] per element (tau_elems), [blocks] partial sums, or null
  int64_t numel;
  const void* tau_elems;
  double tau;
  uint64_t seed, offset;
  Dtype dtype;
};

// Each ISA build defines these in its own namespace; they process blocks [begin, end) of kBernoulliBlock elements.
#define FUSED_GUMBEL_DECLARE_BERNOULLI_KERNELS(ISA)                                              \
  namespace ISA {                                                                                \
  void bernoulli_forward_blocks(const BernoulliForwardArgs& args, int64_t begin, int64_t end);   \
  void bernoulli_backward_blocks(const BernoulliBackwardArgs& args, int64_t begin, int64_t end); \
  void logistic_noise(const uint32_t* words, int64_t n, bool float64, void* out);                  \
  }
FUSED_GUMBEL_DECLARE_BERNOULLI_KERNELS(DEFAULT)
#if defined(FUSED_GUMBEL_HAVE_AVX2)
FUSED_GUMBEL_DECLARE_BERNOULLI_KERNELS(AVX2)
FUSED_GUMBEL_DECLARE_BERNOULLI_KERNELS(AVX512)
#endif

}  // namespace cpu
}  // namespace fused_gumbel
