"""gumbel_topk / sample_subset: kernel vs reference on identical noise, exact Plackett-Luce
inclusion frequencies, k = 1 against gumbel_softmax, gradients (gradcheck), extremes, errors,
fallback, GPU compilation."""
import itertools
import math
import textwrap

import pytest
import torch
from helpers import assert_close, compile_for_sm90, row_tau, run_both_backends
from scipy import stats

import fused_gumbel
from fused_gumbel import reference, reference_relaxed, rng
from fused_gumbel.kernels import gumbel_topk as topk_kernels


def fused_and_reference(logits, k, tau=1.0, hard=False, dim=-1, seed=0, grad_weight=None):
    """((y, dlogits, dtau) of the Triton path, (...) of the reference), same RNG state."""
    return run_both_backends(fused_gumbel.gumbel_topk, logits, tau, seed, grad_weight, k=k, hard=hard, dim=dim)


def plackett_luce_probabilities(logits, k):
    """Exact probabilities of every ordered k-prefix of a Plackett-Luce(softmax(logits)) ordering."""
    weights = torch.softmax(logits.double(), 0).tolist()
    probabilities = {}
    for prefix in itertools.permutations(range(len(weights)), k):
        probability, remaining = 1.0, 1.0
        for index in prefix:
            probability *= weights[index] / remaining
            remaining -= weights[index]
        probabilities[prefix] = probability
    return probabilities


def inclusion_probabilities(logits, k):
    inclusion = torch.zeros(len(logits), dtype=torch.float64)
    for prefix, probability in plackett_luce_probabilities(logits, k).items():
        inclusion[list(prefix)] += probability
    return inclusion


