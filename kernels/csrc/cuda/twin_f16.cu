// The CUDA twin's kernels for __half tensors (see twin_launch.cuh); no torch headers.
#include "twin_launch.cuh"

FUSED_GUMBEL_TWIN_DEFINE(__half, f16)
