// fused_gumbel::kernel_forward / kernel_backward for CUDA tensors: the CUDA C++ twin of the
// Triton kernels (kernels/gumbel_softmax.py), registered with TORCH_LIBRARY_IMPL(fused_gumbel, CUDA).
// The schema is DEFined once in kernels/csrc/ops.cpp (see the native op contract); this file only
// turns tensors into the launch layer's parameters:
//   kernel_forward(Tensor logits, Tensor? tau_tensor, float tau, int mode, int dim, int key, int offset)
//       -> (Tensor, Tensor?)
//   kernel_backward(Tensor grad_y, Tensor src, Tensor? tau_tensor, float tau, bool hard, int dim, int key,
//                   int offset, bool tau_grad, Tensor? stats) -> (Tensor, Tensor?)
// The twin needs no row statistics from its forward (its streamed hard backward regenerates the
// noise once and keeps the chunk maxima in shared memory): the forward's second output is
// undefined and the backward ignores `stats`.
//
// Build (setup.py's hook): this file and twin_f32.cu, twin_f64.cu, twin_f16.cu, twin_bf16.cu,
// nvcc flags -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 (plus whatever archs are wanted),
// WITHOUT --use_fast_math (the noise series keeps a float32 subnormal constant; the MUFU calls are
// explicit PTX), include dir kernels/csrc/cuda. The twin_*.cu files need no torch headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "twin_launch.cuh"

namespace fused_gumbel {
namespace twin {
namespace {

// Stride of `sizes` flattened into one dim, or -1 when they cannot be (fused_gumbel/_layout.py).
int64_t merged_stride(at::IntArrayRef sizes, at::IntArrayRef strides) {
  int64_t merged = 0, expected = -1;
  for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 0; --i) {
    if (sizes[i] == 1) continue;
    if (expected < 0) {
      merged = strides[i];
    } else if (strides[i] != expected) {
      return -1;
    }
    expected = strides[i] * sizes[i];
  }
  return merged;
}

struct Rows {
  int64_t outer, classes, inner;
  int64_t rows() const { return outer * inner; }
};

Rows row_shape(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) return Rows{1, 1, 1};
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < dim; ++i) outer *= t.size(i);
  for (int64_t i = dim + 1; i < t.dim(); ++i) inner *= t.size(i);
  return Rows{outer, t.size(dim), inner};
}

// `t` viewed as [outer, K, inner]: (possibly a contiguous copy, its strides).
std::pair<at::Tensor, View> as_rows(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) return {t, View{0, 0, 0}};
  const auto sizes = t.sizes(), strides = t.strides();
  const int64_t outer = merged_stride(sizes.slice(0, dim), strides.slice(0, dim));
  const int64_t inner = merged_stride(sizes.slice(dim + 1), strides.slice(dim + 1));
  if (outer < 0 || inner < 0) return as_rows(t.contiguous(), dim);
  return {t, View{outer, strides[dim], inner}};
}

View contiguous_view(const Rows& s) { return View{s.classes * s.inner, s.inner, 1}; }

template <typename C>
Tau<C> tau_of(const std::optional<at::Tensor>& tau_tensor, double tau, int64_t rows) {
  if (!tau_tensor.has_value() || !tau_tensor->defined()) return Tau<C>{nullptr, static_cast<C>(tau), 0};
  const at::Tensor& t = *tau_tensor;
  TORCH_CHECK(t.dim() == 0 || (t.dim() == 1 && t.size(0) == rows),
              "fused_gumbel (CUDA twin): tau_tensor must be 0-dim or [rows]");
  return Tau<C>{t.data_ptr<C>(), C(1), t.dim() == 1 ? t.stride(0) : 0};
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fused_gumbel (CUDA twin): ", what, " launch failed: ", cudaGetErrorString(err),
              err == cudaErrorInvalidValue ? " (rows longer than the streamed kernel's shared-memory chunk table?)"
                                           : "");
}

void check_inputs(const at::Tensor& t, const std::optional<at::Tensor>& tau_tensor, int64_t dim, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fused_gumbel (CUDA twin): ", name, " must be a CUDA tensor");
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "fused_gumbel (CUDA twin): unsupported dtype ", st);
  TORCH_CHECK(dim >= 0 && (dim < t.dim() || (t.dim() == 0 && dim == 0)),
              "fused_gumbel (CUDA twin): dim out of range (the caller normalises it)");
  TORCH_CHECK(t.dim() == 0 || t.size(dim) < (int64_t(1) << 31) - 16, "fused_gumbel (CUDA twin): too many classes");
  if (tau_tensor.has_value() && tau_tensor->defined()) {
    TORCH_CHECK(tau_tensor->device() == t.device(), "fused_gumbel (CUDA twin): tau_tensor on another device");
    TORCH_CHECK(tau_tensor->scalar_type() == compute_type(st),
                "fused_gumbel (CUDA twin): tau_tensor must be in the compute dtype ", compute_type(st));
  }
}

