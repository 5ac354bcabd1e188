"""relaxed_bernoulli / bernoulli: kernel vs reference on identical noise, the elementwise RNG
mapping, Bernoulli frequencies, gradients (gradcheck), extremes, errors, GPU compilation."""
import math
import textwrap

import pytest
import torch
from helpers import assert_close, compile_for_sm90, elementwise_tau, run_both_backends

import fused_gumbel
from fused_gumbel import reference_relaxed, rng


def fused_and_reference(logits, tau=1.0, hard=False, seed=0, grad_weight=None):
    """((y, dlogits, dtau) of the Triton path, (...) of the reference), same RNG state."""
    return run_both_backends(fused_gumbel.relaxed_bernoulli, logits, tau, seed, grad_weight, hard=hard)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (5, 3, 11), (2, 1500)])
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "per_row", "per_element"])
@pytest.mark.parametrize("hard", [False, True])
def test_matches_reference(dtype, shape, tau_kind, hard):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(shape, generator=gen) * 3).to(dtype)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    tau = elementwise_tau(tau_kind, shape, dtype if dtype in (torch.float64, torch.float32) else torch.float32)
    (y, dx, dt), (y_ref, dx_ref, dt_ref) = fused_and_reference(logits, tau, hard, grad_weight=weight)
    assert y.dtype == dtype and y.shape == logits.shape
    if hard:
        assert torch.equal(y, y_ref)
        assert set(y.unique().tolist()) <= {0.0, 1.0}
    else:
        assert_close(y, y_ref, dtype)
    assert_close(dx, dx_ref, dtype)
    if dt is not None:
        assert dt.shape == tau.shape
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        assert_close(dt, dt_ref, compute if dtype in (torch.float64, torch.float32) else dtype)


