"""fused_gumbel.patch(): torch.nn.functional.gumbel_softmax replaced in unmodified code, reversibly."""
import functools
import io

import pytest
import torch
import torch.nn.functional as F

import fused_gumbel
from fused_gumbel.patching import is_patched, patch, unpatch

ORIGINAL = F.gumbel_softmax


@pytest.fixture(autouse=True)
def _restore():
    yield
    unpatch()
    assert F.gumbel_softmax is ORIGINAL


class ThirdPartyModel(torch.nn.Module):
    """Code we cannot edit: it looks the function up through the module at call time."""

    def forward(self, logits):
        return torch.nn.functional.gumbel_softmax(logits, tau=0.5, hard=True)


def test_context_manager_patches_and_restores():
    logits = torch.randn(6, 5)
    model = ThirdPartyModel()
    with patch() as handle:
        assert is_patched() and handle.active
        torch.manual_seed(0)
        patched = model(logits)
    assert not is_patched() and not handle.active
    torch.manual_seed(0)
    assert torch.equal(patched, fused_gumbel.gumbel_softmax(logits, 0.5, hard=True))


def test_statement_form_and_pytorch_signature():
    handle = patch()
    logits = torch.randn(3, 4, 2)
    torch.manual_seed(1)
    # PyTorch's positional order (logits, tau, hard, eps, dim)
    out = F.gumbel_softmax(logits, 0.9, False, 1e-10, 1)
    torch.manual_seed(1)
    assert torch.equal(out, fused_gumbel.gumbel_softmax(logits, 0.9, dim=1))
    handle.undo()
    handle.undo()  # idempotent
    assert F.gumbel_softmax is ORIGINAL


def test_patched_version_keeps_the_fused_semantics():
    """Exact one-hot values and no NaN where PyTorch's exponential_ noise can produce inf."""
    logits = torch.tensor([[0.0, float("-inf"), 1.0]] * 100)
    with patch():
        y = F.gumbel_softmax(logits, hard=True)
    assert torch.isfinite(y).all() and torch.equal(y.sum(-1), torch.ones(100))
    assert (y[:, 1] == 0).all()


def test_patches_nest_and_out_of_order_undo_is_refused():
    outer = patch()
    inner = patch()
    with pytest.raises(RuntimeError, match="re-patched"):
        outer.undo()
    inner.undo()
    assert is_patched()
    outer.undo()
    assert not is_patched()


def test_unpatch_restores_pytorch_and_retires_handles():
    first = patch()
    patch()
    unpatch()
    assert F.gumbel_softmax is ORIGINAL
    first.undo()  # nothing left to undo: no error, nothing changed
    assert F.gumbel_softmax is ORIGINAL


def test_early_bound_references_are_not_patched():
    from torch.nn.functional import gumbel_softmax as bound_early
    with patch():
        assert bound_early is ORIGINAL
        assert F.gumbel_softmax is not ORIGINAL


def test_patched_code_compiles_without_graph_break():
    model = ThirdPartyModel()
    logits = torch.randn(5, 4)
    with patch():
        torch.manual_seed(2)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(logits)
        torch.manual_seed(2)
        eager = model(logits)
    torch._dynamo.reset()
    assert torch.equal(compiled, eager)
    assert torch.equal(compiled.sum(-1), torch.ones(5))


class HoldsPartial(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sample = functools.partial(F.gumbel_softmax, tau=0.5, hard=True)

    def forward(self, logits):
        return self.sample(logits)


def test_model_holding_the_patched_function_pickles():
    with patch():
        model = HoldsPartial()
        buffer = io.BytesIO()
        torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.sample.func is fused_gumbel.gumbel_softmax
    y = loaded(torch.randn(3, 4))
    assert torch.equal(y.sum(-1), torch.ones(3))
