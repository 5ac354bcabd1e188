"""Bad input raises a clear exception before any kernel launch; adversarial input stays finite;
-inf, all -inf and NaN rows behave like torch.softmax."""
import math

import pytest
import torch

import fused_gumbel
from fused_gumbel.kernels import gumbel_softmax as kernels

BACKENDS = ["triton", "reference"]


@pytest.fixture
def no_launch(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")

    monkeypatch.setattr(kernels, "gumbel_softmax_forward", forbidden)
    monkeypatch.setattr(kernels, "bound_forward", lambda *args: forbidden)  # the eager fast path's launch


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_float_tau(no_launch, tau):
    with pytest.raises(ValueError, match="tau"):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), tau)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.nan, math.inf])
def test_bad_tensor_tau_values(no_launch, bad):
    tau = torch.tensor([[1.0], [bad], [2.0]])
    with pytest.raises(ValueError, match="tau"):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), tau)


@pytest.mark.parametrize("shape", [(4,), (3, 4), (1, 3, 1), (2, 1)])
def test_tau_that_does_not_broadcast_per_row(no_launch, shape):
    with pytest.raises(ValueError, match="broadcast"):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), torch.ones(shape))


def test_tau_wrong_types(no_launch):
    with pytest.raises(TypeError):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), torch.ones(3, 1, dtype=torch.int64))
    with pytest.raises(TypeError):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), "1.0")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_floating_logits(no_launch, dtype):
    with pytest.raises(TypeError, match="floating"):
        fused_gumbel.gumbel_softmax(torch.zeros(3, 4, dtype=dtype))
    with pytest.raises(TypeError, match="floating"):
        fused_gumbel.categorical(torch.zeros(3, 4, dtype=dtype))


def test_not_a_tensor():
    with pytest.raises(TypeError):
        fused_gumbel.gumbel_softmax([[0.0, 1.0]])


@pytest.mark.parametrize("dim", [2, -3, 5])
def test_dim_out_of_range(no_launch, dim):
    with pytest.raises(IndexError):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), dim=dim)
    with pytest.raises(IndexError):
        fused_gumbel.categorical(torch.randn(3, 4), dim=dim)


def test_bad_backend_and_zero_classes(no_launch):
    with pytest.raises(ValueError, match="backend"):
        fused_gumbel.gumbel_softmax(torch.randn(3, 4), backend="cuda")
    with pytest.raises(ValueError, match="zero categories"):
        fused_gumbel.categorical(torch.randn(3, 0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e4), (torch.float64, 1e4), (torch.float16, 6e4),
                                         (torch.bfloat16, 1e4)])
@pytest.mark.parametrize("tau", [1e-4, 1.0, 1e4])
def test_extreme_logits_and_temperatures_stay_finite(backend, dtype, scale, tau):
    logits = (torch.rand(16, 10) * 2 - 1).mul(scale).to(dtype)
    logits[0] = scale  # ties at the extreme
    logits[1, 3] = -scale
    for hard in (False, True):
        x = logits.clone().requires_grad_()
        y = fused_gumbel.gumbel_softmax(x, tau, hard=hard, backend=backend)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.float().sum(-1), torch.ones(16), atol=2e-2, rtol=0)
        (y.float() * torch.randn(16, 10)).sum().backward()
        assert torch.isfinite(x.grad).all()
    assert (fused_gumbel.categorical(logits, backend=backend) >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_classes_are_never_chosen(backend):
    logits = torch.zeros(2000, 6)
    logits[:, [1, 4]] = -math.inf
    y = fused_gumbel.gumbel_softmax(logits, hard=True, backend=backend)
    assert y[:, [1, 4]].sum() == 0 and torch.isfinite(y).all()
    soft = fused_gumbel.gumbel_softmax(logits, 0.1, backend=backend)
    assert torch.all(soft[:, [1, 4]] == 0) and torch.isfinite(soft).all()
    index = fused_gumbel.categorical(logits, backend=backend)
    assert not torch.isin(index, torch.tensor([1, 4])).any()
    x = logits.clone().requires_grad_()
    (fused_gumbel.gumbel_softmax(x, 0.5, backend=backend) * torch.randn(2000, 6)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[:, [1, 4]] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_invalid_rows_are_nan_and_only_their_row(backend, hard):
    logits = torch.randn(4, 5)
    logits[1] = -math.inf  # no class available
    logits[2, 3] = math.nan
    x = logits.clone().requires_grad_()
    tau = torch.tensor(0.7, requires_grad=True)
    y = fused_gumbel.gumbel_softmax(x, tau, hard=hard, backend=backend)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[[0, 3]]).all()
    assert torch.allclose(torch.softmax(logits, -1)[1].isnan(), y[1].isnan())  # like torch.softmax
    y[[0, 3]].sum().backward()
    assert torch.isfinite(x.grad[[0, 3]]).all()
    index = fused_gumbel.categorical(logits, backend=backend)
    assert index[1] == -1 and index[2] == -1 and (index[[0, 3]] >= 0).all()
    one_hot = fused_gumbel.categorical(logits, one_hot=True, backend=backend)
    assert torch.isnan(one_hot[[1, 2]]).all() and torch.isfinite(one_hot[[0, 3]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_plus_inf_logit_gives_nan_row_like_softmax(backend):
    logits = torch.zeros(2, 3)
    logits[0, 1] = math.inf
    y = fused_gumbel.gumbel_softmax(logits, backend=backend)
    assert torch.isnan(y[0]).all() and torch.isnan(torch.softmax(logits, -1)[0]).all()
    assert torch.isfinite(y[1]).all()
