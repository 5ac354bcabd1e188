"""Gradient estimators of the hard sample (``estimator=``): Gumbel-Rao and ReinMax, fused kernel and
reference, against the official formulas and straight-through on identical noise."""
import textwrap

import pytest
import torch

import fused_gumbel
from fused_gumbel import estimators, reference_estimators
from fused_gumbel.kernels import gumbel_estimators as estimator_kernels
from fused_gumbel.nn import GumbelSoftmax

from helpers import assert_close, compile_for_sm90, run_both_backends

BACKENDS = ["triton", "reference"]
ESTIMATORS = [("reinmax", None), ("gumbel_rao", 1), ("gumbel_rao", 3)]


@pytest.fixture(autouse=True)
def _fixed_examples():
    """Every test draws its example tensors from the same state: results do not depend on test order."""
    torch.manual_seed(0)


def _sample_and_grads(logits, tau, weight, backend, seed=5, dim=-1, **kwargs):
    x = logits.detach().clone().requires_grad_()
    t = tau.detach().clone().requires_grad_() if isinstance(tau, torch.Tensor) else tau
    y = fused_gumbel.gumbel_softmax(x, t, hard=True, dim=dim, seed=seed, backend=backend, **kwargs)
    (y * weight).sum().backward()
    return y.detach(), x.grad, (t.grad if isinstance(t, torch.Tensor) else None)


def official_reinmax_grad(grad, logits, one_hot, tau):
    """The backward of the official ``reinmax`` package (microsoft/ReinMax, ``ReinMaxCore``) for a
    given one-hot sample, with no gradient at its second output, last dim the classes."""
    pi0 = logits.softmax(-1)
    pi1 = 0.5 * ((logits / tau).softmax(-1) + one_hot)
    grad_1 = 2 * grad * pi1
    grad_1 = grad_1 - pi1 * grad_1.sum(-1, keepdim=True)
    grad_0 = -0.5 * grad * pi0
    grad_0 = grad_0 - pi0 * grad_0.sum(-1, keepdim=True)
    total = grad_0 + grad_1
    return total - total.mean(-1, keepdim=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_st_unchanged(backend):
    """estimator="st" is the default call, bit for bit, value and gradient."""
    logits, weight = torch.randn(6, 7), torch.randn(6, 7)
    default = _sample_and_grads(logits, 0.7, weight, backend)
    explicit = _sample_and_grads(logits, 0.7, weight, backend, estimator="st")
    for a, b in zip(default, explicit):
        assert a is None and b is None or torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator,mc", ESTIMATORS)
def test_forward_is_the_straight_through_one_hot(backend, estimator, mc):
    logits = torch.randn(9, 6)
    logits[0, 2] = float("-inf")
    st = fused_gumbel.gumbel_softmax(logits, 0.5, hard=True, seed=11, backend=backend)
    y = fused_gumbel.gumbel_softmax(logits, 0.5, hard=True, seed=11, backend=backend, estimator=estimator,
                                    mc_samples=mc)
    assert torch.equal(y, st)


@pytest.mark.parametrize("estimator,mc", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["rows", "strided", "many_classes", "widest"])
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "rows"])
def test_kernel_matches_reference(estimator, mc, dtype, layout, tau_kind):
    """The fused backward and the reference on identical noise (the conditional draws included)."""
    shape, dim = {"rows": ((6, 7), -1), "strided": ((3, 5, 4), 1), "many_classes": ((3, 37), -1),
                  "widest": ((2, estimator_kernels.MAX_FUSED_CLASSES), -1)}[layout]
    logits = torch.randn(shape, dtype=dtype) * 2
    logits.view(-1)[3] = float("-inf")
    row_shape = list(shape)
    row_shape[dim] = 1
    tau = {"rows": torch.rand(row_shape, dtype=dtype) + 0.4, "scalar": torch.tensor(0.6, dtype=dtype),
           "float": 0.6}[tau_kind]
    weight = torch.randn(shape, dtype=dtype)
    fused, ref = run_both_backends(fused_gumbel.gumbel_softmax, logits, tau, seed=3, grad_weight=weight, hard=True,
                                   dim=dim, estimator=estimator, mc_samples=mc)
    assert torch.equal(fused[0], ref[0])
    assert_close(fused[1], ref[1], dtype)
    if tau_kind != "float" and estimator == "gumbel_rao":
        # A sum over the row's classes (with cancellation): rounding grows about as sqrt(K).
        assert_close(fused[2], ref[2], dtype, scale=max(1.0, logits.numel() ** 0.5))
    if estimator == "reinmax":
        assert fused[2] is None and ref[2] is None  # tau gets no gradient, as in the official code


