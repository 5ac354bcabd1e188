// The native op schema (the contract shared by the C++ CPU kernel and the CUDA twin), for GPU tests
// that build the twin on its own when no fused_gumbel._C extension defined it.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fused_gumbel, m) {
  m.def("kernel_forward(Tensor logits, Tensor? tau_tensor, float tau, int mode, int dim, int key, int offset) "
        "-> (Tensor, Tensor?)");
  m.def("kernel_backward(Tensor grad_y, Tensor src, Tensor? tau_tensor, float tau, bool hard, int dim, int key, "
        "int offset, bool tau_grad, Tensor? stats) -> (Tensor, Tensor?)");
}