def test_noise_is_the_elementwise_mapping_of_the_spec(pinned_seed_offset):
    # Element e takes word e % 4 of Philox call e // 4 (counter (lo e//4, hi e//4, lo offset, hi offset)).
    seed, offset, numel = 0x1234_5678_9ABC, 2**40 + 7, 23
    words = rng.philox4x32(rng.philox_key(seed), offset, torch.arange(6))
    expected = torch.stack([words[e // 4, e % 4] >> 1 for e in range(numel)])
    assert torch.equal(rng.uniform_bits_flat(numel, seed, offset), expected)
    # The kernel sees the same noise: at tau = 1 and logits 0, logit(y) is the noise itself.
    logits = torch.zeros(numel, dtype=torch.float64)
    y = fused_gumbel.relaxed_bernoulli(logits, 1.0, generator=pinned_seed_offset(seed, offset),
                                    backend="triton")
    noise = rng.logistic_from_bits(expected, torch.float64)
    torch.testing.assert_close(torch.log(y) - torch.log1p(-y), noise, atol=1e-12, rtol=1e-12)


class _PinnedGenerator:
    """Passed as ``generator=``: makes ``rng.draw_seed_offset`` return this exact (seed, offset)."""

    def __init__(self, seed, offset):
        self.seed, self.offset = seed, offset


@pytest.fixture
def pinned_seed_offset(monkeypatch):
    original = rng.draw_seed_offset

    def draw(device, generator=None):
        if isinstance(generator, _PinnedGenerator):
            return generator.seed, generator.offset
        return original(device, generator)

    monkeypatch.setattr(rng, "draw_seed_offset", draw)
    return _PinnedGenerator


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_noise_is_accurate_and_antisymmetric(dtype):
    bits = torch.tensor([0, 1, 2, 3, 1000, 2**30 - 1, 2**30, 2**30 + 1, 2**31 - 1000, 2**31 - 2, 2**31 - 1])
    noise = rng.logistic_from_bits(bits, dtype)
    b = bits.clamp_min(1).double()
    exact = torch.log(b) - torch.log(2.0**31 - b)  # float64: b and 2**31 - b are exact
    atol = 4 * torch.finfo(dtype).eps * exact.abs().clamp_min(1)
    assert ((noise.double() - exact).abs() <= atol).all()
    assert noise[0] == noise[1] and noise.min() > -21.5 and noise.max() < 21.5
    # b and 2**31 - b give exactly opposite noise: P(hard = 1 | x) = P(hard = 0 | -x).
    mirrored = rng.logistic_from_bits(2**31 - bits[1:], dtype)
    assert torch.equal(mirrored, -noise[1:])


def test_frequencies_match_sigmoid():
    logits = torch.tensor([-8.0, -3.0, -1.0, 0.0, 0.5, 2.0, 8.0])
    n = 60_000
    torch.manual_seed(11)
    draws = fused_gumbel.bernoulli(logits.repeat(n, 1), backend="triton")
    p = torch.sigmoid(logits.double())
    z = (draws.double().mean(0) - p) / torch.sqrt(p * (1 - p) / n)
    assert z.abs().max() < 4.5, z
    assert set(draws.unique().tolist()) == {0.0, 1.0}


def test_hard_sample_is_the_bernoulli_draw_and_soft_rounds_to_it():
    logits = torch.randn(4, 33, generator=torch.Generator().manual_seed(2)) * 4
    torch.manual_seed(3)
    drawn = fused_gumbel.bernoulli(logits, backend="triton")
    torch.manual_seed(3)
    hard = fused_gumbel.relaxed_bernoulli(logits, 0.5, hard=True, backend="triton")
    torch.manual_seed(3)
    soft = fused_gumbel.relaxed_bernoulli(logits, 0.5, backend="triton")
    torch.manual_seed(3)
    ref = fused_gumbel.bernoulli(logits, backend="reference")
    assert torch.equal(drawn, hard) and torch.equal(drawn, ref)
    assert torch.equal((soft > 0.5).to(soft.dtype), hard)


def test_gradcheck_soft_logits_and_tau():
    logits = torch.randn(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    tau = torch.tensor([[0.5], [1.0], [2.5]], dtype=torch.float64, requires_grad=True)
    scalar_tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def sample(x, t):
        return fused_gumbel.relaxed_bernoulli(x, t, generator=torch.Generator().manual_seed(9), backend="triton")

    assert torch.autograd.gradcheck(sample, (logits, tau))
    assert torch.autograd.gradcheck(sample, (logits, scalar_tau))


def test_hard_gradient_equals_soft_gradient():
    logits = torch.randn(2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    weight = torch.randn(2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    grads = []
    for hard in (False, True):
        x = logits.clone().requires_grad_()
        y = fused_gumbel.relaxed_bernoulli(x, 0.6, hard=hard, generator=torch.Generator().manual_seed(8),
                                           backend="triton")
        (y * weight).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("hard", [False, True])
def test_extremes_are_finite(dtype, tau, hard):
    big = torch.finfo(dtype).max
    logits = torch.tensor([-math.inf, math.inf, -big, big, -1e4, 1e4, -88.0, 88.0, -20.0, 20.0, 0.0], dtype=dtype)
    logits = logits.repeat(3)
    x = logits.clone().requires_grad_()
    t = torch.tensor(tau, requires_grad=True)
    y = fused_gumbel.relaxed_bernoulli(x, t, hard=hard, backend="triton")
    y.sum().backward()
    assert torch.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(t.grad).all()
    assert (y[1::11] == 1).all() and (y[0::11] == 0).all() and (x.grad[0::11] == 0).all()


def test_nan_logits_give_nan():
    logits = torch.tensor([0.0, math.nan, 1.0])
    for hard in (False, True):
        for backend in ("triton", "reference"):
            y = fused_gumbel.relaxed_bernoulli(logits, hard=hard, backend=backend)
            assert torch.isnan(y[1]) and torch.isfinite(y[[0, 2]]).all()
    assert torch.isnan(fused_gumbel.bernoulli(logits, backend="triton")[1])


def test_backward_regenerates_the_forward_noise():
    # The noise is not saved: the backward of a later call must still see this call's noise.
    logits = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = logits.clone().requires_grad_()
    y = fused_gumbel.relaxed_bernoulli(x, 0.5, backend="triton")
    fused_gumbel.relaxed_bernoulli(logits, 0.5, backend="triton")  # another draw in between
    y.sum().backward()
    expected = (y * (1 - y) / 0.5).detach()
    torch.testing.assert_close(x.grad, expected, atol=1e-12, rtol=1e-9)


def test_seed_reproduces_and_calls_differ():
    logits = torch.zeros(100)
    torch.manual_seed(5)
    a = fused_gumbel.relaxed_bernoulli(logits, backend="triton")
    b = fused_gumbel.relaxed_bernoulli(logits, backend="triton")
    torch.manual_seed(5)
    assert torch.equal(fused_gumbel.relaxed_bernoulli(logits, backend="triton"), a)
    assert not torch.equal(a, b)
    gen = torch.Generator().manual_seed(5)
    c = fused_gumbel.relaxed_bernoulli(logits, generator=gen, backend="triton")
    assert torch.equal(c, fused_gumbel.relaxed_bernoulli(logits, generator=torch.Generator().manual_seed(5)))


def test_non_contiguous_logits():
    base = torch.randn(6, 10, generator=torch.Generator().manual_seed(3))
    logits = base.t()
    (y, _, _), (y_ref, _, _) = fused_and_reference(logits, 0.5)
    assert_close(y, y_ref, torch.float32)
    torch.manual_seed(0)
    assert torch.equal(fused_gumbel.relaxed_bernoulli(logits, 0.5, backend="triton"),
                       _seeded(lambda: fused_gumbel.relaxed_bernoulli(logits.contiguous(), 0.5, backend="triton")))


def _seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_zero_dim_and_empty(backend):
    y = fused_gumbel.relaxed_bernoulli(torch.tensor(0.3), backend=backend)
    assert y.shape == () and 0 < y < 1
    assert fused_gumbel.bernoulli(torch.tensor(0.3), backend=backend).shape == ()
    x = torch.empty(0, 4, requires_grad=True)
    y = fused_gumbel.relaxed_bernoulli(x, backend=backend)
    assert y.shape == (0, 4)
    y.sum().backward()
    assert fused_gumbel.bernoulli(torch.empty(3, 0), backend=backend).shape == (3, 0)


@pytest.mark.parametrize("tau, error", [
    (0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError), (True, TypeError),
    ("1", TypeError), (torch.tensor([1.0, 2.0]), ValueError), (torch.tensor([[1.0], [0.0]]), ValueError),
    (torch.tensor(1), TypeError),
])
def test_bad_tau_raises(tau, error):
    with pytest.raises(error):
        fused_gumbel.relaxed_bernoulli(torch.zeros(2, 3), tau)


def test_bad_logits_raise():
    with pytest.raises(TypeError):
        fused_gumbel.relaxed_bernoulli(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError):
        fused_gumbel.bernoulli([0.0, 1.0])
    with pytest.raises(ValueError, match="backend"):
        fused_gumbel.relaxed_bernoulli(torch.zeros(3), backend="cuda")


def test_reference_accepts_explicit_noise():
    logits = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    noise = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    y = reference_relaxed.relaxed_bernoulli(logits, 2.0, noise=noise)
    torch.testing.assert_close(y, torch.sigmoid((logits + noise) / 2.0))
    assert reference_relaxed.bernoulli(logits, noise=noise).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        reference_relaxed.bernoulli(logits, noise=noise[:2])


def test_seed_argument_is_the_same_stream_on_every_backend():
    logits = torch.randn(3, 17, generator=torch.Generator().manual_seed(1))
    fused = fused_gumbel.relaxed_bernoulli(logits, 0.5, seed=1234, backend="triton")
    ref = fused_gumbel.relaxed_bernoulli(logits, 0.5, seed=1234, backend="reference")
    assert_close(fused, ref, torch.float32)
    assert torch.equal(fused_gumbel.bernoulli(logits, seed=1234, backend="triton"),
                       fused_gumbel.bernoulli(logits, seed=1234, backend="reference"))
    assert not torch.equal(fused, fused_gumbel.relaxed_bernoulli(logits, 0.5, seed=1235, backend="triton"))
    with pytest.raises(ValueError):
        fused_gumbel.bernoulli(logits, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError):
        fused_gumbel.relaxed_bernoulli(logits, seed=-1)


def test_kernels_read_the_seed_from_a_device_tensor():
    # CUDA-graph capture hands the kernels (seed, offset) in an int64 [2] tensor: same noise.
    from fused_gumbel.kernels import relaxed_bernoulli as kernels

    x = torch.randn(1500, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    seed, offset = 2**62 + 12345, 2**33 + 4
    by_value, by_pointer = torch.empty_like(x), torch.empty_like(x)
    kernels.relaxed_bernoulli_forward(x, by_value, 0.7, seed, offset, kernels.MODE_SOFT)
    kernels.relaxed_bernoulli_forward(x, by_pointer, 0.7, torch.tensor([seed, offset]), None, kernels.MODE_SOFT)
    assert torch.equal(by_value, by_pointer)
    expected = reference_relaxed.relaxed_bernoulli(x, 0.7, seed=seed, offset=offset)
    torch.testing.assert_close(by_value, expected, atol=1e-12, rtol=1e-12)
    grads = []
    for key in (seed, torch.tensor([seed, offset])):
        grad_x = torch.empty_like(x)
        kernels.relaxed_bernoulli_backward(torch.ones_like(x), x, grad_x, None, 0.7, key,
                                           offset if isinstance(key, int) else None)
        grads.append(grad_x)
    assert torch.equal(grads[0], grads[1])


_COMPILE_SCRIPT = textwrap.dedent("""
    import sys, torch
    import triton.language as tl
    sys.path.insert(0, {tests!r})
    from sm90_compile import compile_variants
    from fused_gumbel.kernels import relaxed_bernoulli as k

    seeds = dict(numel=3 * 2**20, tau_value=1.0, seed_lo=-5, seed_hi=256, offset_lo=0, offset_hi=32,
                 rng_ptr=torch.int64, rng_mode=0)
    common = dict(BLOCK_Q=k.BLOCK_Q, num_warps=k.NUM_WARPS)
    fwd = dict(seeds, x_ptr=torch.bfloat16, y_ptr=torch.bfloat16, tau_ptr=torch.float32)
    print("\\n".join(compile_variants(k.relaxed_bernoulli_fwd_kernel, fwd, [
        dict(MODE=k.MODE_SOFT, TAU_FROM_PTR=True, TAU_PER_ELEMENT=False, COMPUTE=tl.float32, **common),
        dict(MODE=k.MODE_HARD, TAU_FROM_PTR=False, TAU_PER_ELEMENT=False, COMPUTE=tl.float32, **common)])))
    bwd = dict(seeds, grad_y_ptr=torch.float16, x_ptr=torch.float16, grad_x_ptr=torch.float16,
               grad_tau_ptr=torch.float32, tau_ptr=torch.float32)
    bwd64 = {{name: torch.float64 if isinstance(value, torch.dtype) and name != "rng_ptr" else value
             for name, value in bwd.items()}}
    print("\\n".join(compile_variants(k.relaxed_bernoulli_bwd_kernel, bwd, [
        dict(TAU_GRAD=True, TAU_FROM_PTR=True, TAU_PER_ELEMENT=False, COMPUTE=tl.float32, **common),
        dict(TAU_GRAD=False, TAU_FROM_PTR=False, TAU_PER_ELEMENT=False, COMPUTE=tl.float32, **common)])))
    print("\\n".join(compile_variants(k.relaxed_bernoulli_bwd_kernel, bwd64, [
        dict(TAU_GRAD=True, TAU_FROM_PTR=True, TAU_PER_ELEMENT=True, COMPUTE=tl.float64, **common)])))
""")


def test_kernels_compile_for_h100():
    """The interpreter accepts code the GPU compiler rejects: compile for sm_90 (no GPU needed)."""
    stdout = compile_for_sm90(_COMPILE_SCRIPT, timeout=300)
    assert stdout.count(": ok") == 5, stdout


def test_bernoulli_vae_loss_and_samplers():
    from fused_gumbel.vae.bernoulli import BernoulliSampler, BernoulliVAE, negative_elbo_bernoulli

    torch.manual_seed(0)
    model = BernoulliVAE(latent_dim=200)
    images = torch.rand(4, 1, 28, 28)
    # KL(Bernoulli(sigmoid(l)) || Bernoulli(1/2)) in closed form: 0 at l = 0, finite at any l.
    logits = torch.tensor([[0.0, 3.0, -3.0, 1e4, -1e4]])
    q = torch.sigmoid(logits.double())
    exact = (q * torch.log(2 * q) + (1 - q) * torch.log(2 * (1 - q))).nan_to_num(math.log(2)).sum()
    _, _, kl = negative_elbo_bernoulli(torch.zeros(1, 784), torch.zeros(1, 784), logits)
    torch.testing.assert_close(kl.double(), exact, atol=1e-6, rtol=1e-6)
    for name in ("fused", "reference", "torch"):
        sampler = BernoulliSampler(name)
        decoder_logits, encoder_logits = model(images, sampler, tau=0.5, hard=name == "torch")
        assert decoder_logits.shape == (4, 784) and encoder_logits.shape == (4, 200)
        loss, bce, kl = negative_elbo_bernoulli(decoder_logits, images, encoder_logits)
        assert torch.isfinite(loss) and kl >= 0 and bce > 0
        model.zero_grad()
        loss.backward()
        assert model.encoder[0].weight.grad.abs().sum() > 0  # the gradient reaches the encoder
        codes = sampler.discrete(encoder_logits)
        assert set(codes.unique().tolist()) <= {0.0, 1.0}
    assert model.prior_codes(3).shape == (3, 200)
    with pytest.raises(ValueError):
        BernoulliSampler("numpy")
