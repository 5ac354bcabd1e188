"""Autocast policy: the sampler runs on the dtype it is given (float32 math inside) and returns
that dtype; torch.autocast neither casts its inputs nor its output."""
import pytest
import torch

import fused_gumbel
from conftest import interpreted

BACKENDS = ["reference"] + (["triton"] if interpreted() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
def test_cpu_autocast_keeps_the_input_dtype(backend, hard):
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 6)
    x = torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = linear(x)
        assert logits.dtype == torch.bfloat16
        torch.manual_seed(1)
        y_bf16 = fused_gumbel.gumbel_softmax(logits, 0.5, hard=hard, backend=backend)
        torch.manual_seed(1)
        y_fp32 = fused_gumbel.gumbel_softmax(logits.float(), 0.5, hard=hard, backend=backend)
    assert y_bf16.dtype == torch.bfloat16 and y_fp32.dtype == torch.float32
    # Same values as outside autocast: the math is float32, rounded once to bfloat16 at the end.
    torch.manual_seed(1)
    assert torch.equal(y_bf16, fused_gumbel.gumbel_softmax(logits.detach(), 0.5, hard=hard, backend=backend))
    torch.manual_seed(1)
    expected = fused_gumbel.reference.gumbel_softmax(logits.detach().float(), 0.5, hard,
                                                     generator=torch.default_generator)
    torch.testing.assert_close(y_bf16.float(), expected, atol=4e-3, rtol=8e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_autocast_gradients(backend):
    logits = torch.randn(4, 5, dtype=torch.bfloat16, requires_grad=True)
    tau = torch.tensor(0.7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused_gumbel.gumbel_softmax(logits, tau, backend=backend)
    (y.float() * torch.arange(5.0)).sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and tau.grad.dtype == torch.float32
    assert torch.isfinite(logits.grad).all() and torch.isfinite(tau.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_under_autocast(backend):
    linear = torch.nn.Linear(3, 4)

    def fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fused_gumbel.gumbel_softmax(linear(x), 0.8, backend=backend)

    x = torch.randn(6, 3)
    torch.manual_seed(2)
    eager = fn(x)
    torch.manual_seed(2)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    assert eager.dtype == compiled.dtype == torch.bfloat16
    assert torch.equal(eager, compiled)


def test_categorical_ignores_autocast():
    logits = torch.randn(7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        inside = fused_gumbel.categorical(logits, one_hot=True)
    torch.manual_seed(3)
    assert inside.dtype == torch.float32 and torch.equal(inside, fused_gumbel.categorical(logits, one_hot=True))