CASES = [  # shape, dim, k, tau kind
    ((3, 9), -1, 3, "float"),
    ((2, 7, 3), 1, 2, "per_row"),
    ((40, 5), -1, 5, "scalar"),
    ((2, 300), -1, 4, "per_row"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, dim, k, tau_kind", CASES)
@pytest.mark.parametrize("hard", [False, True])
def test_matches_reference(dtype, shape, dim, k, tau_kind, hard):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(shape, generator=gen) * 2).to(dtype)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    tau = row_tau(tau_kind, shape, dim, compute)
    (y, dx, dt), (y_ref, dx_ref, dt_ref) = fused_and_reference(logits, k, tau, hard, dim, grad_weight=weight)
    assert y.dtype == dtype and y.shape == logits.shape
    if hard:
        assert torch.equal(y, y_ref)
    else:
        assert_close(y, y_ref, dtype)
    sums = y.double().sum(dim)  # each output rounds to dtype on its own
    torch.testing.assert_close(sums, torch.full_like(sums, k), atol=4 * k * torch.finfo(dtype).eps, rtol=0)
    assert_close(dx, dx_ref, dtype)
    if dt is not None:
        assert dt.shape == tau.shape
        assert_close(dt, dt_ref, dtype)


@pytest.mark.parametrize("shape, dim, k", [((6, 9), -1, 3), ((2, 7, 3), 1, 7), ((4, 2), 0, 2)])
def test_sample_subset_matches_reference_and_hard_sample(shape, dim, k):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    draws = {}
    for backend in ("triton", "reference"):
        torch.manual_seed(4)
        draws[backend] = fused_gumbel.sample_subset(logits, k, dim, backend=backend)
    index = draws["triton"]
    assert torch.equal(index, draws["reference"])
    expected_shape = list(shape)
    expected_shape[dim] = k
    assert index.dtype == torch.int64 and list(index.shape) == expected_shape
    torch.manual_seed(4)
    khot = fused_gumbel.gumbel_topk(logits, k, hard=True, dim=dim, backend="triton")
    assert torch.equal(torch.zeros_like(logits).scatter_(dim, index, 1.0), khot)
    assert (khot.sum(dim) == k).all() and set(khot.unique().tolist()) <= {0.0, 1.0}
    # Decreasing order of logits + g: the first index is gumbel-max's categorical draw.
    torch.manual_seed(4)
    first = fused_gumbel.categorical(logits, dim, backend="triton")
    assert torch.equal(index.narrow(dim, 0, 1).squeeze(dim), first)


def test_inclusion_frequencies_match_plackett_luce():
    logits = torch.tensor([1.5, 0.5, 0.0, -1.0, -2.5])
    n, k = 40_000, 2
    torch.manual_seed(21)
    draws = fused_gumbel.sample_subset(logits.expand(n, 5), k, backend="triton")
    assert (draws[:, 0] != draws[:, 1]).all()
    inclusion = inclusion_probabilities(logits, k)
    observed = torch.zeros(5, dtype=torch.float64).scatter_add_(0, draws.reshape(-1), torch.ones(2 * n).double()) / n
    z = (observed - inclusion) / torch.sqrt(inclusion * (1 - inclusion) / n)
    assert z.abs().max() < 4.5, z
    # The ordered pairs follow Plackett-Luce: chi-square over all 20 (first, second) outcomes.
    exact = plackett_luce_probabilities(logits, k)
    codes = (draws[:, 0] * 5 + draws[:, 1]).bincount(minlength=25).double()
    observed_counts = torch.stack([codes[a * 5 + b] for a, b in exact])
    expected_counts = torch.tensor(list(exact.values()), dtype=torch.float64) * n
    chi2 = ((observed_counts - expected_counts) ** 2 / expected_counts).sum().item()
    assert stats.chi2.sf(chi2, len(exact) - 1) > 1e-3, chi2


def test_hard_inclusion_frequencies_k3():
    logits = torch.tensor([0.3, -0.7, 1.2, 0.0, -1.5])
    n, k = 20_000, 3
    torch.manual_seed(22)
    khot = fused_gumbel.gumbel_topk(logits.expand(n, 5).contiguous(), k, hard=True, backend="triton")
    assert (khot.sum(-1) == k).all()
    inclusion = inclusion_probabilities(logits, k)
    z = (khot.double().mean(0) - inclusion) / torch.sqrt(inclusion * (1 - inclusion) / n)
    assert z.abs().max() < 4.5, z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k1_matches_gumbel_softmax(dtype):
    logits = torch.randn(5, 13, dtype=dtype, generator=torch.Generator().manual_seed(5))
    for hard in (False, True):
        torch.manual_seed(6)
        topk = fused_gumbel.gumbel_topk(logits, 1, 0.7, hard=hard, backend="triton")
        torch.manual_seed(6)
        softmax = fused_gumbel.gumbel_softmax(logits, 0.7, hard=hard, backend="triton")
        if hard:
            assert torch.equal(topk, softmax)
        else:
            assert_close(topk, softmax, dtype)


def test_gradcheck_soft_logits_and_tau():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    tau = torch.tensor([[0.4], [1.0], [2.0]], dtype=torch.float64, requires_grad=True)
    # A dominant class (p within 1e-9 of 1): the cancellation-free log(1 - p) and its gradient.
    peaked = torch.tensor([[9.0, 0.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)

    def sample(x, t, k):
        return fused_gumbel.gumbel_topk(x, k, t, generator=torch.Generator().manual_seed(8), backend="triton")

    assert torch.autograd.gradcheck(lambda x, t: sample(x, t, 3), (logits, tau))
    assert torch.autograd.gradcheck(lambda x, t: sample(x, t, 2),
                                    (peaked, torch.tensor(0.4, dtype=torch.float64, requires_grad=True)))


def test_kernel_gradient_matches_reference_autograd_at_extremes():
    # Gaps far beyond where a rounded 1 - p is 0, -inf classes, fewer finite classes than k.
    logits = torch.tensor([[200.0, 0.0, 100.0, -50.0], [0.0, -math.inf, -math.inf, 3.0], [1e4, -1e4, 3.0, 2.0],
                           [0.5, 0.2, 0.1, -0.3]], dtype=torch.float64)
    weight = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for tau in (0.05, 1.0, 20.0):
        (y, dx, dt), (y_ref, dx_ref, dt_ref) = fused_and_reference(
            logits, 3, torch.tensor(tau, dtype=torch.float64), grad_weight=weight)
        assert torch.isfinite(y).all() and torch.isfinite(dx).all() and torch.isfinite(dt).all()
        assert_close(y, y_ref, torch.float64)
        assert_close(dx, dx_ref, torch.float64)
        assert_close(dt, dt_ref, torch.float64)


def test_large_logit_gaps_are_masked_exactly(monkeypatch):
    # float32 with a gap of 100 at tau = 1: p_0 = 1 - 4e-44 rounds to 1; the kernel still masks
    # class 0 by its true complement and agrees with float64 on the same perturbed logits.
    logits = torch.tensor([[200.0, 0.0, 100.0]])
    seed, offset = 123, 456
    monkeypatch.setattr(rng, "draw_seed_offset", lambda device, generator=None: (seed, offset))
    y = fused_gumbel.gumbel_topk(logits, 2, 1.0, backend="triton")
    noise = reference.gumbel_noise(logits, -1, seed, offset)
    exact = reference_relaxed.gumbel_topk(logits.double(), 2, 1.0, noise=noise.double())
    torch.testing.assert_close(y.double(), exact, atol=1e-4, rtol=0)
    assert 0.3 < y[0, 2] < 0.7  # log(max(1 - p, eps)) would leave class 0 on top: y_2 = 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("hard", [False, True])
def test_extremes_are_finite(dtype, tau, hard):
    big = torch.finfo(dtype).max
    logits = torch.tensor([[-big, big, 0.0, 1.0, -1.0], [1e4, -1e4, 0.0, 3.0, 2.0],
                           [0.0, -math.inf, -math.inf, -math.inf, 1.0], [-30.0, 30.0, 0.0, 60.0, -60.0]], dtype=dtype)
    x = logits.clone().requires_grad_()
    t = torch.tensor(tau, requires_grad=True)
    y = fused_gumbel.gumbel_topk(x, 3, t, hard=hard, backend="triton")
    (y * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(t.grad)
    torch.testing.assert_close(y.double().sum(-1), torch.full((4,), 3.0, dtype=torch.float64), atol=1e-2, rtol=0)
    assert (y[2, 1:4] <= 1).all() and y[2].sum() > 2.99  # the third pick is a -inf class (hard) or no one


def test_invalid_rows_are_nan():
    logits = torch.tensor([[0.0, math.nan, 1.0], [-math.inf] * 3, [math.inf, 0.0, 1.0], [0.0, 1.0, 2.0]])
    for hard in (False, True):
        for backend in ("triton", "reference"):
            y = fused_gumbel.gumbel_topk(logits, 2, hard=hard, backend=backend)
            assert torch.isnan(y[:3]).all() and torch.isfinite(y[3]).all()
    for backend in ("triton", "reference"):
        index = fused_gumbel.sample_subset(logits, 2, backend=backend)
        assert (index[:3] == -1).all() and (index[3] >= 0).all()


def test_fewer_finite_classes_than_k_take_the_lowest_index_minus_inf():
    logits = torch.tensor([[-math.inf, 0.0, -math.inf, -math.inf, 1.0]])
    for backend in ("triton", "reference"):
        index = fused_gumbel.sample_subset(logits, 4, backend=backend)
        assert sorted(index[0, :2].tolist()) == [1, 4] and index[0, 2:].tolist() == [0, 2]


def test_hard_gradient_equals_soft_gradient():
    logits = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    weight = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    grads = []
    for hard in (False, True):
        x = logits.clone().requires_grad_()
        y = fused_gumbel.gumbel_topk(x, 3, 0.5, hard=hard, generator=torch.Generator().manual_seed(12),
                                     backend="triton")
        (y * weight).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


def test_backward_regenerates_the_forward_noise():
    logits = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    weight = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    (y, dx, _), (y_ref, dx_ref, _) = fused_and_reference(logits, 2, 0.8, seed=15, grad_weight=weight)
    torch.manual_seed(15)
    x = logits.clone().requires_grad_()
    y_again = fused_gumbel.gumbel_topk(x, 2, 0.8, backend="triton")
    fused_gumbel.gumbel_topk(logits, 2, 0.8, backend="triton")  # another draw in between
    (y_again * weight).sum().backward()
    assert torch.equal(y_again, y) and torch.equal(x.grad, dx)


def test_no_statistics_without_grad(monkeypatch):
    # A forward without autograd computes and saves no statistics; with it, four numbers per
    # row and step.
    launches = []
    launch = topk_kernels.gumbel_topk_forward

    def recording(*args, **kwargs):
        launches.append(args[5] is not None)  # the ``stats`` buffer
        return launch(*args, **kwargs)

    monkeypatch.setattr(topk_kernels, "gumbel_topk_forward", recording)
    logits = torch.randn(3, 5)
    assert fused_gumbel.gumbel_topk(logits, 2, backend="triton").grad_fn is None
    with torch.no_grad():
        fused_gumbel.gumbel_topk(logits.clone().requires_grad_(), 2, hard=True, backend="triton")
    y = fused_gumbel.gumbel_topk(logits.requires_grad_(), 2, backend="triton")
    assert launches == [False, False, True]
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert sorted(tuple(t.shape) for t in saved) == [(3, 2, 4), (3, 5)]


def test_seed_reproduces_and_calls_differ():
    logits = torch.zeros(4, 10)
    torch.manual_seed(5)
    a = fused_gumbel.gumbel_topk(logits, 3, backend="triton")
    b = fused_gumbel.gumbel_topk(logits, 3, backend="triton")
    torch.manual_seed(5)
    assert torch.equal(fused_gumbel.gumbel_topk(logits, 3, backend="triton"), a)
    assert not torch.equal(a, b)


def test_falls_back_to_reference_beyond_kernel_limits(monkeypatch):
    logits = torch.randn(2, 12, generator=torch.Generator().manual_seed(16))
    monkeypatch.setattr(topk_kernels, "MAX_CLASSES", 8)
    torch.manual_seed(1)
    with pytest.warns(RuntimeWarning, match="reference"):
        y = fused_gumbel.gumbel_topk(logits, 3, backend="triton")
    torch.manual_seed(1)
    assert torch.equal(y, fused_gumbel.gumbel_topk(logits, 3, backend="reference"))
    monkeypatch.setattr(topk_kernels, "MAX_CLASSES", 4096)
    monkeypatch.setattr(topk_kernels, "MAX_K", 2)
    with pytest.warns(RuntimeWarning, match="reference"):
        index = fused_gumbel.sample_subset(logits, 3, backend="triton")
    assert index.shape == (2, 3)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_zero_dim_and_empty(backend):
    assert fused_gumbel.gumbel_topk(torch.tensor(0.3), 1, backend=backend).item() == 1.0
    assert fused_gumbel.sample_subset(torch.tensor(0.3), 1, backend=backend).item() == 0
    x = torch.empty(0, 4, requires_grad=True)
    y = fused_gumbel.gumbel_topk(x, 2, backend=backend)
    assert y.shape == (0, 4)
    y.sum().backward()
    assert fused_gumbel.sample_subset(torch.empty(0, 4), 2, backend=backend).shape == (0, 2)


@pytest.mark.parametrize("k, error", [(6, ValueError), (0, ValueError), (-1, ValueError), (True, TypeError),
                                      (2.0, TypeError)])
def test_bad_k_raises(k, error):
    with pytest.raises(error):
        fused_gumbel.gumbel_topk(torch.zeros(2, 5), k)
    with pytest.raises(error):
        fused_gumbel.sample_subset(torch.zeros(2, 5), k)


def test_bad_tau_and_logits_raise():
    with pytest.raises(ValueError):
        fused_gumbel.gumbel_topk(torch.zeros(2, 5), 2, 0.0)
    with pytest.raises(ValueError):
        fused_gumbel.gumbel_topk(torch.zeros(2, 5), 2, torch.ones(2, 5))  # tau must be one per row
    with pytest.raises(TypeError):
        fused_gumbel.gumbel_topk(torch.zeros(2, 5, dtype=torch.int32), 2)
    with pytest.raises(IndexError):
        fused_gumbel.sample_subset(torch.zeros(2, 5), 2, dim=2)


def test_seed_argument_is_the_same_stream_on_every_backend():
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(3))
    fused = fused_gumbel.gumbel_topk(logits, 3, 0.5, seed=99, backend="triton")
    assert_close(fused, fused_gumbel.gumbel_topk(logits, 3, 0.5, seed=99, backend="reference"), torch.float32)
    assert torch.equal(fused_gumbel.sample_subset(logits, 3, seed=99, backend="triton"),
                       fused_gumbel.sample_subset(logits, 3, seed=99, backend="reference"))
    # k = 1 is gumbel_softmax on the same seed.
    assert torch.equal(fused_gumbel.gumbel_topk(logits, 1, hard=True, seed=7, backend="triton"),
                       fused_gumbel.gumbel_softmax(logits, hard=True, seed=7, backend="triton"))
    with pytest.raises(ValueError):
        fused_gumbel.sample_subset(logits, 2, seed=1, generator=torch.Generator())


def test_kernels_read_the_seed_from_a_device_tensor():
    # CUDA-graph capture hands the kernels (seed, offset) in an int64 [2] tensor: same noise.
    logits = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    seed, offset = 2**62 + 321, 2**34 + 8
    outputs = []
    for key, stream in ((seed, offset), (torch.tensor([seed, offset]), None)):
        y = torch.empty_like(logits)
        stats = torch.empty(5, 3, 4, dtype=torch.float64)
        topk_kernels.gumbel_topk_forward(logits, (7, 1, 1), y, (7, 1, 1), None, stats, 0.5, 5, 7, 1, 3, key, stream,
                                         topk_kernels.MODE_SOFT)
        grad_x = torch.empty_like(logits)
        topk_kernels.gumbel_topk_backward(torch.ones_like(logits), (7, 1, 1), logits, (7, 1, 1), grad_x, (7, 1, 1),
                                          None, stats, 0.5, 5, 7, 1, 3, key, stream)
        outputs.append((y, grad_x))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    expected = reference_relaxed.gumbel_topk(logits, 3, 0.5, seed=seed, offset=offset)
    torch.testing.assert_close(outputs[0][0], expected, atol=1e-12, rtol=1e-12)


_COMPILE_SCRIPT = textwrap.dedent("""
    import sys, torch
    import triton.language as tl
    sys.path.insert(0, {tests!r})
    from sm90_compile import compile_variants
    from fused_gumbel.kernels import gumbel_topk as k

    seeds = dict(seed_lo=-5, seed_hi=256, offset_lo=0, offset_hi=32, rng_ptr=torch.int64, rng_mode=0)
    common = dict(seeds, n_rows=4096, Q=3, inner=1, k=5, tau_value=1.0, tau_ptr=torch.float32, tau_s_row=1)
    fwd = dict(common, x_ptr=torch.bfloat16, y_ptr=torch.bfloat16, index_ptr=torch.int64, stats_ptr=torch.float32,
               x_s_outer=10, x_s_k=1, x_s_inner=1, y_s_outer=10, y_s_k=1, y_s_inner=1)
    bwd = dict(common, grad_y_ptr=torch.float32, x_ptr=torch.bfloat16, grad_x_ptr=torch.bfloat16,
               grad_tau_ptr=torch.float32, stats_ptr=torch.float32, g_s_outer=10, g_s_k=1, g_s_inner=1,
               x_s_outer=10, x_s_k=1, x_s_inner=1, gx_s_outer=10, gx_s_k=1, gx_s_inner=1)
    for classes, modes in ((10, (k.MODE_SOFT, k.MODE_HARD, k.MODE_INDEX)), (k.MAX_CLASSES, (k.MODE_HARD,))):
        cfg = k.topk_tile_config(4096, classes)
        tile = dict(ROWS=cfg["ROWS"], BLOCK_Q=cfg["BLOCK_Q"], COMPUTE=tl.float32, TAU_FROM_PTR=True,
                    num_warps=cfg["num_warps"])
        fwd["K"] = bwd["K"] = classes
        print("\\n".join(compile_variants(k.gumbel_topk_fwd_kernel, fwd, [
            dict(MODE=mode, SAVE_STATS=mode != k.MODE_INDEX, **tile) for mode in modes])))
        print("\\n".join(compile_variants(k.gumbel_topk_bwd_kernel, bwd, [dict(TAU_GRAD=True, **tile)])))
    # float64 logits: float64 math, output, stats, tau and gradients (never a float64 -> bf16 store,
    # which triton 3.2 cannot lower).
    f64 = lambda args: {{name: torch.float64 if isinstance(value, torch.dtype) and value.is_floating_point else value
                        for name, value in args.items()}}
    fwd["K"] = bwd["K"] = 10
    cfg = k.topk_tile_config(4096, 10)
    tile = dict(ROWS=cfg["ROWS"], BLOCK_Q=cfg["BLOCK_Q"], COMPUTE=tl.float64, TAU_FROM_PTR=True,
                num_warps=cfg["num_warps"])
    print("\\n".join(compile_variants(k.gumbel_topk_fwd_kernel, f64(fwd),
                                      [dict(MODE=k.MODE_HARD, SAVE_STATS=True, **tile)])))
    print("\\n".join(compile_variants(k.gumbel_topk_bwd_kernel, f64(bwd), [dict(TAU_GRAD=True, **tile)])))
""")


def test_kernels_compile_for_h100():
    """The interpreter accepts code the GPU compiler rejects: compile for sm_90 (no GPU needed)."""
    stdout = compile_for_sm90(_COMPILE_SCRIPT, timeout=300)
    assert stdout.count(": ok") == 8, stdout
