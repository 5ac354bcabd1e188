"""The cheap eager dispatch of the Triton path (issue 9, host overhead): which autograd Function an
eager call goes through, that it never pays for ``inspect.signature``, and that every route gives
the same sample and gradients. Host times themselves are measured by ``python -m bench.static
--host``, not asserted here (a shared machine is too noisy)."""
import inspect
import itertools
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


@pytest.mark.parametrize("sizes,dim", [((4, 3, 5), 1), ((2, 1, 6), 0), ((1, 1), 1), ((3, 0, 2), 2), ((7,), 0)])
def test_contiguous_layout_without_a_tensor_matches_torch(sizes, dim):
    """What the eager fast path derives from sizes alone is what a contiguous tensor of them has."""
    t = torch.empty(sizes)
    assert _layout.contiguous_strides(torch.Size(sizes)) == t.stride()
    assert _layout.contiguous_row_strides(torch.Size(sizes), dim) == _layout.row_strides(t, dim)


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


# ---- the eager fast path: a per-signature cache (functional._eager_calls, function.EagerCall) ----

def _general_path_only(monkeypatch):
    """Every signature declined by the cache: calls run the general path."""
    monkeypatch.setattr(functional, "_eager_calls", {})
    monkeypatch.setattr(function, "eager_call", lambda *args: None)


def _count_fast_calls(monkeypatch) -> list:
    """Records each call that the fast path serves (``function.eager_sample``)."""
    served = []
    real = function.eager_sample
    monkeypatch.setattr(function, "eager_sample", lambda *args: served.append(args[0]) or real(*args))
    return served


def _warm(*args, **kwargs):
    """A call that makes sure the function module is loaded and the call's signature is cached."""
    fused_gumbel.gumbel_softmax(*args, **kwargs)
    fused_gumbel.gumbel_softmax(*args, **kwargs)


CASES = [((6, 7), (7, 1), -1), ((6, 7), (1, 6), 0), ((3, 4, 5), (20, 1, 4), 1), ((4, 9), (9, 1), 1),
         ((2, 3, 40), (120, 40, 1), -1)]


@pytest.mark.parametrize("sizes,strides,dim", CASES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_is_bit_identical_to_the_general_path(monkeypatch, sizes, strides, dim, hard, dtype):
    """Same generator draw, same sample, same gradients (soft and hard, strided logits, other dims),
    and the generator advanced alike, with the fast path and with every call on the general path."""
    base = torch.randn(sum(s * (n - 1) for s, n in zip(strides, sizes)) + 1, dtype=dtype)
    x = torch.as_strided(base, sizes, strides)
    w = torch.randn(sizes, dtype=dtype)
    _warm(x, 0.6, hard, dim=dim, backend="triton")

    def run():
        torch.manual_seed(3)
        y = fused_gumbel.gumbel_softmax(x, 0.6, hard, dim=dim, backend="triton")
        xg = x.detach().requires_grad_(True)
        yg = fused_gumbel.gumbel_softmax(xg, 0.6, hard, dim=dim, backend="triton")
        grad = torch.autograd.grad(yg, xg, w)[0]
        return y, yg.detach(), grad, torch.get_rng_state()

    served = _count_fast_calls(monkeypatch)
    fast = run()
    assert len(served) == 2
    with monkeypatch.context() as m:
        _general_path_only(m)
        general = run()
    assert len(served) == 2  # the general run took no fast call
    for a, b in zip(fast, general):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tunables,kind", [({"MAX_RESIDENT": 16, "MAX_RESIDENT_SOFT_FORWARD": 16}, "rows"),
                                           ({"SPLIT_MIN_SEGMENT": 32}, "split")])
@pytest.mark.parametrize("hard", [False, True])
def test_fast_path_streamed_and_split_rows(monkeypatch, tunables, kind, hard):
    """Rows streamed in chunks (the bound launch with a stats buffer: soft scratch, hard row maxima)
    and rows split across programs (launched in full, unbound) give the general path's sample and
    gradient bit for bit."""
    for name, value in tunables.items():
        monkeypatch.setattr(kernels, name, value)
    x = torch.randn(3, 100)
    plan = kernels.forward_plan(3, 100, kernels.MODE_HARD if hard else kernels.MODE_SOFT, x.dtype, False, hard)
    assert plan.kind == kind and (plan.stats_words > 0) == (kind == "rows" or hard)
    w = torch.randn(3, 100)
    _warm(x, 0.6, hard, backend="triton")

    def run():
        torch.manual_seed(4)
        y = fused_gumbel.gumbel_softmax(x, 0.6, hard, backend="triton")
        xg = x.detach().requires_grad_(True)
        return y, torch.autograd.grad(fused_gumbel.gumbel_softmax(xg, 0.6, hard, backend="triton"), xg, w)[0]

    served = _count_fast_calls(monkeypatch)
    fast = run()
    assert len(served) == 2 and (served[0].launch is None) == (kind == "split")
    with monkeypatch.context() as m:
        _general_path_only(m)
        general = run()
    for a, b in zip(fast, general):
        assert torch.equal(a, b)


