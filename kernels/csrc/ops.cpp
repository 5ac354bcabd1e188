// fused_gumbel._C: the native op schemas (the contract shared by the CPU kernel in cpu/ and the CUDA
// C++ twin in cuda/, which register implementations with TORCH_LIBRARY_IMPL) and the Python module
// whose import runs those registrations. FRAGMENT, because the Python package DEFs other ops
// (fused_gumbel::sample, ...) in the same namespace.
//
// key is the call's seed as fused_gumbel._seeding.draw returns it (what the Triton kernels take as
// seed_lo/seed_hi): the implementations XOR it with the spec's DOMAIN_TAG to form the Philox key.
// uint64 values travel as the int64 with the same bits. mode: 0 soft, 1 hard, 2 index; the CPU
// kernel also takes 3 (hard, with the soft sample of the same noise as the second output, which
// its hard backward reads instead of drawing the noise again); other devices need not.
#include <Python.h>
#include <torch/library.h>

#include "eager.h"

TORCH_LIBRARY_FRAGMENT(fused_gumbel, m) {
  m.def("kernel_forward(Tensor logits, Tensor? tau_tensor, float tau, int mode, int dim, int key, int offset)"
        " -> (Tensor, Tensor?)");
  m.def("kernel_backward(Tensor grad_y, Tensor src, Tensor? tau_tensor, float tau, bool hard, int dim, int key,"
        " int offset, bool tau_grad, Tensor? stats) -> (Tensor, Tensor?)");
}

// A plain (pybind-free) extension module: importing it loads this library, whose static
// initialisers register the ops with the dispatcher. Its functions are the eager CPU fast path (eager.cpp).
static struct PyModuleDef fused_gumbel_c_module = {PyModuleDef_HEAD_INIT, "_C", "fused_gumbel native ops", -1,
                                                   fused_gumbel::eager_methods()};

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fused_gumbel_c_module); }
