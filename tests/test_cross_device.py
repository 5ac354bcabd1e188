"""Seeding contracts: an explicit ``seed=`` gives the same sample on every device and backend
without touching any generator; under CUDA-graph capture the kernels read key and offset from a
device tensor (exercised here on CPU by forcing that path, where the interpreter runs it)."""
import pytest
import torch

import fused_gumbel
from fused_gumbel import _seeding, reference, rng
from conftest import interpreted
from helpers import assert_close

BACKENDS = ["reference"] + (["triton"] if interpreted() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_is_the_spec_stream_with_offset_zero(backend):
    logits = torch.randn(9, 6)
    y = fused_gumbel.gumbel_softmax(logits, 0.7, seed=1234, backend=backend)
    noise = rng.gumbel_noise_rows(9, 6, 1234, 0, torch.float32)
    assert_close(y, torch.softmax((logits + noise) / 0.7, -1), torch.float32)
    index = fused_gumbel.categorical(logits, seed=1234, backend=backend)
    assert torch.equal(index, (logits + noise).argmax(-1))


@pytest.mark.skipif(not interpreted(), reason="needs the Triton interpreter on CPU")
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seed_gives_the_same_sample_on_kernel_and_reference(hard, dtype):
    logits = torch.randn(40, 11, dtype=dtype)
    for seed in (0, 99, 2**63 - 1):
        kernel = fused_gumbel.gumbel_softmax(logits, 0.5, hard=hard, seed=seed, backend="triton")
        ref = fused_gumbel.gumbel_softmax(logits, 0.5, hard=hard, seed=seed, backend="reference")
        assert torch.equal(kernel.argmax(-1), ref.argmax(-1))
        assert_close(kernel, ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_ignores_and_preserves_the_generator(backend):
    logits = torch.randn(5, 4)
    torch.manual_seed(0)
    a = fused_gumbel.gumbel_softmax(logits, seed=42, backend=backend)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    torch.set_rng_state(state)
    b = fused_gumbel.gumbel_softmax(logits, seed=42, backend=backend)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, fused_gumbel.gumbel_softmax(logits, seed=43, backend=backend))


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError),
                                        ("7", TypeError)])
def test_bad_seeds_raise(bad, error):
    with pytest.raises(error):
        fused_gumbel.gumbel_softmax(torch.randn(2, 3), seed=bad)
    with pytest.raises(error):
        fused_gumbel.categorical(torch.randn(2, 3), seed=bad)


def test_seed_and_generator_are_exclusive():
    with pytest.raises(ValueError, match="either seed= or generator="):
        fused_gumbel.gumbel_softmax(torch.randn(2, 3), seed=1, generator=torch.Generator())


@pytest.fixture
def forced_capture(monkeypatch):
    """Take the CUDA-graph seeding path on CPU: the key and offset come from a device tensor
    drawn by torch.randint on the generator, and the kernels read them by pointer."""
    monkeypatch.setattr(_seeding, "is_capturing", lambda device: True)


@pytest.mark.skipif(not interpreted(), reason="needs the Triton interpreter on CPU")
@pytest.mark.parametrize("hard", [False, True])
def test_device_seed_path_matches_reference_on_the_drawn_key(forced_capture, hard):
    logits = torch.randn(6, 9, requires_grad=True)
    tau = torch.tensor(0.6, requires_grad=True)
    torch.manual_seed(5)
    y = fused_gumbel.gumbel_softmax(logits, tau, hard=hard, backend="triton")
    (y * torch.arange(9.0)).sum().backward()
    torch.manual_seed(5)
    key, offset = torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64).tolist()
    x = logits.detach().clone().requires_grad_()
    t = tau.detach().clone().requires_grad_()
    expected = reference.gumbel_softmax(x, t, hard, seed=key, offset=offset)
    (expected * torch.arange(9.0)).sum().backward()
    assert_close(y.detach(), expected.detach(), torch.float32)
    assert_close(logits.grad, x.grad, torch.float32)
    assert_close(tau.grad, t.grad, torch.float32)
    torch.manual_seed(5)
    index = fused_gumbel.categorical(logits, backend="triton")
    assert torch.equal(index, reference.categorical(logits, seed=key, offset=offset))


def test_reference_backend_refuses_capture(forced_capture):
    with pytest.raises(RuntimeError, match="CUDA-graph capture"):
        fused_gumbel.gumbel_softmax(torch.randn(2, 3), backend="reference")
    # An explicit seed is a constant by design, so it is allowed while capturing.
    assert torch.equal(fused_gumbel.gumbel_softmax(torch.randn(2, 3).zero_(), seed=3, backend="reference"),
                       fused_gumbel.gumbel_softmax(torch.zeros(2, 3), seed=3, backend="reference"))


def test_rank_key():
    assert _seeding.rank_key(0) == 0
    keys = {_seeding.rank_key(rank) for rank in range(1024)}
    assert len(keys) == 1024 and all(0 <= key < 2**63 for key in keys)
