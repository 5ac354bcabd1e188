// The fused CPU relaxed-Bernoulli (binary Concrete) kernel, compiled once per instruction set (the
// relaxed_bernoulli_cpu_{default,avx2,avx512}.cpp wrappers define KERNEL_ISA; setup.py gives each
// its flags). The math is kernels/relaxed_bernoulli.py's, elementwise over the row-major elements:
//
//   L = log(u) - log(1 - u)  (RNG spec, elementwise mapping: element e is word e % 4 of Philox call
//       e / 4; b = max(w >> 1, 1), u = b 2^-31 and 1 - u = (2^31 - b) 2^-31 both from the integer),
//   soft:  y = sigmoid(s), s = (x + L) / tau;    hard: y = 1[x + L > 0] (NaN where x is NaN);
//   backward (both modes; hard is straight-through), the noise regenerated:
//       dx = dy sigmoid(s) sigmoid(-s) / tau,    dtau = -dx s  (0 where the slope is 0).
//
// sigmoid(s) and sigmoid(-s) come from one e = exp(-|s|): 1 / (1 + e) and e / (1 + e), so neither
// the sample near 0 (s << 0) nor the slope loses its precision to a rounded 1 - y. Both logs are
// at::vec's log (Sleef's 1-ulp log on AVX2 / AVX-512, std::log in the baseline build), which keeps
// L within a few ulp of its float64 definition, as the spec states for the reference.
// Work goes in blocks of kBernoulliBlock elements: the block's words, noise and operands live in
// per-thread scratch padded to whole vectors, so every pass is a flat vector loop with no tail.

#include "kernel_common.h"
#include "relaxed_bernoulli_cpu.h"

