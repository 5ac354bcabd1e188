"""GPU: the runtime choice between the CUDA C++ twin and the Triton kernels gives the same samples.

``fused_gumbel.gumbel_softmax``/``categorical`` on CUDA tensors under backend "auto" run Triton or
the twin per shape class (``fused_gumbel._twin_dispatch``, FUSED_GUMBEL_CUDA_IMPL overrides). On
the same ``seed=`` the three settings (auto with a table that picks the twin, FUSED_GUMBEL_CUDA_IMPL=
triton, =twin) must give identical hard and index samples (both implementations compute the RNG
spec's Philox words and the same fast noise) and soft samples and gradients within the twin tests'
tolerances; one call's backward runs on its forward's implementation, also when the environment
changes in between. Every shape class: small (K <= 16), resident, streamed, streamed with few rows.
"""
import pytest
import torch

import fused_gumbel
from fused_gumbel import _native, _twin_dispatch, functional

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_suite.sh)"),
]

FP32, BF16 = torch.float32, torch.bfloat16
VALUE_TOLERANCE = {FP32: (1e-20, 1e-4), BF16: (1e-20, 1.6e-2)}  # (rtol, atol), as test_gpu_cuda_twin.py
GRAD_TOLERANCE = {FP32: (1e-5, 1e-4), BF16: (3e-2, 3e-2)}
SHAPES = {"small": (3000, 10), "resident": (512, 1000), "streamed": (300, 9000), "streamed-few-rows": (8, 20000)}
SEED = 12345


@pytest.fixture(scope="module")
def twin_built():
    from bench import twin

    try:
        twin.cuda_op()
    except RuntimeError as why:  # FUSED_GUMBEL_TWIN_NO_BUILD=1 (bench/gpu_suite.sh after a failed build)
        pytest.skip(f"the CUDA twin is not available: {why}")
    _native._state.pop("devices", None)  # asked again: cuda_op may have registered the kernels just now
    if not _native.available("cuda"):
        pytest.skip(f"the CUDA twin is not available: {_native.unavailable_reason('cuda')}")


@pytest.fixture
def setting(monkeypatch, twin_built):
    """Sets one of "auto" (a measured table that picks the twin for every key), "triton", "twin"."""
    def apply(name):
        if name == "auto":
            monkeypatch.delenv(functional.CUDA_IMPL_ENV, raising=False)
            every_key = {f"{c}/{d}/{m}/{p}": {"choice": "twin", "worst_ratio": 0.5, "cases": 1}
                         for c in SHAPES for d in ("fp32", "bf16") for m in ("soft", "hard", "index")
                         for p in ("fwd", "bwd")}
            monkeypatch.setattr(_twin_dispatch, "MEASURED", every_key)
        else:
            monkeypatch.setenv(functional.CUDA_IMPL_ENV, name)
        monkeypatch.setattr(functional, "_twin_under_auto", None)
        monkeypatch.setattr(functional, "_cuda_choices", {})
    return apply


def _logits(shape, dtype):
    generator = torch.Generator().manual_seed(7)
    return (2.0 * torch.randn(shape, generator=generator)).to(dtype).cuda()


def _run(setting, name, shape_class, dtype, hard):
    setting(name)
    x = _logits(SHAPES[shape_class], dtype).requires_grad_()
    expected = "triton" if name == "triton" else "twin"
    assert fused_gumbel.select_implementation(x, mode="hard" if hard else "soft") == expected
    assert fused_gumbel.select_implementation(x.detach(), mode="index") == expected
    y = fused_gumbel.gumbel_softmax(x, tau=0.7, hard=hard, seed=SEED)
    index = fused_gumbel.categorical(x.detach(), seed=SEED)
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(8)).to(dtype).cuda()
    (grad_x,) = torch.autograd.grad(y, x, grad_y)
    return y.detach(), index, grad_x


@pytest.mark.parametrize("shape_class", list(SHAPES))
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_auto_triton_twin_agree(setting, shape_class, dtype, hard):
    results = {name: _run(setting, name, shape_class, dtype, hard) for name in ("triton", "twin", "auto")}
    y0, index0, grad0 = results["triton"]
    for name in ("twin", "auto"):
        y, index, grad = results[name]
        assert torch.equal(index, index0), f"{name}: {int((index != index0).sum())} categorical draws differ"
        if hard:
            assert torch.equal(y, y0), f"{name}: hard samples differ in {int((y != y0).any(-1).sum())} rows"
        else:
            rtol, atol = VALUE_TOLERANCE[dtype]
            torch.testing.assert_close(y, y0, rtol=rtol, atol=atol)
        rtol, atol = GRAD_TOLERANCE[dtype]
        torch.testing.assert_close(grad, grad0, rtol=rtol, atol=atol)


@pytest.mark.parametrize("first, then", [("twin", "triton"), ("triton", "twin")])
def test_backward_keeps_the_forward_implementation(setting, first, then):
    """The hard backward of a streamed row reads its forward's statistics (Triton: row maxima; the
    twin: none): an environment change between forward and backward changes nothing."""
    setting("triton")
    x = _logits(SHAPES["streamed"], FP32).requires_grad_()
    grad_y = torch.randn(x.shape, device="cuda")
    (expected,) = torch.autograd.grad(fused_gumbel.gumbel_softmax(x, hard=True, seed=SEED), x, grad_y)
    setting(first)
    y = fused_gumbel.gumbel_softmax(x, hard=True, seed=SEED)
    setting(then)
    (grad,) = torch.autograd.grad(y, x, grad_y)
    rtol, atol = GRAD_TOLERANCE[FP32]
    torch.testing.assert_close(grad, expected, rtol=rtol, atol=atol)
