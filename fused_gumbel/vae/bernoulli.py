"""Bernoulli VAE for binarised-intensity MNIST: 200 binary latents (Jang, Gu & Poole, ICLR 2017,
the "Bernoulli" rows of their VAE table), trained through the relaxed Bernoulli.

The encoder maps an image to the logits ``l`` of 200 independent Bernoulli latents; a
(relaxed) sample ``z`` is decoded to Bernoulli pixel probabilities. With q = sigmoid(l) and
a Bernoulli(1/2) prior, the negative ELBO per image is

    L(x) = BCE(decoder(z), x) summed over the 784 pixels
           + sum_latents [q log q + (1 - q) log(1 - q) + log 2],

averaged over the batch. Training uses ``fused_gumbel.relaxed_bernoulli`` (soft, or hard
with the straight-through gradient); the test loss uses exact draws
(``fused_gumbel.bernoulli``). The KL is formed from log-sigmoids, with no epsilon.

The classes duck-type ``CategoricalVAE`` / ``LatentSampler`` / ``negative_elbo`` of
``fused_gumbel.vae.model`` (same methods and signatures), so the trainer can switch on a
``--latent bernoulli`` option; the architecture is the same MLP with a 200-unit code.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import StraightThrough
from .model import IMAGE_PIXELS, SAMPLER_NAMES, MLPVAE, Sampler

__all__ = ["BernoulliSampler", "BernoulliVAE", "negative_elbo_bernoulli", "SAMPLER_NAMES"]

LATENTS = 200


def _torch_relaxed(logits: Tensor, tau: float | Tensor, hard: bool = False) -> Tensor:
    tau = torch.as_tensor(tau, dtype=torch.float32, device=logits.device)
    soft = torch.distributions.RelaxedBernoulli(tau, logits=logits.float()).rsample().to(logits.dtype)
    return StraightThrough.apply(soft, (soft > 0.5).to(soft.dtype)) if hard else soft


class BernoulliSampler(Sampler):
    """``relaxed(logits, tau, hard)`` (differentiable, for training) and ``discrete(logits)``
    (exact 0/1 draws, no gradient), from one backend:

    * ``fused``: ``fused_gumbel.relaxed_bernoulli`` and ``fused_gumbel.bernoulli``.
    * ``reference``: ``fused_gumbel.reference_relaxed``'s two functions.
    * ``torch``: ``torch.distributions.RelaxedBernoulli.rsample`` (straight-through at 0.5
      for hard) and ``torch.bernoulli(sigmoid(logits))``.
    """

    def _bind(self, name: str) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]:
        if name == "fused":
            import fused_gumbel

            return (lambda logits, tau, hard: fused_gumbel.relaxed_bernoulli(logits, tau, hard=hard),
                    fused_gumbel.bernoulli)
        if name == "reference":
            from fused_gumbel import reference_relaxed

            return (lambda logits, tau, hard: reference_relaxed.relaxed_bernoulli(logits, tau, hard=hard),
                    reference_relaxed.bernoulli)
        return _torch_relaxed, lambda logits: torch.bernoulli(torch.sigmoid(logits.float())).to(logits.dtype)


class BernoulliVAE(MLPVAE):
    """MLP encoder/decoder (784-512-256-200 / 200-256-512-784) around ``latent_dim`` binary latents.

    ``forward`` returns ``(decoder_logits, encoder_logits)``: decoder output before the
    sigmoid and the encoder logits ``[B, latent_dim]``. With ``learn_tau=True`` the
    temperature is the parameter ``log_tau`` and the ``tau`` argument of ``forward`` is ignored.
    """

    def __init__(self, latent_dim: int = LATENTS, learn_tau: bool = False, initial_tau: float = 1.0) -> None:
        super().__init__(latent_dim, learn_tau, initial_tau)
        self.latent_dim = latent_dim

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images.reshape(-1, IMAGE_PIXELS))

    def prior_codes(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` draws from the Bernoulli(1/2) prior, ``[count, latent_dim]``, on the model's
        device (drawn on the CPU, so a CPU ``generator`` reproduces them on any device)."""
        device = next(self.parameters()).device
        return torch.randint(0, 2, (count, self.latent_dim), generator=generator).float().to(device)


def negative_elbo_bernoulli(decoder_logits: Tensor, images: Tensor,
                            encoder_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, bce, kl)``, each summed per image and averaged over the batch.

    ``KL(Bernoulli(q) || Bernoulli(1/2)) = q log q + (1 - q) log(1 - q) + log 2`` with
    ``log q = logsigmoid(l)`` and ``log(1 - q) = logsigmoid(-l)``: finite for any logit.
    """
    batch = images.shape[0]
    targets = images.reshape(batch, -1).to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(decoder_logits.float(), targets, reduction="sum") / batch
    logits = encoder_logits.float()
    log_q, log_not_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    kl = (log_q.exp() * log_q + log_not_q.exp() * log_not_q + math.log(2.0)).sum() / batch
    return bce + kl, bce, kl
