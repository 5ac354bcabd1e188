"""Gradient estimators beyond straight-through for the hard Gumbel-Softmax: the PyTorch reference.

Every estimator forwards the same exact one-hot ``D = one_hot(argmax(logits + g))`` as
``gumbel_softmax(..., hard=True)`` (same noise stream, ``fused_gumbel/rng.py``); only the
backward differs. Each is a differentiable surrogate ``S(logits, tau)`` whose value is ignored
(``StraightThrough``: the forward is ``D``, the gradient is ``S``'s):

- ``"st"``: straight-through Gumbel-Softmax, ``S = softmax((logits + g) / tau)``.
- ``"gumbel_rao"``: Gumbel-Rao (Paulus, Maddison, Krause, "Rao-Blackwellizing the
  Straight-Through Gumbel-Softmax Gradient Estimator", ICLR 2021):
  ``S = mean_k softmax((logits + h_k) / tau)`` over K draws ``h_k`` of the noise *conditioned on*
  ``argmax(logits + h_k) = argmax(logits + g)``, the noise held constant (as the paper's code,
  nshepperd/gumbel-rao-pytorch, computes it under ``no_grad``). Its expectation equals ST's and
  its variance is no larger (Rao-Blackwellisation). Exact conditional sampling, with ``i`` the
  chosen class, ``logZ = logsumexp(logits)`` and ``e_k`` fresh Gumbel(0, 1) draws:
  the chosen class's perturbed logit is ``M = logZ + e_i`` (a Gumbel(logZ), the law of the max),
  and every other class ``j`` is Gumbel(logits_j) truncated below ``M``:
  ``z_j = -log(exp(-M) + exp(-(logits_j + e_j))) = M - softplus(M - logits_j - e_j)``.
- ``"reinmax"``: ReinMax (Liu, Zhang, Gao et al., "Bridging Discrete and Backpropagation:
  Straight-Through and Beyond", NeurIPS 2023; the ``reinmax`` package, microsoft/ReinMax), a
  second-order (Heun) correction to straight-through:
  ``pi0 = softmax(logits)``, ``pi1 = (D + softmax(logits / tau)) / 2`` with the Jacobian of a
  softmax at ``pi1`` (``softmax((log pi1 - logits).detach() + logits)``), ``S = 2 pi1 - pi0 / 2``.
  So ``dlogits = 2 pi1 (dy - <dy, pi1>) - pi0 (dy - <dy, pi0>) / 2``, the official backward
  without its final subtraction of the row mean (zero in exact arithmetic: both terms are
  softmax-Jacobian products), so classes with ``-inf`` logits get exactly 0. ``tau`` gets no
  gradient, as in the official code. ``D`` here is our Gumbel-max sample (the official code
  draws it with ``torch.multinomial``; both are exact Categorical(softmax(logits)) draws).

RNG spec addition (version 2, conditional draws): draw ``k`` (0-based, ``k < MAX_MC_SAMPLES``)
of Gumbel-Rao for element ``(r, c)`` of the ``[R, K]`` row view is spec steps 3-5 applied to
word ``c % 4`` of the Philox call with the call's key and offset and counter
``n = r * Q + c // 4 + (k + 1) * 2**48`` (``Q = ceil(K / 4)``): the main draw's counter lifted
into a disjoint range (the main stream's counters stay below ``2**48``: ``R * Q < 2**48``).
The kernels (``kernels/gumbel_estimators.py``) and :func:`conditional_noise_rows` map them to
identical words, so tests compare them on identical noise.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from . import _autograd, reference, rng

ESTIMATORS = ("st", "gumbel_rao", "reinmax")
# Conditional draw k uses counters offset by (k + 1) * CONDITIONAL_COUNTER_STRIDE (spec addition above).
CONDITIONAL_COUNTER_STRIDE = 2**48
# (k + 1) * 2**48 stays below 2**63 (a non-negative int64 counter).
MAX_MC_SAMPLES = 2**15 - 1

# Monte-Carlo draws of Gumbel-Rao when mc_samples is not given (the paper reports K in {1, 10, 100, 1000}).
DEFAULT_MC_SAMPLES = 10

Tau = Union[float, torch.Tensor]


def check_estimator(estimator, hard, mc_samples) -> int:
    """Validate the estimator options of ``gumbel_softmax``; returns the number of Monte-Carlo draws."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
    if mc_samples is not None:
        if estimator != "gumbel_rao":
            raise ValueError(f"mc_samples applies only to estimator='gumbel_rao', got estimator={estimator!r}")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, numbers.Integral):
            raise TypeError(f"mc_samples must be an int, got {type(mc_samples).__name__}")
        if not 1 <= mc_samples <= MAX_MC_SAMPLES:
            raise ValueError(f"mc_samples must be in [1, {MAX_MC_SAMPLES}], got {mc_samples}")
    if estimator != "st" and not hard:
        raise ValueError(f"estimator={estimator!r} is a gradient estimator for hard samples: pass hard=True")
    if mc_samples is None:
        return DEFAULT_MC_SAMPLES if estimator == "gumbel_rao" else 1
    return int(mc_samples)


