"""The eager CPU fast path of ``fused_gumbel._C`` (``kernels/csrc/eager.cpp``): the generator draw
in C++ against the RNG spec's ``torch.randint``, and ``sample_eager`` (a whole eager CPU call:
the draw, the kernel, and, when autograd records the call, the C++ autograd Function) against the
Python path it stands in for: the same samples, gradients, double gradients and generator state,
and a decline (None, then the Python path) wherever Python has something to do.
Skipped, with the reason, where the extension is not built."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fused_gumbel
from fused_gumbel import _native, _seeding, function, functional, rng

pytestmark = pytest.mark.skipif(not _native.available("cpu"),
                                reason=f"fused_gumbel._C is not available: {_native.unavailable_reason('cpu')}")

MODES = {"soft": 0, "hard": 1, "index": 2}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def C():
    return _native.load()


def fast(logits, tau=1.0, mode=0, dim=-1, generator=None, salt=0, check_env=False, detached=False):
    return C().sample_eager(logits, tau, mode, dim, generator, salt, check_env, detached)


def python_path(logits, tau, mode, dim, key, offset):
    """What the Python layers launch for the same call and (key, offset): the Function, or the
    plain forward (categorical)."""
    if mode == 2:
        return function.sample_forward(logits, tau, mode, dim % logits.dim(), key, offset, native=True)[0]
    return function.apply(logits, tau, mode == 1, dim % logits.dim(), key, offset, "native")


# ---- the generator draw ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5, 123456789123])
def test_draw_key_offset_is_the_specs_randint(seed):
    """Two values in [0, 2**63 - 1) exactly as torch.randint draws them, and the generator left in
    the same state (the next draws agree too); the default generator and an explicit one."""
    for generator in (None, torch.Generator()):
        for _ in range(2):
            source = torch.default_generator if generator is None else generator
            source.manual_seed(seed)
            drawn = [C().draw_key_offset(generator) for _ in range(3)]
            state = source.get_state()
            source.manual_seed(seed)
            expected = [rng.draw_seed_offset(torch.device("cpu"), generator) for _ in range(3)]
            assert drawn == expected
            assert torch.equal(state, source.get_state())
            assert all(0 <= v < 2**63 - 1 for pair in drawn for v in pair)


def test_seeding_draw_uses_the_same_values():
    g = torch.Generator().manual_seed(11)
    key, offset = _seeding.draw(torch.device("cpu"), g)
    g.manual_seed(11)
    assert (key, offset) == rng.draw_seed_offset(torch.device("cpu"), g)  # rank 0: no salt


def test_draw_key_offset_rejects_other_objects():
    with pytest.raises(TypeError, match="torch.Generator"):
        C().draw_key_offset(3)


# ---- sample_eager against the Python path ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["soft", "hard", "index"])
@pytest.mark.parametrize("shape, dim", [((5, 7), -1), ((3, 4, 6), 1), ((2, 1), 0)])
def test_forward_equals_the_python_path(dtype, mode, shape, dim):
    logits = torch.randn(shape, dtype=dtype)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    state = g.get_state()
    y = fast(logits, 0.6, MODES[mode], dim, g, salt=12345)
    assert y is not None
    g.set_state(state)
    key, offset = rng.draw_seed_offset(torch.device("cpu"), g)
    expected = python_path(logits, 0.6, MODES[mode], dim, key ^ 12345, offset)
    assert y.dtype == expected.dtype and torch.equal(y, expected)


def test_strided_logits():
    base = torch.randn(6, 10, dtype=torch.float64)
    for logits in (base.t(), base[:, ::2], base.unsqueeze(0).expand(3, 6, 10)):
        torch.manual_seed(4)
        y = fused_gumbel.gumbel_softmax(logits, 0.8, backend="native")
        torch.manual_seed(4)
        expected = fused_gumbel.gumbel_softmax(logits, 0.8, backend="reference")
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_autograd_equals_the_python_function(hard, dtype):
    """First and second order gradients (create_graph=True) of the C++ Function against the Python
    GumbelSoftmaxFunction on the same (key, offset): bit for bit."""
    x = torch.randn(4, 9, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 9, dtype=dtype)
    torch.manual_seed(7)
    y = fused_gumbel.gumbel_softmax(x, 0.7, hard, backend="native")
    assert y.grad_fn.name().endswith("fused_gumbel::GumbelSoftmaxFunction>")
    torch.manual_seed(7)
    key, offset = _seeding.draw(torch.device("cpu"))
    y_py = function.apply(x, 0.7, hard, 1, key, offset, "native")
    assert "GumbelSoftmaxFunction" in type(y_py.grad_fn).__name__
    assert torch.equal(y, y_py)
    g, = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    g_py, = torch.autograd.grad((y_py * w).sum(), x, create_graph=True)
    assert torch.equal(g, g_py)
    h, = torch.autograd.grad((g * g).sum(), x)
    h_py, = torch.autograd.grad((g_py * g_py).sum(), x)
    torch.testing.assert_close(h, h_py, rtol=0, atol=0)
    first, = torch.autograd.grad((fused_gumbel.gumbel_softmax(x, 0.7, hard, generator=torch.Generator().manual_seed(1),
                                                                backend="native") * w).sum(), x)
    assert first.dtype == dtype and torch.isfinite(first).all()


@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck_and_gradgradcheck(hard):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(x):
        y = fused_gumbel.gumbel_softmax(x, 0.5, hard, generator=torch.Generator().manual_seed(3), backend="native")
        assert y.grad_fn.name().endswith("GumbelSoftmaxFunction>")
        # Hard samples are piecewise constant: check the soft sample of the same noise that the ST
        # gradient is (equal to it in value for soft mode).
        return y
    if hard:
        y = f(x)
        soft = fused_gumbel.gumbel_softmax(x, 0.5, generator=torch.Generator().manual_seed(3), backend="native")
        w = torch.randn(3, 5, dtype=torch.float64)
        assert torch.equal(*(torch.autograd.grad((t * w).sum(), x)[0] for t in (y, soft)))
    else:
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


def test_backward_twice_without_retain_graph_raises():
    x = torch.randn(2, 3, requires_grad=True)
    y = fused_gumbel.gumbel_softmax(x, backend="native")
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def test_batched_gradients():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(2)
    y = fused_gumbel.gumbel_softmax(x, 0.9, backend="native")
    eye = torch.eye(12, dtype=torch.float64).reshape(12, 3, 4)
    jacobian, = torch.autograd.grad(y, x, eye, is_grads_batched=True, retain_graph=True)
    rows = [torch.autograd.grad(y, x, e, retain_graph=True)[0] for e in eye]
    torch.testing.assert_close(jacobian, torch.stack(rows))


def test_reproducible_with_manual_seed_and_generator():
    x = torch.randn(8, 10)
    torch.manual_seed(0)
    a = fused_gumbel.gumbel_softmax(x, backend="native")
    b = fused_gumbel.gumbel_softmax(x, backend="native")
    torch.manual_seed(0)
    assert torch.equal(a, fused_gumbel.gumbel_softmax(x, backend="native")) and not torch.equal(a, b)
    torch.manual_seed(0)
    reference = fused_gumbel.gumbel_softmax(x, backend="reference")
    torch.testing.assert_close(a, reference, rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(9)
    c = fused_gumbel.categorical(x, generator=g, backend="native")
    g.manual_seed(9)
    assert torch.equal(c, fused_gumbel.categorical(x, generator=g, backend="reference"))


def test_rank_salt_is_applied(monkeypatch):
    x = torch.randn(4, 6)
    torch.manual_seed(1)
    plain = fused_gumbel.gumbel_softmax(x, hard=True, backend="native")
    monkeypatch.setattr(_seeding, "process_rank", lambda: 3)
    torch.manual_seed(1)
    salted = fused_gumbel.gumbel_softmax(x, backend="native")
    torch.manual_seed(1)
    key, offset = rng.draw_seed_offset(torch.device("cpu"))
    expected = function.apply(x, 1.0, False, 1, key ^ _seeding.rank_key(3), offset, "native")
    assert torch.equal(salted, expected)
    assert plain.shape == salted.shape


# ---- where it declines ----------------------------------------------------------------------------

class _CountingDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _CountingFunction(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", [
    "tensor_tau", "bool_tau", "zero_int_tau", "huge_int_tau", "nan_tau", "bool_dim", "numpy_dim", "dim_out_of_range", "huge_dim", "int_logits",
    "zero_dim", "empty", "meta", "subclass", "string_generator", "int_generator", "mode"])
def test_declines_what_python_must_handle(case):
    x = torch.randn(3, 4)
    args = dict(logits=x, tau=1.0, mode=0, dim=-1, generator=None)
    change = {
        "tensor_tau": dict(tau=torch.tensor(0.5)), "bool_tau": dict(tau=True), "zero_int_tau": dict(tau=0),
        "huge_int_tau": dict(tau=10**400), "nan_tau": dict(tau=float("nan")),
        "bool_dim": dict(dim=True), "numpy_dim": dict(dim=np.int64(1)), "dim_out_of_range": dict(dim=2),
        "huge_dim": dict(dim=2**80), "int_logits": dict(logits=torch.ones(3, 4, dtype=torch.int64)),
        "zero_dim": dict(logits=torch.tensor(0.5)), "empty": dict(logits=torch.empty(0, 4)),
        "meta": dict(logits=torch.empty(3, 4, device="meta")),
        "subclass": dict(logits=torch.Tensor._make_subclass(type("Sub", (torch.Tensor,), {}), x)),
        "string_generator": dict(generator="gen"), "int_generator": dict(generator=5), "mode": dict(mode=3),
    }[case]
    args.update(change)
    state = torch.get_rng_state()
    assert fast(**args) is None
    assert torch.equal(state, torch.get_rng_state())  # declining draws nothing


def test_declines_under_transforms_modes_tracing_and_forward_ad():
    x = torch.randn(3, 4)
    with _CountingDispatch():
        assert fast(x) is None
    with _CountingFunction():
        assert fast(x) is None
    seen = []
    torch.func.vmap(lambda row: (seen.append(fast(row)), row)[1], randomness="different")(x)
    assert seen == [None]
    torch.jit.trace(lambda t: (seen.append(fast(t)), t * 1)[1], (x,), check_trace=False)
    assert seen[-1] is None
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))
        assert fast(dual) is None
        assert fast(x) is not None  # a plain tensor inside a dual level needs no tangent


def test_int_tau_is_taken_as_python_takes_it():
    """F.gumbel_softmax's default tau is the int 1: a patched F call keeps the fast path."""
    x = torch.randn(3, 5)
    g = torch.Generator().manual_seed(2)
    y = fast(x, 2, 0, -1, g)
    g.manual_seed(2)
    assert y is not None and torch.equal(y, fused_gumbel.gumbel_softmax(x, 2.0, generator=g, backend="native"))


