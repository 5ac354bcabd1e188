"""The C++ relaxed-Bernoulli kernel of ``fused_gumbel._C`` (``relaxed_bernoulli`` / ``bernoulli`` under
backend "native"): its noise against the RNG spec's elementwise mapping, its samples and gradients
against the PyTorch reference and the Triton kernels (interpreter) on identical (seed, offset),
gradcheck / gradgradcheck, layouts, empty tensors, seeding, and the compiled / exported op.
Skipped, with the reason, where the extension is not built."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fused_gumbel
from fused_gumbel import _native, _relaxed_op, relaxed_function, rng
from helpers import TOLERANCES, assert_close, elementwise_tau

pytestmark = pytest.mark.skipif(not _native.bernoulli_available("cpu"),
                                reason=f"fused_gumbel._C is not available: {_native.unavailable_reason('cpu')}")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def sample(backend, logits, tau=1.0, hard=False, seed=0, grad_weight=None, **kwargs):
    """``relaxed_bernoulli`` on ``backend`` after ``torch.manual_seed(seed)``; with ``grad_weight``,
    also the gradients of ``(y * grad_weight).sum()`` (logits, tau)."""
    torch.manual_seed(seed)
    x = logits.detach().clone().requires_grad_(grad_weight is not None)
    t = tau.detach().clone().requires_grad_(grad_weight is not None) if isinstance(tau, torch.Tensor) else tau
    y = fused_gumbel.relaxed_bernoulli(x, t, hard, backend=backend, **kwargs)
    if grad_weight is None:
        return y, None, None
    (y.to(grad_weight.dtype) * grad_weight).sum().backward()
    return y, x.grad, t.grad if isinstance(t, torch.Tensor) else None


# ---- the RNG spec -------------------------------------------------------------------------------

def _words_and_bits():
    """Every b = w >> 1 at both ends of the range (where |L| is largest), 2**18 random ones between,
    the clamped b = 0, and both values of the dropped low bit."""
    gen = torch.Generator().manual_seed(0)
    b = torch.cat([torch.arange(0, 2**15), torch.randint(0, 2**31, (2**18,), generator=gen),
                   2**31 - 1 - torch.arange(0, 2**15)])
    return 2 * b + torch.randint(0, 2, b.shape, generator=gen), b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_is_within_the_spec_bound(dtype):
    """The kernel's noise (its vector passes) is within 4 ulp of max(|L|, 1) of the definition
    log(b) - log(2**31 - b) (the reference's own bound, tests/test_relaxed_bernoulli.py), exactly
    antisymmetric, and equal to the reference's noise within that bound."""
    words, b = _words_and_bits()
    noise = torch.ops.fused_gumbel._cpu_logistic_noise(words, dtype == torch.float64)
    assert noise.dtype == dtype
    clamped = np.maximum(b.numpy(), 1).astype(np.longdouble)  # 64-bit mantissa: a float64 check needs more than float64
    exact = torch.from_numpy((np.log(clamped) - np.log(2.0**31 - clamped)).astype(np.float64))
    atol = 4 * torch.finfo(dtype).eps * exact.abs().clamp_min(1)
    assert ((noise.double() - exact).abs() <= atol).all()
    assert ((noise.double() - rng.logistic_from_bits(b, dtype).double()).abs() <= atol).all()
    mirrored = torch.ops.fused_gumbel._cpu_logistic_noise(2 * (2**31 - b[1:]), dtype == torch.float64)
    assert torch.equal(mirrored, -noise[1:])


def test_samples_use_the_elementwise_mapping_across_blocks():
    """At tau = 1 and logits 0, logit(y) is the noise itself: element e is word e % 4 of Philox call
    e // 4 over several 1024-element blocks (a call's key is the seed, its offset 0)."""
    numel = 2 * 1024 + 37
    y = fused_gumbel.relaxed_bernoulli(torch.zeros(numel, dtype=torch.float64), 1.0, seed=2**40 + 3, backend="native")
    noise = rng.logistic_from_bits(rng.uniform_bits_flat(numel, 2**40 + 3, 0), torch.float64)
    torch.testing.assert_close(torch.log(y) - torch.log1p(-y), noise, atol=1e-9, rtol=1e-9)


# ---- against the reference and the Triton kernels -----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 3, 11), (3, 700)])
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "per_row", "per_element"])
def test_matches_reference(dtype, shape, tau_kind):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(shape, generator=gen) * 3).to(dtype)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    tau = elementwise_tau(tau_kind, shape, dtype if dtype in (torch.float64, torch.float32) else torch.float32)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    for hard in (False, True):
        y, dx, dt = sample("native", logits, tau, hard, grad_weight=weight)
        y_ref, dx_ref, dt_ref = sample("reference", logits, tau, hard, grad_weight=weight)
        assert y.dtype == dtype and y.shape == logits.shape and y.is_contiguous()
        if hard:
            assert torch.equal(y, y_ref) and set(y.unique().tolist()) <= {0.0, 1.0}
        else:
            assert_close(y, y_ref, dtype)
        assert_close(dx, dx_ref, dtype)
        if dt is not None:
            assert dt.shape == tau.shape and dt.dtype == tau.dtype
            assert_close(dt, dt_ref, compute if dtype in (torch.float64, torch.float32) else dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_triton(dtype):
    """Native against the Triton kernels (interpreter) on the same RNG state: samples, logits and
    per-element / 0-dim temperature gradients."""
    shape = (3, 500)
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for tau in (torch.rand(shape, generator=torch.Generator().manual_seed(4)) + 0.2, torch.tensor(0.6)):
        for hard in (False, True):
            y, dx, dt = sample("native", logits, tau, hard, seed=7, grad_weight=weight)
            y_tr, dx_tr, dt_tr = sample("triton", logits, tau, hard, seed=7, grad_weight=weight)
            if hard:
                assert torch.equal(y, y_tr)
            else:
                assert_close(y, y_tr, dtype)
            assert_close(dx, dx_tr, dtype)
            assert_close(dt, dt_tr, torch.float32 if dtype == torch.float32 else dtype)


def test_bernoulli_is_the_hard_sample_and_the_reference_draw():
    logits = torch.randn(4, 333, generator=torch.Generator().manual_seed(2)) * 4
    drawn = fused_gumbel.bernoulli(logits, seed=3, backend="native")
    assert torch.equal(drawn, fused_gumbel.relaxed_bernoulli(logits, 0.5, hard=True, seed=3, backend="native"))
    assert torch.equal(drawn, fused_gumbel.bernoulli(logits, seed=3, backend="reference"))
    soft = fused_gumbel.relaxed_bernoulli(logits, 0.5, seed=3, backend="native")
    assert torch.equal((soft > 0.5).to(soft.dtype), drawn)


def test_extremes_and_nan():
    big = torch.finfo(torch.float32).max
    logits = torch.tensor([-float("inf"), float("inf"), -big, big, -1e4, 1e4, -88.0, 88.0, -20.0, 20.0, 0.0])
    weight = torch.linspace(-1.0, 1.0, 11, dtype=torch.float64)
    for tau in (1e-3, 1.0, 1e3):
        for hard in (False, True):
            y, dx, dt = sample("native", logits, torch.tensor(tau), hard, grad_weight=weight)
            y_ref, dx_ref, _ = sample("reference", logits, torch.tensor(tau), hard, grad_weight=weight)
            # The reference's dtau is NaN where x + L overflows x / tau (inf * 0): Triton's is the finite one.
            y_tr, dx_tr, dt_tr = sample("triton", logits, torch.tensor(tau), hard, grad_weight=weight)
            assert torch.isfinite(y).all() and (y[1] == 1) and (y[0] == 0)
            assert torch.isfinite(dx).all() and (dx[:2] == 0).all() and torch.isfinite(dt)
            for expected_y, expected_dx in ((y_ref, dx_ref), (y_tr, dx_tr)):
                assert_close(y, expected_y, torch.float32)
                assert_close(dx, expected_dx, torch.float32)
            assert_close(dt, dt_tr, torch.float32)
    with_nan = torch.tensor([0.0, float("nan"), 1.0])
    for hard in (False, True):
        y = fused_gumbel.relaxed_bernoulli(with_nan, hard=hard, backend="native")
        assert torch.isnan(y[1]) and torch.isfinite(y[[0, 2]]).all()
    assert torch.isnan(fused_gumbel.bernoulli(with_nan, backend="native")[1])


# ---- gradients ----------------------------------------------------------------------------------

def test_gradcheck_and_gradgradcheck():
    logits = torch.randn(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    tau = torch.tensor([[0.5], [1.0], [2.5]], dtype=torch.float64, requires_grad=True)
    scalar_tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def soft(x, t):
        return fused_gumbel.relaxed_bernoulli(x, t, seed=9, backend="native")

    for t in (tau, scalar_tau):
        assert torch.autograd.gradcheck(soft, (logits, t))
        assert torch.autograd.gradgradcheck(soft, (logits, t))


def test_double_backward_matches_reference():
    """create_graph=True: the native backward replays the reference on the call's noise, so the
    second derivatives (logits and tau, soft and hard) are the reference backend's."""
    logits = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    weight = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for hard in (False, True):
        out = {}
        for backend in ("native", "reference"):
            x = logits.clone().requires_grad_()
            t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
            y = fused_gumbel.relaxed_bernoulli(x, t, hard, seed=4, backend=backend)
            dx, dt = torch.autograd.grad((y * weight).sum(), (x, t), create_graph=True)
            out[backend] = torch.autograd.grad((dx ** 2).sum() + dt, (x, t))
        for native, reference in zip(out["native"], out["reference"]):
            torch.testing.assert_close(native, reference, atol=1e-12, rtol=1e-10)


def test_backward_regenerates_the_forward_noise():
    logits = torch.randn(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = logits.clone().requires_grad_()
    y = fused_gumbel.relaxed_bernoulli(x, 0.5, backend="native")
    fused_gumbel.relaxed_bernoulli(logits, 0.5, backend="native")  # another draw in between
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y * (1 - y) / 0.5).detach(), atol=1e-12, rtol=1e-9)


def test_tau_gradient_does_not_depend_on_the_thread_count():
    """A 0-dim tau's gradient is summed per 1024-element block in block order: the same bits on any
    number of threads."""
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(2))
    threads, grads = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            grads.append(sample("native", logits, torch.tensor(0.8), seed=1, grad_weight=torch.ones(64, 1000))[1:])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# ---- layouts, empty tensors, seeding ------------------------------------------------------------

