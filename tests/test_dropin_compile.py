"""Drop-in under graph capture (issue 10): what works with ``F.gumbel_softmax`` must work here.

* A Python-float temperature annealed on every step (karpathy/deep-vector-quantization's
  ``DecayTemperature``, HF wav2vec2's ``set_gumbel_temperature``) compiles like plain F: one
  recompile when it first changes, then never, with ``fullgraph=True``, and whether
  ``fused_gumbel.patch()`` is entered before or after the first compile. Each case runs in a
  fresh process (Dynamo's caches and automatic-dynamic state are global).
* Every op (``relaxed_bernoulli``, ``bernoulli``, ``gumbel_topk``, ``sample_subset``,
  ``nn.GumbelSigmoid``) compiles with ``fullgraph=True``, samples what eager samples for the
  same ``torch.manual_seed`` and gets eager's gradients.
* ``torch.export`` round-trips every op: the exported program draws fresh noise on every run,
  and eager's sample for the same RNG state.
* ``torch.jit.trace`` records the custom ops, so a trace draws fresh noise on every call (it
  never replays the traced sample) and gets eager's samples and gradients.

Both backends: the CPU reference, and the Triton kernels under the interpreter.
"""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch._dynamo.testing

import fused_gumbel
from fused_gumbel import _relaxed_op
from fused_gumbel.nn import GumbelSigmoid

from conftest import REPO_ROOT, interpreted

BACKENDS = ["reference"] + (["triton"] if interpreted() else [])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def backend_env(request):
    """Run with ``FUSED_GUMBEL_BACKEND`` set (for code that calls ``F.gumbel_softmax`` with no
    ``backend=``)."""
    def set_backend(backend):
        os.environ["FUSED_GUMBEL_BACKEND"] = backend

    yield set_backend
    os.environ.pop("FUSED_GUMBEL_BACKEND", None)


# --------------------------------------------------------------- annealed float temperature

ANNEAL_SCRIPT = textwrap.dedent("""
    import json, math, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["FUSED_GUMBEL_BACKEND"] = {backend!r}
    import torch, torch._dynamo.testing
    import torch.nn.functional as F
    import fused_gumbel

    class GumbelQuantize(torch.nn.Module):
        # karpathy/deep-vector-quantization: a float attribute that DecayTemperature sets each step.
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 6)
            self.temperature = 1.0
            self.straight_through = {hard!r}

        def forward(self, z):
            logits = self.proj(z)
            return F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=self.straight_through)

    class Wav2Vec2Quantizer(torch.nn.Module):
        # HF Wav2Vec2GumbelVectorQuantizer: set_temperature(), float() in, type_as out, hard=True.
        def __init__(self):
            super().__init__()
            self.weight_proj = torch.nn.Linear(4, 2 * 5)
            self.temperature = 2.0

        def set_temperature(self, temperature):
            self.temperature = temperature

        def forward(self, hidden):
            hidden = self.weight_proj(hidden).view(-1, 5)
            probs = F.gumbel_softmax(hidden.float(), tau=self.temperature, hard=True).type_as(hidden)
            return probs.view(-1, 2, 5).sum(1)

    class Direct(torch.nn.Module):
        # The package's own functions with a float attribute temperature.
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 6)
            self.tau = 1.0

        def forward(self, z):
            z = self.proj(z)
            return (fused_gumbel.gumbel_softmax(z, self.tau, hard=True)
                    + fused_gumbel.relaxed_bernoulli(z, self.tau)
                    + fused_gumbel.gumbel_topk(z, 2, self.tau))

    model = {{"dvq": GumbelQuantize, "wav2vec2": Wav2Vec2Quantizer, "direct": Direct}}[{model!r}]()
    def set_tau(t):
        if {model!r} == "wav2vec2":
            model.set_temperature(t)
        elif {model!r} == "dvq":
            model.temperature = t
        else:
            model.tau = t

    counter = torch._dynamo.testing.CompileCounterWithBackend({compiler!r})
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(3, 4)
    report = {{}}
    if {patch_after_first_compile!r}:
        compiled(x)  # first compile traces PyTorch's own F.gumbel_softmax
    frames, matches = [], []
    with fused_gumbel.patch():
        for step in range(8):
            set_tau(max(0.3, 1.0 * math.exp(-0.4 * step)))  # an annealed temperature
            torch.manual_seed(step)
            out = compiled(x)
            out.sum().backward()
            torch.manual_seed(step)
            matches.append(bool(torch.equal(out, model(x))))
            frames.append(counter.frame_count)
        try:
            set_tau(-0.5)
            compiled(x)
            report["invalid_tau"] = "accepted"
        except Exception as error:
            report["invalid_tau"] = str(error)
        set_tau(0.35)
        compiled(x)
        frames.append(counter.frame_count)
    # Plain F on the same schedule, for comparison.
    torch._dynamo.reset()
    plain = torch._dynamo.testing.CompileCounterWithBackend({compiler!r})
    compiled = torch.compile(model, backend=plain, fullgraph=True)
    for step in range(8):
        set_tau(max(0.3, 1.0 * math.exp(-0.4 * step)))
        compiled(x)
    report.update(frames=frames, matches=matches, plain_frames=plain.frame_count)
    print(json.dumps(report))
""")


