"""Pure-PyTorch references for the binary and subset relaxations; also their CPU backend.

Relaxed Bernoulli / binary Concrete (Maddison, Mnih, Teh 2017; Jang, Gu, Poole 2017):

    L = log(u) - log(1 - u) ~ Logistic(0, 1),   y = sigmoid((logits + L) / tau),

and ``hard=True`` forwards the exact draw 1[logits + L > 0] ~ Bernoulli(sigmoid(logits)) with
the soft sample's (straight-through) gradient.

Gumbel top-k subsets: with a = logits + g, g ~ Gumbel(0, 1), the top-k indices of a are k
classes drawn without replacement from softmax(logits) (the Gumbel-top-k trick; Vieira 2014,
Kool, van Hoof, Welling 2019); their relaxation is Xie & Ermon's (IJCAI 2019):

    alpha_1 = a;   for j = 1..k:  p_j = softmax(alpha_j / tau),  y += p_j,
                                  alpha_{j+1} = alpha_j + log(1 - p_j),

with log(1 - p) evaluated without cancellation exactly as the kernels do
(``kernels/gumbel_topk.py``): for the step's argmax i*, 1 - p_i* is the softmax mass of the
other classes, summed relative to the runner-up. Gradients come from autograd.

The noise follows ``fused_gumbel/rng.py`` bit for bit (the elementwise mapping for the
Bernoulli, the Gumbel mapping for top-k), so a kernel and this module given the same
``(seed, offset)`` see identical noise; ``noise=`` replaces it with an explicit tensor.
"""
from __future__ import annotations

import torch

from . import rng
from .reference import StraightThrough, _perturbed, compute_dtype, resolve_noise