def _count_fast_categoricals(monkeypatch) -> list:
    served = []
    real = function.eager_categorical
    monkeypatch.setattr(function, "eager_categorical", lambda *args: served.append(args[0]) or real(*args))
    return served


@pytest.mark.parametrize("sizes,strides,dim", CASES)
@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_categorical_is_bit_identical_to_the_general_path(monkeypatch, sizes, strides, dim, one_hot, dtype):
    """``categorical`` (indices or one-hot) takes the fast path too: the general path's draw, output
    (shape, strides, dtype) and generator state, also for logits that require grad (no graph)."""
    base = torch.randn(sum(s * (n - 1) for s, n in zip(strides, sizes)) + 1, dtype=dtype)
    x = torch.as_strided(base, sizes, strides)
    xg = x.detach().requires_grad_(True)
    for _ in range(2):
        fused_gumbel.categorical(x, dim, one_hot=one_hot, backend="triton")

    def run():
        torch.manual_seed(5)
        drawn = [fused_gumbel.categorical(t, dim, one_hot=one_hot, backend="triton") for t in (x, xg)]
        return drawn, torch.get_rng_state()

    served = _count_fast_categoricals(monkeypatch)
    fast, fast_state = run()
    assert len(served) == 2
    with monkeypatch.context() as m:
        _general_path_only(m)
        general, general_state = run()
    assert len(served) == 2 and torch.equal(fast_state, general_state)
    for a, b in zip(fast, general):
        assert torch.equal(a, b) and a.stride() == b.stride() and a.dtype == b.dtype and a.grad_fn is None


@pytest.mark.parametrize("tunables,kind", [({"MAX_RESIDENT": 16, "MAX_RESIDENT_SOFT_FORWARD": 16}, "rows"),
                                           ({"SPLIT_MIN_SEGMENT": 32, "INDEX_SPLIT_SEGMENT": 32}, "split")])
def test_fast_categorical_streamed_and_split_rows(monkeypatch, tunables, kind):
    for name, value in tunables.items():
        monkeypatch.setattr(kernels, name, value)
    x = torch.randn(3, 100)
    assert kernels.forward_plan(3, 100, kernels.MODE_INDEX, x.dtype, False, False).kind == kind
    fused_gumbel.categorical(x, backend="triton")
    served = _count_fast_categoricals(monkeypatch)
    torch.manual_seed(6)
    fast = fused_gumbel.categorical(x, backend="triton")
    assert len(served) == 1
    with monkeypatch.context() as m:
        _general_path_only(m)
        torch.manual_seed(6)
        assert torch.equal(fused_gumbel.categorical(x, backend="triton"), fast)


@pytest.mark.parametrize("call", [
    lambda x: fused_gumbel.categorical(x, seed=4, backend="triton"),
    lambda x: fused_gumbel.categorical(x, generator=torch.Generator().manual_seed(1), backend="triton"),
    lambda x: fused_gumbel.categorical(x.double(), backend="triton"),
    lambda x: fused_gumbel.categorical(x.reshape(2, 2, 6).transpose(0, 1), backend="triton"),  # no row view
    lambda x: fused_gumbel.categorical(x, backend="reference"),
    lambda x: fused_gumbel.categorical(x, one_hot=1, backend="triton"),
    lambda x: fused_gumbel.categorical(x.to("meta"), backend="triton"),
    lambda x: fused_gumbel.categorical(x[:0], backend="triton"),
    lambda x: vmap(lambda t: fused_gumbel.categorical(t, backend="triton"), randomness="different")(x),
])
def test_other_categoricals_take_the_general_path(monkeypatch, call):
    x = torch.randn(4, 6)
    fused_gumbel.categorical(x, backend="triton")
    served = _count_fast_categoricals(monkeypatch)
    call(x)
    call(x)
    assert served == []


def test_categorical_bad_input_raises_after_a_cached_call():
    x = torch.randn(4, 6)
    fused_gumbel.categorical(x, backend="triton")
    with pytest.raises(IndexError):
        fused_gumbel.categorical(x, 2, backend="triton")
    with pytest.raises(TypeError):
        fused_gumbel.categorical(x, True, backend="triton")
    with pytest.raises(ValueError):
        fused_gumbel.categorical(x, backend="cuda")