std::tuple<at::Tensor, std::optional<at::Tensor>> kernel_forward(const at::Tensor& logits,
                                                                  const std::optional<at::Tensor>& tau_tensor,
                                                                  double tau, int64_t mode, int64_t dim, int64_t key,
                                                                  int64_t offset) {
  check_inputs(logits, tau_tensor, dim, "logits");
  TORCH_CHECK(mode >= MODE_SOFT && mode <= MODE_INDEX, "fused_gumbel (CUDA twin): mode must be 0, 1 or 2");
  const c10::cuda::CUDAGuard guard(logits.device());
  const Rows shape = row_shape(logits, dim);
  auto [x, xv] = as_rows(logits, dim);
  at::Tensor out, index;
  if (mode == MODE_INDEX) {
    auto sizes = logits.sizes().vec();
    if (!sizes.empty()) sizes.erase(sizes.begin() + dim);
    index = at::empty(sizes, logits.options().dtype(at::kLong));
    out = index;
  } else {
    out = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  }
  if (shape.rows() == 0 || shape.classes == 0) {
    if (mode == MODE_INDEX) index.fill_(-1);  // no class to draw: every row is invalid
    return {out, std::nullopt};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto fill = [&](auto& p) {
    p.x = x.data_ptr();
    p.y = mode == MODE_INDEX ? nullptr : out.data_ptr();
    p.index = mode == MODE_INDEX ? index.data_ptr<int64_t>() : nullptr;
    p.rows = shape.rows();
    p.K = shape.classes;
    p.inner = shape.inner;
    p.xv = xv;
    p.yv = contiguous_view(shape);
    p.key = static_cast<uint64_t>(key) ^ twin::DOMAIN_TAG;  // the op takes the seed (ops.cpp)
    p.offset = static_cast<uint64_t>(offset);
  };
  cudaError_t err;
  switch (logits.scalar_type()) {
    case at::kDouble: {
      FwdParams<double> p{};
      fill(p);
      p.tau = tau_of<double>(tau_tensor, tau, shape.rows());
      err = forward_f64(static_cast<int>(mode), p, stream);
      break;
    }
    default: {
      FwdParams<float> p{};
      fill(p);
      p.tau = tau_of<float>(tau_tensor, tau, shape.rows());
      const auto st = logits.scalar_type();
      err = st == at::kFloat  ? forward_f32(static_cast<int>(mode), p, stream)
            : st == at::kHalf ? forward_f16(static_cast<int>(mode), p, stream)
                              : forward_bf16(static_cast<int>(mode), p, stream);
    }
  }
  check_launch(err, "forward");
  return {out, std::nullopt};
}

std::tuple<at::Tensor, std::optional<at::Tensor>> kernel_backward(
    const at::Tensor& grad_y, const at::Tensor& src, const std::optional<at::Tensor>& tau_tensor, double tau,
    bool hard, int64_t dim, int64_t key, int64_t offset, bool tau_grad, const std::optional<at::Tensor>& stats) {
  (void)stats;  // the twin's hard backward needs no statistics from its forward
  check_inputs(src, tau_tensor, dim, "src");
  TORCH_CHECK(grad_y.sizes() == src.sizes(), "fused_gumbel (CUDA twin): grad_y and src shapes differ");
  TORCH_CHECK(grad_y.device() == src.device(), "fused_gumbel (CUDA twin): grad_y and src on different devices");
  const c10::cuda::CUDAGuard guard(src.device());
  const Rows shape = row_shape(src, dim);
  auto [s, sv] = as_rows(src, dim);
  auto [g, gv] = as_rows(grad_y.scalar_type() == src.scalar_type() ? grad_y : grad_y.to(src.scalar_type()), dim);
  at::Tensor grad_x = at::empty(src.sizes(), src.options().memory_format(at::MemoryFormat::Contiguous));
  const bool want_tau = tau_grad && tau_tensor.has_value() && tau_tensor->defined();
  std::optional<at::Tensor> grad_tau;
  if (want_tau) grad_tau = at::empty({shape.rows()}, src.options().dtype(compute_type(src.scalar_type())));
  if (shape.rows() == 0 || shape.classes == 0) {
    if (grad_tau) grad_tau->zero_();
    return {grad_x, grad_tau};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto fill = [&](auto& p) {
    p.grad_y = g.data_ptr();
    p.src = s.data_ptr();
    p.grad_x = grad_x.data_ptr();
    p.rows = shape.rows();
    p.K = shape.classes;
    p.inner = shape.inner;
    p.gv = gv;
    p.sv = sv;
    p.xv = contiguous_view(shape);
    p.key = static_cast<uint64_t>(key) ^ twin::DOMAIN_TAG;  // the op takes the seed (ops.cpp)
    p.offset = static_cast<uint64_t>(offset);
  };
  cudaError_t err;
  switch (src.scalar_type()) {
    case at::kDouble: {
      BwdParams<double> p{};
      fill(p);
      p.tau = tau_of<double>(tau_tensor, tau, shape.rows());
      p.grad_tau = want_tau ? grad_tau->data_ptr<double>() : nullptr;
      err = backward_f64(hard, p, stream);
      break;
    }
    default: {
      BwdParams<float> p{};
      fill(p);
      p.tau = tau_of<float>(tau_tensor, tau, shape.rows());
      p.grad_tau = want_tau ? grad_tau->data_ptr<float>() : nullptr;
      const auto st = src.scalar_type();
      err = st == at::kFloat  ? backward_f32(hard, p, stream)
            : st == at::kHalf ? backward_f16(hard, p, stream)
                              : backward_bf16(hard, p, stream);
    }
  }
  check_launch(err, "backward");
  return {grad_x, grad_tau};
}

}  // namespace
}  // namespace twin
}  // namespace fused_gumbel

TORCH_LIBRARY_IMPL(fused_gumbel, CUDA, m) {
  m.impl("kernel_forward", &fused_gumbel::twin::kernel_forward);
  m.impl("kernel_backward", &fused_gumbel::twin::kernel_backward);
}
