// Baseline build of the CPU Gumbel top-k kernel (the compiler's default instruction set).
#define KERNEL_ISA DEFAULT
#include "gumbel_topk_cpu_kernel.h"
