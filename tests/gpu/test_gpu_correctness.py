"""GPU correctness: the CUDA kernels against the PyTorch reference run on CPU, same noise.

Run on a CUDA machine with TRITON_INTERPRET=0 (``bench/gpu_suite.sh`` runs
``pytest -m gpu``): real compiled kernels, no interpreter. Each test draws through the public
API with an explicit ``seed=`` (key ``seed``, offset 0: the cross-device contract of
``fused_gumbel._seeding``) or a CUDA generator, then runs ``fused_gumbel.reference`` on a CPU
copy of the logits with the same (seed, offset):

* hard samples and categorical draws: identical on >= 99.99% of the rows (the noise agrees to
  a few ulp; only near-ties may flip), and always exact one-hots;
* soft samples and gradients: within the dtype's tolerance. The GPU computes exp with
  ``ex2.approx`` and divides with ``div.full`` (2 ulp each) where the CPU rounds correctly,
  so float32 gets rtol 1e-4; half precision allows two ulp of the output format;
* dims 0/1/-1 and strided views; float32/bfloat16/float16/float64; K from 1 to 262,144
  (262,144 > ``MAX_RESIDENT``: the split or streamed paths);
* no NaN at extremes (|logits| = 1e4, tau from 1e-4 to 1e4, -inf entries).

CUDA graphs, torch.compile and autocast on the device are in ``test_gpu_workflows.py``.
"""
import pytest
import torch

import fused_gumbel
from fused_gumbel import reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_suite.sh)"),
]

CUDA = "cuda"
FP32, FP64, BF16, FP16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
ALL_DTYPES = [FP32, BF16, FP16, FP64]
CLASS_COUNTS = [1, 10, 1000, 32000, 262144]
# (atol, rtol) of sample values in [0, 1]: relative, since with K = 262144 most values are
# ~1e-6; atol only absorbs float32 denormals the GPU flushes to zero, and float16 subnormals.
VALUE_TOLERANCE = {FP64: (1e-30, 1e-9), FP32: (1e-20, 1e-4), FP16: (1.2e-7, 2e-3), BF16: (1e-20, 1.6e-2)}
# (atol relative to the largest |gradient|, rtol). Soft mode in half precision differentiates
# through its saved half-precision output, the reference through the float32 one.
GRAD_TOLERANCE = {FP64: (1e-10, 1e-8), FP32: (1e-5, 1e-4), FP16: (4e-3, 4e-3), BF16: (3e-2, 3e-2)}
MIN_AGREEMENT = 0.9999