@pytest.mark.parametrize("backend", BACKENDS)
def test_reinmax_matches_official_formula(backend):
    logits = torch.randn(8, 6, dtype=torch.float64) * 1.5
    weight = torch.randn(8, 6, dtype=torch.float64)
    tau = 1.3
    y, grad, _ = _sample_and_grads(logits, tau, weight, backend, estimator="reinmax")
    expected = official_reinmax_grad(weight, logits, y, tau)  # on the same one-hot sample
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=1e-10)


def _conditional_soft_sample(logits, index, seed, draw):
    """The conditional perturbed logits ``z`` of draw ``draw`` of a (seed, offset 0) call, [R, K]."""
    noise = reference_estimators.conditional_noise_rows(*logits.shape, seed, 0, draw, logits.dtype)
    return reference_estimators.conditional_perturbed(logits, index, noise)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gumbel_rao_one_draw_is_straight_through_of_the_conditional_sample(backend):
    logits = torch.randn(7, 5, dtype=torch.float64)
    weight = torch.randn(7, 5, dtype=torch.float64)
    tau = 0.8
    y, grad, _ = _sample_and_grads(logits, tau, weight, backend, seed=21, estimator="gumbel_rao", mc_samples=1)
    index = y.argmax(-1, keepdim=True)
    z = _conditional_soft_sample(logits, index, 21, 0)
    assert torch.equal(z.argmax(-1, keepdim=True), index)  # the draw is conditioned on the chosen class
    x = logits.clone().requires_grad_()
    soft = torch.softmax((x + (z - x).detach()) / tau, -1)  # ST of the soft sample of that noise
    (soft * weight).sum().backward()
    torch.testing.assert_close(grad, x.grad, atol=1e-12, rtol=1e-10)


def test_conditional_draws_are_the_right_law():
    """Given the chosen class i, the max M = z_i is Gumbel(logsumexp(logits)) whatever i is: its mean
    is logsumexp + Euler's gamma; and a fresh sample's argmax of z is i."""
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]], dtype=torch.float64).expand(20000, 4)
    index = torch.randint(0, 4, (20000, 1))
    z = _conditional_soft_sample(logits, index, 4, 0)
    assert torch.equal(z.argmax(-1, keepdim=True), index)
    top = z.gather(-1, index) - torch.logsumexp(logits[:1], -1)
    assert abs(top.mean().item() - 0.5772156649) < 4 * 1.2825 / 20000**0.5  # Gumbel(0, 1): sd pi / sqrt 6


def _per_row_grads(backend, estimator, rows, mc=None, seed=0):
    """Gradients of rows independent forward samples of one fixed example (row r is sample r)."""
    logits = torch.tensor([1.0, 0.2, -0.5, 0.0, -1.5], dtype=torch.float64).expand(rows, 5)
    weight = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.7], dtype=torch.float64).expand(rows, 5)
    return _sample_and_grads(logits, 0.5, weight, backend, seed=seed, estimator=estimator, mc_samples=mc)[1]


@pytest.mark.parametrize("backend,rows", [("reference", 40000), ("triton", 2000)])
def test_gumbel_rao_keeps_the_mean_and_lowers_the_variance(backend, rows):
    """(b) Rao-Blackwellisation keeps ST's expected gradient: the mean gradients agree within 4.5
    standard errors of their difference; (c) it lowers the variance over forward samples."""
    st = _per_row_grads(backend, "st", rows)
    rao = _per_row_grads(backend, "gumbel_rao", rows, mc=10, seed=1)
    stderr = ((st.var(0) + rao.var(0)) / rows).sqrt()
    assert ((st.mean(0) - rao.mean(0)).abs() <= 4.5 * stderr).all(), (st.mean(0), rao.mean(0), stderr)
    ratio = (rao.var(0).sum() / st.var(0).sum()).item()
    print(f"gumbel_rao (K=10) / st gradient variance, {backend}: {ratio:.3f}")
    assert ratio < 0.8


