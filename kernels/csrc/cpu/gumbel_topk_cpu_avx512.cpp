// AVX-512 build of the CPU Gumbel top-k kernel (16-lane at::vec), chosen at run time when the CPU has
// AVX512F/BW/VL/DQ. setup.py compiles this file alone with the -mavx512* flags.
#include "gumbel_softmax_cpu.h"
#if defined(FUSED_GUMBEL_HAVE_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define KERNEL_ISA AVX512
#include "gumbel_topk_cpu_kernel.h"
#endif
