// CPU implementation of the native op contract (fused_gumbel::kernel_forward / kernel_backward,
// declared in ../ops.cpp): argument checks, the [outer, K, inner] row view of any strided tensor,
// and the split of rows over threads (at::parallel_for). The row kernels themselves are built
// once per instruction set (gumbel_softmax_cpu_kernel.h); the widest build the CPU runs is chosen once
// (AVX-512, AVX2+FMA, or the baseline); FUSED_GUMBEL_CPU_ISA=avx2|default caps the choice.
#include <array>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu_host.h"
#include "gumbel_softmax_cpu.h"
#include "gumbel_softmax_cpu_op.h"

namespace fused_gumbel {
namespace cpu {
namespace {

using at::Tensor;

int64_t grain(int64_t classes) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(classes, 1)); }

std::tuple<Tensor, std::optional<Tensor>> kernel_forward(const Tensor& logits, const std::optional<Tensor>& tau_tensor,
                                                         double tau, int64_t mode, int64_t dim, int64_t key,
                                                         int64_t offset) {
  TORCH_CHECK(logits.device().is_cpu(), "fused_gumbel::kernel_forward (CPU) got a ", logits.device(), " tensor");
  // Mode 3 (CPU only, beyond the shared contract): hard, and the second output is the soft sample
  // of the same noise (logits' shape and dtype), which the hard backward then reads instead of
  // regenerating the noise: N x K memory (as F.gumbel_softmax keeps) for one noise pass fewer.
  TORCH_CHECK(mode >= 0 && mode <= 3,
              "fused_gumbel: mode must be 0 (soft), 1 (hard), 2 (index) or 3 (hard + soft sample), got ", mode);
  const Dtype dtype = kernel_dtype(logits);
  const Rows x = as_rows(logits, dim);
  Tensor out;
  if (mode == 2) {
    std::vector<int64_t> shape(logits.sizes().begin(), logits.sizes().end());
    if (!shape.empty()) shape.erase(shape.begin() + dim);
    out = at::empty(shape, logits.options().dtype(at::kLong));
  } else {
    out = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  }
  std::optional<Tensor> soft;
  if (mode == 3) soft = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.rows() == 0 || x.classes == 0) return {out, soft};
  Tensor tau_keep;
  const auto [tau_rows, tau_value] = tau_source(tau_tensor, tau, compute_type(logits), x.rows(), "row", tau_keep);
  ForwardArgs args{x.tensor.const_data_ptr(), x.layout,
                   mode == 2 ? nullptr : out.data_ptr(), contiguous_layout(x),
                   mode == 2 ? out.data_ptr<int64_t>() : nullptr,
                   soft ? soft->data_ptr() : nullptr,
                   x.rows(), x.classes, tau_rows, tau_value, int(mode),
                   uint64_t(key), uint64_t(offset), dtype};
  at::parallel_for(0, x.rows(), grain(x.classes),
                   [&](int64_t begin, int64_t end) { FUSED_GUMBEL_ISA_CALL(forward_rows(args, begin, end)); });
  return {out, soft};
}

