// The fused CPU Gumbel top-k kernel, compiled once per instruction set (the gumbel_topk_cpu_{default,
// avx2,avx512}.cpp wrappers define KERNEL_ISA; setup.py gives each its flags). The math is
// kernels/gumbel_topk.py's (see its docstring), one row at a time in a compute-dtype row buffer:
//
//   a = x + g, g gumbel_softmax's noise (Philox words of the RNG spec's row mapping, turned into
//       noise by the Gumbel-Softmax kernel's own gumbel_noise of this ISA build: the same noise);
//   index / hard: the k largest entries of a, ties to the lowest index (one scan for k <= 32, else
//       a partial sort);
//   soft (and hard with a gradient to come): Xie & Ermon's recursion, alpha_1 = a, for j = 1..k
//       m = max alpha, i* its first argmax, m2 the runner-up (m when there is none),
//       e'_i = exp((alpha_i - m2) / tau) off i* (0 on it), R' = sum e', c = exp((m2 - m) / tau),
//       S = 1 + c R', p_i* = 1 / S, p_i = e'_i c / S,   y += p,
//       alpha_i += log1p(-p_i) (i != i*),  alpha_i* += (m2 - m) / tau + log R' - log S (R' > 0),
//   per step one pass for m2, one for e' and R', one for p, y, alpha_{j+1} and its max (rows padded
//   to whole vectors, 1 / tau and c / S as multipliers); (m, m2, R', i*) of each step are saved for
//   the backward ([rows, k, 4], compute dtype; i* as a float, informational).
//
// Why no k or K limit (the Triton kernel's MAX_K / MAX_CLASSES): a row lives in a heap buffer, not in
// registers, and the backward replays each step at most twice (to the checkpoints, then within its
// segment; the Triton kernel replays O(k^2) steps), so any k <= K costs what its k K element-steps cost.
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

// Row buffers hold a row's K classes padded to whole vectors: alpha's padding is -inf (no weight in
// any step: e' = p = 0, log(1 - p) = 0, never a max), the other buffers' 0, so every pass over a row
// is a flat vector loop without a tail.
template <typename acc_t>
inline int64_t padded_size(int64_t K) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  return (K + lanes - 1) / lanes * lanes;
}

template <typename acc_t>
acc_t lanes_max(const Vec<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](Vec<acc_t>& a, Vec<acc_t>& b) { return at::vec::maximum(a, b); }, v);
}

template <typename acc_t>
acc_t lanes_sum(const Vec<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](Vec<acc_t>& a, Vec<acc_t>& b) { return a + b; }, v);
}

// a = x + g of one row (padding -inf) and its max; a row with a NaN or no finite max is invalid: a
// zeroed, max 0, false (the Triton kernels run such rows on zeros and write NaN).
template <typename scalar_t, typename acc_t>
bool perturbed_row(const scalar_t* x, int64_t s_k, const acc_t* g, int64_t K, acc_t* a, acc_t& max) {
  load_row(x, s_k, K, a);
  std::fill(a + K, a + padded_size<acc_t>(K), -kInf<acc_t>);
  acc_t m = -kInf<acc_t>;
  bool nan = false;
  for (int64_t i = 0; i < K; ++i) {
    a[i] += g[i];
    nan |= a[i] != a[i];
    m = a[i] > m ? a[i] : m;
  }
  max = 0;
  if (!nan && std::abs(m) < kInf<acc_t>) {
    max = m;
    return true;
  }
  std::fill(a, a + K, acc_t(0));
  return false;
}

template <typename scalar_t>
void fill_row(scalar_t* p, int64_t s_k, int64_t K, scalar_t value) {
  for (int64_t i = 0; i < K; ++i) p[i * s_k] = value;
}

// One step's statistics: m, the runner-up m2, R' and the first argmax i*.
template <typename acc_t>
struct Step {
  acc_t shift, runner_up, rest;
  int64_t best;
};

// fn() with alpha_i* held at -inf (so i* takes no part in a max or in e'), then alpha_i* restored.
template <typename acc_t, typename Fn>
auto without_best(acc_t* alpha, int64_t best, const Fn& fn) {
  const acc_t kept = alpha[best];
  alpha[best] = -kInf<acc_t>;
  const auto result = fn();
  alpha[best] = kept;
  return result;
}