def _anneal(backend, model, compiler="aot_eager", hard=False, patch_after_first_compile=False):
    script = ANNEAL_SCRIPT.format(backend=backend, model=model, compiler=compiler, hard=hard,
                                  patch_after_first_compile=patch_after_first_compile)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model, hard, patch_after_first_compile", [
    ("dvq", False, False),  # Dynamo first used inside patch(): the README's pattern
    ("wav2vec2", True, True),  # compiled (PyTorch's F) before patch() is entered
])
def test_annealed_float_tau_compiles_like_plain_f(backend, model, hard, patch_after_first_compile):
    report = _anneal(backend, model, hard=hard, patch_after_first_compile=patch_after_first_compile)
    frames = report["frames"]
    assert all(report["matches"])  # every step samples what eager samples
    # One graph for every temperature: after the first change, no step compiles again
    # (F itself compiles twice: the first value, then a symbolic temperature).
    assert frames[1] == frames[-1], frames
    assert frames[-1] <= report["plain_frames"] + (1 if patch_after_first_compile else 0), report
    # A later invalid value still raises the eager error (the check guards the graph).
    assert "tau must be positive and finite, got -0.5" in report["invalid_tau"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_annealed_float_tau_every_op_inductor(backend):
    """gumbel_softmax, relaxed_bernoulli and gumbel_topk with one annealed float, under inductor."""
    report = _anneal(backend, "direct", compiler="inductor")
    assert all(report["matches"])
    assert report["frames"][1] == report["frames"][-1] == 2, report


# ---------------------------------------------------------------- every op under compile

def _ops(backend, tau):
    """A function calling every relaxed op once (soft, hard, exact draw; dims 1 and 0)."""
    def fn(x, t):
        return (fused_gumbel.relaxed_bernoulli(x, t, backend=backend),
                fused_gumbel.relaxed_bernoulli(x, t, hard=True, backend=backend),
                fused_gumbel.bernoulli(x, backend=backend),
                fused_gumbel.gumbel_topk(x, 2, t if tau != "elementwise" else 0.6, backend=backend),
                fused_gumbel.gumbel_topk(x.transpose(0, 1), 3, 0.4, hard=True, dim=0, backend=backend),
                fused_gumbel.sample_subset(x, 2, dim=0, backend=backend))
    return fn


def _run(fn, logits, tau, seed=0):
    """Outputs and the gradients (logits, tau) of a weighted sum, from ``manual_seed(seed)``."""
    x = logits.detach().clone().requires_grad_()
    t = tau.detach().clone().requires_grad_() if isinstance(tau, torch.Tensor) else tau
    torch.manual_seed(seed)
    outs = fn(x, t)
    loss = sum((o * torch.linspace(-1.0, 2.0, o.shape[-1])).sum() for o in outs if o.is_floating_point())
    loss.backward()
    return [o.detach() for o in outs], x.grad, (t.grad if isinstance(t, torch.Tensor) else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "elementwise"])
