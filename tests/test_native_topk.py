"""The C++ Gumbel top-k kernel of ``fused_gumbel._C`` (``gumbel_topk`` / ``sample_subset`` under backend
"native"): samples and gradients (logits and per-row or 0-dim tau) against the PyTorch reference and
the Triton kernels (interpreter) on identical (seed, offset), every dtype, strided input and dim != -1,
k = 1 against gumbel_softmax, k = K, -inf classes and fewer finite classes than k, NaN rows, rows too
long for the backward's whole step cache, gradcheck and double backward, empty tensors, seeding, and
the compiled op. Skipped, with the reason, where the extension is not built."""
import math

import pytest
import torch

import fused_gumbel
from fused_gumbel import _native, functional
from helpers import assert_close, row_tau

pytestmark = pytest.mark.skipif(not _native.topk_available("cpu"),
                                reason=f"fused_gumbel._C is not available: {_native.unavailable_reason('cpu')}")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample(backend, logits, k, tau=1.0, hard=False, dim=-1, seed=0, grad_weight=None, **kwargs):
    """``gumbel_topk`` on ``backend`` after ``torch.manual_seed(seed)``; with ``grad_weight``, also the
    gradients of ``(y * grad_weight).sum()`` (logits, tau)."""
    torch.manual_seed(seed)
    x = logits.detach().clone().requires_grad_(grad_weight is not None)
    t = tau.detach().clone().requires_grad_(grad_weight is not None) if isinstance(tau, torch.Tensor) else tau
    y = fused_gumbel.gumbel_topk(x, k, t, hard, dim, backend=backend, **kwargs)
    if grad_weight is None:
        return y, None, None
    (y.to(grad_weight.dtype) * grad_weight).sum().backward()
    return y, x.grad, t.grad if isinstance(t, torch.Tensor) else None


def subset(backend, logits, k, dim=-1, seed=0):
    torch.manual_seed(seed)
    return fused_gumbel.sample_subset(logits, k, dim, backend=backend)


def check_against(expected, actual, dtype, hard):
    (y, dx, dt), (y_ref, dx_ref, dt_ref) = actual, expected
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    if hard:
        assert torch.equal(y, y_ref)
    else:
        assert_close(y, y_ref, dtype)
    if dx_ref is not None:
        assert_close(dx, dx_ref, dtype)
    if dt_ref is not None:
        assert dt.shape == dt_ref.shape and dt.dtype == dt_ref.dtype
        assert_close(dt, dt_ref, dtype)


