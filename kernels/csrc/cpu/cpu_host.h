// Host-side helpers shared by the CPU ops (gumbel_softmax_cpu.cpp, relaxed_bernoulli_cpu.cpp,
// gumbel_topk_cpu.cpp): which per-ISA kernel build runs here (and a call into it), the dtype enum the
// kernels take for a tensor, the temperature argument, the [outer, K, inner] row view of a tensor,
// and the raw words of the test hooks.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "gumbel_softmax_cpu.h"

namespace fused_gumbel {
namespace cpu {

enum class Isa { Default, Avx2, Avx512 };

// The widest kernel build this CPU runs, decided once per process (an inline function's static is
// shared by every translation unit); FUSED_GUMBEL_CPU_ISA=default|avx2 caps it.
inline Isa chosen_isa() {
#if defined(FUSED_GUMBEL_HAVE_AVX2)
  static const Isa chosen = [] {
    const char* env = std::getenv("FUSED_GUMBEL_CPU_ISA");
    const std::string cap = env ? env : "";
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (cap == "default") return Isa::Default;
    if (avx512 && cap != "avx2") return Isa::Avx512;
    return avx2 ? Isa::Avx2 : Isa::Default;
  }();
  return chosen;
#else
  return Isa::Default;
#endif
}

inline Dtype kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float;
    case at::kDouble: return Dtype::Double;
    case at::kHalf: return Dtype::Half;
    case at::kBFloat16: return Dtype::BFloat16;
    default: TORCH_CHECK(false, "fused_gumbel: logits must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
  }
}

// float32 math for the 16- and 32-bit dtypes, float64 for float64.
inline at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The tau argument: (pointer to [count] compute-dtype values or null, scalar value), the tensor kept
// alive in keep. count is the number of rows (Gumbel-Softmax) or elements (relaxed Bernoulli).
inline std::pair<const void*, double> tau_source(const std::optional<at::Tensor>& tau_tensor, double tau,
                                                 at::ScalarType compute, int64_t count, const char* per,
                                                 at::Tensor& keep) {
  if (!tau_tensor.has_value() || !tau_tensor->defined()) return {nullptr, tau};
  TORCH_CHECK(tau_tensor->device().is_cpu(), "fused_gumbel: tau_tensor must be a CPU tensor here");
  keep = tau_tensor->to(compute).contiguous();
  if (keep.dim() == 0) return {nullptr, keep.item<double>()};
  TORCH_CHECK(keep.numel() == count, "fused_gumbel: tau_tensor must be 0-dim or hold one value per ", per, " (",
              count, "), got ", keep.numel());
  return {keep.const_data_ptr(), tau};
}

// Stride of sizes flattened into one dim, or nullopt (as fused_gumbel/_layout.py's _merged_stride).
inline std::optional<int64_t> merged_stride(at::IntArrayRef sizes, at::IntArrayRef strides) {
  int64_t merged = 0;
  std::optional<int64_t> expected;
  for (int64_t d = int64_t(sizes.size()) - 1; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (!expected) {
      merged = strides[d];
    } else if (strides[d] != *expected) {
      return std::nullopt;
    }
    expected = strides[d] * sizes[d];
  }
  return merged;
}

// The [outer, K, inner] row view of a tensor along dim (RNG-spec row order, fused_gumbel/_layout.py).
struct Rows {
  at::Tensor tensor;  // the input, or a contiguous copy when it has no [outer, K, inner] view
  RowLayout layout;
  int64_t outer, classes, inner;
  int64_t rows() const { return outer * inner; }
};

inline Rows as_rows(const at::Tensor& input, int64_t dim) {
  at::Tensor t = input.dim() == 0 ? input.reshape({1}) : input;
  TORCH_CHECK(dim >= 0 && dim < t.dim(), "fused_gumbel: dim ", dim, " out of range for a ", t.dim(), "-d tensor");
  const auto sizes = t.sizes();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= sizes[d];
  for (int64_t d = dim + 1; d < t.dim(); ++d) inner *= sizes[d];
  auto outer_stride = merged_stride(sizes.slice(0, dim), t.strides().slice(0, dim));
  auto inner_stride = merged_stride(sizes.slice(dim + 1), t.strides().slice(dim + 1));
  if (!outer_stride || !inner_stride) {
    t = t.contiguous();
    outer_stride = merged_stride(sizes.slice(0, dim), t.strides().slice(0, dim));
    inner_stride = merged_stride(sizes.slice(dim + 1), t.strides().slice(dim + 1));
  }
  return Rows{t, RowLayout{inner, *outer_stride, t.stride(dim), *inner_stride}, outer, sizes[dim], inner};
}

// The layout of a contiguous tensor of the rows' shape (the ops' outputs).
inline RowLayout contiguous_layout(const Rows& rows) {
  return RowLayout{rows.inner, rows.classes * rows.inner, rows.inner, 1};
}

// The uint32 words of a 1-d int64 CPU tensor (the test hooks' input).
inline std::vector<uint32_t> words_of(const at::Tensor& words) {
  TORCH_CHECK(words.device().is_cpu() && words.scalar_type() == at::kLong && words.dim() == 1,
              "words must be a 1-d int64 CPU tensor");
  const at::Tensor contiguous = words.contiguous();
  const int64_t* p = contiguous.const_data_ptr<int64_t>();
  return std::vector<uint32_t>(p, p + contiguous.numel());
}

}  // namespace cpu
}  // namespace fused_gumbel

// Runs ISA::call for the kernel build chosen_isa() names (call: a function call of that namespace).
#if defined(FUSED_GUMBEL_HAVE_AVX2)
#define FUSED_GUMBEL_ISA_CALL(call)                                                  \
  do {                                                                               \
    const ::fused_gumbel::cpu::Isa isa_ = ::fused_gumbel::cpu::chosen_isa();         \
    if (isa_ == ::fused_gumbel::cpu::Isa::Avx512) {                                  \
      ::fused_gumbel::cpu::AVX512::call;                                             \
    } else if (isa_ == ::fused_gumbel::cpu::Isa::Avx2) {                             \
      ::fused_gumbel::cpu::AVX2::call;                                               \
    } else {                                                                         \
      ::fused_gumbel::cpu::DEFAULT::call;                                            \
    }                                                                                \
  } while (0)
#else
#define FUSED_GUMBEL_ISA_CALL(call) ::fused_gumbel::cpu::DEFAULT::call
#endif
