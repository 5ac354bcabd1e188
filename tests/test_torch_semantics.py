"""PyTorch's own gumbel_softmax tests (test_nn.py), run against fused_gumbel.gumbel_softmax."""
import pytest
import torch

import fused_gumbel

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim,count", [
    ([5], 0, 1), ([5, 4], 1, 5), ([5, 4], 0, 4), ([5, 4, 3], 2, 20), ([5, 4, 3], 1, 15), ([5, 4, 3], 0, 12),
    ([5, 4, 3], -1, 20),
])
def test_straight_through_shapes(dtype, shape, dim, count):
    logits = torch.randn(shape).to(dtype)
    y = fused_gumbel.gumbel_softmax(logits, hard=True, dim=dim)
    assert y.min() >= 0
    assert y.shape == logits.shape
    assert y.sum().item() == count  # one choice per draw, exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_straight_through_counts(dtype):
    num_draws = 100
    logits = torch.tensor([[0.2, 0.8, 0.1]], dtype=dtype, requires_grad=True)
    probs = logits.softmax(-1)
    torch.manual_seed(0)
    counts = torch.zeros_like(logits)
    for _ in range(num_draws):
        y = fused_gumbel.gumbel_softmax(logits, hard=True)
        counts = counts + y
    assert y.min() >= 0
    assert counts.sum().item() == num_draws
    expected = probs * num_draws
    z = (counts - expected) / (expected * (1 - probs)).sqrt()
    assert z.abs().max().item() < 2.58


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_and_soft_propagate_same_gradient(dtype):
    logits_soft = torch.zeros(10, 10, dtype=dtype, requires_grad=True)
    logits_hard = torch.zeros(10, 10, dtype=dtype, requires_grad=True)
    state = torch.random.get_rng_state()
    y_soft = fused_gumbel.gumbel_softmax(logits_soft, hard=False)
    torch.random.set_rng_state(state)
    y_hard = fused_gumbel.gumbel_softmax(logits_hard, hard=True)
    weight = torch.randn(10, 10).to(dtype)
    (y_soft * weight).sum().backward()
    (y_hard * weight).sum().backward()
    # The soft backward of a low-precision dtype reads its rounded output; hard regenerates it.
    tol = 2 * torch.finfo(dtype).eps if dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(logits_soft.grad, logits_hard.grad, atol=tol, rtol=0)
    torch.random.set_rng_state(state)
    y_again = fused_gumbel.gumbel_softmax(logits_hard, hard=True)
    assert torch.equal(y_again, y_hard)


def test_drop_in_signature():
    """Positional and keyword arguments of F.gumbel_softmax work unchanged."""
    logits = torch.randn(3, 10)
    fused_gumbel.gumbel_softmax(logits, 0.5, True, 1e-10, -1)
    fused_gumbel.gumbel_softmax(logits=logits, tau=0.5, hard=False, dim=1)
    with pytest.warns(UserWarning, match="eps"):
        fused_gumbel.gumbel_softmax(logits, eps=1e-5)