namespace fused_gumbel {
namespace cpu {
namespace KERNEL_ISA {
namespace {

constexpr double kUniformScale = 4.656612873077393e-10;  // 2^-31

// One thread's block scratch: Philox words and compute-dtype operands, zero-padded to whole vectors.
template <typename acc_t>
struct BernoulliScratch {
  std::vector<uint32_t> words = std::vector<uint32_t>(kBernoulliBlock);
  std::vector<acc_t> noise = std::vector<acc_t>(kBernoulliBlock), x = noise, tau = noise, dy = noise, out = noise,
                     out_b = noise;
};

// Logistic noise of n words (at most kBernoulliBlock) into s.noise (uses s.out as scratch).
template <typename acc_t>
void logistic_from_words(const uint32_t* words, int64_t n, BernoulliScratch<acc_t>& s) {
  acc_t* u = s.out.data();
  acc_t* complement = s.noise.data();
  const acc_t scale = acc_t(kUniformScale);
  for (int64_t i = 0; i < n; ++i) {  // int32 -> compute dtype rounds once, as the reference's int64 -> float
    const int32_t b = std::max<int32_t>(int32_t(words[i] >> 1), 1);
    u[i] = acc_t(b) * scale;
    complement[i] = acc_t(int32_t(0x7FFFFFFF - b) + 1) * scale;
  }
  using V = Vec<acc_t>;
  for (int64_t i = 0; i < n; i += V::size()) (V::loadu(u + i).log() - V::loadu(complement + i).log()).store(complement + i);
}

// Elements [e0, e0 + n) of the call's logistic noise into s.noise (e0 a multiple of 4).
template <typename acc_t>
void logistic_block(uint64_t seed, uint64_t offset, int64_t e0, int64_t n, BernoulliScratch<acc_t>& s) {
  philox_fill(seed, offset, uint64_t(e0) / 4, (n + 3) / 4, s.words.data());
  logistic_from_words(s.words.data(), n, s);
}

// Loads the block's temperatures into s.tau: per element, or the scalar repeated.
template <typename acc_t>
void tau_block(const void* tau_elems, double tau, int64_t e0, int64_t n, BernoulliScratch<acc_t>& s) {
  if (tau_elems) {
    std::memcpy(s.tau.data(), static_cast<const acc_t*>(tau_elems) + e0, n * sizeof(acc_t));
  } else {
    std::fill(s.tau.begin(), s.tau.begin() + n, acc_t(tau));
  }
}

// e = exp(-|s|), r = 1 / (1 + e): sigmoid(s) is r for s >= 0 and e r below, sigmoid(-s) the other one.
template <typename V>
inline void sigmoid_parts(const V& s, V& e, V& r) {
  e = (-s.abs()).exp();
  using acc_t = typename V::value_type;
  r = V(acc_t(1)) / (V(acc_t(1)) + e);
}

template <typename scalar_t, typename acc_t>
void forward_impl(const BernoulliForwardArgs& args, int64_t begin, int64_t end) {
  using V = Vec<acc_t>;
  BernoulliScratch<acc_t> s;
  const auto* x = static_cast<const scalar_t*>(args.x);
  auto* y = static_cast<scalar_t*>(args.y);
  const V zero(acc_t(0)), one(acc_t(1)), nan(std::numeric_limits<acc_t>::quiet_NaN());
  for (int64_t block = begin; block < end; ++block) {
    const int64_t e0 = block * kBernoulliBlock, n = std::min(kBernoulliBlock, args.numel - e0);
    logistic_block(args.seed, args.offset, e0, n, s);
    to_compute(x + e0, s.x.data(), n);
    if (args.mode == 0) tau_block(args.tau_elems, args.tau, e0, n, s);
    for (int64_t i = 0; i < n; i += V::size()) {
      const V z = V::loadu(s.x.data() + i) + V::loadu(s.noise.data() + i);
      V out;
      if (args.mode == 0) {
        const V scaled = z / V::loadu(s.tau.data() + i);
        V e, r;
        sigmoid_parts(scaled, e, r);
        out = V::blendv(e * r, r, scaled >= zero);
      } else {
        out = V::blendv(V::blendv(zero, one, z > zero), nan, z != z);
      }
      out.store(s.out.data() + i);
    }
    from_compute(s.out.data(), y + e0, n);
  }
}

template <typename acc_t>
acc_t sum_first(const acc_t* a, int64_t n) {
  acc_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += a[i];
  return total;
}

template <typename scalar_t, typename acc_t>
void backward_impl(const BernoulliBackwardArgs& args, int64_t begin, int64_t end) {
  using V = Vec<acc_t>;
  BernoulliScratch<acc_t> s;
  const auto* x = static_cast<const scalar_t*>(args.x);
  const auto* grad_y = static_cast<const scalar_t*>(args.grad_y);
  auto* grad_x = static_cast<scalar_t*>(args.grad_x);
  auto* tau_grad = static_cast<acc_t*>(args.tau_grad);
  const V zero(acc_t(0));
  for (int64_t block = begin; block < end; ++block) {
    const int64_t e0 = block * kBernoulliBlock, n = std::min(kBernoulliBlock, args.numel - e0);
    logistic_block(args.seed, args.offset, e0, n, s);
    to_compute(x + e0, s.x.data(), n);
    to_compute(grad_y + e0, s.dy.data(), n);
    tau_block(args.tau_elems, args.tau, e0, n, s);
    for (int64_t i = 0; i < n; i += V::size()) {
      const V tau = V::loadu(s.tau.data() + i);
      const V scaled = (V::loadu(s.x.data() + i) + V::loadu(s.noise.data() + i)) / tau;
      V e, r;
      sigmoid_parts(scaled, e, r);
      const V slope = e * r * r;  // sigmoid(s) sigmoid(-s)
      const V grad_z = V::loadu(s.dy.data() + i) * slope / tau;
      grad_z.store(s.out.data() + i);
      // Saturated elements (infinite logits) have slope 0: their dtau is 0, not 0 * inf; NaN stays NaN.
      if (tau_grad) (-grad_z * V::blendv(scaled, zero, slope == zero)).store(s.out_b.data() + i);
    }
    from_compute(s.out.data(), grad_x + e0, n);
    if (tau_grad && args.tau_elems) {
      std::memcpy(tau_grad + e0, s.out_b.data(), n * sizeof(acc_t));
    } else if (tau_grad) {
      tau_grad[block] = sum_first(s.out_b.data(), n);
    }
  }
}

}  // namespace

void bernoulli_forward_blocks(const BernoulliForwardArgs& args, int64_t begin, int64_t end) {
  switch (args.dtype) {
    case Dtype::Float: return forward_impl<float, float>(args, begin, end);
    case Dtype::Double: return forward_impl<double, double>(args, begin, end);
    case Dtype::Half: return forward_impl<c10::Half, float>(args, begin, end);
    case Dtype::BFloat16: return forward_impl<c10::BFloat16, float>(args, begin, end);
  }
}

void bernoulli_backward_blocks(const BernoulliBackwardArgs& args, int64_t begin, int64_t end) {
  switch (args.dtype) {
    case Dtype::Float: return backward_impl<float, float>(args, begin, end);
    case Dtype::Double: return backward_impl<double, double>(args, begin, end);
    case Dtype::Half: return backward_impl<c10::Half, float>(args, begin, end);
    case Dtype::BFloat16: return backward_impl<c10::BFloat16, float>(args, begin, end);
  }
}

// The logistic noise of n raw Philox words (float32, or float64 when float64), on the kernels' own
// code path (a test hook).
void logistic_noise(const uint32_t* words, int64_t n, bool float64, void* out) {
  auto run = [&](auto* typed) {
    using acc_t = std::remove_pointer_t<decltype(typed)>;
    BernoulliScratch<acc_t> s;
    for (int64_t i = 0; i < n; i += kBernoulliBlock) {
      const int64_t count = std::min(kBernoulliBlock, n - i);
      logistic_from_words(words + i, count, s);
      std::memcpy(typed + i, s.noise.data(), count * sizeof(acc_t));
    }
  };
  if (float64) {
    run(static_cast<double*>(out));
  } else {
    run(static_cast<float*>(out));
  }
}

}  // namespace KERNEL_ISA
}  // namespace cpu
}  // namespace fused_gumbel