def test_backend_environment_variable(monkeypatch):
    x = torch.randn(2, 5)
    monkeypatch.setenv("FUSED_GUMBEL_BACKEND", "reference")
    assert fast(x, check_env=True) is None
    assert fast(x, check_env=False) is not None  # an explicit backend="native" wins over the variable
    monkeypatch.setenv("FUSED_GUMBEL_BACKEND", "auto")
    assert fast(x, check_env=True) is not None


@pytest.mark.parametrize("call", [
    lambda x: fused_gumbel.gumbel_softmax(x, tau=0.0, backend="native"),
    lambda x: fused_gumbel.gumbel_softmax(x, tau=-1.0, backend="native"),
    lambda x: fused_gumbel.gumbel_softmax(x, dim=2, backend="native"),
    lambda x: fused_gumbel.gumbel_softmax(x, dim=True, backend="native"),
    lambda x: fused_gumbel.gumbel_softmax(x.long(), backend="native"),
    lambda x: fused_gumbel.gumbel_softmax(x, generator=torch.Generator(device="meta"), backend="native"),
    lambda x: fused_gumbel.categorical(x[:, :0], backend="native"),
])
def test_bad_input_still_raises_the_python_error(call):
    x = torch.randn(3, 4)
    with pytest.raises((TypeError, ValueError, IndexError, RuntimeError)) as native_error:
        call(x)
    assert "sample_eager" not in str(native_error.value)


