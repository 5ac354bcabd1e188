"""Device code (Triton kernels and launch helpers), installed as `fused_gumbel.kernels`."""