@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded"])
def test_non_contiguous_inputs(layout):
    """Elements are numbered row-major whatever the memory layout: the sample is the contiguous copy's."""
    base = torch.randn(40, 30, generator=torch.Generator().manual_seed(3))
    logits = {"transposed": base.t(), "strided": base[::2, 1::3], "expanded": base[:1].expand(5, 30)}[layout]
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tau = torch.rand(logits.shape[1], generator=torch.Generator().manual_seed(5)) + 0.3  # broadcast over rows
    for hard in (False, True):
        y, dx, dt = sample("native", logits, tau, hard, seed=2, grad_weight=weight)
        y_c, dx_c, dt_c = sample("native", logits.contiguous(), tau, hard, seed=2, grad_weight=weight)
        y_ref, dx_ref, dt_ref = sample("reference", logits, tau, hard, seed=2, grad_weight=weight)
        assert torch.equal(y, y_c) and torch.equal(dx, dx_c) and torch.equal(dt, dt_c)
        assert_close(y, y_ref, torch.float32)
        assert_close(dx, dx_ref, torch.float32)
        assert_close(dt, dt_ref, torch.float32)


def test_empty_tensors():
    for shape in [(0,), (3, 0), (0, 4)]:
        x = torch.empty(shape, requires_grad=True)
        y = fused_gumbel.relaxed_bernoulli(x, torch.tensor(0.5), backend="native")
        assert y.shape == shape
        assert fused_gumbel.bernoulli(x, backend="native").shape == shape
        # The ops themselves (what a compiled graph calls): empty outputs, a zero 0-dim tau gradient.
        out = _native.bernoulli_forward(x.detach(), 0.5, 0, 1, 2)
        grad_x, grad_tau = _native.bernoulli_backward(out, x.detach(), torch.tensor(0.5), 1, 2, True)
        assert out.shape == grad_x.shape == shape and grad_tau.shape == () and grad_tau.item() == 0.0
        _, per_element = _native.bernoulli_backward(out, x.detach(), torch.full((0,), 0.5), 1, 2, True)
        assert per_element.shape == (0,)


