// The fused CPU Gumbel top-k kernel, compiled once per instruction set (the gumbel_topk_cpu_{default,
// avx2,avx512}.cpp wrappers define KERNEL_ISA; setup.py gives each its flags). The math is
// kernels/gumbel_topk.py's (see its docstring), one row at a time in a compute-dtype row buffer:
//
//   a = x + g, g gumbel_softmax's noise (Philox words of the RNG spec's row mapping, turned into
//       noise by the Gumbel-Softmax kernel's own gumbel_noise of this ISA build: the same noise);
//   index / hard: the k largest entries of a, ties to the lowest index (a partial sort);
//   soft (and hard with a gradient to come): Xie & Ermon's recursion, alpha_1 = a, for j = 1..k
//       m = max alpha, i* its first argmax, m2 the runner-up (m when there is none),
//       e'_i = exp((alpha_i - m2) / tau) off i* (0 on it), R' = sum e', c = exp((m2 - m) / tau),
//       S = 1 + c R', p_i* = 1 / S, p_i = e'_i c / S,   y += p,
//       alpha_i += log1p(-p_i) (i != i*),  alpha_i* += (m2 - m) / tau + log R' - log S (R' > 0),
//   one pass over the row per step for e' and R', one for p, y and alpha; (m, m2, R', i*) of each
//   step are saved for the backward ([rows, k, 4], compute dtype; i* as a float, informational).
//
// The backward regenerates a, replays the recursion from the saved (m, m2, R') with the forward's
// own functions (so alpha_j is bit for bit the forward's, and i* is found again as the first index
// of m), keeps alpha_j and e'_j of every step (or, for rows where k K is large, of one segment of
// steps at a time between checkpoints), and runs the adjoint recursion from step k down to 1
// (b = dL/dalpha_{j+1}, b* = b_i* when R' > 0 else 0, G = dL/dy, v_i = b_i p_i / (1 - p_i) off i*):
//   dL/dt_i  = p_i (G_i - <G, p>) + p_i (V - b*) - v_i + b* e'_i / R'   (i != i*; V = sum v)
//   dL/dt_i* = p_i* (G_i* - <G, p>) + p_i* (V - b*),
//   b += dL/dt / tau,   dL/dtau -= sum_i dL/dt_i (alpha_i - m) / tau^2 (terms with dL/dt_i = 0 left out).
// Rows with a NaN or no finite max are invalid: NaN outputs (index -1), as the Triton kernels.
// Vector passes use at::vec (Sleef's 1-ulp exp and log1p on AVX2 / AVX-512, std:: in the baseline).

#include <algorithm>
#include <numeric>

#include <ATen/cpu/vec/functional.h>

#include "gumbel_softmax_cpu.h"
#include "gumbel_topk_cpu.h"
#include "kernel_common.h"

namespace fused_gumbel {
namespace cpu {
namespace KERNEL_ISA {
namespace {

// Words (4 per Philox call) one block of rows aims for: the block's noise stays in L1.
constexpr int64_t kTopkBlockWords = 1024;
// The backward keeps alpha_j and e'_j of all k steps of a row (2 k K values) up to this many values;
// beyond it, of one segment of steps at a time, replayed from checkpoints (about sqrt(8 k) K values in all).
constexpr int64_t kStepCacheValues = int64_t(1) << 21;

template <typename acc_t>
constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();

// fn(scalar_t(), acc_t()) for the tensor dtype and its compute dtype (float32 math for the 16-bit dtypes).
template <typename Fn>
void with_types(Dtype dtype, const Fn& fn) {
  switch (dtype) {
    case Dtype::Float: return fn(float(), float());
    case Dtype::Double: return fn(double(), double());
    case Dtype::Half: return fn(c10::Half(), float());
    case Dtype::BFloat16: return fn(c10::BFloat16(), float());
  }
}

// The Gumbel noise of a block of rows: row j's K values start at row(j).
template <typename acc_t>
struct NoiseBlock {
  int64_t Q, per_block;
  std::vector<uint32_t> words;
  std::vector<acc_t> noise;
  NoiseBlock(int64_t K, int64_t max_rows)
      : Q((K + 3) / 4), per_block(std::max<int64_t>(1, std::min(max_rows, kTopkBlockWords / (4 * Q)))),
        words((per_block * 4 * Q + 15) / 16 * 16), noise(words.size()) {}

