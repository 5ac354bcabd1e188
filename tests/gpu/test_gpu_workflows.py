"""GPU checks of the PyTorch workflows: CUDA graphs (manual capture and reduce-overhead) draw
fresh noise on every replay, torch.compile on CUDA samples what eager samples, ``seed=`` gives
the CPU reference's sample on CUDA, autocast keeps the input dtype, eager is one launch.

Every test is marked ``gpu`` (skipped without CUDA); run them with ``pytest -m gpu tests/gpu``.
"""
import pytest
import torch

import fused_gumbel
from fused_gumbel.kernels import gumbel_softmax as kernels
from fused_gumbel.nn import GumbelSoftmax

pytestmark = pytest.mark.gpu

stats = pytest.importorskip("scipy.stats")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _capture(step, warmup=3):
    """PyTorch's recipe: warm up on a side stream, then capture ``step()`` into a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # capture_error_mode="global": a module load here would fail
        out = step()
    return graph, out


def _replays(graph, out, n):
    results = []
    for _ in range(n):
        graph.replay()
        results.append(out.clone() if isinstance(out, torch.Tensor) else tuple(o.clone() for o in out))
    torch.cuda.synchronize()
    return results


# ---------------------------------------------------------------- CUDA graphs (manual capture)

@pytest.mark.parametrize("kind", ["soft", "hard", "index", "one_hot"])
def test_graph_replays_draw_fresh_noise(kind):
    logits = torch.randn(64, 10, device=CUDA)

    def step():
        if kind in ("soft", "hard"):
            return fused_gumbel.gumbel_softmax(logits, 0.5, hard=kind == "hard")
        return fused_gumbel.categorical(logits, one_hot=kind == "one_hot")

    graph, out = _capture(step)
    first, second = _replays(graph, out, 2)
    assert not torch.equal(first, second)
    if kind != "index":
        torch.testing.assert_close(first.sum(-1), torch.ones(64, device=CUDA))


def test_graph_replays_follow_the_generator_state():
    logits = torch.randn(32, 7, device=CUDA)
    graph, out = _capture(lambda: fused_gumbel.gumbel_softmax(logits, 1.0, hard=True))
    torch.cuda.manual_seed(123)
    a = _replays(graph, out, 3)
    torch.cuda.manual_seed(123)
    b = _replays(graph, out, 3)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], a[1])


def test_graph_samples_over_1000_replays_pass_chi_square():
    probs = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.22, 0.28], device=CUDA)
    rows = 32
    logits = probs.log().expand(rows, -1).contiguous()
    graph, out = _capture(lambda: fused_gumbel.categorical(logits))
    draws = torch.stack(_replays(graph, out, 1000)).cpu()  # [1000, rows]
    counts = torch.bincount(draws.reshape(-1), minlength=6).double()
    expected = probs.double().cpu() / probs.double().sum().item() * draws.numel()
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-4
    # Consecutive replays are independent (a replay that repeated its noise would fail this).
    table = torch.zeros(6, 6)
    for a, b in zip(draws[:-1, 0], draws[1:, 0]):
        table[a, b] += 1
    assert stats.chi2_contingency(table.numpy() + 0.5).pvalue > 1e-4
    assert len({tuple(d.tolist()) for d in draws}) > 990


def test_graph_training_step_backward_regenerates_the_forward_noise():
    """Straight-through backward inside the graph regenerates the noise from the device seed: with
    loss = sum(y[:, 0]), dlogits_k = -y_k y_0 / tau for k != 0, so argmax_k(-dlogits_k) over k != 0
    is the sampled class whenever that class is not 0."""
    torch.manual_seed(0)
    x = torch.randn(2048, 8, device=CUDA, requires_grad=True)

    def step():
        x.grad = None
        y = fused_gumbel.gumbel_softmax(x, 1.0, hard=True)
        y[:, 0].sum().backward()
        return y, x.grad

    graph, out = _capture(step)
    for y, grad in _replays(graph, out, 3):
        index = y.argmax(-1)
        rows = index != 0
        recovered = 1 + (-grad[:, 1:]).argmax(-1)
        assert rows.sum() > 1000
        assert (recovered[rows] == index[rows]).float().mean() > 0.999
        torch.testing.assert_close(grad.sum(-1), torch.zeros(2048, device=CUDA), atol=1e-5, rtol=0)


def test_seed_pointer_launch_matches_scalar_launch():
    """The graph path (key and offset read from an int64 device tensor) computes the eager path's noise."""
    x = torch.randn(100, 37, device=CUDA)
    shape = (100, 37)
    key, offset = 2**62 + 987654321, 2**33 + 4
    outputs = []
    for seed, off in ((key, offset), (torch.tensor([key, offset], device=CUDA), None)):
        y = torch.empty(shape, device=CUDA)
        kernels.gumbel_softmax_forward(x, (37, 1, 1), y, (37, 1, 1), None, 0.7, 100, 37, 1, seed, off,
                                       kernels.MODE_SOFT)
        outputs.append(y)
    assert torch.equal(outputs[0], outputs[1])
    recorded = torch.zeros(2, dtype=torch.int64, device=CUDA)
    y = torch.empty(shape, device=CUDA)
    kernels.gumbel_softmax_forward(x, (37, 1, 1), y, (37, 1, 1), None, 0.7, 100, 37, 1, key, offset,
                                   kernels.MODE_SOFT, rng_out=recorded)
    assert recorded.tolist() == [key, offset] and torch.equal(y, outputs[0])


