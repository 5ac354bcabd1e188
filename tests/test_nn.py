"""fused_gumbel.nn: GumbelSoftmax / GumbelSigmoid modules, learnable and scheduled temperatures,
eval-mode behaviour."""
import math

import pytest
import torch

import fused_gumbel
from fused_gumbel.nn import GumbelSigmoid, GumbelSoftmax
from fused_gumbel.schedules import CosineSchedule, ExponentialDecay


def _same_seed(fn_a, fn_b, seed=0):
    torch.manual_seed(seed)
    a = fn_a()
    torch.manual_seed(seed)
    return a, fn_b()


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dim", [-1, 1])
def test_training_forward_is_gumbel_softmax(hard, dim):
    logits = torch.randn(4, 5, 3)
    layer = GumbelSoftmax(tau=0.7, hard=hard, dim=dim)
    a, b = _same_seed(lambda: layer(logits), lambda: fused_gumbel.gumbel_softmax(logits, 0.7, hard=hard, dim=dim))
    assert torch.equal(a, b)
    if hard:
        assert set(a.unique().tolist()) <= {0.0, 1.0}


def test_per_call_tau_overrides_module_tau():
    logits = torch.randn(3, 4)
    tau = torch.full((3, 1), 0.3)
    a, b = _same_seed(lambda: GumbelSoftmax(tau=2.0)(logits, tau=tau), lambda: fused_gumbel.gumbel_softmax(logits, tau))
    assert torch.equal(a, b)


def test_eval_mode_sample_is_an_exact_categorical_one_hot_with_straight_through_gradient():
    logits = torch.randn(6, 7, requires_grad=True)
    layer = GumbelSoftmax(tau=0.5).eval()
    a, b = _same_seed(lambda: layer(logits), lambda: fused_gumbel.categorical(logits, one_hot=True))
    assert torch.equal(a.detach(), b)
    assert torch.equal(a.detach().sum(-1), torch.ones(6))
    a.sum().backward()  # the straight-through gradient of a one-hot row sum vanishes, but it flows
    assert logits.grad is not None


def test_eval_modes_argmax_and_relaxed():
    logits = torch.randn(5, 4)
    argmax = GumbelSoftmax(eval_mode="argmax").eval()(logits)
    assert torch.equal(argmax, torch.nn.functional.one_hot(logits.argmax(-1), 4).float())
    relaxed = GumbelSoftmax(tau=0.8, eval_mode="relaxed")
    train, evaluated = _same_seed(lambda: relaxed.train()(logits), lambda: relaxed.eval()(logits))
    assert torch.equal(train, evaluated)


def test_fixed_tau_setter_and_floor():
    layer = GumbelSoftmax(tau=1.0, min_tau=0.5)
    layer.tau = 0.7
    assert layer.tau == 0.7
    layer.tau = 0.1
    assert layer.tau == 0.5  # clamped to the floor
    assert GumbelSoftmax(tau=0.2, min_tau=0.5).tau == 0.5
    with pytest.raises(ValueError):
        layer.tau = 0.0
    with pytest.raises(ValueError):
        GumbelSoftmax(tau=-1.0)
    with pytest.raises(ValueError):
        GumbelSoftmax(eval_mode="mode")


