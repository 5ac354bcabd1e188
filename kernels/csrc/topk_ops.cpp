// Schemas of the native Gumbel top-k ops (fused_gumbel.gumbel_topk / sample_subset under backend
// "native"), implemented for CPU by cpu/gumbel_topk_cpu.cpp. FRAGMENT: ops.cpp, relaxed_ops.cpp and
// the Python package define other ops in the same namespace.
//
// Rows are the [outer, K, inner] rows along dim in RNG-spec order (as kernel_forward's); key and
// offset are the call's seed and stream offset (key ^ DOMAIN_TAG is the Philox key), so the noise is
// gumbel_softmax's. tau_tensor is 0-dim or holds one compute-dtype temperature per row; else tau.
// mode: 0 soft (Xie & Ermon's relaxed k-hot), 1 hard (the exact k-hot of the top k of x + g),
// 2 index (those k indices, int64, size k along dim, in decreasing order of x + g; -1 for invalid rows).
// save_stats (soft, hard) also returns the [rows, k, 4] compute-dtype statistics (m, m2, R', i*) of
// each step, which the backward replays the recursion from; it regenerates the noise and returns
// the logits' gradient of the soft relaxation (hard is straight-through) and, with tau_grad and a
// tau_tensor, the per-row temperature gradients.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fused_gumbel, m) {
  m.def("topk_kernel_forward(Tensor logits, Tensor? tau_tensor, float tau, int k, int mode, int dim, int key,"
        " int offset, bool save_stats) -> (Tensor, Tensor?)");
  m.def("topk_kernel_backward(Tensor grad_y, Tensor logits, Tensor? tau_tensor, float tau, int k, int dim, int key,"
        " int offset, Tensor stats, bool tau_grad) -> (Tensor, Tensor?)");
}