def test_seeding_reproduces():
    """manual_seed, generator= and seed= give the reference's draws (soft values to float32's tolerance:
    the logs may differ by an ulp)."""
    logits = torch.zeros(100)
    torch.manual_seed(5)
    a = fused_gumbel.relaxed_bernoulli(logits, backend="native")
    b = fused_gumbel.relaxed_bernoulli(logits, backend="native")
    torch.manual_seed(5)
    assert torch.equal(fused_gumbel.relaxed_bernoulli(logits, backend="native"), a) and not torch.equal(a, b)
    torch.manual_seed(5)
    assert_close(a, fused_gumbel.relaxed_bernoulli(logits, backend="reference"), torch.float32)
    for source in ({"generator": torch.Generator().manual_seed(5)}, {"seed": 123}):
        again = {k: (torch.Generator().manual_seed(5) if k == "generator" else v) for k, v in source.items()}
        native = fused_gumbel.relaxed_bernoulli(logits, **source, backend="native")
        assert_close(native, fused_gumbel.relaxed_bernoulli(logits, **again, backend="reference"), torch.float32)
        again = {k: (torch.Generator().manual_seed(5) if k == "generator" else v) for k, v in source.items()}
        assert torch.equal(fused_gumbel.bernoulli(logits, **again, backend="native"), (native > 0.5).float())


