"""The fused kernels against the PyTorch reference on identical noise: every dtype, dim, layout,
temperature form and code path (packed rows, one block, looped large-K), forward and backward."""
import pytest
import torch

import fused_gumbel
from fused_gumbel import reference
from fused_gumbel.kernels import gumbel_softmax as kernels
from helpers import TOLERANCES, assert_close, fused_and_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [((6, 10), -1), ((3, 7, 5), 1), ((4, 1), -1), ((2, 3, 37), 0), ((5, 4, 3, 2), 2), ((130, 10), -1)]


def _tau(kind, logits, dim):
    if kind == "float":
        return 0.7
    if kind == "scalar":
        return torch.tensor(0.5, dtype=logits.dtype)
    row_shape = list(logits.shape)
    row_shape[dim] = 1
    return torch.rand(row_shape, dtype=logits.dtype) + 0.3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("tau_kind", ["float", "scalar", "rows"])
@pytest.mark.parametrize("hard", [False, True])
def test_matches_reference(dtype, shape, dim, tau_kind, hard):
    logits = (torch.randn(shape) * 3).to(dtype)
    tau = _tau(tau_kind, logits, dim)
    weight = torch.randn(shape, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    (y, dx, dt), (y_ref, dx_ref, dt_ref) = fused_and_reference(logits, tau, hard, dim, seed=11, grad_weight=weight)
    assert y.dtype == dtype and y.shape == logits.shape
    if hard:
        assert torch.equal(y, y_ref)
        assert set(y.unique().tolist()) <= {0.0, 1.0}
        assert torch.all(y.sum(dim) == 1)
    else:
        assert_close(y, y_ref, dtype)
    # Low-precision soft backward reads the stored (rounded) output; the reference keeps fp32.
    rounded_y = not hard and dtype in (torch.float16, torch.bfloat16)
    grad_dtype = torch.bfloat16 if rounded_y else dtype
    assert_close(dx, dx_ref, grad_dtype, scale=2 * max(1.0, dx_ref.abs().max().item()) if rounded_y else None)
    if dt is not None:
        assert dt.shape == tau.shape and dt.dtype == tau.dtype
        atol, rtol = TOLERANCES[grad_dtype]
        torch.testing.assert_close(dt.double(), dt_ref.double(), atol=atol * logits.shape[dim] * 4, rtol=rtol * 4)


def test_float_tau_matches_tensor_tau():
    logits = torch.randn(8, 10)
    torch.manual_seed(0)
    a = fused_gumbel.gumbel_softmax(logits, 0.37)
    torch.manual_seed(0)
    b = fused_gumbel.gumbel_softmax(logits, torch.tensor(0.37))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded", "permuted"])
@pytest.mark.parametrize("hard", [False, True])
def test_non_contiguous_inputs(layout, hard):
    base = torch.randn(12, 40)
    logits = {
        "transposed": base.t(),  # [40, 12], classes strided
        "strided": base[::3, ::4],  # [4, 10]
        "expanded": torch.randn(1, 10).expand(6, 10),  # stride 0 rows
        "permuted": torch.randn(3, 4, 5).permute(2, 0, 1),  # leading dims not mergeable
    }[layout]
    weight = torch.randn(logits.shape)
    for dim in range(logits.dim()):
        (y, dx, _), (y_ref, dx_ref, _) = fused_and_reference(logits, 0.8, hard, dim, seed=3, grad_weight=weight)
        (torch.testing.assert_close(y, y_ref) if not hard else None) or (hard and torch.equal(y, y_ref))
        if hard:
            assert torch.equal(y, y_ref)
        torch.testing.assert_close(dx, dx_ref, atol=2e-6, rtol=1e-5)


def test_non_contiguous_grad_output():
    logits = torch.randn(5, 10, requires_grad=True)
    torch.manual_seed(0)
    y = fused_gumbel.gumbel_softmax(logits, hard=True)
    y.sum().backward()  # grad_output is an expanded (stride 0) tensor
    logits2 = logits.detach().clone().requires_grad_()
    torch.manual_seed(0)
    fused_gumbel.gumbel_softmax(logits2, hard=True).backward(torch.ones(5, 10))
    torch.testing.assert_close(logits.grad, logits2.grad)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force the looped large-K path: rows wider than 16 classes are processed in 16-wide chunks."""
    monkeypatch.setattr(kernels, "MAX_RESIDENT", 16)
    monkeypatch.setattr(kernels, "MAX_RESIDENT_SOFT_FORWARD", 16)


@pytest.mark.parametrize("K", [17, 37, 53])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_looped_path_matches_reference(small_blocks, K, hard, dtype):
    assert not kernels.tile_config(3, K)["SINGLE_CHUNK"]
    logits = (torch.randn(3, K) * 4).to(dtype)
    logits[1, :K // 2] = float("-inf")  # a chunk (or more) of -inf classes in a valid row
    tau = torch.rand(3, 1, dtype=dtype) + 0.2
    assert_long_rows_match_reference(logits, tau, hard, dtype)


def assert_long_rows_match_reference(logits, tau, hard, dtype, bf16_rescaled=False):
    """Fused vs reference on [rows, K] logits (samples, dlogits, dtau); ``bf16_rescaled``: the
    path writes bf16 values twice (scaled, then rescaled), so bf16 gets twice the slack."""
    K = logits.shape[-1]
    weight = torch.randn(logits.shape, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    (y, dx, dt), (y_ref, dx_ref, dt_ref) = fused_and_reference(logits, tau, hard, -1, seed=5, grad_weight=weight)
    twice = bf16_rescaled and dtype == torch.bfloat16
    if hard:
        assert torch.equal(y, y_ref)
    else:
        assert_close(y, y_ref, dtype, scale=2.0 if twice else None)
    grad_dtype = dtype if hard or dtype != torch.bfloat16 else torch.bfloat16
    assert_close(dx, dx_ref, grad_dtype, scale=2 * max(1.0, dx_ref.abs().max().item()) if twice else None)
    atol, rtol = TOLERANCES[grad_dtype]
    torch.testing.assert_close(dt.double(), dt_ref.double(), atol=atol * K * 4, rtol=rtol * 4)


@pytest.mark.parametrize("hard", [False, True])
def test_looped_path_invalid_rows_are_nan(small_blocks, hard):
    logits = torch.randn(4, 40)
    logits[1] = float("-inf")
    logits[2, 33] = float("nan")
    logits[3, 3] = float("inf")
    y = fused_gumbel.gumbel_softmax(logits, 0.5, hard=hard, seed=1, backend="triton")
    assert y[1:].isnan().all() and not y[0].isnan().any()
    assert torch.equal(fused_gumbel.categorical(logits, seed=1, backend="triton"), torch.tensor([y[0].argmax(), -1, -1, -1]))


def test_looped_path_categorical_and_dims(small_blocks):
    logits = torch.randn(4, 50, 3)
    for one_hot in (False, True):
        torch.manual_seed(9)
        got = fused_gumbel.categorical(logits, dim=1, one_hot=one_hot)
        torch.manual_seed(9)
        expected = fused_gumbel.categorical(logits, dim=1, one_hot=one_hot, backend="reference")
        assert torch.equal(got, expected)


def test_large_vocabulary_single_row():
    """K = 128,256 (Llama 3's vocabulary: not a power of two, so the last chunk is partial) through
    the default looped path, one row."""
    logits = torch.randn(1, 128_256)
    logits[0, 12345] = 30.0  # dominant class: the sample is almost surely it
    torch.manual_seed(0)
    index = fused_gumbel.categorical(logits)
    torch.manual_seed(0)
    assert torch.equal(index, fused_gumbel.categorical(logits, backend="reference"))
    assert index.item() == 12345
    torch.manual_seed(1)
    y = fused_gumbel.gumbel_softmax(logits, tau=2.0)
    torch.manual_seed(1)
    torch.testing.assert_close(y, fused_gumbel.gumbel_softmax(logits, tau=2.0, backend="reference"))
    assert abs(y.sum().item() - 1) < 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((7, 10), -1), ((3, 6, 4), 1), ((2, 1), 1)])
@pytest.mark.parametrize("one_hot", [False, True])
def test_categorical_matches_reference(dtype, shape, dim, one_hot):
    logits = (torch.randn(shape) * 2).to(dtype)
    torch.manual_seed(21)
    got = fused_gumbel.categorical(logits, dim, one_hot=one_hot)
    torch.manual_seed(21)
    expected = fused_gumbel.categorical(logits, dim, one_hot=one_hot, backend="reference")
    assert torch.equal(got, expected)
    if one_hot:
        assert got.dtype == dtype and got.shape == logits.shape
    else:
        d = dim % logits.dim()
        assert got.dtype == torch.int64 and got.shape == logits.shape[:d] + logits.shape[d + 1:]


def test_categorical_is_the_hard_sample():
    """Same RNG state -> categorical picks the class gumbel_softmax(hard=True) picks."""
    logits = torch.randn(50, 10)
    torch.manual_seed(4)
    index = fused_gumbel.categorical(logits)
    torch.manual_seed(4)
    hard = fused_gumbel.gumbel_softmax(logits, tau=0.3, hard=True)
    assert torch.equal(hard.argmax(-1), index)


def test_gradcheck_soft_logits_and_tau():
    logits = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    tau_scalar = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    tau_rows = (torch.rand(4, 1, dtype=torch.float64) + 0.5).requires_grad_()

    def sample(x, tau):
        return fused_gumbel.gumbel_softmax(x, tau, generator=torch.Generator().manual_seed(0), backend="triton")

    assert torch.autograd.gradcheck(sample, (logits, tau_scalar), eps=1e-6, atol=1e-5)
    # The same kernel with per-row temperatures, projected on random vectors (fast_mode): each of
    # the full check's calls runs the interpreter.
    assert torch.autograd.gradcheck(sample, (logits, tau_rows), eps=1e-6, atol=1e-5, fast_mode=True)


def test_hard_gradient_equals_soft_gradient_for_same_noise():
    logits = torch.randn(9, 10, dtype=torch.float64)
    tau = torch.tensor(0.6, dtype=torch.float64)
    weight = torch.randn(9, 10, dtype=torch.float64)
    grads = []
    for hard in (False, True):
        x, t = logits.clone().requires_grad_(), tau.clone().requires_grad_()
        y = fused_gumbel.gumbel_softmax(x, t, hard=hard, generator=torch.Generator().manual_seed(1))
        (y * weight).sum().backward()
        grads.append((x.grad, t.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


def test_backward_regenerates_the_forward_noise():
    """Hard mode keeps no soft tensor: its backward regenerates g from (seed, offset) even after
    other draws advanced the generator."""
    logits = torch.randn(20, 10, requires_grad=True)
    weight = torch.randn(20, 10)
    torch.manual_seed(8)
    y = fused_gumbel.gumbel_softmax(logits, 0.5, hard=True)
    fused_gumbel.gumbel_softmax(torch.randn(20, 10))  # advances the RNG between forward and backward
    torch.rand(100)
    (y * weight).sum().backward()
    x = logits.detach().clone().requires_grad_()
    torch.manual_seed(8)
    (fused_gumbel.gumbel_softmax(x, 0.5, hard=True, backend="reference") * weight).sum().backward()
    torch.testing.assert_close(logits.grad, x.grad, atol=2e-6, rtol=1e-5)


def test_hard_mode_saves_no_soft_tensor():
    logits = torch.randn(16, 10, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_gumbel.gumbel_softmax(logits, hard=True)
    assert len(saved) == 1 and saved[0].data_ptr() == logits.data_ptr()


def test_successive_calls_differ_and_seed_reproduces():
    logits = torch.zeros(4, 10)
    torch.manual_seed(0)
    a, b = fused_gumbel.gumbel_softmax(logits), fused_gumbel.gumbel_softmax(logits)
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(fused_gumbel.gumbel_softmax(logits), a)
    gen = torch.Generator().manual_seed(42)
    c = fused_gumbel.gumbel_softmax(logits, generator=gen)
    assert torch.equal(c, fused_gumbel.gumbel_softmax(logits, generator=torch.Generator().manual_seed(42)))


def test_reference_accepts_explicit_noise():
    logits = torch.randn(5, 10)
    noise = reference.gumbel_noise(logits, 1, seed=3, offset=4)
    y = reference.gumbel_softmax(logits, 0.5, noise=noise)
    torch.testing.assert_close(y, torch.softmax((logits + noise) / 0.5, -1))
    assert torch.equal(reference.categorical(logits, noise=noise), (logits + noise).argmax(-1))
    torch.testing.assert_close(y, reference.gumbel_softmax(logits, 0.5, seed=3, offset=4))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_zero_dim_and_empty(backend):
    scalar = torch.tensor(2.0)
    assert fused_gumbel.gumbel_softmax(scalar, backend=backend).item() == 1.0
    assert fused_gumbel.categorical(scalar, backend=backend).item() == 0
    for shape in [(0, 10), (3, 0), (0,)]:
        empty = torch.randn(shape, requires_grad=True)
        y = fused_gumbel.gumbel_softmax(empty, hard=True, backend=backend)
        assert y.shape == empty.shape
        y.sum().backward()
    assert fused_gumbel.categorical(torch.randn(0, 10), backend=backend).shape == (0,)


@pytest.mark.parametrize("K", [10, 37, 300])
@pytest.mark.parametrize("hard", [False, True])
def test_fast_noise_algorithm_matches_reference(monkeypatch, K, hard):
    """FAST=1 runs the GPU's fast-noise algorithm (series below 2**-6, log2 of 1 - v above, exp2
    softmax) with exact logarithms, so the interpreter checks its series and folded constants;
    the GPU swaps only the logarithms for MUFU instructions (FAST=2, compiled in test_kernel_compile)."""
    monkeypatch.setattr(kernels, "_fast", lambda dtype: 0 if dtype == torch.float64 else 1)
    logits = torch.randn(64, K) * 3
    weight = torch.randn(64, K)
    (y, dx, _), (y_ref, dx_ref, _) = fused_and_reference(logits, 0.7, hard, -1, seed=11, grad_weight=weight)
    # Within the spec's fast-noise bound, near-ties aside: every row's winner agrees here.
    assert torch.equal(y.argmax(-1), y_ref.argmax(-1))
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(dx, dx_ref, atol=5e-5, rtol=5e-5)


@pytest.fixture
def split_rows(monkeypatch):
    """Force the split-row kernels: rows of >= 16 classes in segments of >= 8 classes."""
    monkeypatch.setattr(kernels, "SPLIT_BELOW_PROGRAMS", 10**6)
    monkeypatch.setattr(kernels, "SPLIT_MIN_SEGMENT", 8)


@pytest.mark.parametrize("K", [17, 64, 150])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_split_rows_match_reference(split_rows, K, hard, dtype):
    cfg = kernels.tile_config(3, K)
    assert cfg["SPLIT"] and cfg["SEGMENTS"] > 1
    logits = (torch.randn(3, K) * 4).to(dtype)
    logits[1, 5] = float("-inf")
    tau = torch.rand(3, 1, dtype=dtype) + 0.2
    assert_long_rows_match_reference(logits, tau, hard, dtype, bf16_rescaled=True)


@pytest.mark.parametrize("K", [300, 302])
def test_split_rows_give_the_unsplit_samples(monkeypatch, K):
    """The two-phase combine picks the same index and one-hot bit for bit, and the same soft
    sample within float32 rounding, as one program per row (same noise, exact argmax). K = 300:
    the hard and index modes' last segment overlaps its neighbour (K a multiple of 4); 302: it
    masks its lanes past K."""
    logits = torch.randn(5, K) * 3
    logits[2] = float("-inf")  # an invalid row: NaN / index -1 on both paths
    logits[3, 7] = float("nan")
    # Row 4's winner in the last segment, where it overlaps its neighbour when K = 300 (segments
    # of 16 classes: the 19th starts at 284, not 288), so both programs report it.
    logits[4, 285] = 50.0
    outputs = []
    for split in (False, True):
        kernels._tile_config.cache_clear()
        monkeypatch.setattr(kernels, "SPLIT_BELOW_PROGRAMS", 10**6 if split else 0)
        monkeypatch.setattr(kernels, "SPLIT_MIN_SEGMENT", 16)
        assert kernels.tile_config(5, K)["SPLIT"] == split
        out = [fused_gumbel.categorical(logits, seed=3, backend="triton"),
               fused_gumbel.gumbel_softmax(logits, hard=True, seed=3, backend="triton"),
               fused_gumbel.gumbel_softmax(logits, 0.5, seed=3, backend="triton")]
        outputs.append(out)
    (index, hard, soft), (index_s, hard_s, soft_s) = outputs
    # Every row's last program reset its ticket counter: the next launch needs no memset.
    assert kernels._counters and all(int(c.abs().sum()) == 0 for c in kernels._counters.values())
    assert torch.equal(index, index_s) and index[2] == -1 and index[3] == -1 and index[4] == 285
    assert torch.equal(hard.nan_to_num(7.0), hard_s.nan_to_num(7.0))
    torch.testing.assert_close(soft, soft_s, atol=1e-6, rtol=1e-5, equal_nan=True)