// e' = exp((alpha - m2) / tau) into e and their sum R' (exp(-inf) = 0: -inf classes, the padding and
// the held i* get 0; m2 is finite).
template <typename acc_t>
acc_t exp_rest(const acc_t* alpha, int64_t K, acc_t runner_up, acc_t inv_tau, acc_t* e) {
  using V = Vec<acc_t>;
  const V m2(runner_up), it(inv_tau);
  V sum(acc_t(0));
  for (int64_t i = 0, n = padded_size<acc_t>(K); i < n; i += V::size()) {
    const V ei = ((V::loadu(alpha + i) - m2) * it).exp();
    ei.store(e + i);
    sum = sum + ei;
  }
  return lanes_sum(sum);
}

// The reductions of a step whose max m is known (i*, m2, R') and e' into e: one pass for m2, one for e'.
template <typename acc_t>
Step<acc_t> step_statistics(acc_t* alpha, int64_t K, acc_t m, acc_t inv_tau, acc_t* e) {
  using V = Vec<acc_t>;
  const int64_t best = std::find(alpha, alpha + K, m) - alpha;
  return without_best(alpha, best, [&] {
    V top(-kInf<acc_t>);
    for (int64_t i = 0, n = padded_size<acc_t>(K); i < n; i += V::size()) top = at::vec::maximum(top, V::loadu(alpha + i));
    acc_t runner_up = lanes_max(top);
    if (!(runner_up > -kInf<acc_t>)) runner_up = m;  // no other live class
    return Step<acc_t>{m, runner_up, exp_rest(alpha, K, runner_up, inv_tau, e), best};
  });
}

// The step's softmax scale c = exp((m2 - m) / tau) and denominator S = 1 + c R'.
template <typename acc_t>
std::pair<acc_t, acc_t> scale_and_total(const Step<acc_t>& st, acc_t tau) {
  const acc_t scale = std::exp((st.runner_up - st.shift) / tau);
  return {scale, acc_t(1) + scale * st.rest};
}

// y += p_j (y may be null) and alpha_{j+1} = alpha_j + log(1 - p_j) in place; returns max alpha_{j+1}.
// i* first: p_i* = 1/S and log(1 - p_i*) = log(c R' / S) = (m2 - m) / tau + log R' - log S, exact
// however close p_i* is to 1 (0 when no other class is live). Then one pass: p = e' c / S <= 1/2
// and log1p(-p), exact (i* has e' = 0 there: it gains log1p(-0) = 0 exactly), and the new max.
template <typename acc_t>
acc_t apply_step(const Step<acc_t>& st, acc_t tau, const acc_t* e, acc_t* alpha, acc_t* y, int64_t K) {
  using V = Vec<acc_t>;
  const auto [scale, total] = scale_and_total(st, tau);
  if (st.rest > 0) alpha[st.best] += (st.runner_up - st.shift) / tau + std::log(st.rest) - std::log(total);
  if (y) y[st.best] += acc_t(1) / total;
  const V share(scale / total);
  V top(-kInf<acc_t>);
  for (int64_t i = 0, n = padded_size<acc_t>(K); i < n; i += V::size()) {
    const V p = V::loadu(e + i) * share;
    if (y) (V::loadu(y + i) + p).store(y + i);
    const V a = V::loadu(alpha + i) + (-p).log1p();
    a.store(alpha + i);
    top = at::vec::maximum(top, a);
  }
  return lanes_max(top);
}

// k up to which the top k come from one scan rather than a partial sort.
constexpr int64_t kScanTopK = 32;

// The exact top-k of a valid row into order[0, k): indices in decreasing order of a, ties to the
// lowest index. Small k: one scan in index order keeps the k best so far, sorted; a class enters only
// above the k-th (strictly: an equal later class never passes an earlier one), so most classes cost
// one comparison. Larger k: a partial sort by (a descending, index ascending).
template <typename acc_t>
void top_indices(const acc_t* a, int64_t K, int64_t k, std::vector<int64_t>& order) {
  if (k > kScanTopK) {
    std::iota(order.begin(), order.end(), int64_t(0));
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [a](int64_t i, int64_t j) { return a[i] > a[j] || (a[i] == a[j] && i < j); });
    return;
  }
  int64_t* best = order.data();
  int64_t held = 0;
  acc_t threshold = -kInf<acc_t>;  // the k-th best so far, once k are held
  for (int64_t i = 0; i < K; ++i) {
    const acc_t value = a[i];
    if (held == k && !(value > threshold)) continue;
    int64_t at = std::min(held, k - 1);  // a full list drops its last
    held = std::min(held + 1, k);
    for (; at > 0 && a[best[at - 1]] < value; --at) best[at] = best[at - 1];
    best[at] = i;
    threshold = a[best[held - 1]];
  }
}

