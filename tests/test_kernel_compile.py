"""The Gumbel-Softmax kernels compile for an H100 (sm_90) in every constexpr variant the
launchers use (checked without a GPU, in a subprocess free of TRITON_INTERPRET)."""
import textwrap

from helpers import compile_for_sm90

SCRIPT = textwrap.dedent("""
    import itertools, sys, torch
    import triton.language as tl
    sys.path.insert(0, {tests!r})
    from sm90_compile import compile_variants
    from fused_gumbel.kernels import gumbel_softmax as k

    common = dict(n_rows=3000, K=10, Q=3, inner=1, num_chunks=1, tau_value=1.0, seed_lo=-5, seed_hi=256,
                  offset_lo=0, offset_hi=32, rng_ptr=torch.int64, rng_mode=0)
    # COMPUTE=float64 only ever runs on float64 tensors (function.py: float64 logits -> float64 output,
    # stats, tau and gradients), so those variants get float64 pointers. A float64 -> bf16 store is
    # never launched, and triton 3.2's LLVM lowering aborts on it (TruncFOp supports f32 sources only).
    f64 = lambda args: {{name: torch.float64 if isinstance(value, torch.dtype) and value.is_floating_point else value
                        for name, value in args.items()}}
    # Graph-capture variants (seed and offset read from a device tensor), where the kernel has them.
    seed_variants = lambda kernel: [dict(SEED_FROM_PTR=True)] if "SEED_FROM_PTR" in kernel.arg_names else []
    fwd_args = dict(common, x_ptr=torch.bfloat16, y_ptr=torch.bfloat16, index_ptr=torch.int64, stats_ptr=torch.float32,
                    tau_ptr=torch.float32,
                    x_s_outer=10, x_s_k=1, x_s_inner=1, y_s_outer=10, y_s_k=1, y_s_inner=1, tau_s_row=1)
    variants = []
    # FAST (MUFU math, what a GPU runs) and its exact twin (what the interpreter runs).
    for mode, single, fast in itertools.product((k.MODE_SOFT, k.MODE_HARD, k.MODE_INDEX), (True, False), (2, 0)):
        variants.append(dict(MODE=mode, TAU_FROM_PTR=not single, SINGLE_CHUNK=single, SAVE_STATS=not single and mode != 0,
                             ROWS=128 if single else 1, BLOCK_Q=4 if single else 1024, COMPUTE=tl.float32, FAST=fast,
                             num_warps=4 if single else 8))
    variants += [dict(variants[0], **extra) for extra in seed_variants(k.gumbel_softmax_fwd_kernel)]
    print("\\n".join(compile_variants(k.gumbel_softmax_fwd_kernel, fwd_args, variants)))
    print("\\n".join(compile_variants(k.gumbel_softmax_fwd_kernel, f64(fwd_args), [
        dict(MODE=k.MODE_SOFT, TAU_FROM_PTR=True, SINGLE_CHUNK=True, SAVE_STATS=False, ROWS=8, BLOCK_Q=64,
             COMPUTE=tl.float64, FAST=0)] + [
        dict(MODE=mode, TAU_FROM_PTR=False, SINGLE_CHUNK=False, SAVE_STATS=mode != k.MODE_SOFT, ROWS=1, BLOCK_Q=256,
             COMPUTE=tl.float64, FAST=0, num_warps=8) for mode in (k.MODE_SOFT, k.MODE_HARD)])))

    bwd_args = dict(common, grad_y_ptr=torch.float32, src_ptr=torch.bfloat16, grad_x_ptr=torch.bfloat16,
                    grad_tau_ptr=torch.float32, stats_ptr=torch.float32, tau_ptr=torch.float32, g_s_outer=10, g_s_k=1, g_s_inner=1,
                    src_s_outer=10, src_s_k=1, src_s_inner=1, gx_s_outer=10, gx_s_k=1, gx_s_inner=1, tau_s_row=0)
    variants = []
    for regenerate, single, fast in itertools.product((True, False), (True, False), (2, 0)):
        variants.append(dict(REGENERATE=regenerate, TAU_GRAD=True, TAU_FROM_PTR=True, SINGLE_CHUNK=single,
                             ROWS=128 if single else 1, BLOCK_Q=4 if single else 1024, COMPUTE=tl.float32, FAST=fast))
    variants += [dict(variants[0], **extra) for extra in seed_variants(k.gumbel_softmax_bwd_kernel)]
    print("\\n".join(compile_variants(k.gumbel_softmax_bwd_kernel, bwd_args, variants)))
    print("\\n".join(compile_variants(k.gumbel_softmax_bwd_kernel, f64(bwd_args), [
        dict(REGENERATE=True, TAU_GRAD=False, TAU_FROM_PTR=False, SINGLE_CHUNK=True, ROWS=4, BLOCK_Q=256,
             COMPUTE=tl.float64, FAST=0)] + [
        dict(REGENERATE=regenerate, TAU_GRAD=True, TAU_FROM_PTR=True, SINGLE_CHUNK=False, ROWS=1, BLOCK_Q=256,
             COMPUTE=tl.float64, FAST=0) for regenerate in (True, False)])))

    # One-row-per-thread kernels for short rows (K a constexpr).
    small = dict(n_rows=3000, Q=3, inner=1, tau_value=1.0, seed_lo=-5, seed_hi=256, offset_lo=0, offset_hi=32,
                 rng_ptr=torch.int64, rng_mode=0, tau_ptr=torch.float32, tau_s_row=1)
    small_fwd = dict(small, x_ptr=torch.bfloat16, y_ptr=torch.bfloat16, index_ptr=torch.int64, x_s_outer=10, x_s_k=1,
                     x_s_inner=1, y_s_outer=10, y_s_k=1, y_s_inner=1)
    variants = [dict(K=K, MODE=mode, TAU_FROM_PTR=mode == 0, ROWS=256, COMPUTE=tl.float32, FAST=fast)
                for mode, fast, K in itertools.product((k.MODE_SOFT, k.MODE_HARD, k.MODE_INDEX), (2, 0), (10, 16))]
    print("\\n".join(compile_variants(k.gumbel_softmax_small_fwd_kernel, small_fwd, variants)))
    print("\\n".join(compile_variants(k.gumbel_softmax_small_fwd_kernel, f64(small_fwd), [
        dict(K=3, MODE=k.MODE_SOFT, TAU_FROM_PTR=False, ROWS=32, COMPUTE=tl.float64, FAST=0)])))
    small_bwd = dict(small, grad_y_ptr=torch.float32, src_ptr=torch.bfloat16, grad_x_ptr=torch.bfloat16,
                     grad_tau_ptr=torch.float32, g_s_outer=10, g_s_k=1, g_s_inner=1, src_s_outer=10, src_s_k=1,
                     src_s_inner=1, gx_s_outer=10, gx_s_k=1, gx_s_inner=1)
    variants = [dict(K=10, REGENERATE=regenerate, TAU_GRAD=True, TAU_FROM_PTR=True, ROWS=256, COMPUTE=tl.float32,
                     FAST=fast) for regenerate, fast in itertools.product((True, False), (2, 0))]
    print("\\n".join(compile_variants(k.gumbel_softmax_small_bwd_kernel, small_bwd, variants)))

    # Split rows (few long rows; (row, segment) programs with a last-ticket combine).
    split = dict(n_rows=64, K=128256, Q=32064, inner=1, n_segments=8, tau_value=1.0, seed_lo=-5, seed_hi=256,
                 offset_lo=0, offset_hi=32, rng_ptr=torch.int64, rng_mode=0, tau_ptr=torch.float32, tau_s_row=1,
                 stats_ptr=torch.float32, partial_ptr=torch.float32, counter_ptr=torch.int32)
    split_fwd = dict(split, x_ptr=torch.bfloat16, y_ptr=torch.bfloat16, index_ptr=torch.int64, x_s_outer=128256,
                     x_s_k=1, x_s_inner=1, y_s_outer=128256, y_s_k=1, y_s_inner=1)
    # OVERLAP (hard and index modes, K a multiple of 4): the last segment overlaps, unmasked.
    variants = [dict(MODE=mode, TAU_FROM_PTR=mode == 0, SAVE_STATS=mode != 0, SEGMENTS=8, SEG_BLOCK=8, BLOCK_Q=1024,
                     COMPUTE=tl.float32, FAST=fast, COUNTER32=True, OVERLAP=overlap and mode != k.MODE_SOFT,
                     num_warps=4)
                for mode, fast, overlap in itertools.product((k.MODE_SOFT, k.MODE_HARD, k.MODE_INDEX), (2, 0),
                                                             (True, False))
                if overlap or (mode != k.MODE_SOFT and fast == 2)]
    print("\\n".join(compile_variants(k.gumbel_softmax_split_fwd_kernel, split_fwd, variants)))
    split_bwd = dict(split, grad_y_ptr=torch.float32, src_ptr=torch.bfloat16, grad_x_ptr=torch.bfloat16,
                     grad_tau_ptr=torch.float32, g_s_outer=128256, g_s_k=1, g_s_inner=1, src_s_outer=128256, src_s_k=1,
                     src_s_inner=1, gx_s_outer=128256, gx_s_k=1, gx_s_inner=1)
    variants = [dict(REGENERATE=regenerate, TAU_GRAD=True, TAU_FROM_PTR=True, SEGMENTS=6, SEG_BLOCK=8, BLOCK_Q=1024,
                     COMPUTE=tl.float32, FAST=2, COUNTER32=False, num_warps=4) for regenerate in (True, False)]
    print("\\n".join(compile_variants(k.gumbel_softmax_split_bwd_kernel, split_bwd, variants)))
    print("\\n".join(compile_variants(k.gumbel_softmax_small_bwd_kernel, f64(small_bwd), [
        dict(K=10, REGENERATE=True, TAU_GRAD=True, TAU_FROM_PTR=True, ROWS=32, COMPUTE=tl.float64, FAST=0)])))
""")


def test_kernels_compile_for_sm90():
    stdout = compile_for_sm90(SCRIPT)
    assert stdout.count(": ok") >= 52, stdout
