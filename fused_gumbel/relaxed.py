"""Public API for binary and subset relaxations: ``relaxed_bernoulli``, ``bernoulli``,
``gumbel_topk`` and ``sample_subset``, with input checks and backend dispatch.

* Relaxed Bernoulli / binary Concrete (Maddison, Mnih, Teh 2017; Jang, Gu, Poole 2017):
  y = sigmoid((logits + L) / tau) with Logistic(0, 1) noise L = log(u) - log(1 - u); hard
  samples are the exact draw 1[logits + L > 0] with the straight-through gradient.
* Gumbel top-k subsets: the top-k of logits + g is an exact k-subset without replacement
  (Plackett-Luce order; Kool, van Hoof, Welling 2019); its relaxation is the k-step
  tempered-softmax recursion of Xie & Ermon, "Reparameterizable Subset Sampling via
  Continuous Relaxations" (IJCAI 2019).

As for ``gumbel_softmax``: every input error raises before any launch, CUDA tensors run the
fused Triton kernels, CPU tensors the C++ kernels of ``fused_gumbel._C`` (backend "native", where
it is built; else the PyTorch reference), each on the same noise (or the Triton kernels under
``TRITON_INTERPRET=1``),
and ``generator=``, ``seed=`` and ``torch.manual_seed`` control every draw (``fused_gumbel._seeding``; the kernels also take CUDA-graph capture).
Eager calls run the autograd Functions of ``relaxed_function`` (or the reference); calls being
recorded into a graph (torch.compile, torch.export, torch.jit.trace) run the custom ops of
``_relaxed_op`` instead, which share those launches and draw their seeds when the graph runs.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch

from . import _functorch, _native, _relaxed_op, _seeding, reference_relaxed
from ._layout import RowShape
from .functional import (_SYMBOLIC_SCALARS, Backend, _check_compiled_call, _check_host_seed, _check_logits,
                         _check_tau, _empty_like_result, _graph_mode, _is_tracing, _normalize_dim, _scalar_tensor,
                         _tau_for_kernel, select_backend_for_op)


def _check_elementwise_tau(tau, logits: torch.Tensor):
    """A validated float, or a floating tensor that broadcasts to the logits' shape."""
    if not isinstance(tau, torch.Tensor):
        return _check_tau(tau, logits, 0)  # the float checks; dim is irrelevant for a scalar
    if not tau.is_floating_point():
        raise TypeError(f"tau must be a float or a floating tensor, got {tau.dtype}")
    try:
        broadcast = tuple(torch.broadcast_shapes(tau.shape, logits.shape))
    except RuntimeError:
        broadcast = None
    if broadcast != tuple(logits.shape):
        raise ValueError(f"tau of shape {tuple(tau.shape)} must broadcast to the logits' shape {tuple(logits.shape)}")
    if tau.device != logits.device and not (tau.device.type == "cpu" and tau.dim() == 0):
        raise ValueError(f"tau is on {tau.device} but the logits are on {logits.device}")
    if not _is_tracing() and tau.numel() and not bool(torch.all(torch.isfinite(tau) & (tau > 0))):
        raise ValueError("tau must be positive and finite everywhere")
    return tau


def _elementwise_tau_for_kernel(tau, logits: torch.Tensor):
    """float, 0-dim tensor or a contiguous [numel] tensor in row-major order (differentiable)."""
    compute = reference_relaxed.compute_dtype(logits.dtype)
    if isinstance(tau, _SYMBOLIC_SCALARS) or (torch.compiler.is_compiling() and not isinstance(tau, torch.Tensor)):
        return _scalar_tensor(tau, compute, logits.device)  # a graph input, not a constant (an annealed tau)
    if not isinstance(tau, torch.Tensor):
        # Triton passes Python floats as float32; float64 math needs the exact value.
        return torch.tensor(tau, dtype=compute, device=logits.device) if compute == torch.float64 else tau
    tau = tau.to(device=logits.device, dtype=compute)
    if tau.dim() == 0 or tau.numel() == 1:
        return tau.reshape(())
    return tau.expand(logits.shape).reshape(-1).contiguous()


def _outside_transforms(chosen: str) -> str:
    """``chosen``, but "reference" for "native" under a torch.func transform (vmap, grad, jvp): the
    native op's autograd Function has no torch.func rules, the reference's PyTorch ops do (same noise)."""
    return "reference" if chosen == "native" and _functorch.transforms_active() else chosen


