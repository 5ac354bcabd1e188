// CPU implementation of the native relaxed-Bernoulli ops (fused_gumbel::bernoulli_kernel_forward /
// bernoulli_kernel_backward, declared in ../relaxed_ops.cpp): argument checks, the row-major
// contiguous view of the elements, and the split of element blocks over threads (at::parallel_for).
// The block kernels are built once per instruction set (relaxed_bernoulli_cpu_kernel.h); the build
// that runs is the one the Gumbel-Softmax kernel uses (cpu_host.h's chosen_isa).
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu_host.h"
#include "relaxed_bernoulli_cpu.h"

namespace fused_gumbel {
namespace cpu {
namespace {

using at::Tensor;

int64_t blocks_of(int64_t numel) { return (numel + kBernoulliBlock - 1) / kBernoulliBlock; }

// Blocks per task: about 16k elements, enough work to amortise a thread hand-off.
constexpr int64_t kGrainBlocks = 16;

Tensor bernoulli_kernel_forward(const Tensor& logits, const std::optional<Tensor>& tau_tensor, double tau,
                                int64_t mode, int64_t key, int64_t offset) {
  TORCH_CHECK(logits.device().is_cpu(), "fused_gumbel::bernoulli_kernel_forward (CPU) got a ", logits.device(),
              " tensor");
  TORCH_CHECK(mode == 0 || mode == 1, "fused_gumbel: mode must be 0 (soft) or 1 (hard), got ", mode);
  const Dtype dtype = kernel_dtype(logits);
  const Tensor x = logits.contiguous();  // the elementwise mapping numbers elements row-major
  Tensor y = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = x.numel();
  if (numel == 0) return y;
  Tensor tau_keep;
  const auto [tau_elems, tau_value] = tau_source(tau_tensor, tau, compute_type(logits), numel, "element", tau_keep);
  const BernoulliForwardArgs args{x.const_data_ptr(), y.data_ptr(), numel, tau_elems, tau_value, int(mode),
                                  uint64_t(key), uint64_t(offset), dtype};
  at::parallel_for(0, blocks_of(numel), kGrainBlocks, [&](int64_t begin, int64_t end) {
    FUSED_GUMBEL_ISA_CALL(bernoulli_forward_blocks(args, begin, end));
  });
  return y;
}

// The 0-dim tau's gradient: the blocks' partial sums added in block order (float64 accumulator).
Tensor sum_in_order(const Tensor& partial) {
  double total = 0;
  if (partial.scalar_type() == at::kDouble) {
    for (const double* p = partial.const_data_ptr<double>(), *e = p + partial.numel(); p != e; ++p) total += *p;
  } else {
    for (const float* p = partial.const_data_ptr<float>(), *e = p + partial.numel(); p != e; ++p) total += *p;
  }
  return at::empty({}, partial.options()).fill_(total);
}

std::tuple<Tensor, std::optional<Tensor>> bernoulli_kernel_backward(const Tensor& grad_y, const Tensor& logits,
                                                                    const std::optional<Tensor>& tau_tensor,
                                                                    double tau, int64_t key, int64_t offset,
                                                                    bool tau_grad) {
  TORCH_CHECK(logits.device().is_cpu() && grad_y.device().is_cpu(), "fused_gumbel::bernoulli_kernel_backward (CPU) got ",
              logits.device(), " / ", grad_y.device(), " tensors");
  TORCH_CHECK(grad_y.sizes() == logits.sizes(), "fused_gumbel: grad_y of shape ", grad_y.sizes(),
              " does not match logits of shape ", logits.sizes());
  const Dtype dtype = kernel_dtype(logits);
  const Tensor x = logits.contiguous();
  const Tensor dy = (grad_y.scalar_type() == logits.scalar_type() ? grad_y : grad_y.to(logits.scalar_type())).contiguous();
  Tensor grad_x = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = x.numel();
  const bool has_tau_tensor = tau_tensor.has_value() && tau_tensor->defined();
  const auto compute = compute_type(logits);
  Tensor tau_keep;
  const auto [tau_elems, tau_value] = tau_source(tau_tensor, tau, compute, numel, "element", tau_keep);
  // Decided by the shape, not by tau_elems: an empty tensor's data pointer may be null.
  const bool per_element = has_tau_tensor && tau_tensor->dim() != 0;
  std::optional<Tensor> grad_tau;
  Tensor tau_grad_buffer;  // [numel] per element, or the [blocks] partial sums of a 0-dim tau
  if (tau_grad && has_tau_tensor) {
    tau_grad_buffer = at::empty({per_element ? numel : blocks_of(numel)}, logits.options().dtype(compute));
  }
  if (numel > 0) {
    const BernoulliBackwardArgs args{dy.const_data_ptr(), x.const_data_ptr(), grad_x.data_ptr(),
                                     tau_grad_buffer.defined() ? tau_grad_buffer.data_ptr() : nullptr, numel,
                                     tau_elems, tau_value, uint64_t(key), uint64_t(offset), dtype};
    at::parallel_for(0, blocks_of(numel), kGrainBlocks, [&](int64_t begin, int64_t end) {
      FUSED_GUMBEL_ISA_CALL(bernoulli_backward_blocks(args, begin, end));
    });
  }
  if (tau_grad_buffer.defined()) grad_tau = per_element ? tau_grad_buffer : sum_in_order(tau_grad_buffer);
  return {grad_x, grad_tau};
}

// Test hook: the logistic noise of given Philox words ([n] int64 -> [n] float32, or float64), on the
// kernels' own code path.
Tensor logistic_noise_cpu(const Tensor& words, bool float64) {
  const std::vector<uint32_t> raw = words_of(words);
  const int64_t n = int64_t(raw.size());
  Tensor out = at::empty({n}, at::TensorOptions().dtype(float64 ? at::kDouble : at::kFloat));
  FUSED_GUMBEL_ISA_CALL(logistic_noise(raw.data(), n, float64, out.data_ptr()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_gumbel, CPU, m) {
  m.impl("bernoulli_kernel_forward", &bernoulli_kernel_forward);
  m.impl("bernoulli_kernel_backward", &bernoulli_kernel_backward);
}

TORCH_LIBRARY_FRAGMENT(fused_gumbel, m) {
  m.def("_cpu_logistic_noise(Tensor words, bool float64) -> Tensor", &logistic_noise_cpu);
}

}  // namespace cpu
}  // namespace fused_gumbel