# ------------------------------------------------------------------- torch.compile on CUDA

@pytest.mark.parametrize("hard", [False, True])
def test_compiled_matches_eager_on_cuda(hard):
    logits = torch.randn(256, 12, device=CUDA)
    tau = torch.rand(256, 1, device=CUDA) + 0.3

    def fn(x, t):
        return fused_gumbel.gumbel_softmax(x, t, hard=hard), fused_gumbel.gumbel_softmax(x, 0.5, hard=hard)

    results = []
    for f in (fn, torch.compile(fn, fullgraph=True)):
        x = logits.clone().requires_grad_()
        t = tau.clone().requires_grad_()
        torch.manual_seed(0)
        a, b = f(x, t)
        ((a + b) * torch.arange(12.0, device=CUDA)).sum().backward()
        results.append((a.detach(), b.detach(), x.grad, t.grad))
    eager, compiled = results
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    torch.testing.assert_close(compiled[2], eager[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[3], eager[3], atol=1e-5, rtol=1e-5)


def test_identical_calls_in_one_compiled_training_graph_differ_on_cuda():
    logits = torch.randn(128, 9, device=CUDA, requires_grad=True)

    def fn(x):
        return fused_gumbel.gumbel_softmax(x, 0.5, hard=True), fused_gumbel.gumbel_softmax(x, 0.5, hard=True)

    torch.manual_seed(4)
    eager = fn(logits)
    torch.manual_seed(4)
    compiled = torch.compile(fn, fullgraph=True)(logits)
    (compiled[0] * torch.arange(9.0, device=CUDA)).sum().backward()
    assert not torch.equal(compiled[0], compiled[1])
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])


def test_reduce_overhead_replays_draw_fresh_noise():
    from torch._dynamo.utils import counters

    counters.clear()
    logits = torch.randn(32, 6, device=CUDA)
    fn = torch.compile(lambda x: fused_gumbel.categorical(torch.log_softmax(x, -1)), mode="reduce-overhead",
                       fullgraph=True)
    draws = []
    for _ in range(1000):
        draws.append(fn(logits).clone())
    assert counters["inductor"]["cudagraph_skips"] == 0
    draws = torch.stack(draws[3:]).cpu()  # skip warm-up calls
    assert len({tuple(d.tolist()) for d in draws}) > 990
    probs = torch.softmax(logits.double(), -1).cpu()
    probs = probs / probs.sum(-1, keepdim=True)  # chisquare wants the totals to agree to 1e-8
    for row in (0, 1):
        counts = torch.bincount(draws[:, row], minlength=6).double()
        assert stats.chisquare(counts.numpy(), (probs[row] * len(draws)).numpy()).pvalue > 1e-4