def check_counter_range(rows: int, classes: int) -> None:
    """The conditional draws' counters are disjoint from the main stream's only below 2**48 calls."""
    if rows * -(-classes // rng.WORDS_PER_CALL) >= CONDITIONAL_COUNTER_STRIDE:
        raise ValueError(f"gumbel_rao supports up to 2**48 Philox calls per tensor ({rows} rows of {classes} classes)")


def conditional_noise_rows(rows: int, classes: int, seed: int, offset: int, draw: int, dtype: torch.dtype,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``[rows, classes]`` Gumbel(0, 1) noise ``e`` of conditional draw ``draw`` (spec addition above)."""
    calls = -(-classes // rng.WORDS_PER_CALL)
    counters = torch.arange(rows * calls, dtype=torch.int64, device=device) + (draw + 1) * CONDITIONAL_COUNTER_STRIDE
    words = rng.philox4x32(rng.philox_key(seed), offset, counters).reshape(rows, calls * rng.WORDS_PER_CALL)
    return rng.gumbel_from_bits(words[:, :classes] >> 1, dtype).to(device)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without overflow, as the kernel computes it (inf stays inf)."""
    return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


def conditional_perturbed(logits_rows: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Perturbed logits ``z`` distributed as ``logits + Gumbel`` given ``argmax(z) = index``, from
    unconditional Gumbel(0, 1) ``noise`` (``[rows, K]``, ``index`` ``[rows, 1]``), no gradient."""
    x = logits_rows.detach()
    log_z = torch.logsumexp(x, -1, keepdim=True)
    chosen_max = log_z + noise.gather(-1, index)
    others = chosen_max - softplus(chosen_max - (x + noise))
    return others.scatter(-1, index, chosen_max)


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as the RNG spec's ``[R, K]`` row view (``dim`` moved last)."""
    return t.movedim(dim, -1).reshape(-1, t.shape[dim])


def _broadcast_tau(tau: Tau, like: torch.Tensor):
    return tau.to(like.dtype) if isinstance(tau, torch.Tensor) else tau


def surrogate(logits: torch.Tensor, tau: Tau, dim: int, index: torch.Tensor, estimator: str,
              mc_samples: int = 1, seed: Optional[int] = None, offset: Optional[int] = None) -> torch.Tensor:
    """The surrogate ``S`` of "gumbel_rao" or "reinmax" (compute dtype, the logits' shape), differentiable
    in (logits, tau), given the forward's choice ``index`` (int64, size 1 along ``dim``). ``tau`` is a
    float or a tensor that broadcasts to the logits; "gumbel_rao" draws its conditional noise from the
    call's ``(seed, offset)``."""
    x = logits.to(reference.compute_dtype(logits.dtype))
    tau = _broadcast_tau(tau, x)
    if estimator == "reinmax":
        one_hot = torch.zeros_like(x).scatter(dim, index, 1.0)
        pi0 = torch.softmax(x, dim)
        pi1 = (one_hot + torch.softmax(x.detach() / (tau.detach() if isinstance(tau, torch.Tensor) else tau), dim)) / 2
        # The value pi1 with a softmax's Jacobian at pi1; classes with pi1 = 0 (-inf logits) stay at 0.
        positive = pi1 > 0
        shift = torch.where(positive, torch.log(pi1) - x.detach(), 0.0)
        pi1 = torch.softmax(torch.where(positive, shift + x, float("-inf")), dim)
        return 2 * pi1 - pi0 / 2
    if estimator == "gumbel_rao":
        rows_view = _rows(x, dim)
        index_rows = _rows(index, dim)
        check_counter_range(*rows_view.shape)
        moved_shape = x.movedim(dim, -1).shape
        total = 0
        for draw in range(mc_samples):
            e = conditional_noise_rows(*rows_view.shape, seed, offset, draw, x.dtype, x.device)
            z = conditional_perturbed(rows_view, index_rows, e)
            noise_k = (z - rows_view.detach()).reshape(moved_shape).movedim(-1, dim)
            # -inf logits (z = -inf) stay at probability 0 and out of the arithmetic, whose derivatives
            # there (x + (z - x), and 1 / tau of -inf) would be NaN.
            finite = torch.isfinite(noise_k)
            perturbed = torch.where(finite, x, 0.0) + torch.where(finite, noise_k, 0.0)
            total = total + torch.softmax(torch.where(finite, perturbed / tau, float("-inf")), dim)
        return total / mc_samples
    raise ValueError(f"surrogate takes 'gumbel_rao' or 'reinmax', got {estimator!r}")


def forward_index(logits: torch.Tensor, dim: int, seed: int, offset: int) -> torch.Tensor:
    """The reference forward's choice ``argmax(logits + g)`` (int64, size 1 along ``dim``)."""
    perturbed = reference._perturbed(logits.detach(), dim, None, None, seed, offset)[0]
    return perturbed.argmax(dim, keepdim=True)


def surrogate_grads(grad_y: torch.Tensor, logits: torch.Tensor, tau: Tau, dim: int, index: torch.Tensor,
                    estimator: str, mc_samples: int, seed: int, offset: int, tau_grad: bool):
    """(grad_logits, grad_tau or None) of ``estimator`` given the forward's ``index``, in PyTorch ops
    (differentiable when grad mode is on: double backward). ``tau`` is a float or the kernels'
    form (0-dim, or [rows] in RNG-spec row order); a tensor tau that ``tau_grad`` asks for gets a
    gradient of its own shape (None for ReinMax, which gives tau none)."""
    logits = logits.detach().requires_grad_() if not logits.requires_grad else logits
    inputs = [logits]
    wants_tau = tau_grad and isinstance(tau, torch.Tensor)
    if wants_tau:
        tau = tau if tau.requires_grad else tau.detach().requires_grad_()
        inputs.append(tau)
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        s = surrogate(logits, _autograd.row_tau(tau, logits.shape, dim), dim, index, estimator, mc_samples, seed,
                      offset)
        grads = torch.autograd.grad(s, inputs, grad_y.to(s.dtype), create_graph=create_graph, allow_unused=True)
    return grads[0].to(logits.dtype), grads[1] if wants_tau else None


def gumbel_softmax(logits: torch.Tensor, tau: Tau = 1.0, dim: int = -1, *, estimator: str = "st",
                   mc_samples: int = 1, generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                   offset: Optional[int] = None) -> torch.Tensor:
    """Reference hard Gumbel-Softmax with the gradient of ``estimator``: the exact one-hot of
    ``argmax(logits + g)`` for the noise of ``(seed, offset)`` (else drawn from ``generator``),
    bit for bit the one-hot of ``reference.gumbel_softmax(..., hard=True)``."""
    if estimator == "st":
        return reference.gumbel_softmax(logits, tau, True, dim, generator=generator, seed=seed, offset=offset)
    if seed is None:
        seed, offset = rng.draw_seed_offset(logits.device, generator)
    offset = 0 if offset is None else offset
    dim = dim % logits.dim()
    perturbed, _, invalid, _ = reference._perturbed(logits.detach(), dim, None, None, seed, offset)
    index = perturbed.argmax(dim, keepdim=True)
    hard = reference._nan_rows(reference._one_hot(perturbed, dim, index), invalid)
    soft = surrogate(logits, tau, dim, index, estimator, mc_samples, seed, offset)
    return reference.StraightThrough.apply(reference._nan_rows(soft, invalid), hard).to(logits.dtype)
