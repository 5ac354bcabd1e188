// CPU implementation of the native Gumbel top-k ops (fused_gumbel::topk_kernel_forward /
// topk_kernel_backward, declared in ../topk_ops.cpp): argument checks, the [outer, K, inner] row view
// of any strided tensor (cpu_host.h's as_rows, as the Gumbel-Softmax op), and the split of rows over
// threads (at::parallel_for). The row kernels are built once per instruction set
// (gumbel_topk_cpu_kernel.h); the build that runs is the one the Gumbel-Softmax kernel uses.
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu_host.h"
#include "gumbel_topk_cpu.h"

namespace fused_gumbel {
namespace cpu {
namespace {

using at::Tensor;

// Rows per task: about 64k class-steps, enough work to amortise a thread hand-off.
int64_t grain(int64_t classes, int64_t k) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(classes * k, 1)); }

void check_k(int64_t k, const Rows& rows) {
  TORCH_CHECK(k >= 1 && k <= rows.classes, "fused_gumbel: k must be in [1, ", rows.classes, "], got ", k);
}

std::tuple<Tensor, std::optional<Tensor>> topk_kernel_forward(const Tensor& logits,
                                                              const std::optional<Tensor>& tau_tensor, double tau,
                                                              int64_t k, int64_t mode, int64_t dim, int64_t key,
                                                              int64_t offset, bool save_stats) {
  TORCH_CHECK(logits.device().is_cpu(), "fused_gumbel::topk_kernel_forward (CPU) got a ", logits.device(), " tensor");
  TORCH_CHECK(mode >= 0 && mode <= 2, "fused_gumbel: mode must be 0 (soft), 1 (hard) or 2 (index), got ", mode);
  const Dtype dtype = kernel_dtype(logits);
  const Rows x = as_rows(logits, dim);
  const auto compute = compute_type(logits);
  Tensor out;
  RowLayout out_layout = contiguous_layout(x);
  if (mode == 2) {  // int64 indices: the logits' shape with size k along dim, contiguous
    std::vector<int64_t> shape(logits.sizes().begin(), logits.sizes().end());
    if (shape.empty()) shape.push_back(1);
    shape[dim] = k;
    out = at::empty(shape, logits.options().dtype(at::kLong));
    out_layout = RowLayout{x.inner, k * x.inner, x.inner, 1};
  } else {
    out = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  }
  std::optional<Tensor> stats;
  if (save_stats && mode != 2) stats = at::empty({x.rows(), k, 4}, logits.options().dtype(compute));
  if (x.rows() == 0) return {out, stats};
  check_k(k, x);
  Tensor tau_keep;
  const auto [tau_rows, tau_value] = tau_source(tau_tensor, tau, compute, x.rows(), "row", tau_keep);
  const TopkForwardArgs args{x.tensor.const_data_ptr(), x.layout,
                             mode == 2 ? nullptr : out.data_ptr(), out_layout,
                             mode == 2 ? out.data_ptr<int64_t>() : nullptr, out_layout,
                             stats ? stats->data_ptr() : nullptr,
                             x.rows(), x.classes, k, tau_rows, tau_value, int(mode),
                             uint64_t(key), uint64_t(offset), dtype};
  at::parallel_for(0, x.rows(), grain(x.classes, k),
                   [&](int64_t begin, int64_t end) { FUSED_GUMBEL_ISA_CALL(topk_forward_rows(args, begin, end)); });
  return {out, stats};
}

std::tuple<Tensor, std::optional<Tensor>> topk_kernel_backward(const Tensor& grad_y, const Tensor& logits,
                                                               const std::optional<Tensor>& tau_tensor, double tau,
                                                               int64_t k, int64_t dim, int64_t key, int64_t offset,
                                                               const Tensor& stats, bool tau_grad) {
  TORCH_CHECK(logits.device().is_cpu() && grad_y.device().is_cpu() && stats.device().is_cpu(),
              "fused_gumbel::topk_kernel_backward (CPU) got ", logits.device(), " / ", grad_y.device(), " / ",
              stats.device(), " tensors");
  TORCH_CHECK(grad_y.sizes() == logits.sizes(), "fused_gumbel: grad_y of shape ", grad_y.sizes(),
              " does not match logits of shape ", logits.sizes());
  const Dtype dtype = kernel_dtype(logits);
  const auto compute = compute_type(logits);
  const Rows x = as_rows(logits, dim);
  const Rows g = as_rows(grad_y.scalar_type() == logits.scalar_type() ? grad_y : grad_y.to(logits.scalar_type()), dim);
  Tensor grad_x = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  const bool has_tau_tensor = tau_tensor.has_value() && tau_tensor->defined();
  std::optional<Tensor> grad_tau;
  if (tau_grad && has_tau_tensor) grad_tau = at::empty({x.rows()}, logits.options().dtype(compute));
  if (x.rows() == 0) return {grad_x, grad_tau};
  check_k(k, x);
  TORCH_CHECK(stats.scalar_type() == compute && stats.is_contiguous() && stats.dim() == 3 &&
                  stats.size(0) == x.rows() && stats.size(1) == k && stats.size(2) == 4,
              "fused_gumbel: stats must be the forward's contiguous [", x.rows(), ", ", k, ", 4] ", compute,
              " statistics, got ", stats.sizes(), " ", stats.scalar_type());
  Tensor tau_keep;
  const auto [tau_rows, tau_value] = tau_source(tau_tensor, tau, compute, x.rows(), "row", tau_keep);
  const TopkBackwardArgs args{g.tensor.const_data_ptr(), g.layout, x.tensor.const_data_ptr(), x.layout,
                              grad_x.data_ptr(), contiguous_layout(x), grad_tau ? grad_tau->data_ptr() : nullptr,
                              stats.const_data_ptr(), x.rows(), x.classes, k, tau_rows, tau_value,
                              uint64_t(key), uint64_t(offset), dtype};
  at::parallel_for(0, x.rows(), grain(x.classes, k),
                   [&](int64_t begin, int64_t end) { FUSED_GUMBEL_ISA_CALL(topk_backward_rows(args, begin, end)); });
  return {grad_x, grad_tau};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_gumbel, CPU, m) {
  m.impl("topk_kernel_forward", &topk_kernel_forward);
  m.impl("topk_kernel_backward", &topk_kernel_backward);
}

}  // namespace cpu
}  // namespace fused_gumbel