template <typename scalar_t, typename acc_t>
void forward_impl(const TopkForwardArgs& args, int64_t begin, int64_t end) {
  const int64_t K = args.classes, k = args.k, Kp = padded_size<acc_t>(K);
  const auto* x = static_cast<const scalar_t*>(args.x);
  auto* y_out = static_cast<scalar_t*>(args.y);
  auto* stats = static_cast<acc_t*>(args.stats);
  const bool relax = args.mode == 0 || stats;
  NoiseBlock<acc_t> noise(K, end - begin);
  std::vector<acc_t> alpha(Kp), e(Kp), y(args.mode == 0 ? Kp : 0);
  std::vector<int64_t> order(args.mode != 0 ? K : 0);
  const scalar_t nan_out(std::numeric_limits<float>::quiet_NaN());
  for (int64_t r0 = begin; r0 < end; r0 += noise.per_block) {
    const int64_t count = std::min(noise.per_block, end - r0);
    noise.fill(args.seed, args.offset, r0, count);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t r = r0 + j;
      acc_t m;
      const bool valid = perturbed_row(x + args.x_layout.row_offset(r), args.x_layout.s_k, noise.row(j), K,
                                       alpha.data(), m);
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
      const acc_t tau = row_tau<acc_t>(args.tau_rows, args.tau, r), inv_tau = acc_t(1) / tau;
      if (args.mode == 0) std::fill(y.begin(), y.end(), acc_t(0));
      for (int64_t step = 0; step < k; ++step) {
        const Step<acc_t> st = step_statistics(alpha.data(), K, m, inv_tau, e.data());
        m = apply_step(st, tau, e.data(), alpha.data(), args.mode == 0 ? y.data() : nullptr, K);
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

// The backward's per-row buffers (rows of padded_size): b, G, p, v, checkpoints of alpha at segment
// starts, and alpha_j and e'_j of the steps of the segment in hand.
template <typename acc_t>
struct BackwardScratch {
  int64_t K, Kp, k, seg, segments;
  std::vector<acc_t> adjoint, grad_out, p, v, checkpoints, alphas, exps;
  std::vector<Step<acc_t>> steps;  // the segment's statistics
  BackwardScratch(int64_t K, int64_t k)
      : K(K), Kp(padded_size<acc_t>(K)), k(k), seg(segment_steps(K, k)), segments((k + seg - 1) / seg),
        adjoint(Kp), grad_out(Kp), p(Kp), v(Kp), checkpoints(segments * Kp), alphas(seg * Kp), exps(seg * Kp),
        steps(seg) {}
};

// Step j of row r replayed on alpha_j: the saved (m, m2, R'), i* found again as the first index of m
// (alpha_j is bit for bit the forward's), and e'_j into e.
template <typename acc_t>
Step<acc_t> replay_step(const acc_t* stats, int64_t r, int64_t k, int64_t j, acc_t* alpha, int64_t K, acc_t inv_tau,
                        acc_t* e) {
  const acc_t* saved = stats + 4 * (r * k + j);
  const Step<acc_t> st{saved[0], saved[1], saved[2], std::find(alpha, alpha + K, saved[0]) - alpha};
  without_best(alpha, st.best, [&] { return exp_rest(alpha, K, st.runner_up, inv_tau, e); });
  return st;
}

// One adjoint step (step j, alpha_j and e'_j given): b += dL/dt / tau; returns this step's
// sum_i dL/dt_i (alpha_i - m), which the temperature's gradient takes / tau^2.
template <typename acc_t>
acc_t adjoint_step(const Step<acc_t>& st, acc_t tau, const acc_t* alpha, const acc_t* e, BackwardScratch<acc_t>& s) {
  using V = Vec<acc_t>;
  const auto [scale, total] = scale_and_total(st, tau);
  const bool has_rest = st.rest > 0;
  acc_t* b = s.adjoint.data();
  const acc_t* G = s.grad_out.data();
  acc_t *p = s.p.data(), *v = s.v.data();
  const acc_t b_best = has_rest ? b[st.best] : acc_t(0), p_best = acc_t(1) / total, inv_tau = acc_t(1) / tau;
  // p and v off i* (0 at i*, where e' = 0), <G, p> and V; i*'s p = 1/S joins <G, p> after.
  const V share(scale / total), one(acc_t(1)), zero(acc_t(0));
  V grad_dot_p_lanes(zero), v_lanes(zero);
  for (int64_t i = 0; i < s.Kp; i += V::size()) {
    const V pi = V::loadu(e + i) * share;
    const V vi = V::loadu(b + i) * pi / (one - pi);
    pi.store(p + i);
    vi.store(v + i);
    grad_dot_p_lanes = grad_dot_p_lanes + V::loadu(G + i) * pi;
    v_lanes = v_lanes + vi;
  }
  const acc_t grad_dot_p = lanes_sum(grad_dot_p_lanes) + G[st.best] * p_best, v_sum = lanes_sum(v_lanes);
  const acc_t inv_rest = acc_t(1) / (has_rest ? st.rest : acc_t(1));
  const V gp(grad_dot_p), vb(v_sum - b_best), bb(b_best), ir(inv_rest), it(inv_tau), m(st.shift);
  V tau_lanes(zero);
  for (int64_t i = 0; i < s.Kp; i += V::size()) {
    const V pi = V::loadu(p + i);
    const V grad_t = pi * (V::loadu(G + i) - gp) + pi * vb - V::loadu(v + i) + bb * (V::loadu(e + i) * ir);
    (V::loadu(b + i) + grad_t * it).store(b + i);
    // Classes without weight in this step add nothing (also where alpha - m is -inf).
    tau_lanes = tau_lanes + V::blendv(grad_t * (V::loadu(alpha + i) - m), zero, grad_t == zero);
  }
  // i*: the pass above added exactly 0 there (p = v = e' = 0).
  const acc_t grad_t_best = p_best * (G[st.best] - grad_dot_p) + p_best * (v_sum - b_best);
  b[st.best] += grad_t_best * inv_tau;
  return lanes_sum(tau_lanes) + (grad_t_best != 0 ? grad_t_best * (alpha[st.best] - st.shift) : acc_t(0));
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
  const int64_t Kp = s.Kp;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (int64_t r0 = begin; r0 < end; r0 += noise.per_block) {
    const int64_t count = std::min(noise.per_block, end - r0);
    noise.fill(args.seed, args.offset, r0, count);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t r = r0 + j;
      scalar_t* out = grad_x + args.gx_layout.row_offset(r);
      acc_t m;
      if (!perturbed_row(x + args.x_layout.row_offset(r), args.x_layout.s_k, noise.row(j), K, s.checkpoints.data(),
                         m)) {
        fill_row(out, args.gx_layout.s_k, K, scalar_t(nan));
        if (tau_grad) tau_grad[r] = nan;
        continue;
      }
      const acc_t tau = row_tau<acc_t>(args.tau_rows, args.tau, r), inv_tau = acc_t(1) / tau;
      load_row(grad_y + args.g_layout.row_offset(r), args.g_layout.s_k, K, s.grad_out.data());
      std::fill(s.adjoint.begin(), s.adjoint.end(), acc_t(0));
      // Checkpoints: alpha at the first step of each segment (the first is a itself).
      for (int64_t seg = 1; seg < s.segments; ++seg) {
        acc_t* next = s.checkpoints.data() + seg * Kp;
        std::copy(next - Kp, next, next);
        for (int64_t step = (seg - 1) * s.seg; step < seg * s.seg; ++step) {
          const Step<acc_t> st = replay_step(stats, r, k, step, next, K, inv_tau, s.exps.data());
          apply_step(st, tau, s.exps.data(), next, static_cast<acc_t*>(nullptr), K);
        }
      }
      acc_t tau_sum = 0;
      for (int64_t seg = s.segments - 1; seg >= 0; --seg) {
        const int64_t first = seg * s.seg, last = std::min(k, first + s.seg);
        // Replay the segment, keeping alpha_j and e'_j of each of its steps.
        std::copy(s.checkpoints.data() + seg * Kp, s.checkpoints.data() + (seg + 1) * Kp, s.alphas.data());
        for (int64_t step = first; step < last; ++step) {
          acc_t* alpha = s.alphas.data() + (step - first) * Kp;
          acc_t* e = s.exps.data() + (step - first) * Kp;
          const Step<acc_t> st = s.steps[step - first] = replay_step(stats, r, k, step, alpha, K, inv_tau, e);
          if (step + 1 < last) {
            std::copy(alpha, alpha + Kp, alpha + Kp);
            apply_step(st, tau, e, alpha + Kp, static_cast<acc_t*>(nullptr), K);
          }
        }
        for (int64_t step = last - 1; step >= first; --step) {
          tau_sum += adjoint_step(s.steps[step - first], tau, s.alphas.data() + (step - first) * Kp,
                                  s.exps.data() + (step - first) * Kp, s);
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