def test_auto_backend_takes_the_fast_path_when_native_is_the_default(monkeypatch):
    """With TRITON_INTERPRET unset (the default on a CPU machine), a call with no backend= runs the
    fast path: its grad_fn is the C++ Function; and it is the sample backend="native" gives."""
    monkeypatch.setattr(functional, "_INTERPRETED", False)
    monkeypatch.delenv("FUSED_GUMBEL_BACKEND", raising=False)
    x = torch.randn(3, 6, requires_grad=True)
    torch.manual_seed(5)
    y = fused_gumbel.gumbel_softmax(x, 0.5, hard=True)
    assert y.grad_fn.name().endswith("GumbelSoftmaxFunction>")
    torch.manual_seed(5)
    assert torch.equal(y, fused_gumbel.gumbel_softmax(x, 0.5, hard=True, backend="native"))
    monkeypatch.setattr(functional, "_INTERPRETED", True)  # the interpreter's Triton kernels take auto
    y_triton = fused_gumbel.gumbel_softmax(x, 0.5, hard=True)
    assert "Eager" in type(y_triton.grad_fn).__name__


def test_drop_in_module_and_training_step():
    """A training step the way code calls F.gumbel_softmax: the fast path's gradient reaches an
    optimiser, and matches what F computes for the same noise within float32 rounding."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 10)
    inputs = torch.randn(16, 6)
    torch.manual_seed(3)
    y = fused_gumbel.gumbel_softmax(layer(inputs), 0.5, backend="native")
    loss = (y * torch.arange(10.0)).sum()
    loss.backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    torch.manual_seed(3)
    key, offset = rng.draw_seed_offset(torch.device("cpu"))
    noise = rng.gumbel_noise_rows(16, 10, key, offset, torch.float64).reshape(16, 10).float()
    y_f = F.softmax((layer(inputs) + noise) / 0.5, -1)
    (y_f * torch.arange(10.0)).sum().backward()
    torch.testing.assert_close(y, y_f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, layer.weight.grad, rtol=1e-3, atol=1e-4)