def test_every_op_compiles_fullgraph_and_matches_eager(backend, tau_kind):
    logits = torch.randn(4, 6)
    tau = {"float": 0.7, "scalar": torch.tensor(0.7), "elementwise": torch.rand(4, 6) + 0.3}[tau_kind]
    fn = _ops(backend, tau_kind)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    eager = _run(fn, logits, tau)
    compiled = _run(torch.compile(fn, backend=counter, fullgraph=True), logits, tau)
    assert counter.frame_count == 1
    for e, c in zip(eager[0], compiled[0]):
        assert torch.equal(e, c)  # the same samples, bit for bit
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-5, rtol=1e-5)
    if tau_kind != "float":
        torch.testing.assert_close(compiled[2], eager[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_op_under_inductor(backend):
    logits = torch.randn(3, 5)
    tau = torch.tensor(0.8)
    fn = _ops(backend, "scalar")
    eager = _run(fn, logits, tau, seed=4)
    compiled = _run(torch.compile(fn, fullgraph=True), logits, tau, seed=4)
    for e, c in zip(eager[0], compiled[0]):
        assert torch.equal(e, c)
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[2], eager[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_ops_draw_fresh_noise(backend):
    """Calls in one graph are never merged, and each run of the graph draws new noise."""
    def fn(x):
        return (fused_gumbel.relaxed_bernoulli(x, 0.5, backend=backend), fused_gumbel.relaxed_bernoulli(x, 0.5,
                                                                                                     backend=backend),
                fused_gumbel.gumbel_topk(x, 2, backend=backend), fused_gumbel.gumbel_topk(x, 2, backend=backend))

    x = torch.randn(6, 8, requires_grad=True)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    first = compiled(x)
    sum(o.sum() for o in first).backward()  # a training graph: AOTAutograd's CSE runs
    second = compiled(x)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[2], second[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gumbel_sigmoid_module_compiles_with_schedule(backend, backend_env):
    backend_env(backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), GumbelSigmoid(tau=1.0, hard=True))
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(3, 4)
    for step, tau in enumerate((1.0, 0.8, 0.6)):
        model[1].tau = tau
        torch.manual_seed(step)
        out = compiled(x)
        out.sum().backward()
        torch.manual_seed(step)
        assert torch.equal(out, model(x))
    assert counter.frame_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_relaxed_ops_opcheck(backend):
    """PyTorch's checks of the registrations (schema, fake tensors, autograd, AOT dispatch); an
    explicit seed makes the ops deterministic, as opcheck's repeated runs require."""
    logits = torch.randn(3, 5, requires_grad=True)
    token = torch.empty(0)
    op = torch.ops.fused_gumbel
    for args in [(logits, torch.full((15,), 0.8, requires_grad=True), 1.0, _relaxed_op.MODE_SOFT, 5, backend, token),
                 (logits, None, 0.6, _relaxed_op.MODE_HARD, 5, backend, token)]:
        torch.library.opcheck(op.relaxed_bernoulli.default, args)
    for args in [(logits, torch.full((3,), 0.8, requires_grad=True), 1.0, 2, _relaxed_op.MODE_SOFT, 1, True, 7, backend,
                  token),
                 (logits, None, 0.5, 3, _relaxed_op.MODE_HARD, 1, True, 7, backend, token),
                 (logits.detach(), None, 1.0, 2, _relaxed_op.MODE_INDEX, 0, False, 7, backend, token)]:
        torch.library.opcheck(op.gumbel_topk.default, args)


def test_op_modes_are_the_kernel_modes():
    from fused_gumbel.kernels import gumbel_topk, relaxed_bernoulli

    assert (_relaxed_op.MODE_SOFT, _relaxed_op.MODE_HARD) == (relaxed_bernoulli.MODE_SOFT, relaxed_bernoulli.MODE_HARD)
    assert (_relaxed_op.MODE_SOFT, _relaxed_op.MODE_HARD, _relaxed_op.MODE_INDEX) == (
        gumbel_topk.MODE_SOFT, gumbel_topk.MODE_HARD, gumbel_topk.MODE_INDEX)


# ------------------------------------------------------------------------ torch.export

EXPORTED_OPS = {
    "gumbel_softmax": lambda x, t, b: fused_gumbel.gumbel_softmax(x, t, backend=b),
    "gumbel_softmax_hard": lambda x, t, b: fused_gumbel.gumbel_softmax(x, t, hard=True, dim=0, backend=b),
    "categorical": lambda x, t, b: fused_gumbel.categorical(x, backend=b),
    "relaxed_bernoulli": lambda x, t, b: fused_gumbel.relaxed_bernoulli(x, t, backend=b),
    "relaxed_bernoulli_hard": lambda x, t, b: fused_gumbel.relaxed_bernoulli(x, t, hard=True, backend=b),
    "bernoulli": lambda x, t, b: fused_gumbel.bernoulli(x, backend=b),
    "gumbel_topk": lambda x, t, b: fused_gumbel.gumbel_topk(x, 2, t, backend=b),
    "gumbel_topk_hard": lambda x, t, b: fused_gumbel.gumbel_topk(x, 3, t, hard=True, backend=b),
    "sample_subset": lambda x, t, b: fused_gumbel.sample_subset(x, 2, dim=0, backend=b),
}


class _Sampler(torch.nn.Module):
    def __init__(self, op, backend):
        super().__init__()
        self.op, self.backend = op, backend
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, x, tau):
        return self.op(self.proj(x), tau, self.backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(EXPORTED_OPS))
def test_export_round_trips_every_op(backend, name):
    torch.manual_seed(0)
    module = _Sampler(EXPORTED_OPS[name], backend)
    x, tau = torch.randn(5, 6), torch.tensor(0.7)
    program = torch.export.export(module, (x, tau))
    targets = {str(node.target) for node in program.graph.nodes}
    assert any("fused_gumbel." in target for target in targets), targets  # the custom op, not a traced sample
    exported = program.module()
    torch.manual_seed(1)
    first, second = exported(x, tau), exported(x, tau)
    assert not torch.equal(first, second)  # fresh noise on every run
    torch.manual_seed(1)
    assert torch.equal(first, module(x, tau))  # eager's sample for the same RNG state


@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_program_trains(backend):
    """The exported training graph (``run_decompositions`` keeps the op) has eager's gradients."""
    module = _Sampler(lambda x, t, b: fused_gumbel.gumbel_topk(x, 2, t, backend=b), backend)
    x, tau = torch.randn(4, 6), torch.tensor(0.6, requires_grad=True)
    exported = torch.export.export(module, (x, tau)).module()
    grads = []
    for run in (exported, module):
        module.zero_grad()
        tau.grad = None
        torch.manual_seed(3)
        (run(x, tau) * torch.arange(6.0)).sum().backward()
        grads.append((module.proj.weight.grad.clone(), tau.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ torch.jit.trace

def _every_sampler(backend):
    def fn(x, t):
        return (fused_gumbel.gumbel_softmax(x, 0.5, hard=True, backend=backend),
                fused_gumbel.gumbel_softmax(x, 0.5, hard=True, backend=backend),  # identical: must differ
                fused_gumbel.gumbel_softmax(x, t, backend=backend),
                fused_gumbel.categorical(x, backend=backend),
                fused_gumbel.relaxed_bernoulli(x, t, backend=backend),
                fused_gumbel.bernoulli(x, backend=backend),
                fused_gumbel.gumbel_topk(x, 2, t, backend=backend),
                fused_gumbel.sample_subset(x, 2, backend=backend))
    return fn


def _trace(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation, and shape checks specialised to the traced shapes
        return torch.jit.trace(fn, args, check_trace=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_trace_draws_fresh_noise_on_every_call(backend):
    """A trace records the custom ops, not the traced sample: every call draws new noise (also
    after the JIT's profiling runs optimise the graph), eager's sample for the same seed."""
    fn = _every_sampler(backend)
    x, tau = torch.randn(4, 6), torch.tensor(0.8)
    traced = _trace(fn, x, tau)
    runs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outs = traced(x, tau)
        torch.manual_seed(seed)
        for t, e in zip(outs, fn(x, tau)):
            assert torch.equal(t, e)
        assert not torch.equal(outs[0], outs[1])
        runs.append(outs)
    for t0, t1 in zip(runs[0], runs[1]):
        assert not torch.equal(t0, t1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_trace_gradients_match_eager(backend):
    fn = _every_sampler(backend)
    x, tau = torch.randn(4, 6, requires_grad=True), torch.tensor(0.8, requires_grad=True)
    traced = _trace(fn, x, tau)
    grads = []
    for run in (traced, fn):
        x.grad = tau.grad = None
        torch.manual_seed(5)
        outs = run(x, tau)
        sum((o * torch.linspace(-1.0, 1.0, 6)).sum() for i, o in enumerate(outs) if i in (0, 2, 4, 6)).backward()
        grads.append((x.grad.clone(), tau.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-5)


def test_jit_trace_refuses_a_generator():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="generator= is not supported inside .*torch.jit.trace"):
        _trace(lambda x: fused_gumbel.relaxed_bernoulli(x, generator=gen), torch.randn(2, 3))


def test_jit_trace_of_patched_f_gumbel_softmax():
    """Third-party code calling F.gumbel_softmax, traced under patch(): fresh noise per call."""
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 5)

        def forward(self, x):
            return torch.nn.functional.gumbel_softmax(self.layer(x), tau=0.5, hard=True)

    model, x = Model(), torch.randn(8, 4)
    with fused_gumbel.patch():
        traced = _trace(model, x)
    samples = [traced(x) for _ in range(3)]
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])
    assert torch.equal(samples[0].sum(-1), torch.ones(8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_trace_of_modules_follows_the_schedule(backend, backend_env):
    """A traced GumbelSoftmax/GumbelSigmoid reads its temperature buffer, so a schedule that sets
    ``module.tau`` after tracing still takes effect (a float would be frozen into the trace)."""
    backend_env(backend)
    from fused_gumbel.nn import GumbelSoftmax

    for layer in (GumbelSoftmax(tau=1.0), GumbelSigmoid(tau=1.0)):
        x = torch.randn(3, 5)
        traced = _trace(layer, x)
        layer.tau = 0.25
        torch.manual_seed(2)
        out = traced(x)
        torch.manual_seed(2)
        assert torch.equal(out, layer(x))