def _frozen_surrogate(estimator, logits, tau, index, mc, seed):
    """The estimator's surrogate as a smooth function of (logits, tau), its detached parts frozen at
    ``logits``: Gumbel-Rao's conditional noise z_k - logits, ReinMax's shift log pi1 - logits."""
    if estimator == "reinmax":
        one_hot = torch.zeros_like(logits).scatter(-1, index, 1.0)
        pi1 = (one_hot + torch.softmax(logits / tau, -1)) / 2
        shift = torch.log(pi1) - logits
        return lambda x, t: 2 * torch.softmax(x + shift, -1) - torch.softmax(x, -1) / 2
    noises = [_conditional_soft_sample(logits, index, seed, k) - logits for k in range(mc)]
    return lambda x, t: sum(torch.softmax((x + c) / t, -1) for c in noises) / mc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 2)])
def test_gradient_is_the_frozen_surrogates_derivative(backend, estimator, mc):
    """gradcheck where it applies: the estimator is the derivative of a smooth surrogate whose
    stop-gradient parts are frozen at the evaluation point; compare against its central differences."""
    logits = torch.randn(3, 5, dtype=torch.float64)
    weight = torch.randn(3, 5, dtype=torch.float64)
    tau = torch.tensor(0.8, dtype=torch.float64)
    y, grad, grad_tau = _sample_and_grads(logits, tau, weight, backend, seed=9, estimator=estimator, mc_samples=mc)
    surrogate = _frozen_surrogate(estimator, logits, tau, y.argmax(-1, keepdim=True), mc, 9)
    assert torch.autograd.gradcheck(surrogate, (logits.clone().requires_grad_(), tau.clone().requires_grad_()))
    loss = lambda x, t: (surrogate(x, t) * weight).sum()  # noqa: E731
    eps = 1e-6
    numeric = torch.zeros_like(logits)
    for i in range(logits.numel()):
        step = torch.zeros_like(logits).view(-1).index_fill(0, torch.tensor(i), eps).view_as(logits)
        numeric.view(-1)[i] = (loss(logits + step, tau) - loss(logits - step, tau)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, atol=1e-8, rtol=1e-6)
    if estimator == "gumbel_rao":
        numeric_tau = (loss(logits, tau + eps) - loss(logits, tau - eps)) / (2 * eps)
        torch.testing.assert_close(grad_tau, numeric_tau, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 2)])
def test_double_backward_matches_the_kernel(estimator, mc):
    """create_graph=True runs the reference math on the kernel's choice: same first gradient."""
    logits, weight = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    tau = torch.tensor(0.8, dtype=torch.float64)
    grads = []
    for create_graph in (False, True):
        x = logits.clone().requires_grad_()
        y = fused_gumbel.gumbel_softmax(x, tau, hard=True, seed=2, backend="triton", estimator=estimator,
                                        mc_samples=mc)
        (grad,) = torch.autograd.grad((y * weight).sum(), x, create_graph=create_graph)
        grads.append(grad)
        if create_graph:
            grad.square().sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 2)])
def test_wide_rows_fall_back_to_torch_ops(monkeypatch, estimator, mc):
    logits, weight = torch.randn(3, 9), torch.randn(3, 9)
    tau = torch.tensor([[0.5], [0.9], [1.4]])
    fused = _sample_and_grads(logits, tau, weight, "triton", estimator=estimator, mc_samples=mc)
    monkeypatch.setattr(estimator_kernels, "MAX_FUSED_CLASSES", 8)
    fallback = _sample_and_grads(logits, tau, weight, "triton", estimator=estimator, mc_samples=mc)
    assert torch.equal(fused[0], fallback[0])
    assert_close(fallback[1], fused[1], torch.float32)
    if estimator == "gumbel_rao":
        assert_close(fallback[2], fused[2], torch.float32)


def test_backward_saves_only_the_logits_and_tau():
    """No N x K tensor beyond the logits (what straight-through saves), whatever mc_samples is."""
    x = torch.randn(4, 6, requires_grad=True)
    y = fused_gumbel.gumbel_softmax(x, 0.5, hard=True, backend="triton", estimator="gumbel_rao", mc_samples=50)
    assert isinstance(y.grad_fn, estimators.GumbelEstimatorFunction._backward_cls)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert len(saved) == 1 and saved[0] is x


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 3)])
def test_compiled_matches_eager(compiler, backend, estimator, mc):
    torch._dynamo.reset()
    logits, weight = torch.randn(5, 7), torch.randn(5, 7)
    tau = torch.rand(5, 1) + 0.5

    def fn(x, t):
        return fused_gumbel.gumbel_softmax(x, t, hard=True, backend=backend, estimator=estimator, mc_samples=mc)

    results = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend=compiler)):
        x, t = logits.clone().requires_grad_(), tau.clone().requires_grad_()
        torch.manual_seed(0)
        y = f(x, t)
        (y * weight).sum().backward()
        results.append((y.detach(), x.grad, t.grad))
    torch._dynamo.reset()
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-5)
    if estimator == "gumbel_rao":
        torch.testing.assert_close(results[1][2], results[0][2], atol=1e-5, rtol=1e-5)
    else:
        assert results[0][2] is None and results[1][2] is None


