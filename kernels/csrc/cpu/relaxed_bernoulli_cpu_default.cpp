// Baseline build of the CPU relaxed-Bernoulli kernel (the compiler's default instruction set).
#define KERNEL_ISA DEFAULT
#include "relaxed_bernoulli_cpu_kernel.h"
