// The CUDA twin's kernels for __nv_bfloat16 tensors (see twin_launch.cuh); no torch headers.
#include "twin_launch.cuh"

FUSED_GUMBEL_TWIN_DEFINE(__nv_bfloat16, bf16)
