// The CPU implementations of fused_gumbel::kernel_forward and kernel_backward (gumbel_softmax_cpu.cpp),
// for host code in this extension that calls them without the dispatcher (the eager fast path and
// its C++ autograd Function, ../eager.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace fused_gumbel {
namespace cpu {

std::tuple<at::Tensor, std::optional<at::Tensor>> forward(const at::Tensor& logits,
                                                          const std::optional<at::Tensor>& tau_tensor, double tau,
                                                          int64_t mode, int64_t dim, int64_t key, int64_t offset);

std::tuple<at::Tensor, std::optional<at::Tensor>> backward(const at::Tensor& grad_y, const at::Tensor& src,
                                                           const std::optional<at::Tensor>& tau_tensor, double tau,
                                                           bool hard, int64_t dim, int64_t key, int64_t offset,
                                                           bool tau_grad);

}  // namespace cpu
}  // namespace fused_gumbel
