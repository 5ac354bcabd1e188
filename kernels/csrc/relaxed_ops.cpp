// Schemas of the native relaxed-Bernoulli ops (fused_gumbel.relaxed_bernoulli / bernoulli under
// backend "native"), implemented for CPU by cpu/relaxed_bernoulli_cpu.cpp. FRAGMENT: ops.cpp and the
// Python package define other ops in the same namespace.
//
// The elements are the logits' row-major order (the RNG spec's elementwise mapping); key and offset
// are the call's seed and stream offset as for kernel_forward (key ^ DOMAIN_TAG is the Philox key).
// tau_tensor is 0-dim or holds one compute-dtype temperature per element; else tau is used.
// mode: 0 soft (sigmoid((x + L) / tau)), 1 hard (the exact draw 1[x + L > 0]).
// The backward regenerates the noise and returns the logits' gradient (the soft one: hard is
// straight-through) and, with tau_grad and a tau_tensor, tau's: per element, or 0-dim for a 0-dim tau.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fused_gumbel, m) {
  m.def("bernoulli_kernel_forward(Tensor logits, Tensor? tau_tensor, float tau, int mode, int key, int offset)"
        " -> Tensor");
  m.def("bernoulli_kernel_backward(Tensor grad_y, Tensor logits, Tensor? tau_tensor, float tau, int key, int offset,"
        " bool tau_grad) -> (Tensor, Tensor?)");
}