def relaxed_bernoulli(
    logits: torch.Tensor,
    tau: Union[float, torch.Tensor] = 1.0,
    hard: bool = False,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    backend: Optional[Backend] = None,
) -> torch.Tensor:
    r"""Sample the relaxed Bernoulli (binary Concrete) distribution, elementwise.

    .. math:: y = \sigma((\text{logits} + L) / \tau), \quad L = \log u - \log(1 - u),\ u \sim U(0, 1)

    Args:
        logits: log-odds, any shape, float16/bfloat16/float32/float64 (math in float32, float64
            for float64); the output has the same dtype and shape.
        tau: temperature > 0: a float, or a tensor broadcastable to ``logits`` (a tensor that
            requires grad receives its gradient).
        hard: return the exact draw ``1[logits + L > 0]`` of Bernoulli(sigmoid(logits)) (values
            exactly 0.0 and 1.0) with the straight-through gradient of the soft sample.
        generator: the torch generator (of the logits' device) the noise is drawn from.
        seed: an int in [0, 2**63): the spec's stream (key ``seed``, offset 0), the same on
            every device and backend; no generator is used. Exclusive with ``generator``.
        backend: "auto" (default), "triton", "native" or "reference"; see :func:`select_backend`
            ("native" runs the C++ CPU kernel of ``fused_gumbel._C``; for CUDA tensors, where it has
            none, and under torch.func transforms, the reference).

    Infinite logits give exact 0 or 1 (gradient 0); NaN logits give NaN.
    """
    _check_logits(logits)
    tau = _check_elementwise_tau(tau, logits)
    if logits.numel() == 0:
        return _empty_like_result(logits)
    chosen = select_backend_for_op(logits.device, backend, has_native=_native.bernoulli_available(logits.device.type))
    if _graph_mode():
        _check_compiled_call(generator, seed)
        mode = _relaxed_op.MODE_HARD if hard else _relaxed_op.MODE_SOFT
        return _relaxed_op.relaxed_bernoulli(logits, _elementwise_tau_for_kernel(tau, logits), mode, seed, chosen)
    chosen = _outside_transforms(chosen)
    key, offset = _seeding.draw(logits.device, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference_relaxed.relaxed_bernoulli(logits, tau, hard, seed=key, offset=offset)
    from .relaxed_function import RelaxedBernoulliFunction

    return RelaxedBernoulliFunction.apply(logits, _elementwise_tau_for_kernel(tau, logits), bool(hard), key, offset,
                                          chosen == "native")


def bernoulli(
    logits: torch.Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    backend: Optional[Backend] = None,
) -> torch.Tensor:
    """Exact draw of Bernoulli(sigmoid(logits)), ``1[logits + L > 0]``, in the logits' dtype and
    shape (no gradient; NaN logits give NaN). Same noise stream as :func:`relaxed_bernoulli`
    (``generator``, ``seed`` and ``backend`` as there), so ``bernoulli`` and
    ``relaxed_bernoulli(hard=True)`` agree for the same generator state or seed."""
    _check_logits(logits)
    if logits.numel() == 0:
        return torch.empty_like(logits)
    chosen = select_backend_for_op(logits.device, backend, has_native=_native.bernoulli_available(logits.device.type))
    logits = logits.detach()
    if _graph_mode():
        _check_compiled_call(generator, seed)
        return _relaxed_op.relaxed_bernoulli(logits, 1.0, _relaxed_op.MODE_HARD, seed, chosen)
    chosen = _outside_transforms(chosen)
    key, offset = _seeding.draw(logits.device, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference_relaxed.bernoulli(logits, seed=key, offset=offset)
    from .relaxed_function import bernoulli_forward

    return bernoulli_forward(logits, 1.0, _relaxed_op.MODE_HARD, key, offset, native=chosen == "native")


def _check_k(k, classes: int, shape, dim: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= classes:
        raise ValueError(f"k must be in [1, {classes}] (the size of dim {dim} of logits of shape {tuple(shape)}), "
                         f"got {k}")
    return k


def _fused_topk_supported(classes: int, k: int) -> bool:
    from .kernels import gumbel_topk as kernels

    if classes <= kernels.MAX_CLASSES and k <= kernels.MAX_K:
        return True
    warnings.warn(f"gumbel_topk: the fused kernel takes at most {kernels.MAX_CLASSES} classes and k <= "
                  f"{kernels.MAX_K} (got {classes} classes, k = {k}); using the PyTorch reference",
                  RuntimeWarning, stacklevel=3)
    return False


def gumbel_topk(
    logits: torch.Tensor,
    k: int,
    tau: Union[float, torch.Tensor] = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    backend: Optional[Backend] = None,
) -> torch.Tensor:
    r"""A relaxed random k-subset: Xie & Ermon's relaxed k-hot vector of ``logits + g``.

    With :math:`\alpha_1 = \text{logits} + g`, :math:`g \sim \text{Gumbel}(0, 1)`, for
    :math:`j = 1..k`: :math:`p_j = \mathrm{softmax}(\alpha_j / \tau)`, :math:`y \mathrel{+}= p_j`,
    :math:`\alpha_{j+1} = \alpha_j + \log(1 - p_j)`. The entries of ``y`` sum to ``k``.

    Args:
        logits: unnormalised log-probabilities, any shape; the output has its dtype and shape.
        k: subset size, 1 <= k <= logits.shape[dim] (else ValueError).
        tau: temperature > 0: a float, or a tensor broadcastable to ``logits`` with size 1
            along ``dim`` (one temperature per row); a tensor that requires grad gets its gradient.
        hard: return the exact k-hot of the top-k of ``logits + g`` (exactly k ones: a sample
            of k classes without replacement from softmax(logits)) with the relaxed gradient.
        dim: the class dimension.
        generator, seed, backend: as for :func:`gumbel_softmax`. The noise is gumbel_softmax's,
            so ``k=1`` with the same generator state or seed gives gumbel_softmax's sample.

    Ties in the top-k go to the lowest index; fewer than k classes with finite logits are made
    up with the lowest-index ``-inf`` ones. Rows with a NaN or no finite maximum are NaN.
    The Triton kernel takes rows of up to 4096 classes and k <= 64; larger ones run the
    reference with a RuntimeWarning. The native CPU kernel takes any number of classes and k.
    """
    _check_logits(logits)
    dim = _normalize_dim(dim, logits.dim())
    shape = RowShape.of(logits.shape, dim)
    k = _check_k(k, shape.classes, logits.shape, dim)
    tau = _check_tau(tau, logits, dim)
    if logits.numel() == 0:
        return _empty_like_result(logits)
    if logits.dim() == 0:
        return gumbel_topk(logits.reshape(1), k, tau, hard, 0, generator=generator, seed=seed,
                           backend=backend).reshape(())
    chosen = select_backend_for_op(logits.device, backend, has_native=_native.topk_available(logits.device.type))
    if chosen == "triton" and not _fused_topk_supported(shape.classes, k):
        chosen = "reference"
    tau_requires_grad = isinstance(tau, torch.Tensor) and tau.requires_grad
    save_stats = torch.is_grad_enabled() and (logits.requires_grad or tau_requires_grad)
    if _graph_mode():
        _check_compiled_call(generator, seed)
        mode = _relaxed_op.MODE_HARD if hard else _relaxed_op.MODE_SOFT
        return _relaxed_op.gumbel_topk(logits, _tau_for_kernel(tau, logits, dim), k, mode, dim, save_stats, seed,
                                       chosen)
    chosen = _outside_transforms(chosen)
    key, offset = _seeding.draw(logits.device, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference_relaxed.gumbel_topk(logits, k, tau, hard, dim, seed=key, offset=offset)
    from .relaxed_function import GumbelTopkFunction

    return GumbelTopkFunction.apply(logits, _tau_for_kernel(tau, logits, dim), k, bool(hard), dim, key, offset,
                                    save_stats, chosen == "native")


def sample_subset(
    logits: torch.Tensor,
    k: int,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    backend: Optional[Backend] = None,
) -> torch.Tensor:
    """Exact draw of k distinct classes without replacement from softmax(logits) (Gumbel-top-k).

    Returns int64 indices: the logits' shape with size ``k`` along ``dim``, in decreasing
    order of ``logits + g`` (so index 0 along ``dim`` is a categorical draw and the order is
    a Plackett-Luce sample). No gradient; rows with a NaN or no finite maximum give -1. Same
    noise stream as :func:`gumbel_topk` (whose hard sample is the k-hot of these indices);
    ``generator``, ``seed`` and ``backend`` as there.
    """
    _check_logits(logits)
    dim = _normalize_dim(dim, logits.dim())
    shape = RowShape.of(logits.shape, dim)
    k = _check_k(k, shape.classes, logits.shape, dim)
    out_shape = list(logits.shape)
    if out_shape:
        out_shape[dim] = k
    if logits.numel() == 0:
        return torch.empty(out_shape, dtype=torch.int64, device=logits.device)
    if logits.dim() == 0:
        return sample_subset(logits.reshape(1), k, 0, generator=generator, seed=seed, backend=backend).reshape(())
    chosen = select_backend_for_op(logits.device, backend, has_native=_native.topk_available(logits.device.type))
    if chosen == "triton" and not _fused_topk_supported(shape.classes, k):
        chosen = "reference"
    logits = logits.detach()
    if _graph_mode():
        _check_compiled_call(generator, seed)
        return _relaxed_op.gumbel_topk(logits, 1.0, k, _relaxed_op.MODE_INDEX, dim, False, seed, chosen)
    chosen = _outside_transforms(chosen)
    key, offset = _seeding.draw(logits.device, generator, seed)
    if chosen == "reference":
        _check_host_seed(key)
        return reference_relaxed.sample_subset(logits, k, dim, seed=key, offset=offset)
    from .relaxed_function import topk_forward

    return topk_forward(logits, 1.0, k, _relaxed_op.MODE_INDEX, dim, key, offset, False, native=chosen == "native")[0]