def logistic_noise(logits: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """The spec's elementwise logistic noise for ``logits`` (same shape, compute dtype)."""
    noise = rng.logistic_noise_flat(logits.numel(), seed, offset, compute_dtype(logits.dtype), logits.device)
    return noise.reshape(logits.shape)


def _resolve_logistic_noise(logits, generator, noise, seed, offset):
    return resolve_noise(logits, generator, noise, seed, offset, lambda s, o: logistic_noise(logits, s, o))


def relaxed_bernoulli(logits: torch.Tensor, tau: float | torch.Tensor = 1.0, hard: bool = False, *,
                      generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                      seed: int | None = None, offset: int | None = None) -> torch.Tensor:
    """Reference ``relaxed_bernoulli``; the noise comes from ``noise``, else ``(seed, offset)``,
    else a fresh ``(seed, offset)`` drawn from ``generator``. ``tau`` broadcasts to the logits."""
    noise = _resolve_logistic_noise(logits, generator, noise, seed, offset)
    z = logits.to(noise.dtype) + noise
    tau = torch.as_tensor(tau, dtype=noise.dtype, device=noise.device)
    # Infinite z saturates the sigmoid; keeping tau out of that branch avoids 0 * inf in dtau.
    finite = torch.isfinite(z)
    scaled = torch.where(finite, torch.where(finite, z, 0.0) / tau, z)
    # sigmoid as exp(logsigmoid): autograd then forms y * sigmoid(-s), not y * (1 - y), which
    # loses all precision as y rounds to 1.
    y = torch.exp(torch.nn.functional.logsigmoid(scaled))
    if hard:
        y_hard = (z > 0).to(y.dtype).masked_fill(torch.isnan(z), float("nan"))
        y = StraightThrough.apply(y, y_hard)
    return y.to(logits.dtype)


def bernoulli(logits: torch.Tensor, *, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
              seed: int | None = None, offset: int | None = None) -> torch.Tensor:
    """Reference exact draw of Bernoulli(sigmoid(logits)): 1[logits + L > 0] in the logits' dtype."""
    noise = _resolve_logistic_noise(logits, generator, noise, seed, offset)
    z = logits.detach().to(noise.dtype) + noise
    return (z > 0).to(logits.dtype).masked_fill(torch.isnan(z), float("nan"))


def relaxed_topk_rows(perturbed: torch.Tensor, k: int, tau: torch.Tensor) -> torch.Tensor:
    """Xie & Ermon's relaxed k-hot of the rows of ``perturbed`` (last dim), differentiable.

    Each step's softmax is taken relative to its max m (argmax i*) and, off the argmax,
    to the runner-up m2, so that 1 - p_i* = c R' / S is formed without cancellation:
    log(1 - p_i*) = (m2 - m) / tau + log R' - log S. Elsewhere p <= 1/2 and log1p(-p) is exact.
    """
    alpha = perturbed
    khot = torch.zeros_like(perturbed)
    for _ in range(k):
        shift = alpha.amax(-1, keepdim=True).detach()
        best = alpha.argmax(-1, keepdim=True)  # the first maximum, as the kernels
        is_best = torch.zeros_like(alpha, dtype=torch.bool).scatter_(-1, best, True)
        runner_up = alpha.masked_fill(is_best, float("-inf")).amax(-1, keepdim=True).detach()
        runner_up = torch.where(runner_up > float("-inf"), runner_up, shift)
        live = (alpha > float("-inf")) & ~is_best
        e_rest = torch.where(live, torch.exp(torch.where(live, alpha - runner_up, 0.0) / tau), 0.0)
        rest = e_rest.sum(-1, keepdim=True)
        scale = torch.exp((runner_up - shift) / tau)
        e_best = torch.exp((alpha.gather(-1, best) - shift) / tau)  # exactly 1, with its gradient
        total = e_best + scale * rest
        p = torch.where(is_best, e_best, e_rest * scale) / total
        khot = khot + p
        # With no other live class left (k above the finite logits) alpha_i* stays as it is.
        has_rest = rest > 0
        taken = torch.where(has_rest, (runner_up - shift) / tau + torch.log(torch.where(has_rest, rest, 1.0))
                            - torch.log(total), 0.0)
        alpha = alpha + torch.where(is_best, taken, torch.log1p(-torch.where(is_best, 0.0, p)))
    return khot


def topk_indices_rows(perturbed: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of each row (last dim), largest first, ties by lowest index."""
    return torch.sort(perturbed, dim=-1, descending=True, stable=True).indices[..., :k]


def gumbel_topk(logits: torch.Tensor, k: int, tau: float | torch.Tensor = 1.0, hard: bool = False, dim: int = -1, *,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                seed: int | None = None, offset: int | None = None) -> torch.Tensor:
    """Reference ``gumbel_topk``: the relaxed k-hot, or with ``hard`` the exact k-hot of the
    top-k of logits + g with the relaxed gradient. Rows with a NaN or no finite maximum are NaN."""
    perturbed, _, invalid, dim = _perturbed(logits, dim, generator, noise, seed, offset)
    rows = perturbed.movedim(dim, -1)
    invalid_rows = invalid.movedim(dim, -1)
    safe_rows = rows.masked_fill(invalid_rows, 0.0)
    if hard:
        y_hard = torch.zeros_like(safe_rows).scatter_(-1, topk_indices_rows(safe_rows, k), 1.0)
        y_hard = y_hard.masked_fill(invalid_rows, float("nan"))
        tau_needs_grad = isinstance(tau, torch.Tensor) and tau.requires_grad
        if not (torch.is_grad_enabled() and (logits.requires_grad or tau_needs_grad)):
            return y_hard.movedim(-1, dim).to(logits.dtype).reshape(logits.shape)  # no relaxation needed
    tau = torch.as_tensor(tau, dtype=rows.dtype, device=rows.device)
    if tau.dim():  # one temperature per row: size 1 along dim, moved last like the rows
        row_shape = list(perturbed.shape)
        row_shape[dim] = 1
        tau = tau.expand(row_shape).movedim(dim, -1)
    y = relaxed_topk_rows(safe_rows, k, tau).masked_fill(invalid_rows, float("nan"))
    if hard:
        y = StraightThrough.apply(y, y_hard)
    return y.movedim(-1, dim).to(logits.dtype).reshape(logits.shape)


def sample_subset(logits: torch.Tensor, k: int, dim: int = -1, *, generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None, seed: int | None = None,
                  offset: int | None = None) -> torch.Tensor:
    """Reference exact k-subset: int64 indices, size k along ``dim`` in decreasing order of
    logits + g (-1 for rows with a NaN or no finite maximum)."""
    perturbed, _, invalid, dim = _perturbed(logits.detach(), dim, generator, noise, seed, offset)
    rows = perturbed.movedim(dim, -1)
    index = topk_indices_rows(rows.masked_fill(invalid.movedim(dim, -1), 0.0), k)
    index = index.masked_fill(invalid.movedim(dim, -1), -1)
    return index.movedim(-1, dim)
