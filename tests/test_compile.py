"""torch.compile support: the custom op ``fused_gumbel::sample`` compiles with no graph break and
samples what eager samples for the same ``torch.manual_seed``; the Triton variants added for it
compile for sm_90."""
import os
import textwrap

import pytest
import torch
import torch._dynamo.testing

import fused_gumbel
from fused_gumbel import _custom_op  # noqa: F401  (registers torch.ops.fused_gumbel)
from fused_gumbel.nn import GumbelSoftmax
from fused_gumbel.schedules import ExponentialDecay

from conftest import interpreted
from helpers import compile_for_sm90

BACKENDS = ["reference"] + (["triton"] if interpreted() else [])
COMPILERS = ["aot_eager", "inductor"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _forward_backward(fn, logits, tau, seed=0):
    """Outputs of ``fn(x, tau)`` and the gradients of a fixed weighted sum, from ``manual_seed(seed)``."""
    x = logits.detach().clone().requires_grad_()
    t = tau.detach().clone().requires_grad_() if isinstance(tau, torch.Tensor) else tau
    torch.manual_seed(seed)
    outs = fn(x, t)
    weight = torch.linspace(-1.0, 2.0, logits.shape[-1])
    sum(((o * weight).sum() for o in outs), torch.zeros(())).backward()
    return [o.detach() for o in outs], x.grad, (t.grad if isinstance(t, torch.Tensor) else None)


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "rows"])
def test_compiled_matches_eager(compiler, backend, hard, tau_kind):
    logits = torch.randn(5, 3, 7)
    tau = {"float": 0.6, "scalar": torch.tensor(0.6), "rows": torch.rand(5, 3, 1) + 0.3}[tau_kind]

    def fn(x, t):
        return (fused_gumbel.gumbel_softmax(x, t, hard=hard, dim=-1, backend=backend),
                fused_gumbel.gumbel_softmax(x.transpose(1, 2), t.transpose(1, 2) if tau_kind == "rows" else t,
                                            hard=hard, dim=1, backend=backend).transpose(1, 2))

    eager = _forward_backward(fn, logits, tau)
    compiled = _forward_backward(torch.compile(fn, fullgraph=True, backend=compiler), logits, tau)
    for e, c in zip(eager[0], compiled[0]):
        assert torch.equal(e, c)  # same seed -> the same samples, bit for bit
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-5, rtol=1e-5)
    if tau_kind != "float":
        torch.testing.assert_close(compiled[2], eager[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_calls_in_one_graph_draw_fresh_noise(compiler, backend):
    """Two calls with the same inputs are not merged (CSE) or reordered: each draws its own noise."""
    logits = torch.randn(6, 5, requires_grad=True)

    def fn(x):
        return (fused_gumbel.gumbel_softmax(x, 0.5, backend=backend),
                fused_gumbel.gumbel_softmax(x, 0.5, backend=backend))

    torch.manual_seed(3)
    e1, e2 = fn(logits)
    torch.manual_seed(3)
    c1, c2 = torch.compile(fn, fullgraph=True, backend=compiler)(logits)
    (c1.sum() + c2.sum()).backward()  # a training graph, where AOTAutograd's CSE pass runs
    assert not torch.equal(c1, c2)
    assert torch.equal(c1, e1) and torch.equal(c2, e2)


def test_identical_calls_survive_a_cse_pass_that_ignores_the_random_tag(monkeypatch):
    """Older PyTorch's AOTAutograd CSE did not look at ``nondeterministic_seeded``; the per-call
    empty token still keeps two identical calls apart."""
    impure = torch.fx.Node.is_impure

    def tag_blind(node, impure_random=True):
        if node.op == "call_function" and "fused_gumbel" in str(node.target):
            return False
        return impure(node, impure_random)

    monkeypatch.setattr(torch.fx.Node, "is_impure", tag_blind)
    logits = torch.randn(6, 5, requires_grad=True)

    def fn(x):
        return fused_gumbel.gumbel_softmax(x, 0.5, backend="reference"), fused_gumbel.gumbel_softmax(x, 0.5,
                                                                                                   backend="reference")

    c1, c2 = torch.compile(fn, fullgraph=True, backend="aot_eager")(logits)
    (c1.sum() + c2.sum()).backward()
    assert not torch.equal(c1, c2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_calls_advance_the_generator_like_eager(backend):
    logits = torch.randn(4, 6)
    fn = torch.compile(lambda x: fused_gumbel.gumbel_softmax(x, 1.0, hard=True, backend=backend), fullgraph=True,
                       backend="aot_eager")
    torch.manual_seed(11)
    compiled = [fn(logits) for _ in range(3)] + [torch.rand(3)]
    torch.manual_seed(11)
    eager = [fused_gumbel.gumbel_softmax(logits, 1.0, hard=True, backend=backend) for _ in range(3)] + [torch.rand(3)]
    for c, e in zip(compiled, eager):
        assert torch.equal(c, e)
    assert not torch.equal(compiled[0], compiled[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_graph_break_and_one_op_per_call(backend):
    counter = torch._dynamo.testing.CompileCounter()

    def fn(x):
        y = torch.relu(x) * 2
        z = fused_gumbel.gumbel_softmax(y, 0.7, hard=True, backend=backend)
        return z + fused_gumbel.categorical(y, one_hot=True, backend=backend)

    torch.compile(fn, backend=counter, fullgraph=True)(torch.randn(3, 4))
    assert counter.frame_count == 1
    explanation = torch._dynamo.explain(fn)(torch.randn(3, 4))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_categorical_compiled_matches_eager(compiler, backend):
    logits = torch.randn(3, 9, 2)

    def fn(x):
        return (fused_gumbel.categorical(x, dim=1, backend=backend),
                fused_gumbel.categorical(x, dim=1, one_hot=True, backend=backend))

    torch.manual_seed(5)
    eager = fn(logits)
    torch.manual_seed(5)
    compiled = torch.compile(fn, fullgraph=True, backend=compiler)(logits)
    assert compiled[0].dtype == torch.int64 and compiled[0].shape == (3, 2)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_seed_compiled(backend):
    logits = torch.randn(4, 5)
    fn = torch.compile(lambda x, s: fused_gumbel.gumbel_softmax(x, 0.9, seed=s, backend=backend), fullgraph=True,
                       backend="aot_eager")
    state = torch.get_rng_state()
    for seed in (7, 8, 2**62 + 5):  # a changing int becomes a dynamic (SymInt) input: no graph break
        assert torch.equal(fn(logits, seed), fused_gumbel.gumbel_softmax(logits, 0.9, seed=seed, backend=backend))
    assert torch.equal(torch.get_rng_state(), state)  # seed= never touches the generator


def test_generator_is_rejected_inside_compile():
    gen = torch.Generator().manual_seed(0)
    fn = torch.compile(lambda x: fused_gumbel.gumbel_softmax(x, generator=gen), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="generator= is not supported inside torch.compile"):
        fn(torch.randn(2, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_with_schedule_compiles_once(backend):
    """A scheduled (fixed) temperature is a buffer inside the graph: changing it does not recompile."""
    os.environ["FUSED_GUMBEL_BACKEND"] = backend
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), GumbelSoftmax(tau=1.0, hard=True))
        counter = torch._dynamo.testing.CompileCounter()
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        schedule = ExponentialDecay(tau0=1.0, rate=0.3, min_tau=0.2, every=1)
        x = torch.randn(8, 4)
        for _ in range(4):
            model[1].tau = schedule.step()
            torch.manual_seed(1)
            out = compiled(x)
            torch.manual_seed(1)
            assert torch.equal(out, model(x))
            out.sum().backward()
        assert counter.frame_count == 1
    finally:
        del os.environ["FUSED_GUMBEL_BACKEND"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_learnable_tau_trains_under_compile(backend):
    layer = GumbelSoftmax(tau=2.0, learnable_tau=True, min_tau=0.1)
    x = torch.randn(16, 5)

    def loss_fn(x):
        return (fused_gumbel.gumbel_softmax(x, layer.tau, backend=backend) * torch.arange(5.0)).sum()

    torch.manual_seed(2)
    loss_fn(x).backward()
    eager_grad = layer.log_tau.grad.clone()
    layer.log_tau.grad = None
    torch.manual_seed(2)
    torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(x).backward()
    assert eager_grad != 0
    torch.testing.assert_close(layer.log_tau.grad, eager_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    """PyTorch's own checks of the registration: schema, fake tensors, autograd, AOT dispatch.
    An explicit seed makes the op deterministic, as opcheck's repeated runs require."""
    logits = torch.randn(3, 5, requires_grad=True)
    tau = torch.full((3,), 0.8, requires_grad=True)
    token = torch.empty(0)
    for args in [(logits, tau, 1.0, _custom_op.MODE_SOFT, 1, 123, backend, token),
                 (logits, None, 0.5, _custom_op.MODE_HARD, 1, 123, backend, token),
                 (logits.detach(), None, 1.0, _custom_op.MODE_INDEX, 0, 9, backend, token)]:
        torch.library.opcheck(torch.ops.fused_gumbel.sample.default, args)


SM90_CHECK = textwrap.dedent("""
    import sys, torch
    import triton.language as tl
    sys.path.insert(0, {tests!r})
    from sm90_compile import compile_variants
    from fused_gumbel.kernels import gumbel_softmax as k

    args = dict(x_ptr=torch.float16, y_ptr=torch.float16, index_ptr=torch.int64, stats_ptr=torch.float32,
                tau_ptr=torch.float32, tau_value=1.0,
                n_rows=300, K=10, Q=3, inner=1, num_chunks=1, x_s_outer=10, x_s_k=1, x_s_inner=1, y_s_outer=10,
                y_s_k=1, y_s_inner=1, tau_s_row=0, seed_lo=-3, seed_hi=2**30, offset_lo=7, offset_hi=0,
                rng_ptr=torch.int64, rng_mode=1)
    variants = []
    for mode in (k.MODE_SOFT, k.MODE_HARD, k.MODE_INDEX):
        for single in (True, False):
            variants.append(dict(MODE=mode, TAU_FROM_PTR=single, SINGLE_CHUNK=single, SAVE_STATS=not single,
                                 ROWS=16 if single else 1, BLOCK_Q=4 if single else 256, COMPUTE=tl.float32, FAST=2))
    print("\\n".join(compile_variants(k.gumbel_softmax_fwd_kernel, args, variants)))
    args = dict(grad_y_ptr=torch.float32, src_ptr=torch.float16, grad_x_ptr=torch.float16, grad_tau_ptr=torch.float32,
                stats_ptr=torch.float32, tau_ptr=torch.float32, tau_value=1.0, n_rows=300, K=10, Q=3, inner=1, num_chunks=1, g_s_outer=10,
                g_s_k=1, g_s_inner=1, src_s_outer=10, src_s_k=1, src_s_inner=1, gx_s_outer=10, gx_s_k=1,
                gx_s_inner=1, tau_s_row=1, seed_lo=0, seed_hi=0, offset_lo=0, offset_hi=0, rng_ptr=torch.int64,
                rng_mode=1)
    variants = [dict(REGENERATE=regenerate, TAU_GRAD=True, TAU_FROM_PTR=True, SINGLE_CHUNK=single,
                     ROWS=16 if single else 1, BLOCK_Q=4 if single else 256, COMPUTE=tl.float32, FAST=2)
                for single in (True, False) for regenerate in (True, False)]
    print("\\n".join(compile_variants(k.gumbel_softmax_bwd_kernel, args, variants)))
""")


def test_seed_pointer_kernel_variants_compile_for_sm90():
    """The kernels with their runtime seed words and rng pointer (the one binary that eager,
    compiled and captured launches share) build for an H100 in every mode, packed and looped;
    no GPU needed."""
    stdout = compile_for_sm90(SM90_CHECK)
    assert stdout.count(": ok") == 10, stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_shapes(backend):
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x: fused_gumbel.gumbel_softmax(x, 0.5, hard=True, dim=1, backend=backend),
                       backend=counter, dynamic=True, fullgraph=True)
    compiles = []
    for shape in ((3, 5, 2), (7, 4, 3), (2, 9, 4)):  # sizes 0 and 1 are always specialised
        x = torch.randn(shape)
        torch.manual_seed(0)
        out = fn(x)
        compiles.append(counter.frame_count)
        torch.manual_seed(0)
        assert torch.equal(out, fused_gumbel.gumbel_softmax(x, 0.5, hard=True, dim=1, backend=backend))
    assert compiles[0] == compiles[-1]  # new shapes reuse the symbolic graph


def test_op_modes_are_the_kernel_modes():
    from fused_gumbel.kernels import gumbel_softmax as kernels

    assert (_custom_op.MODE_SOFT, _custom_op.MODE_HARD, _custom_op.MODE_INDEX) == (
        kernels.MODE_SOFT, kernels.MODE_HARD, kernels.MODE_INDEX)