def test_learnable_tau_is_log_parameterised_and_gets_the_temperature_gradient():
    logits = torch.randn(8, 5)
    layer = GumbelSoftmax(tau=1.5, learnable_tau=True, min_tau=0.25)
    assert [name for name, _ in layer.named_parameters()] == ["log_tau"]
    assert math.isclose(layer.tau.item(), 1.5, rel_tol=1e-6)
    weight = torch.arange(5.0)
    torch.manual_seed(4)
    (layer(logits) * weight).sum().backward()
    # Chain rule against the functional op with a plain tensor temperature.
    tau = torch.tensor(1.5, requires_grad=True)
    torch.manual_seed(4)
    (fused_gumbel.gumbel_softmax(logits, tau) * weight).sum().backward()
    expected = tau.grad * (1.5 - 0.25)  # d tau / d log_tau = exp(log_tau) = tau - min_tau
    torch.testing.assert_close(layer.log_tau.grad, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(AttributeError):
        layer.tau = 1.0
    with pytest.raises(ValueError):
        GumbelSoftmax(tau=0.2, learnable_tau=True, min_tau=0.5)


def test_learnable_tau_stays_above_the_floor_and_trains():
    """Minimising the entropy of soft samples pushes tau down; it never crosses min_tau."""
    torch.manual_seed(0)
    layer = GumbelSoftmax(tau=2.0, learnable_tau=True, min_tau=0.3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    logits = torch.randn(64, 6)
    start = layer.tau.item()
    for _ in range(40):
        y = layer(logits)
        entropy = -(y * y.clamp_min(1e-12).log()).sum(-1).mean()
        optimizer.zero_grad()
        entropy.backward()
        optimizer.step()
    assert 0.3 < layer.tau.item() < start - 0.5


def test_state_dict_round_trip_of_a_learnable_tau():
    layer = GumbelSoftmax(tau=0.9, learnable_tau=True)
    with torch.no_grad():
        layer.log_tau.fill_(-0.5)
    clone = GumbelSoftmax(tau=3.0, learnable_tau=True)
    clone.load_state_dict(layer.state_dict())
    assert clone.tau.item() == pytest.approx(math.exp(-0.5))
    assert "_tau_tensor" not in GumbelSoftmax().state_dict()  # a fixed tau belongs to its schedule


@pytest.mark.parametrize("schedule", [ExponentialDecay(tau0=1.0, rate=0.1, min_tau=0.5, every=2),
                                      CosineSchedule(tau0=2.0, min_tau=0.5, total_steps=5)])
def test_schedules_drive_the_module(schedule):
    layer = GumbelSoftmax(tau=schedule.value)
    logits = torch.randn(4, 3)
    seen = []
    for _ in range(6):
        layer.tau = schedule.step()
        seen.append(layer.tau)
        a, b = _same_seed(lambda: layer(logits), lambda: fused_gumbel.gumbel_softmax(logits, schedule.value))
        assert torch.equal(a, b)
    assert seen == sorted(seen, reverse=True) and seen[-1] >= 0.5


def test_module_follows_dtype_and_device_moves():
    layer = GumbelSoftmax(tau=0.5, learnable_tau=True).double()
    out = layer(torch.randn(3, 4, dtype=torch.float64))
    assert out.dtype == torch.float64 and layer.log_tau.dtype == torch.float64
    assert "learnable" in repr(layer) and "eval_mode='sample'" in repr(layer)


def test_seed_and_generator_are_forwarded():
    logits = torch.randn(3, 5)
    assert torch.equal(GumbelSoftmax(seed=9)(logits), fused_gumbel.gumbel_softmax(logits, seed=9))
    a = GumbelSoftmax(generator=torch.Generator().manual_seed(1))(logits)
    b = fused_gumbel.gumbel_softmax(logits, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


requires_relaxed = pytest.mark.skipif(not hasattr(fused_gumbel, "relaxed_bernoulli"),
                                      reason="fused_gumbel.relaxed_bernoulli is not built")


@requires_relaxed
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_sigmoid_is_relaxed_bernoulli(hard):
    logits = torch.randn(5, 6)
    layer = GumbelSigmoid(tau=0.6, hard=hard)
    a, b = _same_seed(lambda: layer(logits), lambda: fused_gumbel.relaxed_bernoulli(logits, 0.6, hard))
    assert torch.equal(a, b)


@requires_relaxed
def test_gumbel_sigmoid_eval_and_learnable_tau():
    logits = torch.randn(50, 4, requires_grad=True)
    layer = GumbelSigmoid(tau=0.8, learnable_tau=True, min_tau=0.1)
    layer(logits).sum().backward()
    assert layer.log_tau.grad is not None and layer.log_tau.grad != 0
    layer.eval()
    a, b = _same_seed(lambda: layer(logits), lambda: fused_gumbel.relaxed_bernoulli(logits, 0.5, True))
    assert torch.equal(a.detach(), b) and set(a.unique().tolist()) <= {0.0, 1.0}
    argmax = GumbelSigmoid(eval_mode="argmax").eval()(logits)
    assert torch.equal(argmax, (logits > 0).float())


@requires_relaxed
def test_gumbel_sigmoid_seed_is_forwarded():
    logits = torch.randn(4, 6)
    assert torch.equal(GumbelSigmoid(tau=0.7, seed=11)(logits), fused_gumbel.relaxed_bernoulli(logits, 0.7, seed=11))