def test_reduce_overhead_training_with_module():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 10), GumbelSoftmax(tau=0.7, hard=True, learnable_tau=True)).to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(model, mode="reduce-overhead")
    x = torch.randn(64, 16, device=CUDA)
    samples = []
    for _ in range(6):
        torch.compiler.cudagraph_mark_step_begin()
        y = compiled(x)
        (y * torch.arange(10.0, device=CUDA)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples.append(y.detach().clone())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len({tuple(s.argmax(-1).tolist()) for s in samples}) == len(samples)


# ----------------------------------------------------------------- cross-device (seed=)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_seed_gives_the_cpu_reference_sample_on_cuda(dtype, tau):
    from helpers import assert_close

    logits = torch.randn(200_000, 10, dtype=dtype)
    for hard in (False, True):
        cpu = fused_gumbel.gumbel_softmax(logits, tau, hard=hard, seed=2024, backend="reference")
        gpu = fused_gumbel.gumbel_softmax(logits.to(CUDA), tau, hard=hard, seed=2024).cpu()
        assert (cpu.argmax(-1) == gpu.argmax(-1)).double().mean() >= 0.9999
        if not hard:
            assert_close(gpu, cpu, dtype)
    cpu_index = fused_gumbel.categorical(logits, seed=7, backend="reference")
    gpu_index = fused_gumbel.categorical(logits.to(CUDA), seed=7).cpu()
    assert (cpu_index == gpu_index).double().mean() >= 0.9999


def test_seed_is_independent_of_cuda_generator_state():
    logits = torch.randn(64, 9, device=CUDA)
    state = torch.cuda.get_rng_state()
    a = fused_gumbel.gumbel_softmax(logits, seed=5)
    torch.cuda.manual_seed(99)
    b = fused_gumbel.gumbel_softmax(logits, seed=5)
    assert torch.equal(a, b)
    torch.cuda.set_rng_state(state)
    fused_gumbel.gumbel_softmax(logits, seed=5)
    assert torch.equal(torch.cuda.get_rng_state(), state)


# -------------------------------------------------------------------------------- autocast

@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hard", [False, True])
def test_cuda_autocast_keeps_the_input_dtype(amp_dtype, hard):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 10).to(CUDA)
    x = torch.randn(128, 16, device=CUDA)
    tau = torch.tensor(0.6, device=CUDA, requires_grad=True)
    with torch.autocast("cuda", dtype=amp_dtype):
        logits = linear(x)
        assert logits.dtype == amp_dtype
        torch.manual_seed(1)
        y = fused_gumbel.gumbel_softmax(logits, tau, hard=hard)
        torch.manual_seed(1)
        y32 = fused_gumbel.gumbel_softmax(logits.float(), tau, hard=hard)
    assert y.dtype == amp_dtype and y32.dtype == torch.float32
    torch.manual_seed(1)
    assert torch.equal(y, fused_gumbel.gumbel_softmax(logits.detach(), tau.detach(), hard=hard))
    (y.float() * torch.arange(10.0, device=CUDA)).sum().backward()
    assert linear.weight.grad.dtype == torch.float32 and torch.isfinite(linear.weight.grad).all()
    assert tau.grad.dtype == torch.float32 and torch.isfinite(tau.grad)


def test_compiled_under_cuda_autocast():
    linear = torch.nn.Linear(8, 6).to(CUDA)

    def fn(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fused_gumbel.gumbel_softmax(linear(x), 0.8)

    x = torch.randn(32, 8, device=CUDA)
    torch.manual_seed(3)
    eager = fn(x)
    torch.manual_seed(3)
    compiled = torch.compile(fn, fullgraph=True)(x)
    assert eager.dtype == compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled, eager, atol=1e-2, rtol=1e-2)  # inductor may fuse the linear differently


# ------------------------------------------------------------------------- eager launches