def test_launch_prelude_matches_its_python_twin():
    """``_C.launch_prelude`` draws what ``_seeding.draw_generator`` draws (salted, generator state
    included), gives the seed words of ``kernels.seed_words`` and the output layout of the Python
    twin (dense logits keep their layout, others get a contiguous output)."""
    prelude = function._find_launch_prelude()
    if prelude is function._python_launch_prelude:
        pytest.skip("fused_gumbel._C is not built")
    for x in (torch.randn(4, 5), torch.randn(5, 4).t(), torch.randn(4, 6)[:, ::2], torch.randn(2, 3, 4).permute(2, 0, 1)):
        layouts = [function.CONTIGUOUS_LAYOUT] + [function.INDEX_LAYOUT + d for d in range(x.dim())]
        if x.is_contiguous():
            layouts.append(function.LAYOUT_OF_LOGITS)
        for salt, layout, stats_words in itertools.product((0, 0x5DEECE66D), layouts, (0, 7)):
            torch.manual_seed(11)
            y, key, offset, words, stats = prelude(x, salt, layout, stats_words)
            state = torch.get_rng_state()
            torch.manual_seed(11)
            y_py, key_py, offset_py, words_py, stats_py = function._python_launch_prelude(x, salt, layout, stats_words)
            assert torch.equal(state, torch.get_rng_state())
            torch.manual_seed(11)
            assert (key ^ salt, offset) == fused_gumbel._seeding.draw_generator(None) == (key_py ^ salt, offset_py)
            assert words == words_py == kernels.seed_words(key, offset)
            assert all(-2**31 <= w < 2**31 for w in words)
            assert (y.shape, y.stride(), y.dtype) == (y_py.shape, y_py.stride(), y_py.dtype)
            if layout == function.CONTIGUOUS_LAYOUT:
                assert y.is_contiguous() and y.shape == x.shape and y.dtype == x.dtype
            elif layout >= function.INDEX_LAYOUT:
                d = layout - function.INDEX_LAYOUT
                assert y.shape == x.shape[:d] + x.shape[d + 1:] and y.dtype == torch.int64 and y.is_contiguous()
            if stats_words:
                assert stats.shape == stats_py.shape == (7,) and stats.dtype == stats_py.dtype == torch.float32
            else:
                assert stats is None and stats_py is None
    with pytest.raises(TypeError, match="Tensor"):
        prelude([1.0], 0, 0, 0)
    with pytest.raises(ValueError, match="layout"):
        prelude(torch.randn(3, 4), 0, function.INDEX_LAYOUT + 2, 0)


def test_fast_backward_takes_any_gradient_layout(monkeypatch):
    """A gradient without the output's strides (expanded, transposed, another dtype) and double
    backward take the general backward, with the general path's result."""
    x = torch.randn(5, 6, requires_grad=True)
    _warm(x, backend="triton")
    grads = {"expanded": torch.randn(6).expand(5, 6), "transposed": torch.randn(6, 5).t(),
             "contiguous": torch.randn(5, 6)}
    for name, g in grads.items():
        results = []
        for general in (False, True):
            with monkeypatch.context() as m:
                if general:
                    _general_path_only(m)
                torch.manual_seed(1)
                y = fused_gumbel.gumbel_softmax(x, 0.8, True, backend="triton")
                results.append(torch.autograd.grad(y, x, g)[0])
        assert torch.equal(*results), name
    torch.manual_seed(1)
    y = fused_gumbel.gumbel_softmax(x, 0.8, backend="triton")
    (first,) = torch.autograd.grad((y * grads["contiguous"]).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)  # double backward: the differentiable formula
    assert first.grad_fn is not None and torch.isfinite(second).all()


