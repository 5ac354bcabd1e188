"""The cheap eager dispatch of the Triton path (issue 9, host overhead): which autograd Function an
eager call goes through, that it never pays for ``inspect.signature``, and that every route gives
the same sample and gradients. Host times themselves are measured by ``python -m bench.static
--host``, not asserted here (a shared machine is too noisy)."""
import inspect
import os

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import grad, jvp, vmap

import fused_gumbel
from fused_gumbel import _layout, function, functional
from fused_gumbel.kernels import gumbel_softmax as kernels

def _sample(x, hard, backend, tau=0.7):
    return fused_gumbel.gumbel_softmax(x, tau, hard, seed=5, backend=backend)


@pytest.mark.parametrize("hard", [False, True])
def test_eager_call_uses_the_old_style_twin(hard):
    x = torch.randn(3, 6, requires_grad=True)
    y = _sample(x, hard, "triton")
    assert type(y.grad_fn).__name__ == "_EagerGumbelSoftmaxFunctionBackward"
    # A call autograd does not record launches without a Function, and gives the same sample.
    with torch.no_grad():
        assert torch.equal(_sample(x, hard, "triton"), y.detach())
    y_plain = _sample(x.detach(), hard, "triton")
    assert y_plain.grad_fn is None and torch.equal(y_plain, y.detach())


def test_twin_shares_the_functions_methods():
    eager, full = function._EagerGumbelSoftmaxFunction, function.GumbelSoftmaxFunction
    assert eager.backward is full.backward and eager.jvp is full.jvp


@pytest.mark.parametrize("hard", [False, True])
def test_no_signature_binding_per_call(monkeypatch, hard):
    """PyTorch binds a setup_context Function's arguments with inspect.signature on every apply
    (about 30 us); an eager Triton call, recorded by autograd or not, forward and backward, must
    not. (The CPU reference's own Functions still do: their compute dwarfs it.)"""
    backend = "triton"
    x = torch.randn(4, 5, requires_grad=True)
    tau = torch.tensor(0.9, requires_grad=True)
    _sample(x, hard, backend, tau).sum().backward()  # first call: imports and caches
    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))
    y = _sample(x, hard, backend, tau)
    torch.autograd.grad((y * torch.randn_like(y)).sum(), (x, tau))
    _sample(x.detach(), hard, backend)
    assert calls == []


@pytest.mark.parametrize("hard", [False, True])
def test_every_route_has_the_same_gradients(hard):
    """Old-style twin (eager), setup_context Function (torch.func.grad), and a forward-AD tangent
    for an input that does not require grad (a dual_level makes the call recorded)."""
    x = torch.randn(3, 7, dtype=torch.float64)
    w = torch.randn(3, 7, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    eager = torch.autograd.grad((_sample(xg, hard, "triton") * w).sum(), xg)[0]
    functional = grad(lambda t: (_sample(t, hard, "triton") * w).sum())(x)
    torch.testing.assert_close(functional, eager)  # torch.func.grad: the same formula in PyTorch ops
    with forward_ad.dual_level():
        out = _sample(forward_ad.make_dual(x, w), hard, "triton")
        tangent = forward_ad.unpack_dual(out).tangent
    expected = jvp(lambda t: _sample(t, hard, "triton"), (x,), (w,))[1]
    torch.testing.assert_close(tangent, expected, rtol=0, atol=0)


def test_vmap_still_takes_the_functions_rule():
    x = torch.randn(2, 3, 5)
    out = vmap(lambda t: fused_gumbel.gumbel_softmax(t, seed=1, backend="triton"), randomness="same")(x)
    torch.testing.assert_close(out, torch.stack([fused_gumbel.gumbel_softmax(t, seed=1, backend="triton")
                                                 for t in x]))


@pytest.mark.parametrize("sizes,strides,dim", [((4, 3, 5), (15, 5, 1), 1), ((4, 3, 5), (1, 20, 4), 2),
                                               ((2, 1, 6), (6, 6, 1), 0), ((3, 4), (0, 1), 1), ((5, 2), (2, 9), 1)])
def test_memoised_layout_matches_the_definition(sizes, strides, dim):
    t = torch.empty_strided(sizes, strides)
    assert _layout.row_strides(t, dim) == _layout._row_strides(t.shape, t.stride(), dim)
    assert _layout.RowShape.of(t.shape, dim) == _layout._row_shape(t.shape, dim)
    assert _layout.RowShape.of(t.shape, dim) is _layout.RowShape.of(torch.Size(sizes), dim)  # cached
    assert _layout.rows_layout(t, dim) == (_layout._row_shape(t.shape, dim),
                                           _layout._row_strides(t.shape, t.stride(), dim))


def test_launch_plans_are_reused_and_follow_the_tunables(monkeypatch):
    """One plan per problem, reused by the next call; a changed module tunable (as tests and the
    static model set them) plans afresh rather than launching a stale tile."""
    kernels._plans.clear()
    x = torch.randn(5, 40)
    first = fused_gumbel.gumbel_softmax(x, seed=1, backend="triton")
    planned = dict(kernels._plans)
    assert planned and torch.equal(fused_gumbel.gumbel_softmax(x, seed=1, backend="triton"), first)
    assert kernels._plans == planned
    assert kernels.forward_plan(5, 40, kernels.MODE_SOFT, torch.float32, False, False).kind == "rows"
    monkeypatch.setattr(kernels, "MAX_RESIDENT", 16)
    monkeypatch.setattr(kernels, "MAX_RESIDENT_SOFT_FORWARD", 16)
    streamed = kernels.forward_plan(5, 40, kernels.MODE_SOFT, torch.float32, False, False)
    assert streamed.tail == (3,) and streamed.stats_words == 2 * 5 * 3  # three chunks, per-chunk scratch
    torch.testing.assert_close(fused_gumbel.gumbel_softmax(x, seed=1, backend="triton"), first)
    assert len(kernels._plans) > len(planned)
    # The plan also carries the index forward's row maxima only when asked for.
    assert kernels.forward_plan(5, 40, kernels.MODE_INDEX, torch.float32, False, False).stats_words == 0
    assert kernels.forward_plan(5, 40, kernels.MODE_INDEX, torch.float32, False, True).stats_words == 5


def test_environment_reads_follow_os_environ(monkeypatch):
    """The variables read on every call (FUSED_GUMBEL_BACKEND, FUSED_GUMBEL_CUDA_IMPL) are read
    from os.environ's own dict: setting, changing and deleting them through os.environ applies."""
    for name in ("FUSED_GUMBEL_BACKEND", "FUSED_GUMBEL_TEST_UNLISTED"):
        monkeypatch.delenv(name, raising=False)
        assert functional._env(name, "auto") == "auto"
        monkeypatch.setenv(name, "reference")
        assert functional._env(name, "auto") == "reference" == os.environ.get(name)
        os.environ[name] = "native\u00e9"
        assert functional._env(name, "auto") == os.environ[name]
        del os.environ[name]
        assert functional._env(name, "auto") == "auto"
    monkeypatch.setenv("FUSED_GUMBEL_BACKEND", "reference")
    assert fused_gumbel.select_backend(torch.device("cpu")) == "reference"