std::tuple<Tensor, std::optional<Tensor>> kernel_backward(const Tensor& grad_y, const Tensor& src,
                                                          const std::optional<Tensor>& tau_tensor, double tau,
                                                          bool hard, int64_t dim, int64_t key, int64_t offset,
                                                          bool tau_grad, const std::optional<Tensor>& stats) {
  (void)stats;  // the CPU kernel regenerates a whole row in one pass: it needs no forward statistics
  TORCH_CHECK(src.device().is_cpu() && grad_y.device().is_cpu(), "fused_gumbel::kernel_backward (CPU) got ",
              src.device(), " / ", grad_y.device(), " tensors");
  TORCH_CHECK(grad_y.sizes() == src.sizes(), "fused_gumbel: grad_y of shape ", grad_y.sizes(),
              " does not match src of shape ", src.sizes());
  const Dtype dtype = kernel_dtype(src);
  const Rows s = as_rows(src, dim);
  const Rows g = as_rows(grad_y.scalar_type() == src.scalar_type() ? grad_y : grad_y.to(src.scalar_type()), dim);
  Tensor grad_x = at::empty(src.sizes(), src.options().memory_format(at::MemoryFormat::Contiguous));
  const bool has_tau_tensor = tau_tensor.has_value() && tau_tensor->defined();
  std::optional<Tensor> grad_tau;
  if (tau_grad && has_tau_tensor) grad_tau = at::empty({s.rows()}, src.options().dtype(compute_type(src)));
  if (s.rows() == 0 || s.classes == 0) {
    if (grad_tau) grad_tau->zero_();
    return {grad_x, grad_tau};
  }
  Tensor tau_keep;
  const auto [tau_rows, tau_value] = tau_source(tau_tensor, tau, compute_type(src), s.rows(), "row", tau_keep);
  BackwardArgs args{g.tensor.const_data_ptr(), g.layout, s.tensor.const_data_ptr(), s.layout,
                    grad_x.data_ptr(), contiguous_layout(s), grad_tau ? grad_tau->data_ptr() : nullptr,
                    s.rows(), s.classes, tau_rows, tau_value, hard, uint64_t(key), uint64_t(offset), dtype};
  at::parallel_for(0, s.rows(), grain(s.classes),
                   [&](int64_t begin, int64_t end) { FUSED_GUMBEL_ISA_CALL(backward_rows(args, begin, end)); });
  return {grad_x, grad_tau};
}

// Test hooks: the Philox words of calls [first_call, first_call + calls) ([calls, 4] int64), and the
// float32 noise of given words ([n] int64 -> [n] float32), on the kernel's own code paths.
Tensor philox_words_cpu(int64_t seed, int64_t offset, int64_t first_call, int64_t calls) {
  TORCH_CHECK(calls >= 0, "calls must be >= 0");
  std::vector<uint32_t> words(4 * calls);
  FUSED_GUMBEL_ISA_CALL(philox_words(uint64_t(seed), uint64_t(offset), uint64_t(first_call), calls, words.data()));
  Tensor out = at::empty({calls, 4}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < 4 * calls; ++i) p[i] = int64_t(words[i]);
  return out;
}

Tensor gumbel_noise_cpu(const Tensor& words) {
  const std::vector<uint32_t> raw = words_of(words);
  const int64_t n = int64_t(raw.size());
  Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  FUSED_GUMBEL_ISA_CALL(gumbel_noise(raw.data(), out.data_ptr<float>(), n));
  return out;
}

std::string isa() {
  switch (chosen_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "default";
  }
}

}  // namespace

std::tuple<Tensor, std::optional<Tensor>> forward(const Tensor& logits, const std::optional<Tensor>& tau_tensor,
                                                  double tau, int64_t mode, int64_t dim, int64_t key, int64_t offset) {
  return kernel_forward(logits, tau_tensor, tau, mode, dim, key, offset);
}

std::tuple<Tensor, std::optional<Tensor>> backward(const Tensor& grad_y, const Tensor& src,
                                                   const std::optional<Tensor>& tau_tensor, double tau, bool hard,
                                                   int64_t dim, int64_t key, int64_t offset, bool tau_grad) {
  return kernel_backward(grad_y, src, tau_tensor, tau, hard, dim, key, offset, tau_grad, std::nullopt);
}

TORCH_LIBRARY_IMPL(fused_gumbel, CPU, m) {
  m.impl("kernel_forward", &kernel_forward);
  m.impl("kernel_backward", &kernel_backward);
}

TORCH_LIBRARY_FRAGMENT(fused_gumbel, m) {
  m.def("_cpu_philox_words(int seed, int offset, int first_call, int calls) -> Tensor", &philox_words_cpu);
  m.def("_cpu_gumbel_noise(Tensor words) -> Tensor", &gumbel_noise_cpu);
  m.def("_cpu_isa() -> str", &isa);
}

}  // namespace cpu
}  // namespace fused_gumbel
