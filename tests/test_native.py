"""The C++ extension ``fused_gumbel._C`` (backend "native"): its CPU kernel against the RNG spec,
the PyTorch reference and the Triton kernels (interpreter) on identical (key, offset), its
gradients, and how it is wired in (select_backend, the autograd Function, the compiled op).
Skipped, with the reason, where the extension is not built."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fused_gumbel
from fused_gumbel import _native, function, functional, reference, rng
from fused_gumbel import noise_fidelity as nf
from helpers import TOLERANCES, assert_close

pytestmark = pytest.mark.skipif(not _native.available("cpu"),
                                reason=f"fused_gumbel._C is not available: {_native.unavailable_reason('cpu')}")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def sample(backend, logits, tau=1.0, hard=False, dim=-1, seed=0, grad_weight=None, **kwargs):
    """``gumbel_softmax`` on ``backend`` after ``torch.manual_seed(seed)``; with ``grad_weight``,
    also the gradients of ``(y * grad_weight).sum()`` (logits, tau)."""
    torch.manual_seed(seed)
    x = logits.detach().clone().requires_grad_(grad_weight is not None)
    t = tau.detach().clone().requires_grad_(grad_weight is not None) if isinstance(tau, torch.Tensor) else tau
    y = fused_gumbel.gumbel_softmax(x, t, hard, dim=dim, backend=backend, **kwargs)
    if grad_weight is None:
        return y, None, None
    (y.to(grad_weight.dtype) * grad_weight).sum().backward()
    return y, x.grad, t.grad if isinstance(t, torch.Tensor) else None


# ---- the RNG spec -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, offset, first_call", [
    (0, 0, 0), (123456789, 5, 3), (2**63 - 1, 2**40 + 7, 2**32 - 5),  # counters crossing 2**32
    (-(2**63) + 12345, 2**62, 17),  # a uint64 key >= 2**63, passed as the int64 with its bits
])
def test_philox_words_bit_exact(seed, offset, first_call):
    calls = 37  # vector blocks of 8 (and 16) calls plus a scalar tail
    words = torch.ops.fused_gumbel._cpu_philox_words(seed, offset, first_call, calls)
    key = rng.philox_key(seed % 2**64)
    expected = rng.philox4x32_torch(key, offset, torch.arange(first_call, first_call + calls))
    assert torch.equal(words, expected)


_native_noise = nf.native_twin


def test_noise_fidelity_cli_checks_the_native_kernel(capsys):
    nf.main(["--native", "--stride", "99991"])
    out = capsys.readouterr().out
    assert "C++ CPU kernel" in out and "within" in out and _native.cpu_isa() in out


def test_noise_is_within_the_exact_bound():
    """The kernel's float32 noise (its vector path, and the scalar tail of each call) is within
    ``EXACT_NOISE_BOUND`` of the definition at the float32-rounded input, over every draw below
    2**20 (the winning tail, largest g), every 997th above, and the region boundaries."""
    result = nf.max_noise_error(_native_noise, exhaustive_below=2**20, stride=997, bound=rng.EXACT_NOISE_BOUND)
    assert result.max_arithmetic_error <= rng.EXACT_NOISE_BOUND, result
    # the same words through the forward's flat pass and its scalar tail agree with the twin's formula
    b = np.arange(0, 1000, dtype=np.int64) * 2**21 + 12345
    np.testing.assert_allclose(_native_noise(b), nf.exact_twin(b), rtol=0,
                               atol=2 * np.spacing(np.float32(22.2)))


def test_index_matches_reference_on_the_spec_stream():
    logits = torch.randn(513, 37, dtype=torch.float64)  # float64 math: exact-twin noise to the last ulp or two
    for seed, offset in [(1, 0), (2**62 + 3, 2**35)]:
        drawn = _native.forward(logits, 1.0, 2, 1, seed, offset)[0]
        assert torch.equal(drawn, reference.categorical(logits, seed=seed, offset=offset))


# ---- forward against the reference and Triton ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", [((300, 10), -1), ((7, 1), -1), ((5, 4, 8), 1), ((3, 2000), -1), ((64, 33), 0)])
def test_forward_matches_reference(dtype, shape, dim):
    logits = (torch.randn(shape) * 3).to(dtype)
    for hard in (False, True):
        native, _, _ = sample("native", logits, 0.7, hard, dim, seed=3)
        expected, _, _ = sample("reference", logits, 0.7, hard, dim, seed=3)
        assert native.dtype == dtype and native.shape == logits.shape and native.is_contiguous()
        if hard:
            assert torch.equal(native, expected)
        else:
            assert_close(native, expected, dtype)
    torch.manual_seed(4)
    index = fused_gumbel.categorical(logits, dim, backend="native")
    torch.manual_seed(4)
    assert torch.equal(index, fused_gumbel.categorical(logits, dim, backend="reference"))


@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded", "channels"])
@pytest.mark.parametrize("hard", [False, True])
def test_strided_inputs_match_triton_and_reference(layout, hard):
    base = torch.randn(12, 9, 6)
    logits, dim = {
        "transposed": (base[:, :, 0].t(), -1),  # class stride 6 * 9
        "strided": (base[::2, :, ::3], 1),
        "expanded": (torch.randn(1, 9, 1).expand(4, 9, 3), 1),
        "channels": (base.permute(0, 2, 1), 1),  # no [outer, K, inner] view: copied
    }[layout]
    results = [sample(b, logits, 0.5, hard, dim, seed=7)[0] for b in ("native", "triton", "reference")]
    for other in results[1:]:
        if hard:
            assert torch.equal(results[0], other)
        else:
            assert_close(results[0], other, torch.float32)


def test_per_row_tau_and_special_rows_match_triton_and_reference():
    logits = torch.randn(6, 4, 11)
    logits[0, 1, 3] = float("nan")
    logits[1, 2] = float("-inf")
    logits[2, 0, 5] = float("inf")
    logits[3, :, :4] = float("-inf")  # -inf classes: never chosen, probability 0
    tau = torch.rand(6, 4, 1) + 0.2
    for hard in (False, True):
        results = [sample(b, logits, tau, hard, -1, seed=11)[0] for b in ("native", "triton", "reference")]
        for other in results[1:]:
            assert_close(results[0], other, torch.float32)
        y = results[0]
        assert y[0, 1].isnan().all() and y[1, 2].isnan().all() and y[2, 0].isnan().all()
        assert not y[3].isnan().any() and (y[3, :, :4] == 0).all()
    torch.manual_seed(2)
    index = fused_gumbel.categorical(logits, backend="native")
    assert index[0, 1] == -1 and index[1, 2] == -1 and index[2, 0] == -1 and (index[3] >= 4).all()


# ---- backward ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "rows"])
def test_backward_matches_reference(dtype, hard, tau_kind):
    logits = torch.randn(40, 4, 13).to(dtype)
    tau = {"float": 0.8, "scalar": torch.tensor(0.8), "rows": torch.rand(40, 4, 1) + 0.3}[tau_kind]
    weight = torch.randn(40, 4, 13, dtype=torch.float64)
    y, dx, dtau = sample("native", logits, tau, hard, -1, seed=5, grad_weight=weight)
    y_ref, dx_ref, dtau_ref = sample("reference", logits, tau, hard, -1, seed=5, grad_weight=weight)
    assert dx.dtype == dtype
    assert_close(dx, dx_ref, dtype)
    if dtau is not None:  # a sum over rows: its rounding grows with their number
        assert_close(dtau, dtau_ref, dtype, scale=max(1.0, dtau_ref.abs().max().item()) * 10)


def test_backward_matches_triton_with_dim_and_strided_grad():
    logits = torch.randn(5, 7, 3)
    tau = torch.tensor(0.6)
    weight = torch.randn(3, 7, 5, dtype=torch.float64).permute(2, 1, 0)  # a non-contiguous grad_output
    for hard in (False, True):
        native = sample("native", logits, tau, hard, 1, seed=9, grad_weight=weight)
        triton = sample("triton", logits, tau, hard, 1, seed=9, grad_weight=weight)
        for a, b in zip(native, triton):
            assert_close(a, b, torch.float32)


def test_gradcheck_and_gradgradcheck():
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    rows_tau = (torch.rand(6, 1, dtype=torch.float64) + 0.3).requires_grad_()

    def f(x, t):
        return fused_gumbel.gumbel_softmax(x, t, seed=3, backend="native")

    assert torch.autograd.gradcheck(f, (logits, tau))
    assert torch.autograd.gradcheck(f, (logits, rows_tau))
    assert torch.autograd.gradgradcheck(f, (logits, tau))


def test_hard_gradient_is_the_soft_gradient_of_the_same_noise():
    logits = torch.randn(30, 12, dtype=torch.float64)
    tau = torch.tensor(0.4, dtype=torch.float64)
    weight = torch.randn(30, 12, dtype=torch.float64)
    _, dx_soft, dtau_soft = sample("native", logits, tau, False, seed=8, grad_weight=weight)
    _, dx_hard, dtau_hard = sample("native", logits, tau, True, seed=8, grad_weight=weight)
    assert_close(dx_hard, dx_soft, torch.float64)
    assert_close(dtau_hard, dtau_soft, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hard_forward_keeps_the_soft_sample_its_backward_would_regenerate(dtype):
    """Mode 3 (CPU): the one-hot plus the soft sample of the same noise; the backward reading it
    equals the backward that regenerates the noise from the logits."""
    logits = torch.randn(50, 3, 17).to(dtype)
    tau = torch.rand(150, dtype=torch.float32) + 0.2
    hard, soft = _native.forward(logits, tau, 1, 2, 21, 4, keep_soft=True)
    assert torch.equal(hard, _native.forward(logits, tau, 1, 2, 21, 4)[0])
    assert torch.equal(soft, _native.forward(logits, tau, 0, 2, 21, 4)[0])
    grad = torch.randn_like(logits)
    kept = _native.backward(grad, logits, tau, 2, 21, 4, True, True, soft)
    regenerated = _native.backward(grad, logits, tau, 2, 21, 4, True, True)
    for a, b in zip(kept, regenerated):
        assert_close(a, b, dtype)


def test_jvp_and_vmap_run_the_native_kernel():
    logits = torch.randn(4, 6, dtype=torch.float64)
    tangent = torch.randn_like(logits)

    def f(x):
        return fused_gumbel.gumbel_softmax(x, 0.5, seed=1, backend="native")

    def f_ref(x):
        return fused_gumbel.gumbel_softmax(x, 0.5, seed=1, backend="reference")

    _, jvp = torch.func.jvp(f, (logits,), (tangent,))
    _, jvp_ref = torch.func.jvp(f_ref, (logits,), (tangent,))
    assert_close(jvp, jvp_ref, torch.float64)
    batched = torch.func.vmap(f, randomness="same")(torch.randn(3, 4, 6, dtype=torch.float64))
    assert batched.shape == (3, 4, 6) and torch.allclose(batched.sum(-1), torch.ones(3, 4, dtype=torch.float64))


# ---- wiring --------------------------------------------------------------------------------------

def test_select_backend(monkeypatch):
    cpu = torch.device("cpu")
    assert fused_gumbel.select_backend(cpu, "native") == "native"
    monkeypatch.setenv("FUSED_GUMBEL_BACKEND", "native")
    assert fused_gumbel.select_backend(cpu) == "native"
    monkeypatch.delenv("FUSED_GUMBEL_BACKEND")
    assert fused_gumbel.select_backend(cpu) == "triton"  # TRITON_INTERPRET=1 here keeps the interpreter
    monkeypatch.setattr(functional, "_INTERPRETED", False)
    monkeypatch.setattr(function, "_native_auto", None)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert fused_gumbel.select_backend(cpu) == "native"
    assert function.runs_native(cpu)
    with pytest.raises(ValueError, match="one of"):
        fused_gumbel.select_backend(cpu, "cpp")
    if not _native.available("cuda"):
        with pytest.raises(ValueError, match="native backend is not available for cuda"):
            fused_gumbel.select_backend(torch.device("cuda"), "native")


def test_loader_refuses_an_extension_built_for_another_torch(monkeypatch, tmp_path):
    info = tmp_path / "_C.build.json"
    info.write_text(json.dumps({"torch": "1.0.0", "cuda": False}))
    monkeypatch.setattr(_native, "_BUILD_INFO", str(info))
    monkeypatch.setattr(_native, "_state", {})
    assert not _native.available("cpu")
    assert "built against torch 1.0.0" in _native.unavailable_reason("cpu")


def test_loader_reports_a_failed_build(monkeypatch, tmp_path):
    info = tmp_path / "_C.build.json"
    info.write_text(json.dumps({"error": "building the C++ extension failed: no compiler"}))
    monkeypatch.setattr(_native, "_BUILD_INFO", str(info))
    monkeypatch.setattr(_native, "_state", {})
    with pytest.warns(UserWarning, match="no compiler"):
        assert not _native.available("cpu")
    assert "last build of fused_gumbel._C failed" in _native.unavailable_reason("cpu")


@pytest.mark.parametrize("hard", [False, True])
def test_compiled_custom_op_runs_native(hard):
    logits = torch.randn(8, 5, requires_grad=True)
    compiled = torch.compile(lambda x: fused_gumbel.gumbel_softmax(x, 0.5, hard, backend="native"), fullgraph=True)
    torch.manual_seed(0)
    y = compiled(logits)
    torch.manual_seed(0)
    y_eager, dx_eager, _ = sample("native", logits, 0.5, hard, seed=0, grad_weight=torch.ones(8, 5))
    assert torch.equal(y, y_eager)
    y.sum().backward()
    assert_close(logits.grad, dx_eager, torch.float32)


def test_every_isa_build_gives_the_same_samples():
    """The baseline, AVX2 and AVX-512 builds (FUSED_GUMBEL_CPU_ISA caps the choice) draw the same
    words and the same samples; soft values agree to the float32 tolerance (their logs may differ by an ulp)."""
    script = ("import torch, fused_gumbel, sys\n"
              "from fused_gumbel import _native\n"
              "x = torch.randn(301, 23, generator=torch.Generator().manual_seed(0))\n"
              "short = x[:, :10].contiguous()  # rows of <= 16 classes take the one-vector-per-row path\n"
              "out = [_native.cpu_isa(), _native.forward(x, 0.7, 2, 1, 5, 6)[0], _native.forward(x, 0.7, 0, 1, 5, 6)[0],\n"
              "       torch.ops.fused_gumbel._cpu_philox_words(5, 6, 0, 99),\n"
              "       _native.forward(short, 0.7, 2, 1, 5, 6)[0], _native.forward(short, 0.7, 0, 1, 5, 6)[0]]\n"
              "torch.save(out, sys.argv[1])\n")
    results = {}
    for isa in ("default", "avx2", "avx512"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fused_gumbel_isa_{os.getpid()}_{isa}.pt")
        env = dict(os.environ, FUSED_GUMBEL_CPU_ISA=isa)
        subprocess.run([sys.executable, "-c", script, path], check=True, env=env, timeout=300)
        results[isa] = torch.load(path)
        os.remove(path)
    assert results["default"][0] == "default"
    base = results["default"]
    for isa, (name, index, soft, words, short_index, short_soft) in results.items():
        assert torch.equal(index, base[1]) and torch.equal(words, base[3]), isa
        assert torch.equal(short_index, base[4]), isa
        atol, rtol = TOLERANCES[torch.float32]
        torch.testing.assert_close(soft, base[2], atol=atol, rtol=rtol)
        torch.testing.assert_close(short_soft, base[5], atol=atol, rtol=rtol)


@pytest.mark.parametrize("estimator", ["gumbel_rao", "reinmax"])
def test_estimators_on_native_run_the_reference(estimator):
    """The estimators' backward has no C++ kernel: under "native" the whole call is the reference's."""
    logits = torch.randn(5, 7, dtype=torch.float64)
    weight = torch.randn(5, 7, dtype=torch.float64)
    out = {}
    for backend in ("native", "reference"):
        x = logits.clone().requires_grad_(True)
        y = fused_gumbel.gumbel_softmax(x, 0.8, hard=True, seed=3, backend=backend, estimator=estimator)
        (y * weight).sum().backward()
        out[backend] = (y.detach(), x.grad)
    assert torch.equal(out["native"][0], out["reference"][0])
    assert torch.equal(out["native"][1], out["reference"][1])


def test_constant_under_compile_marks_functions_as_dynamo_does():
    """_native marks ``available`` constant for torch.compile without importing torch._dynamo; what it
    sets must stay what ``torch._dynamo.assume_constant_result`` sets (test_compiled_custom_op_runs_native
    checks the effect under compile)."""
    import torch._dynamo

    def by_dynamo():
        return True

    def by_native():
        return True

    torch._dynamo.assume_constant_result(by_dynamo)
    _native._constant_under_compile(by_native)
    assert vars(by_dynamo) == vars(by_native) == {"_dynamo_marked_constant": True}


def test_import_does_not_load_the_compiler_stack():
    """``import fused_gumbel`` leaves torch._dynamo and Triton unimported (seconds of start-up each)."""
    code = "import sys, fused_gumbel; print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