def _cuda_kernels(fn):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("hard", [False, True])
def test_eager_forward_and_backward_are_one_launch_each(hard):
    x = torch.randn(512, 10, device=CUDA, requires_grad=True)
    grad = torch.randn(512, 10, device=CUDA)
    fused_gumbel.gumbel_softmax(x, 0.5, hard=hard).backward(grad)  # compile outside the profile
    x.grad = None
    holder = {}
    forward = _cuda_kernels(lambda: holder.update(y=fused_gumbel.gumbel_softmax(x, 0.5, hard=hard)))
    assert len(forward) == 1 and "gumbel_softmax_fwd_kernel" in forward[0], forward
    backward = _cuda_kernels(lambda: holder["y"].backward(grad))
    assert sum("gumbel_softmax_bwd_kernel" in name for name in backward) == 1, backward
    assert len(backward) == 1, backward
    index = _cuda_kernels(lambda: fused_gumbel.categorical(x))
    assert len(index) == 1, index


def _compiled_variants(kernel):
    """How many specialisations Triton holds for ``kernel`` (None where its cache layout differs)."""
    try:
        return sum(len(entry[0]) for entry in kernel.device_caches.values())
    except (AttributeError, TypeError, IndexError, KeyError):
        return None


def test_graph_capture_after_eager_warmup_needs_no_new_kernel_binary():
    """Eager, compiled and captured launches share one Triton specialisation (seed words are
    runtime i32 arguments, the rng pointer always int64), so capture loads no module."""
    x = torch.randn(40, 5, device=CUDA)
    fused_gumbel.gumbel_softmax(x, 0.9, hard=True)
    before = _compiled_variants(kernels.gumbel_softmax_fwd_kernel)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_gumbel.gumbel_softmax(x, 0.9, hard=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.sum(-1), torch.ones(40, device=CUDA))
    assert _compiled_variants(kernels.gumbel_softmax_fwd_kernel) == before


def test_annealed_float_tau_under_reduce_overhead_on_cuda():
    """A float temperature changed every step (a schedule) under CUDA graphs: one symbolic graph
    after the first change, fresh noise on every replay, eager's sample for the same seed."""
    import torch._dynamo.testing

    class Quantizer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.temperature = 1.0

        def forward(self, x):
            return torch.nn.functional.gumbel_softmax(x, tau=self.temperature, hard=False)

    model = Quantizer()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True, mode="reduce-overhead")
    x = torch.randn(64, 10, device=CUDA)
    outputs = []
    with fused_gumbel.patch():
        for step in range(8):
            model.temperature = 1.0 * 0.9 ** step
            torch.manual_seed(step)
            out = compiled(x).clone()
            torch.manual_seed(step)
            assert torch.equal(out, model(x))
            outputs.append(out)
    assert counter.frame_count <= 2
    assert not torch.equal(outputs[-1], outputs[-2])


def test_relaxed_ops_compiled_match_eager_on_cuda():
    logits = torch.randn(64, 12, device=CUDA)
    tau = torch.tensor(0.6, device=CUDA)

    def fn(x, t):
        return (fused_gumbel.relaxed_bernoulli(x, t), fused_gumbel.relaxed_bernoulli(x, t, hard=True),
                fused_gumbel.bernoulli(x), fused_gumbel.gumbel_topk(x, 3, t),
                fused_gumbel.gumbel_topk(x, 3, t, hard=True), fused_gumbel.sample_subset(x, 3))

    results = []
    for f in (fn, torch.compile(fn, fullgraph=True)):
        x, t = logits.clone().requires_grad_(), tau.clone().requires_grad_()
        torch.manual_seed(0)
        outs = f(x, t)
        sum((o * torch.arange(12.0, device=CUDA)).sum() for o in outs if o.is_floating_point()).backward()
        results.append(([o.detach() for o in outs], x.grad, t.grad))
    eager, compiled = results
    for e, c in zip(eager[0], compiled[0]):
        assert torch.equal(e, c)
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[2], eager[2], atol=1e-5, rtol=1e-5)