def test_signature_cache_follows_its_inputs(monkeypatch):
    """A new entry for each new shape, strides, dtype, dim, hard, grad mode, backend request (argument
    or FUSED_GUMBEL_BACKEND) and kernels tunable; a repeat adds none."""
    monkeypatch.setattr(functional, "_eager_calls", {})
    monkeypatch.delenv(functional.BACKEND_ENV, raising=False)
    x = torch.randn(4, 6)
    _warm(x, backend="triton")
    seen = len(functional._eager_calls)
    variants = [lambda: fused_gumbel.gumbel_softmax(torch.randn(5, 6), backend="triton"),
                lambda: fused_gumbel.gumbel_softmax(torch.randn(6, 4).t(), backend="triton"),
                lambda: fused_gumbel.gumbel_softmax(x.to(torch.float16), backend="triton"),
                lambda: fused_gumbel.gumbel_softmax(x, dim=0, backend="triton"),
                lambda: fused_gumbel.gumbel_softmax(x, hard=True, backend="triton"),
                lambda: fused_gumbel.gumbel_softmax(x.requires_grad_(True), backend="triton"),
                lambda: fused_gumbel.gumbel_softmax(x.detach(), backend=None)]
    for variant in variants:
        variant()
        assert len(functional._eager_calls) == seen + 1
        variant()
        assert len(functional._eager_calls) == seen + 1
        seen += 1
    served = _count_fast_calls(monkeypatch)
    monkeypatch.setenv(functional.BACKEND_ENV, "triton")  # the request backend="triton" made: its entry
    fused_gumbel.gumbel_softmax(x.detach())
    assert len(functional._eager_calls) == seen and len(served) == 1
    monkeypatch.setenv(functional.BACKEND_ENV, "reference")  # the environment is read on every call
    fused_gumbel.gumbel_softmax(x.detach())
    assert len(functional._eager_calls) == seen + 1 and len(served) == 1
    monkeypatch.delenv(functional.BACKEND_ENV)
    before = kernels.generation
    y = torch.randn(3, 40)
    _warm(y, backend="triton")
    monkeypatch.setattr(kernels, "MAX_RESIDENT", 16)  # any kernels attribute starts a generation
    monkeypatch.setattr(kernels, "MAX_RESIDENT_SOFT_FORWARD", 16)
    assert kernels.generation == before + 2
    torch.manual_seed(0)
    fast = fused_gumbel.gumbel_softmax(y, backend="triton")
    (call,) = [c for k, c in functional._eager_calls.items() if k[0] == y.shape and k[-1] == kernels.generation]
    assert call.plan == kernels.forward_plan(3, 40, kernels.MODE_SOFT, torch.float32, False, False)
    assert call.plan.tail == (3,) and call.plan.stats_words == 2 * 3 * 3  # three streamed chunks
    with monkeypatch.context() as m:
        _general_path_only(m)
        torch.manual_seed(0)
        assert torch.equal(fused_gumbel.gumbel_softmax(y, backend="triton"), fast)


@pytest.mark.parametrize("call", [
    lambda x: fused_gumbel.gumbel_softmax(x, torch.tensor(0.5), backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x, seed=4, backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x, generator=torch.Generator().manual_seed(1), backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x, hard=True, estimator="gumbel_rao", backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x.double(), backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x.reshape(2, 2, 6).transpose(0, 1), backend="triton"),  # no row view
    lambda x: fused_gumbel.gumbel_softmax(x, backend="reference"),
    lambda x: fused_gumbel.gumbel_softmax(x, 1, backend="triton"),  # an int tau
    lambda x: fused_gumbel.gumbel_softmax(x, hard=1, backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x.to("meta"), backend="triton"),
    lambda x: fused_gumbel.gumbel_softmax(x[:0], backend="triton"),
    lambda x: vmap(lambda t: fused_gumbel.gumbel_softmax(t, backend="triton"), randomness="different")(x),
    lambda x: torch.jit.trace(lambda t: fused_gumbel.gumbel_softmax(t, backend="triton"), (x,), check_trace=False)(x),
])
def test_other_calls_take_the_general_path(monkeypatch, call):
    """Whatever the cache does not cover runs as before: no fast call, twice in a row."""
    x = torch.randn(4, 6)
    _warm(x, backend="triton")
    served = _count_fast_calls(monkeypatch)
    call(x)
    call(x)
    assert served == []


def test_forward_ad_takes_the_general_path(monkeypatch):
    x = torch.randn(4, 6)
    _warm(x, backend="triton")
    served = _count_fast_calls(monkeypatch)
    with forward_ad.dual_level():
        fused_gumbel.gumbel_softmax(x, backend="triton")
    assert served == []


@pytest.mark.parametrize("bad,error", [
    (dict(dim=True), TypeError), (dict(dim=2), IndexError), (dict(tau=-1.0), ValueError),
    (dict(tau=float("nan")), ValueError), (dict(tau=float("inf")), ValueError), (dict(backend="cuda"), ValueError),
])
def test_bad_input_raises_after_a_cached_call(monkeypatch, bad, error):
    """The cache never lets bad input through: the same exception, and no launch, after a good call
    of the same signature."""
    x = torch.randn(4, 6)
    _warm(x, backend="triton")
    launches = []
    monkeypatch.setattr(kernels, "gumbel_softmax_forward", lambda *a, **k: launches.append(a))
    monkeypatch.setattr(function, "_eager_launch", lambda *a, **k: launches.append(a))  # the fast path's launch
    with pytest.raises(error):
        fused_gumbel.gumbel_softmax(x, **{"backend": "triton", **bad})
    assert launches == []
    monkeypatch.setenv(functional.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_gumbel.gumbel_softmax(x)