@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 3)])
def test_fast_twin_matches_reference(estimator, mc):
    """The GPU's float32 algorithm (FAST=1: the fast twin with exact log2/exp2, so the interpreter
    runs it) against the reference, within the fast noise's bound (1e-5 nats) carried to gradients."""
    logits, weight = torch.randn(6, 7) * 2, torch.randn(6, 7)
    tau = torch.rand(6, 1) + 0.4
    _, expected, expected_tau = _sample_and_grads(logits, tau, weight, "reference", seed=5, estimator=estimator,
                                                  mc_samples=mc)
    grad = torch.empty_like(logits)
    grad_tau = torch.empty(6) if estimator == "gumbel_rao" else None
    strides = (7, 1, 1)
    estimator_kernels.estimator_backward(weight, strides, logits, strides, grad, strides, grad_tau, tau.reshape(6), 6, 7,
                                         1, 5, 0, estimators.ESTIMATOR_CODES[estimator], mc or 1, fast=1)
    torch.testing.assert_close(grad, expected, atol=2e-5, rtol=1e-4)
    if grad_tau is not None:
        torch.testing.assert_close(grad_tau, expected_tau.reshape(6), atol=2e-5, rtol=1e-4)


class _EstimatorSampler(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend

    def forward(self, x, tau):
        return fused_gumbel.gumbel_softmax(x, tau, hard=True, backend=self.backend, estimator="gumbel_rao",
                                           mc_samples=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_records_the_estimator_op(backend):
    x, tau = torch.randn(5, 6), torch.tensor(0.7)
    program = torch.export.export(_EstimatorSampler(backend), (x, tau))
    targets = {str(node.target) for node in program.graph.nodes}
    assert any("sample_estimator" in target for target in targets), targets
    exported = program.module()
    torch.manual_seed(3)
    first = exported(x, tau)
    torch.manual_seed(3)
    assert torch.equal(first, _EstimatorSampler(backend)(x, tau))  # eager's sample for the same RNG state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 2)])
def test_half_precision_kernel_matches_reference(dtype, estimator, mc):
    logits, weight = torch.randn(6, 9).to(dtype), torch.randn(6, 9).to(dtype)
    fused, ref = run_both_backends(fused_gumbel.gumbel_softmax, logits, 0.9, seed=4, grad_weight=weight, hard=True,
                                   estimator=estimator, mc_samples=mc)
    assert torch.equal(fused[0], ref[0]) and fused[1].dtype == dtype
    assert_close(fused[1], ref[1], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator,mc", [("reinmax", None), ("gumbel_rao", 2)])
def test_invalid_rows_stay_apart(backend, estimator, mc):
    """A row with a NaN or no finite logit comes out NaN, as for straight-through; the others are
    those of the same call without it."""
    logits, weight = torch.randn(4, 5), torch.randn(4, 5)
    broken = logits.clone()
    broken[1, 2] = float("nan")
    broken[3] = float("-inf")
    y, grad, _ = _sample_and_grads(broken, 0.8, weight, backend, estimator=estimator, mc_samples=mc)
    clean_y, clean_grad, _ = _sample_and_grads(logits, 0.8, weight, backend, estimator=estimator, mc_samples=mc)
    assert y[[1, 3]].isnan().all()
    assert torch.equal(y[[0, 2]], clean_y[[0, 2]])
    torch.testing.assert_close(grad[[0, 2]], clean_grad[[0, 2]])


def test_torch_func_transforms_are_refused():
    with pytest.raises(NotImplementedError, match="torch.func"):
        torch.func.grad(lambda x: fused_gumbel.gumbel_softmax(x, hard=True, estimator="reinmax").sum())(
            torch.randn(2, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_option(backend):
    layer = GumbelSoftmax(tau=0.7, hard=True, estimator="gumbel_rao", mc_samples=4, seed=8)
    assert "estimator='gumbel_rao'" in repr(layer) and "mc_samples=4" in repr(layer)
    logits, weight = torch.randn(4, 6), torch.randn(4, 6)
    x = logits.clone().requires_grad_()
    (layer(x) * weight).sum().backward()
    expected = _sample_and_grads(logits, 0.7, weight, "reference", seed=8, estimator="gumbel_rao", mc_samples=4)
    assert_close(x.grad, expected[1], torch.float32)
    with pytest.raises(ValueError, match="hard=True"):
        GumbelSoftmax(hard=False, estimator="reinmax")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(estimator="rao"), ValueError, "estimator must be one of"),
    (dict(estimator="reinmax", hard=False), ValueError, "pass hard=True"),
    (dict(estimator="gumbel_rao", mc_samples=0), ValueError, r"mc_samples must be in \[1, 32767\]"),
    (dict(estimator="gumbel_rao", mc_samples=2.0), TypeError, "mc_samples must be an int"),
    (dict(estimator="gumbel_rao", mc_samples=True), TypeError, "mc_samples must be an int"),
    (dict(estimator="reinmax", mc_samples=4), ValueError, "only to estimator='gumbel_rao'"),
    (dict(mc_samples=4), ValueError, "only to estimator='gumbel_rao'"),
])
def test_bad_options(kwargs, error, match):
    kwargs = {"hard": True, **kwargs}
    with pytest.raises(error, match=match):
        fused_gumbel.gumbel_softmax(torch.randn(2, 3), 0.5, **kwargs)


SM90_SCRIPT = textwrap.dedent("""
    import itertools, sys, torch
    import triton.language as tl
    sys.path.insert(0, {tests!r})
    from sm90_compile import compile_variants
    from fused_gumbel.kernels import gumbel_estimators as k

    args = dict(grad_y_ptr=torch.bfloat16, x_ptr=torch.bfloat16, grad_x_ptr=torch.bfloat16, grad_tau_ptr=torch.float32,
                tau_ptr=torch.float32, tau_value=1.0, n_rows=3000, K=10, Q=3, inner=1, mc_samples=10,
                g_s_outer=10, g_s_k=1, g_s_inner=1, x_s_outer=10, x_s_k=1, x_s_inner=1, gx_s_outer=10, gx_s_k=1,
                gx_s_inner=1, tau_s_row=1, seed_lo=-5, seed_hi=256, offset_lo=0, offset_hi=32, rng_ptr=torch.int64,
                rng_mode=0)
    variants = [dict(ESTIMATOR=estimator, TAU_GRAD=estimator == k.ESTIMATOR_GUMBEL_RAO, TAU_FROM_PTR=True, ROWS=rows,
                     BLOCK_Q=block_q, COMPUTE=tl.float32, FAST=fast, num_warps=warps)
                for estimator, fast, (rows, block_q, warps) in itertools.product(
                    (k.ESTIMATOR_GUMBEL_RAO, k.ESTIMATOR_REINMAX), (2, 0), ((64, 4, 4), (1, 1024, 8)))]
    print("\\n".join(compile_variants(k.gumbel_estimator_bwd_kernel, args, variants)))
    f64 = {{name: torch.float64 if isinstance(value, torch.dtype) and value.is_floating_point else value
           for name, value in args.items()}}
    print("\\n".join(compile_variants(k.gumbel_estimator_bwd_kernel, f64, [
        dict(ESTIMATOR=estimator, TAU_GRAD=False, TAU_FROM_PTR=False, ROWS=8, BLOCK_Q=8, COMPUTE=tl.float64, FAST=0)
        for estimator in (k.ESTIMATOR_GUMBEL_RAO, k.ESTIMATOR_REINMAX)])))
""")


def test_kernel_compiles_for_sm90():
    """Every constexpr variant the launcher uses compiles for sm_90 (the FAST twin's inline PTX included)."""
    assert compile_for_sm90(SM90_SCRIPT).count(": ok") == 10


def test_conditional_counters_stay_in_range():
    """Draw k's counters start at (k + 1) * 2**48: a tensor of 2**48 Philox calls or more is refused
    (meta tensors: shapes without memory)."""
    fine = torch.empty(2**47 - 1, 8, device="meta")
    assert fused_gumbel.gumbel_softmax(fine, hard=True, estimator="gumbel_rao").shape == fine.shape
    with pytest.raises(ValueError, match="2\\*\\*48 Philox calls"):
        fused_gumbel.gumbel_softmax(torch.empty(2**47, 8, device="meta"), hard=True, estimator="gumbel_rao")
