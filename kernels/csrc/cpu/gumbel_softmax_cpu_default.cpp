// Baseline build of the CPU kernel (the compiler's default instruction set).
#define KERNEL_ISA DEFAULT
#include "gumbel_softmax_cpu_kernel.h"
