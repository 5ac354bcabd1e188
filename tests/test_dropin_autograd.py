"""Drop-in wherever F.gumbel_softmax works (issue 10): double backward, torch.func (grad, jvp,
vmap), forward-mode AD, and smaller gaps (numpy scalars, meta tensors, the eps warning), on
both backends: the Triton kernels (interpreter) and the reference. Pickling under patch() is
tested in test_patch.py, the numba cache in test_rng.py."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.func import grad, jacrev, jvp, vmap

import fused_gumbel
from fused_gumbel.kernels import gumbel_softmax as kernels

BACKENDS = ["triton", "reference"]


def sampler(backend, hard, tau=0.7, dim=-1, seed=3):
    return lambda x, t=tau: fused_gumbel.gumbel_softmax(x, t, hard, dim=dim, seed=seed, backend=backend)


def _tau(kind, shape, dim):
    if kind == "float":
        return 0.7
    if kind == "scalar":
        return torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    row_shape = list(shape)
    row_shape[dim] = 1
    return (torch.rand(row_shape, dtype=torch.float64) + 0.4).requires_grad_()


# --- item 1: double backward -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "rows"])
@pytest.mark.parametrize("shape,dim", [((2, 4), -1), ((2, 3, 2), 1)])
def test_gradgradcheck(backend, hard, tau_kind, shape, dim):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 2).requires_grad_()
    tau = _tau(tau_kind, shape, dim)
    inputs = (x, tau) if isinstance(tau, torch.Tensor) else (x,)
    f = sampler(backend, hard, tau, dim)
    # The hard sample is piecewise constant, so only its (straight-through) backward is checked.
    # Forward-over-reverse (the jvp of the backward) too, for one shape and per-row tau.
    # Every Jacobian entry of the reference, and of one Triton case (soft or hard); the other Triton
    # cases check it projected on random vectors (fast_mode: any wrong entry still shows, almost
    # surely), as each of the full checks' hundreds of calls runs the interpreter.
    full = backend == "reference" or (len(shape) == 2 and tau_kind == "rows")
    assert torch.autograd.gradgradcheck(f, inputs, check_fwd_over_rev=len(shape) == 2 and tau_kind == "rows",
                                        fast_mode=not full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_gradcheck_with_forward_ad(backend):
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    tau = torch.rand(3, 1, dtype=torch.float64).add(0.5).requires_grad_()
    # The Triton backward's every Jacobian entry is checked by test_gumbel_softmax.py's gradcheck.
    assert torch.autograd.gradcheck(sampler(backend, False), (x, tau), check_forward_ad=True,
                                    fast_mode=backend == "triton")


@pytest.mark.parametrize("hard", [False, True])
def test_double_backward_matches_reference_with_neg_inf(hard):
    """-inf classes (probability 0) carry no second-order term and give no NaN."""
    logits = torch.randn(4, 6, dtype=torch.float64)
    logits[:, 2] = float("-inf")
    tau = torch.tensor(0.8, dtype=torch.float64)
    results = []
    for backend in BACKENDS:
        x, t = logits.clone().requires_grad_(), tau.clone().requires_grad_()
        y = fused_gumbel.gumbel_softmax(x, t, hard, seed=9, backend=backend)
        (gx, gt) = torch.autograd.grad((y * torch.arange(6.0, dtype=torch.float64)).sum(), (x, t), create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum() + gt.pow(2), (x, t)))
    for a, b in zip(*results):
        assert not a.isnan().any()
        torch.testing.assert_close(a, b)


class Critic(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(classes, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, y):
        return self.net(y).sum()


@pytest.mark.parametrize("hard", [False, True])
def test_wgan_gp_gradient_penalty_same_on_both_backends(hard):
    """A WGAN-GP-style penalty through the sampler: ((||d critic(y) / d logits|| - 1)^2), then its
    gradient to the critic, the logits and a learnable tau; the Triton path used to drop the
    second-order term silently (penalty gradients off by ~10%)."""
    torch.manual_seed(0)
    critic = Critic(8).double()
    logits0 = torch.randn(6, 8, dtype=torch.float64)
    results = []
    for backend in BACKENDS:
        critic.zero_grad()
        x = logits0.clone().requires_grad_()
        tau = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        y = fused_gumbel.gumbel_softmax(x, tau, hard, seed=4, backend=backend)
        (gx,) = torch.autograd.grad(critic(y), x, create_graph=True)
        penalty = (gx.norm() - 1) ** 2
        penalty.backward()
        critic_grads = [p.grad.clone() for p in critic.parameters() if p.grad is not None]
        results.append((gx.norm().detach(), x.grad, tau.grad, critic_grads))
    (norm, gx, gt, gp), (norm_ref, gx_ref, gt_ref, gp_ref) = results
    torch.testing.assert_close(norm, norm_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gt, gt_ref)
    for a, b in zip(gp, gp_ref):
        torch.testing.assert_close(a, b)
    # Every critic parameter but the last bias (no second-order path) learns from the penalty.
    assert len(gp) == 3 and gx.abs().sum() > 0 and all(p.abs().sum() > 0 for p in gp)


def test_first_order_backward_still_one_kernel_launch(monkeypatch):
    """Without create_graph the backward stays the kernel (the torch-op formula is only for graphs)."""
    calls = []
    launch = kernels.gumbel_softmax_backward
    monkeypatch.setattr(kernels, "gumbel_softmax_backward", lambda *a, **k: calls.append(1) or launch(*a, **k))
    bind = kernels.bound_backward  # the eager fast path's launch, bound once per call signature

    def counted_bind(*args):
        bound = bind(*args)
        return bound and (lambda *a: calls.append(1) or bound(*a))
    monkeypatch.setattr(kernels, "bound_backward", counted_bind)
    for hard in (False, True):
        x = torch.randn(4, 5, requires_grad=True)
        fused_gumbel.gumbel_softmax(x, 0.5, hard, backend="triton").pow(2).sum().backward()
    assert len(calls) == 2


# --- item 2: torch.func and forward-mode AD ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_func_grad_matches_autograd(backend, hard):
    x = torch.randn(3, 5, dtype=torch.float64)
    weight = torch.randn(3, 5, dtype=torch.float64)
    f = sampler(backend, hard)
    expected_x = x.clone().requires_grad_()
    (f(expected_x) * weight).sum().backward()
    got = grad(lambda l: (f(l) * weight).sum())(x)
    torch.testing.assert_close(got, expected_x.grad)


def _tangent_reference(logits, tau, dx, dtau):
    """The soft sample's tangent from the reference, by PyTorch's own forward-mode formulas."""
    f = sampler("reference", False)
    return jvp(f, (logits, tau), (dx, dtau))[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_func_jvp_straight_through_tangent_is_the_soft_tangent(backend, hard):
    logits = torch.randn(4, 6, dtype=torch.float64)
    tau = torch.rand(4, 1, dtype=torch.float64) + 0.4
    dx, dtau = torch.randn_like(logits), torch.randn_like(tau)
    out, tangent = jvp(sampler(backend, hard), (logits, tau), (dx, dtau))
    assert torch.equal(out, sampler(backend, hard)(logits, tau))
    torch.testing.assert_close(tangent, _tangent_reference(logits, tau, dx, dtau))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_forward_ad_dual_tensors(backend, hard):
    logits = torch.randn(3, 2, 5, dtype=torch.float64)
    tau = torch.tensor(0.8, dtype=torch.float64)
    dx, dtau = torch.randn_like(logits), torch.tensor(0.3, dtype=torch.float64)
    f = sampler(backend, hard, dim=1)
    with forward_ad.dual_level():
        out = f(forward_ad.make_dual(logits, dx), forward_ad.make_dual(tau, dtau))
        primal, tangent = forward_ad.unpack_dual(out)
    assert torch.equal(primal, f(logits, tau))
    expected = jvp(sampler("reference", False, dim=1), (logits, tau), (dx, dtau))[1]
    torch.testing.assert_close(tangent, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_vmap_different_is_the_stacked_call(backend, hard):
    """randomness="different" folds the batch into the rows: independent noise per element, and the
    same numbers as one call on the stacked logits with the same seed."""
    x = torch.randn(4, 3, 5)
    f = sampler(backend, hard)
    out = vmap(f, randomness="different")(x)
    torch.testing.assert_close(out, f(x), rtol=0, atol=0)
    same_rows = torch.randn(1, 3, 8).expand(6, 3, 8)
    drawn = vmap(lambda l: fused_gumbel.gumbel_softmax(l, hard=hard, backend=backend), randomness="different")(
        same_rows)
    assert not all(torch.equal(drawn[0], d) for d in drawn[1:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_vmap_same_gives_every_element_the_same_noise(backend, hard):
    x = torch.randn(3, 5)
    batch = torch.stack([x, x, x + 1.0])  # shifting a row does not change its sample
    out = vmap(sampler(backend, hard, seed=None), randomness="same")(batch)
    assert torch.equal(out[0], out[1])
    torch.testing.assert_close(out[2], out[0])
    per_element = vmap(sampler(backend, hard), randomness="same")(batch)
    torch.testing.assert_close(per_element[0], sampler(backend, hard)(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_randomness_error_raises_like_pytorch(backend):
    x = torch.randn(2, 3, 5)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(sampler(backend, False, seed=None))(x)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda l: F.gumbel_softmax(l))(x)  # PyTorch's own behaviour, for comparison
    with pytest.raises(RuntimeError, match="batched"):  # one sample would be shared by the batch
        vmap(lambda _: fused_gumbel.gumbel_softmax(x[0], backend=backend), randomness="different")(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_seeded_calls_are_deterministic_under_vmap(backend, hard):
    """seed= draws nothing: vmap's default randomness="error" accepts it, with "same" semantics,
    so torch.func.jacfwd and hessian (built on vmap) work; they match the reference's autograd."""
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    f = sampler(backend, hard)
    torch.testing.assert_close(vmap(f)(x), vmap(f, randomness="same")(x), rtol=0, atol=0)
    weight = torch.arange(5.0, dtype=torch.float64)
    hess = torch.func.hessian(lambda l: (f(l) * weight).sum())(x[0])
    expected = torch.func.hessian(lambda l: (sampler("reference", False)(l) * weight).sum())(x[0])
    torch.testing.assert_close(hess, expected)
    assert hess.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_vmap_over_tau(backend, hard):
    """Batched temperatures: 0-dim per element, and one per row, with unbatched logits too."""
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    taus = torch.rand(4, dtype=torch.float64) + 0.3
    f = sampler(backend, hard)
    out = vmap(f, randomness="different")(x, taus)
    torch.testing.assert_close(out, f(x, taus.reshape(4, 1, 1)))
    row_taus = torch.rand(4, 3, 1, dtype=torch.float64) + 0.3
    out = vmap(f, in_dims=(None, 0), randomness="different")(x[0], row_taus)
    torch.testing.assert_close(out, f(x[0].expand(4, 3, 5), row_taus))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_per_sample_gradients_vmap_of_grad(backend, hard):
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    tau = torch.tensor(0.9, dtype=torch.float64)
    weight = torch.randn(3, 5, dtype=torch.float64)
    f = sampler(backend, hard)

    def loss(l, t):
        return (f(l, t) * weight).sum()

    per_sample = vmap(grad(loss, argnums=(0, 1)), in_dims=(0, None), randomness="different")(x, tau)
    stacked_x, stacked_tau = x.clone().requires_grad_(), tau.clone().requires_grad_()
    y = f(stacked_x, stacked_tau)
    (y * weight).sum().backward()
    torch.testing.assert_close(per_sample[0], stacked_x.grad)
    torch.testing.assert_close(per_sample[1].sum(), stacked_tau.grad)
    batch_grad = grad(lambda l: (vmap(f, in_dims=(0, None), randomness="different")(l, tau) * weight).sum())(x)
    torch.testing.assert_close(batch_grad, stacked_x.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_of_jvp_and_categorical(backend):
    x = torch.randn(3, 2, 6, dtype=torch.float64)
    dx = torch.randn_like(x)
    f = sampler(backend, True)
    tangents = vmap(lambda l, d: jvp(f, (l,), (d,))[1], randomness="different")(x, dx)
    torch.testing.assert_close(tangents, jvp(sampler("reference", False), (x,), (dx,))[1])
    idx = vmap(lambda l: fused_gumbel.categorical(l, seed=2, backend=backend), randomness="different")(x)
    assert torch.equal(idx, fused_gumbel.categorical(x, seed=2, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_jacrev_unseeded(backend, hard):
    """jacrev vmaps only the backward: no randomness flag needed, and the replayed noise is the call's."""
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.manual_seed(0)
    jac = jacrev(lambda l: fused_gumbel.gumbel_softmax(l, 0.7, hard, backend=backend))(x)
    torch.manual_seed(0)
    expected = jacrev(lambda l: fused_gumbel.gumbel_softmax(l, 0.7, backend="reference"))(x)
    torch.testing.assert_close(jac, expected)


# --- item 7: numpy scalars, meta tensors, the eps warning --------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_scalars_for_tau_and_dim(backend):
    x = torch.randn(3, 4, 5)
    got = fused_gumbel.gumbel_softmax(x, tau=np.float32(0.9), dim=np.int64(1), seed=1, backend=backend)
    expected = fused_gumbel.gumbel_softmax(x, tau=float(np.float32(0.9)), dim=1, seed=1, backend=backend)
    assert torch.equal(got, expected)
    F.gumbel_softmax(x, tau=np.float32(0.9), dim=np.int64(1))  # PyTorch accepts them too
    with pytest.raises(TypeError):
        fused_gumbel.gumbel_softmax(x, dim=np.bool_(True))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("hard", [False, True])
def test_meta_tensors_give_meta_outputs_without_a_launch(backend, hard, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched for a meta tensor")

    monkeypatch.setattr(kernels, "gumbel_softmax_forward", no_launch)
    monkeypatch.setattr(kernels, "bound_forward", lambda *args: no_launch)
    state = torch.random.get_rng_state()
    logits = torch.empty(4, 3, 7, device="meta", dtype=torch.bfloat16, requires_grad=True)
    tau = torch.empty(4, 1, 7, device="meta", dtype=torch.bfloat16, requires_grad=True)
    y = fused_gumbel.gumbel_softmax(logits, tau, hard, dim=1, backend=backend)
    assert y.device.type == "meta" and y.shape == logits.shape and y.dtype == logits.dtype
    y.sum().backward()
    assert logits.grad.device.type == "meta" and tau.grad.shape == tau.shape
    index = fused_gumbel.categorical(logits, dim=1, backend=backend)
    assert index.device.type == "meta" and index.shape == (4, 7) and index.dtype == torch.int64
    assert torch.equal(state, torch.random.get_rng_state())  # no generator draw either


def test_eps_warns_with_a_plain_user_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a user sees: DeprecationWarnings hidden outside __main__
        fused_gumbel.gumbel_softmax(torch.randn(2, 3), eps=1e-5)
    assert [w.category for w in caught] == [UserWarning]
    assert "eps" in str(caught[0].message)


@pytest.mark.parametrize("op", ["relaxed_bernoulli", "gumbel_topk"])
def test_relaxed_ops_refuse_double_backward_on_the_kernel_path(op):
    """Their fused backward is first-order only: create_graph=True must raise, never drop the
    second-order term silently (the reference backend, plain torch ops, differentiates twice)."""
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    sample = (lambda t, backend: fused_gumbel.relaxed_bernoulli(t, 0.5, seed=1, backend=backend)) if op == "relaxed_bernoulli" \
        else (lambda t, backend: fused_gumbel.gumbel_topk(t, 2, 0.5, seed=1, backend=backend))
    (grad,) = torch.autograd.grad((sample(x, "reference") ** 2).sum(), x, create_graph=True)
    grad.sum().backward()  # fine on the reference
    (grad,) = torch.autograd.grad((sample(x, "triton") ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiable"):
        grad.sum().backward()
