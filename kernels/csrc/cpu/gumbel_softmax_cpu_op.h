// The CPU implementation of fused_gumbel::kernel_forward (gumbel_softmax_cpu.cpp), for host code in this
// extension that calls it without the dispatcher (the eager fast path, ../eager.cpp).
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

}  // namespace cpu
}  // namespace fused_gumbel