def test_native_runs_the_cpp_kernel(monkeypatch):
    """relaxed_bernoulli and bernoulli under "native" launch the C++ op (forward and backward)."""
    calls = []
    for name in ("bernoulli_forward", "bernoulli_backward"):
        original = getattr(_native, name)
        monkeypatch.setattr(_native, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x = torch.randn(5, 6, requires_grad=True)
    fused_gumbel.relaxed_bernoulli(x, 0.5, hard=True, backend="native").sum().backward()
    fused_gumbel.bernoulli(x, backend="native")
    assert calls == ["bernoulli_forward", "bernoulli_backward", "bernoulli_forward"]
    # The Triton path under the interpreter keeps its own kernels.
    assert relaxed_function.bernoulli_forward(x.detach(), 0.5, 0, 1, 2).shape == (5, 6) and len(calls) == 3


def test_vmap_runs_the_reference_under_native():
    """The native ops' Functions have no torch.func rules: under vmap "native" runs the reference,
    as it did before the kernels existed (same noise, same values); gumbel_topk's too."""
    x = torch.randn(3, 4, dtype=torch.float64)
    for name, args in (("relaxed_bernoulli", (0.5,)), ("bernoulli", ()), ("gumbel_topk", (2, 0.5)),
                       ("sample_subset", (2,))):
        op = getattr(fused_gumbel, name)
        native = torch.func.vmap(lambda t: op(t, *args, seed=1, backend="native"), randomness="same")(x)
        reference = torch.func.vmap(lambda t: op(t, *args, seed=1, backend="reference"), randomness="same")(x)
        assert torch.equal(native, reference)


def test_bad_arguments_raise():
    x = torch.randn(4)
    with pytest.raises(RuntimeError, match="mode must be 0"):
        torch.ops.fused_gumbel.bernoulli_kernel_forward(x, None, 1.0, 2, 0, 0)
    with pytest.raises(RuntimeError, match="one value per element"):
        torch.ops.fused_gumbel.bernoulli_kernel_forward(x, torch.ones(3), 1.0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64"):
        torch.ops.fused_gumbel.bernoulli_kernel_forward(x.long(), None, 1.0, 0, 0, 0)


# ---- graphs: compile, export, opcheck -----------------------------------------------------------

def _train_step(fn, logits, tau, seed):
    x = logits.detach().clone().requires_grad_()
    t = tau.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    outs = fn(x, t)
    sum((o * torch.linspace(-1.0, 2.0, o.shape[-1])).sum() for o in outs).backward()
    return [o.detach() for o in outs], x.grad, t.grad


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_calls_run_native_and_match_eager(compiler):
    torch._dynamo.reset()

    def fn(x, t):
        if compiler == "inductor":  # one op: inductor's compile time, not the op count, is the cost
            return (fused_gumbel.relaxed_bernoulli(x, t, hard=True, backend="native"),)
        return (fused_gumbel.relaxed_bernoulli(x, t, backend="native"),
                fused_gumbel.relaxed_bernoulli(x, t, hard=True, backend="native"),
                fused_gumbel.bernoulli(x, backend="native"))

    logits, tau = torch.randn(4, 6), torch.rand(4, 1) + 0.3
    eager = _train_step(fn, logits, tau, seed=3)
    compiled = _train_step(torch.compile(fn, backend=compiler, fullgraph=True), logits, tau, seed=3)
    for e, c in zip(eager[0], compiled[0]):
        assert torch.equal(e, c)
    assert_close(compiled[1], eager[1], torch.float32)
    assert_close(compiled[2], eager[2], torch.float32)
    torch._dynamo.reset()


def test_export_and_opcheck_with_native():
    class Sampler(torch.nn.Module):
        def forward(self, x, tau):
            return fused_gumbel.relaxed_bernoulli(x, tau, hard=True, backend="native") + fused_gumbel.bernoulli(
                x, backend="native")

    x, tau = torch.randn(5, 6), torch.tensor(0.7)
    exported = torch.export.export(Sampler(), (x, tau)).module()
    torch.manual_seed(1)
    first, second = exported(x, tau), exported(x, tau)
    assert not torch.equal(first, second)
    torch.manual_seed(1)
    assert torch.equal(first, Sampler()(x, tau))
    logits, token = torch.randn(3, 5, requires_grad=True), torch.empty(0)
    for args in [(logits, torch.full((15,), 0.8, requires_grad=True), 1.0, _relaxed_op.MODE_SOFT, 5, "native", token),
                 (logits, None, 0.6, _relaxed_op.MODE_HARD, 5, "native", token)]:
        torch.library.opcheck(torch.ops.fused_gumbel.relaxed_bernoulli.default, args)
    for args in [(logits.detach(), torch.tensor(0.8), 1.0, 0, 3, 4),
                 (logits.detach().double(), torch.full((15,), 0.8, dtype=torch.float64), 1.0, 1, 3, 4)]:
        torch.library.opcheck(torch.ops.fused_gumbel.bernoulli_kernel_forward.default, args)
    grad_args = (torch.randn(3, 5), logits.detach(), torch.tensor(0.8), 1.0, 3, 4, True)
    torch.library.opcheck(torch.ops.fused_gumbel.bernoulli_kernel_backward.default, grad_args)


def test_every_isa_build_gives_the_same_samples():
    """The baseline build (FUSED_GUMBEL_CPU_ISA=default, in a subprocess) and the one this CPU runs
    (AVX2 or AVX-512; with AVX-512 the AVX2 one too) give the same exact draws; soft values,
    gradients and noise agree to float32's tolerance (their logs may differ by an ulp)."""
    script = ("import torch, sys\n"
              "from fused_gumbel import _native\n"
              "x = torch.randn(7, 1031, generator=torch.Generator().manual_seed(0))\n"
              "t = torch.tensor(0.8)\n"
              "words = torch.randint(0, 2**32, (5000,), generator=torch.Generator().manual_seed(1))\n"
              "out = [_native.cpu_isa(), _native.bernoulli_forward(x, 0.7, 1, 5, 6),\n"
              "       _native.bernoulli_forward(x, 0.7, 0, 5, 6), *_native.bernoulli_backward(x, x, t, 5, 6, True),\n"
              "       torch.ops.fused_gumbel._cpu_logistic_noise(words, False)]\n")
    namespace = {}
    exec(script, namespace)  # the build chosen here, in this process
    results = {namespace["out"][0]: namespace["out"]}
    for isa in ("default", "avx2") if results.keys() == {"avx512"} else ("default",):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fused_gumbel_bernoulli_isa_{os.getpid()}_{isa}.pt")
        subprocess.run([sys.executable, "-c", script + "torch.save(out, sys.argv[1])\n", path], check=True,
                       timeout=300, env=dict(os.environ, FUSED_GUMBEL_CPU_ISA=isa))
        results[isa] = torch.load(path)
        os.remove(path)
        assert results[isa][0] == isa
    base = results["default"]
    atol, rtol = TOLERANCES[torch.float32]
    for isa, (name, hard, soft, grad_x, grad_tau, noise) in results.items():
        assert torch.equal(hard, base[1]), isa
        torch.testing.assert_close(soft, base[2], atol=atol, rtol=rtol)
        torch.testing.assert_close(grad_x, base[3], atol=atol, rtol=rtol)
        torch.testing.assert_close(grad_tau, base[4], atol=atol * 100, rtol=rtol)
        torch.testing.assert_close(noise, base[5], atol=atol * 10, rtol=rtol)