CASES = [  # shape, dim, k, tau kind: short and long rows, dim != -1, per-row / 0-dim / float tau
    ((3, 9), -1, 3, "float"),
    ((2, 7, 3), 1, 2, "per_row"),
    ((40, 5), -1, 5, "scalar"),
    ((2, 300), -1, 8, "per_row"),
    ((5, 4, 33), 0, 4, "scalar"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim, k, tau_kind", CASES)
def test_matches_reference(dtype, shape, dim, k, tau_kind):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(shape, generator=gen) * 2).to(dtype)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    tau = row_tau(tau_kind, shape, dim, compute_dtype(dtype))
    for hard in (False, True):
        native = sample("native", logits, k, tau, hard, dim, grad_weight=weight)
        check_against(sample("reference", logits, k, tau, hard, dim, grad_weight=weight), native, dtype, hard)
        y = native[0]
        assert y.is_contiguous()
        sums = y.double().sum(dim)
        torch.testing.assert_close(sums, torch.full_like(sums, k), atol=4 * k * torch.finfo(dtype).eps, rtol=0)
    index = subset("native", logits, k, dim)
    assert index.dtype == torch.int64 and torch.equal(index, subset("reference", logits, k, dim))
    # The hard sample is the k-hot of the subset (same noise).
    khot = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    assert torch.equal(sample("native", logits, k, tau, True, dim)[0], khot)


def test_strided_input():
    """A transposed, sliced view (no [outer, K, inner] view without a copy on one side) and an
    expanded one give the contiguous input's sample and gradient."""
    base = torch.randn(12, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weight = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    view = base.t()[::2, 3:9]
    assert not view.is_contiguous()
    for hard in (False, True):
        check_against(sample("native", view.contiguous(), 3, 0.5, hard, grad_weight=weight),
                      sample("native", view, 3, 0.5, hard, grad_weight=weight), torch.float64, hard)
        check_against(sample("reference", view, 3, 0.5, hard, grad_weight=weight),
                      sample("native", view, 3, 0.5, hard, grad_weight=weight), torch.float64, hard)
    expanded = torch.randn(1, 7, dtype=torch.float64).expand(4, 7)
    assert torch.equal(subset("native", expanded, 3), subset("native", expanded.contiguous(), 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_triton(dtype):
    """Native against the Triton kernels (interpreter) on the same RNG state: indices, hard and soft
    samples, logits and per-row / 0-dim temperature gradients."""
    shape = (3, 37)
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 2).to(dtype)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for tau in (torch.rand(3, 1, generator=torch.Generator().manual_seed(6)) + 0.3, torch.tensor(0.7)):
        for hard in (False, True):
            check_against(sample("triton", logits, 4, tau, hard, seed=7, grad_weight=weight),
                          sample("native", logits, 4, tau, hard, seed=7, grad_weight=weight), dtype, hard)
    assert torch.equal(subset("native", logits, 5, seed=8), subset("triton", logits, 5, seed=8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k1_is_gumbel_softmax(dtype):
    """gumbel_softmax's noise: with k = 1 the soft and hard samples are its samples (one step of the
    relaxation is its softmax), the subset its argmax."""
    logits = torch.randn(50, 13, dtype=dtype, generator=torch.Generator().manual_seed(9))

    def after_seed(fn, *args, **kwargs):
        torch.manual_seed(10)
        return fn(logits, *args, backend="native", **kwargs)

    assert_close(after_seed(fused_gumbel.gumbel_topk, 1, 0.7), after_seed(fused_gumbel.gumbel_softmax, 0.7), dtype)
    hard = after_seed(fused_gumbel.gumbel_softmax, 0.7, hard=True)
    assert torch.equal(after_seed(fused_gumbel.gumbel_topk, 1, 0.7, hard=True), hard)
    assert torch.equal(after_seed(fused_gumbel.sample_subset, 1)[:, 0], hard.argmax(-1))


def test_k_equals_classes():
    logits = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    weight = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    tau = torch.tensor([[0.3], [1.0], [2.0], [0.8]], dtype=torch.float64)
    for hard in (False, True):
        native = sample("native", logits, 6, tau, hard, grad_weight=weight)
        check_against(sample("reference", logits, 6, tau, hard, grad_weight=weight), native, torch.float64, hard)
        if hard:  # every class; the soft sample need not be 1 everywhere, its rows sum to K
            assert torch.equal(native[0], torch.ones_like(logits))
        assert_close(native[0].sum(-1), torch.full((4,), 6.0, dtype=torch.float64), torch.float64)
    index = subset("native", logits, 6)
    assert torch.equal(index.sort(-1).values, torch.arange(6).expand(4, 6))


def test_minus_inf_and_fewer_finite_classes_than_k():
    """-inf classes take no weight (gradient 0) until the finite ones are used up, then the step's
    whole mass stays on the argmax; the subset makes them up with the lowest-index -inf classes."""
    inf = math.inf
    logits = torch.tensor([[-inf, 0.0, -inf, -inf, 1.0], [0.5, -inf, 2.0, -1.0, -inf], [200.0, 0.0, 100.0, -50.0, 3.0],
                           [1e4, -1e4, 3.0, 2.0, -inf]], dtype=torch.float64)
    weight = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    for tau in (0.05, 1.0, 20.0):
        for hard in (False, True):
            native = sample("native", logits, 4, torch.tensor([[tau]] * 4, dtype=torch.float64), hard,
                            grad_weight=weight)
            check_against(sample("reference", logits, 4, torch.tensor([[tau]] * 4, dtype=torch.float64), hard,
                                 grad_weight=weight), native, torch.float64, hard)
            y, dx, dt = native
            assert torch.isfinite(y).all() and torch.isfinite(dx).all() and torch.isfinite(dt).all()
    # Both top-k paths (a scan for k <= 32, a partial sort above): the -inf classes in index order.
    sparse = torch.full((2, 60), -math.inf).index_fill_(1, torch.arange(3, 60, 6), 0.0)
    for k in (12, 40):
        index = subset("native", sparse, k)
        assert torch.equal(index, subset("reference", sparse, k))
        minus_inf = [i for i in range(60) if (i - 3) % 6][:k - 10]
        assert index[:, 10:].tolist() == [minus_inf] * 2
    index = subset("native", logits, 4)
    assert sorted(index[0, :2].tolist()) == [1, 4] and index[0, 2:].tolist() == [0, 2]
    assert sorted(index[1, :3].tolist()) == [0, 2, 3] and index[1, 3] == 1
    assert torch.equal(index, subset("reference", logits, 4))


def test_invalid_rows_are_nan():
    logits = torch.tensor([[0.0, math.nan, 1.0], [-math.inf] * 3, [math.inf, 0.0, 1.0], [0.0, 1.0, 2.0]])
    tau = torch.ones(4, 1, requires_grad=True)
    for hard in (False, True):
        x = logits.clone().requires_grad_()
        y = fused_gumbel.gumbel_topk(x, 2, tau, hard=hard, backend="native")
        assert torch.isnan(y[:3]).all() and torch.isfinite(y[3]).all()
        y[3].sum().backward()
        assert torch.isnan(x.grad[:3]).all() and torch.isfinite(x.grad[3]).all()
        assert torch.isnan(tau.grad[:3]).all() and torch.isfinite(tau.grad[3]).all()
        tau.grad = None
    index = fused_gumbel.sample_subset(logits, 2, backend="native")
    assert (index[:3] == -1).all() and (index[3] >= 0).all()


def test_long_rows_and_large_k_without_limits():
    """Beyond the Triton kernel's 4096 classes and k <= 64 (no fallback, no warning), and a row whose
    2 k K step values exceed the backward's whole-row cache (kStepCacheValues = 2**21): the segmented
    replay from checkpoints gives the reference's gradient."""
    logits = torch.randn(1, 70000, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    weight = torch.randn(1, 70000, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    tau = torch.tensor([[0.5]], dtype=torch.float64)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        native = sample("native", logits, 17, tau, grad_weight=weight)  # 2 * 17 * 70000 > 2**21
        index = subset("native", logits, 100)
    check_against(sample("reference", logits, 17, tau, grad_weight=weight), native, torch.float64, False)
    assert torch.equal(index, subset("reference", logits, 100))
    wide_k = torch.randn(3, 90, generator=torch.Generator().manual_seed(16))
    check_against(sample("reference", wide_k, 70, 0.5, grad_weight=torch.ones(3, 90, dtype=torch.float64)),
                  sample("native", wide_k, 70, 0.5, grad_weight=torch.ones(3, 90, dtype=torch.float64)),
                  torch.float32, False)


def test_gradcheck_and_double_backward():
    gen = torch.Generator().manual_seed(17)
    logits = torch.randn(3, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    tau = torch.tensor([[0.4], [1.0], [2.0]], dtype=torch.float64, requires_grad=True)
    peaked = torch.tensor([[9.0, 0.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)

    def run(x, t, k, hard=False):
        return fused_gumbel.gumbel_topk(x, k, t, hard, seed=18, backend="native")

    assert torch.autograd.gradcheck(lambda x, t: run(x, t, 3), (logits, tau))
    assert torch.autograd.gradcheck(lambda x, t: run(x, t, 2),
                                    (peaked, torch.tensor(0.4, dtype=torch.float64, requires_grad=True)))
    # create_graph replays the reference on the same noise: the reference's second derivatives.
    assert torch.autograd.gradgradcheck(lambda x, t: run(x, t, 2), (logits, tau))
    for hard in (False, True):
        grads = []
        for backend in ("native", "reference"):
            y = fused_gumbel.gumbel_topk(logits, 3, tau, hard, seed=19, backend=backend)
            (g,) = torch.autograd.grad((y * torch.arange(6.0, dtype=torch.float64)).sum(), logits, create_graph=True)
            grads.append(torch.autograd.grad((g ** 2).sum(), (logits, tau)))
        for native, ref in zip(*grads):
            assert_close(native, ref, torch.float64)


def test_empty_and_zero_dim():
    for shape, dim in (((0, 5), -1), ((3, 0, 4), -1), ((4, 0), 0)):
        logits = torch.empty(shape)
        assert fused_gumbel.gumbel_topk(logits, 2, dim=dim, backend="native").shape == shape
        out_shape = list(shape)
        out_shape[dim] = 2
        assert fused_gumbel.sample_subset(logits, 2, dim, backend="native").shape == tuple(out_shape)
    assert fused_gumbel.gumbel_topk(torch.tensor(0.3), 1, backend="native").item() == 1.0
    assert fused_gumbel.sample_subset(torch.tensor(0.3), 1, backend="native").item() == 0


def test_seeding():
    """torch.manual_seed, generator= and seed= draw what the reference draws, reproducibly; the
    native op consumes the generator as the reference does; the thread count changes nothing."""
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(20))
    torch.manual_seed(5)
    a = fused_gumbel.gumbel_topk(logits, 3, backend="native")
    b = fused_gumbel.gumbel_topk(logits, 3, backend="native")
    torch.manual_seed(5)
    assert torch.equal(fused_gumbel.gumbel_topk(logits, 3, backend="native"), a) and not torch.equal(a, b)
    for backend in ("native", "reference"):
        gen = torch.Generator().manual_seed(21)
        first = fused_gumbel.sample_subset(logits, 4, generator=gen, backend=backend)
        second = fused_gumbel.sample_subset(logits, 4, generator=gen, backend=backend)
        if backend == "native":
            native = (first, second)
    assert torch.equal(native[0], first) and torch.equal(native[1], second)
    assert torch.equal(fused_gumbel.sample_subset(logits, 4, seed=2**40 + 1, backend="native"),
                       fused_gumbel.sample_subset(logits, 4, seed=2**40 + 1, backend="reference"))
    threads = torch.get_num_threads()
    many = torch.randn(2000, 30, generator=torch.Generator().manual_seed(21))  # rows in several thread tasks
    try:
        torch.set_num_threads(1)
        one = sample("native", many, 5, 0.5, seed=22, grad_weight=torch.ones(2000, 30, dtype=torch.float64))
        torch.set_num_threads(2)
        two = sample("native", many, 5, 0.5, seed=22, grad_weight=torch.ones(2000, 30, dtype=torch.float64))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(u, v) for u, v in zip(one[:2], two[:2]))


def test_default_cpu_backend_is_native(monkeypatch):
    """Without backend= (and without TRITON_INTERPRET, which conftest sets), CPU calls run the native
    op (the C++ kernel, not the reference)."""
    calls = []
    forward = _native.topk_forward
    monkeypatch.setattr(_native, "topk_forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))
    monkeypatch.delenv("FUSED_GUMBEL_BACKEND", raising=False)
    monkeypatch.setattr(functional, "_interpret_env", lambda: False)
    assert fused_gumbel.select_backend(torch.device("cpu")) == "native"
    fused_gumbel.gumbel_topk(torch.randn(2, 5), 2)
    fused_gumbel.sample_subset(torch.randn(2, 5), 2)
    assert len(calls) == 2


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_matches_eager(compiler):
    """The custom op under torch.compile with the native backend: the eager sample and gradients for
    the same torch.manual_seed (soft with a per-row tau gradient, hard, and the subset)."""
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(23))
    tau = torch.rand(6, 1, generator=torch.Generator().manual_seed(24)) + 0.3
    weight = torch.randn(6, 11, generator=torch.Generator().manual_seed(25))

    def fn(x, t, hard):
        return fused_gumbel.gumbel_topk(x, 3, t, hard, backend="native")

    compiled = torch.compile(fn, backend=compiler, fullgraph=True)
    hards = (False, True) if compiler == "aot_eager" else (False,)
    for hard in hards:
        results = []
        for run in (fn, compiled):
            torch.manual_seed(26)
            x, t = logits.clone().requires_grad_(), tau.clone().requires_grad_()
            y = run(x, t, hard)
            (y * weight).sum().backward()
            results.append((y, x.grad, t.grad))
        for eager, graph in zip(*results):
            assert_close(graph, eager, torch.float32)
    if compiler == "aot_eager":
        subset_fn = torch.compile(lambda x: fused_gumbel.sample_subset(x, 4, backend="native"), backend=compiler,
                                  fullgraph=True)
        torch.manual_seed(27)
        graph = subset_fn(logits)
        torch.manual_seed(27)
        assert torch.equal(graph, fused_gumbel.sample_subset(logits, 4, backend="native"))


def test_export_runs_the_native_op():
    class Module(torch.nn.Module):
        def forward(self, x):
            return fused_gumbel.gumbel_topk(x, 2, 0.5, backend="native")

    logits = torch.randn(3, 7)
    program = torch.export.export(Module(), (logits,))
    assert "fused_gumbel.gumbel_topk" in str(program.graph)
    torch.manual_seed(28)
    exported = program.module()(logits)
    torch.manual_seed(28)
    assert_close(exported, Module()(logits), torch.float32)


def test_opcheck():
    """The ops' schemas, fake implementations and autograd registration (torch.library.opcheck):
    the custom op under "native" with a per-row tau, and the C++ ops in every mode."""
    logits, token = torch.randn(3, 4, 5, requires_grad=True), torch.empty(0)
    for args in [(logits, torch.full((15,), 0.8, requires_grad=True), 1.0, 2, 0, 1, True, 5, "native", token),
                 (logits, None, 0.6, 2, 1, 2, True, 5, "native", token),
                 (logits.detach(), None, 1.0, 3, 2, 2, False, 5, "native", token)]:
        torch.library.opcheck(torch.ops.fused_gumbel.gumbel_topk.default, args)
    x = logits.detach()
    for mode in (0, 1, 2):
        torch.library.opcheck(torch.ops.fused_gumbel.topk_kernel_forward.default,
                              (x, torch.full((15,), 0.8), 1.0, 2, mode, 1, 3, 4, mode != 2))
    _, stats = torch.ops.fused_gumbel.topk_kernel_forward(x, None, 0.7, 2, 0, 1, 3, 4, True)
    torch.library.opcheck(torch.ops.fused_gumbel.topk_kernel_backward.default,
                          (torch.randn(3, 4, 5), x, torch.full((15,), 0.7), 1.0, 2, 1, 3, 4, stats, True))