  void fill(uint64_t seed, uint64_t offset, int64_t r0, int64_t count) {
    philox_fill(seed, offset, uint64_t(r0) * uint64_t(Q), count * Q, words.data());
    // All words, the padding past the block's last row too: a whole number of vectors, so every
    // class's noise comes from the vector passes, wherever its row falls in the block.
    gumbel_noise(words.data(), noise.data(), int64_t(words.size()));
  }
  const acc_t* row(int64_t j) const { return noise.data() + j * 4 * Q; }
};

// a = x + g of one row; false, with a zeroed, for a row with a NaN or no finite max (the Triton
// kernels run such rows on zeros and write NaN).
template <typename scalar_t, typename acc_t>
bool perturbed_row(const scalar_t* x, int64_t s_k, const acc_t* g, int64_t K, acc_t* a) {
  load_row(x, s_k, K, a);
  acc_t m = -kInf<acc_t>;
  bool nan = false;
  for (int64_t i = 0; i < K; ++i) {
    a[i] += g[i];
    nan |= a[i] != a[i];
    m = a[i] > m ? a[i] : m;
  }
  if (!nan && std::abs(m) < kInf<acc_t>) return true;
  std::fill(a, a + K, acc_t(0));
  return false;
}

template <typename scalar_t>
void fill_row(scalar_t* p, int64_t s_k, int64_t K, scalar_t value) {
  for (int64_t i = 0; i < K; ++i) p[i * s_k] = value;
}

template <typename acc_t>
acc_t max_of(const acc_t* a, int64_t n) {
  if (n == 0) return -kInf<acc_t>;
  return at::vec::reduce_all<acc_t>([](Vec<acc_t>& u, Vec<acc_t>& v) { return at::vec::maximum(u, v); }, a, n);
}

template <typename acc_t>
acc_t sum_of(const acc_t* a, int64_t n) {
  return at::vec::reduce_all<acc_t>([](Vec<acc_t>& u, Vec<acc_t>& v) { return u + v; }, a, n);
}

// One step's statistics: m, the runner-up m2, R' and the first argmax i*.
template <typename acc_t>
struct Step {
  acc_t shift, runner_up, rest;
  int64_t best;
};

// e' = exp((alpha - m2) / tau) off i*, 0 on it (exp(-inf) = 0 covers -inf entries: m2 is finite).
template <typename acc_t>
void exp_rest(const acc_t* alpha, int64_t K, acc_t runner_up, acc_t tau, int64_t best, acc_t* e) {
  using V = Vec<acc_t>;
  const V m2(runner_up), t(tau);
  at::vec::map([&](V a) { return ((a - m2) / t).exp(); }, e, alpha, K);
  e[best] = 0;
}

// The reductions of one step (m, i*, m2, R') and e' into e.
template <typename acc_t>
Step<acc_t> step_statistics(const acc_t* alpha, int64_t K, acc_t tau, acc_t* e) {
  const acc_t m = max_of(alpha, K);
  const int64_t best = std::find(alpha, alpha + K, m) - alpha;
  acc_t runner_up = std::max(max_of(alpha, best), max_of(alpha + best + 1, K - best - 1));
  if (!(runner_up > -kInf<acc_t>)) runner_up = m;
  exp_rest(alpha, K, runner_up, tau, best, e);
  return {m, runner_up, sum_of(e, K), best};
}

// The step's softmax scale c and denominator S.
template <typename acc_t>
std::pair<acc_t, acc_t> scale_and_total(const Step<acc_t>& st, acc_t tau) {
  const acc_t scale = std::exp((st.runner_up - st.shift) / tau);
  return {scale, acc_t(1) + scale * st.rest};
}

// y += p (y may be null) and alpha_{j+1} = alpha_j + log(1 - p), in place, from e' and the statistics.
// Off i* p = e' c / S <= 1/2 and log1p(-p) is exact; the vector pass sees p = 0 at i* (e' = 0 there,
// adding exactly 0 to alpha and y), which is then given p_i* = 1/S and log(1 - p_i*) = log(c R' / S).
template <typename acc_t>
void apply_step(const Step<acc_t>& st, acc_t tau, const acc_t* e, acc_t* alpha, acc_t* y, int64_t K) {
  using V = Vec<acc_t>;
  const auto [scale, total] = scale_and_total(st, tau);
  const V c(scale), s(total);
  int64_t i = 0;
  for (; i + V::size() <= K; i += V::size()) {
    const V p = (V::loadu(e + i) * c) / s;
    if (y) (V::loadu(y + i) + p).store(y + i);
    (V::loadu(alpha + i) + (-p).log1p()).store(alpha + i);
  }
  for (; i < K; ++i) {
    const acc_t p = (e[i] * scale) / total;
    if (y) y[i] += p;
    alpha[i] += std::log1p(-p);
  }
  if (y) y[st.best] += acc_t(1) / total;
  if (st.rest > 0) alpha[st.best] += (st.runner_up - st.shift) / tau + std::log(st.rest) - std::log(total);
}

// The exact top-k of a valid row: indices in decreasing order of a, ties to the lowest index.
template <typename acc_t>
void top_indices(const acc_t* a, int64_t K, int64_t k, std::vector<int64_t>& order) {
  std::iota(order.begin(), order.end(), int64_t(0));
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [a](int64_t i, int64_t j) { return a[i] > a[j] || (a[i] == a[j] && i < j); });
}

template <typename scalar_t, typename acc_t>
void forward_impl(const TopkForwardArgs& args, int64_t begin, int64_t end) {
  const int64_t K = args.classes, k = args.k;
  const auto* x = static_cast<const scalar_t*>(args.x);
  auto* y_out = static_cast<scalar_t*>(args.y);
  auto* stats = static_cast<acc_t*>(args.stats);
  const bool relax = args.mode == 0 || stats;
  NoiseBlock<acc_t> noise(K, end - begin);
  std::vector<acc_t> alpha(K), e(K), y(args.mode == 0 ? K : 0);
  std::vector<int64_t> order(args.mode != 0 ? K : 0);
  const scalar_t nan_out(std::numeric_limits<float>::quiet_NaN());
  for (int64_t r0 = begin; r0 < end; r0 += noise.per_block) {
    const int64_t count = std::min(noise.per_block, end - r0);
    noise.fill(args.seed, args.offset, r0, count);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t r = r0 + j;
      const bool valid = perturbed_row(x + args.x_layout.row_offset(r), args.x_layout.s_k, noise.row(j), K,
                                       alpha.data());
      if (args.mode == 2) {
        int64_t* index = args.index + args.index_layout.row_offset(r);
        if (valid) top_indices(alpha.data(), K, k, order);
        for (int64_t i = 0; i < k; ++i) index[i * args.index_layout.s_k] = valid ? order[i] : -1;
        continue;
      }
      scalar_t* out = y_out + args.y_layout.row_offset(r);
      const int64_t s_k = args.y_layout.s_k;
      if (args.mode == 1) {  // the exact k-hot, in the output dtype
        if (valid) {
          top_indices(alpha.data(), K, k, order);
          fill_row(out, s_k, K, scalar_t(0.0f));
          for (int64_t i = 0; i < k; ++i) out[order[i] * s_k] = scalar_t(1.0f);
        } else {
          fill_row(out, s_k, K, nan_out);
        }
      }
      if (!relax) continue;
      const acc_t tau = row_tau<acc_t>(args.tau_rows, args.tau, r);
      if (args.mode == 0) std::fill(y.begin(), y.end(), acc_t(0));
      for (int64_t step = 0; step < k; ++step) {
        const Step<acc_t> st = step_statistics(alpha.data(), K, tau, e.data());
        apply_step(st, tau, e.data(), alpha.data(), args.mode == 0 ? y.data() : nullptr, K);
        if (stats) {
          acc_t* saved = stats + 4 * (r * k + step);
          saved[0] = st.shift;
          saved[1] = st.runner_up;
          saved[2] = st.rest;
          saved[3] = acc_t(st.best);
        }
      }
      if (args.mode == 0) {
        if (valid) {
          store_row(y.data(), K, out, s_k);
        } else {
          fill_row(out, s_k, K, nan_out);
        }
      }
    }
  }
}

// Steps per segment of the backward's step cache: all k when 2 k K values fit kStepCacheValues,
// else about sqrt(k / 2) (checkpoints k / c and the segment 2 c: sqrt(8 k) K values at most).
inline int64_t segment_steps(int64_t K, int64_t k) {
  if (2 * k * K <= kStepCacheValues) return k;
  return std::max<int64_t>(1, int64_t(std::ceil(std::sqrt(double(k) / 2))));
}

// The backward's per-row buffers: b, G, p, v, checkpoints of alpha at segment starts, and alpha_j
// and e'_j of the steps of the segment in hand.
template <typename acc_t>
struct BackwardScratch {
  int64_t K, k, seg, segments;
  std::vector<acc_t> adjoint, grad_out, p, v, checkpoints, alphas, exps;
  std::vector<Step<acc_t>> steps;  // the segment's statistics
  BackwardScratch(int64_t K, int64_t k)
      : K(K), k(k), seg(segment_steps(K, k)), segments((k + seg - 1) / seg), adjoint(K), grad_out(K), p(K), v(K),
        checkpoints(segments * K), alphas(seg * K), exps(seg * K), steps(seg) {}
};

// The saved statistics of step j of row r; i* found again as the first index of m in the replayed alpha_j.
template <typename acc_t>
Step<acc_t> saved_step(const acc_t* stats, int64_t r, int64_t k, int64_t j, const acc_t* alpha, int64_t K) {
  const acc_t* saved = stats + 4 * (r * k + j);
  return {saved[0], saved[1], saved[2], std::find(alpha, alpha + K, saved[0]) - alpha};
}

// One adjoint step (step j, alpha_j and e'_j given): b += dL/dt / tau; returns this step's
// sum_i dL/dt_i (alpha_i - m), which the temperature's gradient takes / tau^2.
template <typename acc_t>
acc_t adjoint_step(const Step<acc_t>& st, acc_t tau, const acc_t* alpha, const acc_t* e, BackwardScratch<acc_t>& s) {
  using V = Vec<acc_t>;
  const int64_t K = s.K;
  const auto [scale, total] = scale_and_total(st, tau);
  const bool has_rest = st.rest > 0;
  acc_t* b = s.adjoint.data();
  const acc_t* G = s.grad_out.data();
  acc_t *p = s.p.data(), *v = s.v.data();
  const acc_t b_best = has_rest ? b[st.best] : acc_t(0);
  // p and v off i* (0 at i*, where e' = 0), and <G, p>, V; i*'s p = 1/S joins <G, p> below.
  const V c(scale), S(total), one(acc_t(1));
  at::vec::map([&](V ei) { return (ei * c) / S; }, p, e, K);
  at::vec::map2([&](V bi, V pi) { return bi * pi / (one - pi); }, v, b, p, K);
  const acc_t p_best = acc_t(1) / total;
  const acc_t grad_dot_p = at::vec::map2_reduce_all<acc_t>([](V g, V pi) { return g * pi; },
                                                           [](V u, V w) { return u + w; }, G, p, K) +
                           G[st.best] * p_best;
  const acc_t v_sum = sum_of(v, K);
  const acc_t inv_rest = acc_t(1) / (has_rest ? st.rest : acc_t(1));
  const V gp(grad_dot_p), vb(v_sum - b_best), bb(b_best), ir(inv_rest), t(tau), m(st.shift), zero(acc_t(0));
  V tau_terms(acc_t(0));
  int64_t i = 0;
  acc_t tau_sum = 0;
  for (; i + V::size() <= K; i += V::size()) {
    const V pi = V::loadu(p + i);
    const V grad_t = pi * (V::loadu(G + i) - gp) + pi * vb - V::loadu(v + i) + bb * (V::loadu(e + i) * ir);
    (V::loadu(b + i) + grad_t / t).store(b + i);
    tau_terms = tau_terms + V::blendv(grad_t * (V::loadu(alpha + i) - m), zero, grad_t == zero);
  }
  for (; i < K; ++i) {
    const acc_t grad_t = p[i] * (G[i] - grad_dot_p) + p[i] * (v_sum - b_best) - v[i] + b_best * (e[i] * inv_rest);
    b[i] += grad_t / tau;
    if (grad_t != 0) tau_sum += grad_t * (alpha[i] - st.shift);
  }
  // i*: the pass above added exactly 0 there (p = v = e' = 0).
  const acc_t grad_t_best = p_best * (G[st.best] - grad_dot_p) + p_best * (v_sum - b_best);
  b[st.best] += grad_t_best / tau;
  if (grad_t_best != 0) tau_sum += grad_t_best * (alpha[st.best] - st.shift);
  return tau_sum + at::vec::vec_reduce_all<acc_t>([](V& u, V& w) { return u + w; }, tau_terms);
}

template <typename scalar_t, typename acc_t>
void backward_impl(const TopkBackwardArgs& args, int64_t begin, int64_t end) {
  const int64_t K = args.classes, k = args.k;
  const auto* x = static_cast<const scalar_t*>(args.x);
  const auto* grad_y = static_cast<const scalar_t*>(args.grad_y);
  auto* grad_x = static_cast<scalar_t*>(args.grad_x);
  auto* tau_grad = static_cast<acc_t*>(args.tau_grad_rows);
  const auto* stats = static_cast<const acc_t*>(args.stats);
  NoiseBlock<acc_t> noise(K, end - begin);
  BackwardScratch<acc_t> s(K, k);
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (int64_t r0 = begin; r0 < end; r0 += noise.per_block) {
    const int64_t count = std::min(noise.per_block, end - r0);
    noise.fill(args.seed, args.offset, r0, count);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t r = r0 + j;
      scalar_t* out = grad_x + args.gx_layout.row_offset(r);
      acc_t* alpha0 = s.checkpoints.data();
      if (!perturbed_row(x + args.x_layout.row_offset(r), args.x_layout.s_k, noise.row(j), K, alpha0)) {
        fill_row(out, args.gx_layout.s_k, K, scalar_t(nan));
        if (tau_grad) tau_grad[r] = nan;
        continue;
      }
      const acc_t tau = row_tau<acc_t>(args.tau_rows, args.tau, r);
      load_row(grad_y + args.g_layout.row_offset(r), args.g_layout.s_k, K, s.grad_out.data());
      std::fill(s.adjoint.begin(), s.adjoint.end(), acc_t(0));
      // Checkpoints: alpha at the first step of each segment (the first is a itself).
      for (int64_t seg = 1; seg < s.segments; ++seg) {
        acc_t* next = s.checkpoints.data() + seg * K;
        std::copy(next - K, next, next);
        for (int64_t step = (seg - 1) * s.seg; step < seg * s.seg; ++step) {
          const Step<acc_t> st = saved_step(stats, r, k, step, next, K);
          exp_rest(next, K, st.runner_up, tau, st.best, s.exps.data());
          apply_step(st, tau, s.exps.data(), next, static_cast<acc_t*>(nullptr), K);
        }
      }
      acc_t tau_sum = 0;
      for (int64_t seg = s.segments - 1; seg >= 0; --seg) {
        const int64_t first = seg * s.seg, last = std::min(k, first + s.seg);
        // Replay the segment, keeping alpha_j and e'_j of each of its steps.
        std::copy(s.checkpoints.data() + seg * K, s.checkpoints.data() + (seg + 1) * K, s.alphas.data());
        for (int64_t step = first; step < last; ++step) {
          acc_t* alpha = s.alphas.data() + (step - first) * K;
          const Step<acc_t> st = s.steps[step - first] = saved_step(stats, r, k, step, alpha, K);
          exp_rest(alpha, K, st.runner_up, tau, st.best, s.exps.data() + (step - first) * K);
          if (step + 1 < last) {
            std::copy(alpha, alpha + K, alpha + K);
            apply_step(st, tau, s.exps.data() + (step - first) * K, alpha + K, static_cast<acc_t*>(nullptr), K);
          }
        }
        for (int64_t step = last - 1; step >= first; --step) {
          tau_sum += adjoint_step(s.steps[step - first], tau, s.alphas.data() + (step - first) * K,
                                  s.exps.data() + (step - first) * K, s);
        }
      }
      store_row(s.adjoint.data(), K, out, args.gx_layout.s_k);
      if (tau_grad) tau_grad[r] = -tau_sum / (tau * tau);
    }
  }
}

}  // namespace

void topk_forward_rows(const TopkForwardArgs& args, int64_t begin, int64_t end) {
  with_types(args.dtype, [&](auto scalar, auto acc) {
    forward_impl<decltype(scalar), decltype(acc)>(args, begin, end);
  });
}

void topk_backward_rows(const TopkBackwardArgs& args, int64_t begin, int64_t end) {
  with_types(args.dtype, [&](auto scalar, auto acc) {
    backward_impl<decltype(scalar), decltype(acc)>(args, begin, end);
  });
}

}  // namespace KERNEL_ISA
}  // namespace cpu
}  // namespace fused_gumbel