def _rows_for(classes: int) -> int:
    """At most ~2M elements per test tensor, at least 8 rows."""
    return max(8, min(4096, (1 << 21) // classes))


def _logits(shape, dtype, seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


def _assert_values_close(actual, expected, dtype):
    atol, rtol = VALUE_TOLERANCE[dtype]
    torch.testing.assert_close(actual.cpu().double(), expected.double(), atol=atol, rtol=rtol)


def _assert_grad_close(actual, expected, dtype):
    atol, rtol = GRAD_TOLERANCE[dtype]
    scale = max(expected.double().abs().max().item(), 1e-30)
    torch.testing.assert_close(actual.cpu().double(), expected.double(), atol=atol * scale, rtol=rtol)


def _assert_one_hot(y, dim):
    y = y.float()
    assert ((y == 0) | (y == 1)).all()
    assert (y.sum(dim) == 1).all()


def _assert_same_draws(index_cuda, index_ref):
    agreement = (index_cuda.cpu() == index_ref).double().mean().item()
    assert agreement >= MIN_AGREEMENT, f"only {agreement:.6f} of the rows agree"


def _fused_and_reference(x, tau, hard, dim, seed, grad_out=None):
    """(y, dx) of the CUDA kernel and of the CPU reference on the spec's stream (seed, offset 0)."""
    x_cuda = x.to(CUDA).requires_grad_(grad_out is not None)
    y_cuda = fused_gumbel.gumbel_softmax(x_cuda, tau, hard, dim=dim, seed=seed)
    x_ref = x.clone().requires_grad_(grad_out is not None)
    y_ref = reference.gumbel_softmax(x_ref, tau, hard, dim, seed=seed, offset=0)
    dx_cuda = dx_ref = None
    if grad_out is not None:
        (dx_cuda,) = torch.autograd.grad(y_cuda, x_cuda, grad_out.to(CUDA))
        (dx_ref,) = torch.autograd.grad(y_ref, x_ref, grad_out)
    return (y_cuda, dx_cuda), (y_ref.detach(), dx_ref)


@pytest.mark.parametrize("classes", CLASS_COUNTS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_soft_forward_matches_reference(dtype, classes):
    x = _logits((_rows_for(classes), classes), dtype, seed=classes)
    (y, _), (y_ref, _) = _fused_and_reference(x, 0.7, False, -1, seed=1234 + classes)
    assert y.dtype == dtype and y.device.type == CUDA
    _assert_values_close(y, y_ref, dtype)


@pytest.mark.parametrize("classes", CLASS_COUNTS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_hard_forward_matches_reference(dtype, classes):
    x = _logits((_rows_for(classes), classes), dtype, seed=classes)
    (y, _), (y_ref, _) = _fused_and_reference(x, 0.7, True, -1, seed=99 + classes)
    _assert_one_hot(y, -1)
    _assert_same_draws(y.argmax(-1), y_ref.argmax(-1))


@pytest.mark.parametrize("dtype", [FP32, BF16], ids=str)
def test_many_rows_hard_agreement(dtype):
    """65536 VAE-sized rows: the noise streams agree row by row, not just on average."""
    x = _logits((65536, 10), dtype, seed=7)
    (y, _), (y_ref, _) = _fused_and_reference(x, 1.0, True, -1, seed=2024)
    _assert_same_draws(y.argmax(-1), y_ref.argmax(-1))


LAYOUTS = {
    "dim0": (lambda x: x, (1000, 6, 5), 0),
    "dim1": (lambda x: x, (6, 1000, 5), 1),
    "dim-1": (lambda x: x, (6, 5, 1000), -1),
    "transposed": (lambda x: x.transpose(0, 1), (1000, 30), -1),  # class stride 30
    "sliced": (lambda x: x[:, ::2], (40, 2000), -1),  # class stride 2
}


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dims_and_strided_views(layout, hard):
    view, shape, dim = LAYOUTS[layout]
    base = _logits(shape, FP32, seed=3)
    x_cuda = view(base.to(CUDA))
    x_ref = view(base)
    y = fused_gumbel.gumbel_softmax(x_cuda, 0.5, hard, dim=dim, seed=77)
    y_ref = reference.gumbel_softmax(x_ref, 0.5, hard, dim, seed=77, offset=0)
    assert y.shape == x_cuda.shape
    if hard:
        _assert_one_hot(y, dim)
        _assert_same_draws(y.argmax(dim), y_ref.argmax(dim))
    else:
        _assert_values_close(y, y_ref, FP32)


BACKWARD_CASES = [(dtype, classes) for dtype in ALL_DTYPES for classes in (10, 1000)] + \
    [(FP32, 32000), (BF16, 32000), (FP32, 262144)]


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("dtype,classes", BACKWARD_CASES, ids=lambda v: str(v))
def test_backward_matches_reference(dtype, classes, hard):
    shape = (_rows_for(classes) // 4 or 1, classes)
    x = _logits(shape, dtype, seed=11)
    grad_out = _logits(shape, dtype, seed=12, scale=1.0)
    (y, dx), (y_ref, dx_ref) = _fused_and_reference(x, 0.8, hard, -1, seed=555, grad_out=grad_out)
    assert dx.dtype == dtype
    _assert_grad_close(dx, dx_ref, dtype)


@pytest.mark.parametrize("dim", [0, -1])
def test_backward_middle_dims_and_learned_tau(dim):
    """One temperature per row that requires grad: d/dx and d/dtau against the reference."""
    x = _logits((64, 300) if dim == -1 else (300, 64), FP32, seed=21)
    row_shape = (64, 1) if dim == -1 else (1, 64)
    tau = 0.3 + torch.rand(row_shape, generator=torch.Generator().manual_seed(5))
    grad_out = _logits(x.shape, FP32, seed=22, scale=1.0)
    results = []
    for device, sample in ((CUDA, lambda a, t: fused_gumbel.gumbel_softmax(a, t, False, dim=dim, seed=31)),
                           ("cpu", lambda a, t: reference.gumbel_softmax(a, t, False, dim, seed=31, offset=0))):
        a = x.to(device).requires_grad_(True)
        t = tau.to(device).requires_grad_(True)
        y = sample(a, t)
        results.append((y.detach(), *torch.autograd.grad(y, (a, t), grad_out.to(device))))
    (y, dx, dtau), (y_ref, dx_ref, dtau_ref) = results
    _assert_values_close(y, y_ref, FP32)
    _assert_grad_close(dx, dx_ref, FP32)
    _assert_grad_close(dtau, dtau_ref, FP32)


@pytest.mark.parametrize("classes", [10, 32000, 262144])
@pytest.mark.parametrize("dtype", [FP32, BF16, FP16], ids=str)
def test_categorical_matches_reference(dtype, classes):
    x = _logits((_rows_for(classes), classes), dtype, seed=classes + 1)
    index = fused_gumbel.categorical(x.to(CUDA), seed=4321)
    index_ref = reference.categorical(x, -1, seed=4321, offset=0)
    assert index.dtype == torch.int64 and index.shape == (x.shape[0],)
    _assert_same_draws(index, index_ref)
    one_hot = fused_gumbel.categorical(x.to(CUDA), one_hot=True, seed=4321)
    _assert_one_hot(one_hot, -1)
    _assert_same_draws(one_hot.argmax(-1), index_ref)


@pytest.mark.parametrize("dtype", [FP32, FP64], ids=str)
def test_noise_agrees_with_reference_noise(dtype):
    """With zero logits and tau = 1, log y_k - log y_0 = g_k - g_0: the CUDA noise itself."""
    x = torch.zeros(512, 1000, dtype=dtype)
    y = fused_gumbel.gumbel_softmax(x.to(CUDA), 1.0, dim=-1, seed=8).cpu()
    g = reference.gumbel_noise(x, -1, seed=8, offset=0)
    log_y = y.log()
    atol = 5e-5 if dtype == FP32 else 1e-10
    torch.testing.assert_close(log_y - log_y[:, :1], g - g[:, :1], atol=atol, rtol=0)


def test_generator_stream_and_manual_seed():
    """A CUDA generator's (initial seed, offset), high offset bits included, is the reference's
    (seed, offset); every call advances it; torch.cuda.manual_seed reproduces calls."""
    x = _logits((256, 1000), FP32, seed=9)
    generator = torch.Generator(CUDA)
    generator.manual_seed(2**40 + 17)
    generator.set_offset(4 * (2**33 + 5))
    seed, offset = generator.initial_seed(), generator.get_offset()
    y = fused_gumbel.gumbel_softmax(x.to(CUDA), 1.0, dim=-1, generator=generator)
    assert generator.get_offset() > offset
    y_ref = reference.gumbel_softmax(x, 1.0, False, -1, seed=seed, offset=offset)
    _assert_values_close(y, y_ref, FP32)
    y_next = fused_gumbel.gumbel_softmax(x.to(CUDA), 1.0, dim=-1, generator=generator)
    assert not torch.equal(y, y_next)

    torch.cuda.manual_seed(123)
    first = fused_gumbel.gumbel_softmax(x.to(CUDA), 1.0, hard=True)
    second = fused_gumbel.gumbel_softmax(x.to(CUDA), 1.0, hard=True)
    torch.cuda.manual_seed(123)
    assert torch.equal(fused_gumbel.gumbel_softmax(x.to(CUDA), 1.0, hard=True), first)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("hard", [False, True])
def test_eager_fast_path_draws_from_the_default_cuda_generator(monkeypatch, hard):
    """The repeat eager call (``function.eager_sample``: ``_C.launch_prelude`` draws the key and
    reserves the offset on the device's default generator in C++) is the reference's sample for the
    generator's (initial seed, offset) and advances the offset as ``rng.draw_seed_offset`` does; the
    categorical's fast call likewise."""
    from fused_gumbel import function, rng

    x = _logits((512, 1000), FP32, seed=10).to(CUDA)
    served = []
    real = function.eager_sample
    monkeypatch.setattr(function, "eager_sample", lambda *args: served.append(args[0]) or real(*args))
    fused_gumbel.gumbel_softmax(x, 0.7, hard, backend="triton")  # cached signature from here on
    generator = torch.cuda.default_generators[x.device.index]
    torch.cuda.manual_seed(2**40 + 3)
    generator.set_offset(4 * (2**33 + 1))
    seed, offset = generator.initial_seed(), generator.get_offset()
    y = fused_gumbel.gumbel_softmax(x, 0.7, hard, backend="triton")
    assert len(served) == 2 and generator.get_offset() == offset + rng.CUDA_OFFSET_INCREMENT
    y_ref = reference.gumbel_softmax(x.cpu(), 0.7, hard, -1, seed=seed, offset=offset)
    if hard:
        assert (y.cpu() == y_ref).all(-1).float().mean() >= MIN_AGREEMENT
    else:
        _assert_values_close(y, y_ref, FP32)
    offset = generator.get_offset()
    fused_gumbel.categorical(x, backend="triton")
    index = fused_gumbel.categorical(x, backend="triton")
    assert generator.get_offset() == offset + 2 * rng.CUDA_OFFSET_INCREMENT
    expected = reference.categorical(x.cpu(), -1, seed=seed, offset=offset + rng.CUDA_OFFSET_INCREMENT)
    assert (index.cpu() == expected).float().mean() >= MIN_AGREEMENT


@pytest.mark.parametrize("classes", [1000, 32000])
@pytest.mark.parametrize("dtype", [FP32, BF16, FP16], ids=str)
def test_no_nan_at_extremes(dtype, classes):
    """|logits| = 1e4 with -inf entries, tau from 1e-4 to 1e4: finite samples, no NaN gradients."""
    rows = 64
    generator = torch.Generator().manual_seed(classes)
    signs = torch.randint(0, 3, (rows, classes), generator=generator).double() - 1.0  # -1, 0, +1
    x = (1e4 * signs).to(dtype)
    x[torch.rand(rows, classes, generator=generator) < 0.1] = float("-inf")
    x[:, 0] = 1e4  # every row keeps a finite maximum
    x_cuda = x.to(CUDA)
    grad_out = _logits((rows, classes), dtype, seed=1, scale=1.0).to(CUDA)
    for tau in (1e-4, 1e-2, 1.0, 1e2, 1e4):
        for hard in (False, True):
            a = x_cuda.clone().requires_grad_(True)
            y = fused_gumbel.gumbel_softmax(a, tau, hard, dim=-1)
            (dx,) = torch.autograd.grad(y, a, grad_out)
            context = f"tau={tau} hard={hard}"
            assert torch.isfinite(y).all(), context
            assert (y[x_cuda == float("-inf")] == 0).all(), context
            torch.testing.assert_close(y.float().sum(-1), torch.ones(rows, device=CUDA),
                                       atol=VALUE_TOLERANCE[dtype][1] * 4, rtol=0, msg=context)
            assert not torch.isnan(dx).any(), context
    index = fused_gumbel.categorical(x_cuda)
    assert (index >= 0).all() and (x_cuda.gather(-1, index[:, None]) > float("-inf")).all()
