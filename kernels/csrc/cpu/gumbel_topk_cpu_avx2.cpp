// AVX2 + FMA build of the CPU Gumbel top-k kernel, chosen at run time when the CPU has both. setup.py compiles
// this file alone with -mavx2 -mfma -mf16c (CPU_CAPABILITY_AVX2: at::vec's AVX2 implementation).
#include "gumbel_softmax_cpu.h"
#if defined(FUSED_GUMBEL_HAVE_AVX2) && defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define KERNEL_ISA AVX2
#include "gumbel_topk_cpu_kernel.h"
#endif
