"""Categorical VAE for binarised-intensity MNIST (Jang, Gu & Poole, ICLR 2017).

The encoder maps an image to logits of ``latent_dim`` independent categoricals with
``categories`` classes each; a (relaxed) sample ``z`` of those categoricals is decoded
back to Bernoulli pixel probabilities. The negative ELBO per image is

    L(x) = -E_q[log p(x | z)] + KL(q(z | x) || Uniform(categories)^latent_dim)
         = BCE(decoder(z), x) summed over the 784 pixels
           + sum_latents sum_k q_k * (log q_k + log categories),

averaged over the batch. During training ``z`` is a Gumbel-Softmax sample (soft, or
hard with a straight-through-family gradient: ST, Gumbel-Rao or ReinMax); the *unrelaxed* objective and the test loss
use an exact one-hot categorical draw instead.

The architecture is that of the classic PyTorch Gumbel-Softmax VAE tutorial
(784-512-256-(30x10) / (30x10)-256-512-784). ``relu_logits=True`` reproduces that
tutorial's quirk of passing the encoder logits through a ReLU, which clips every
negative logit to 0 and so limits how peaked q can become.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LatentSampler", "CategoricalVAE", "negative_elbo", "SAMPLER_NAMES", "estimator_support_error"]

SAMPLER_NAMES = ("fused", "reference", "torch")

IMAGE_PIXELS = 28 * 28


def _torch_categorical_one_hot(logits: Tensor) -> Tensor:
    # Gumbel-max with -log(Exp(1)) noise is an exact categorical draw.
    exponential = torch.empty_like(logits, dtype=torch.float32).exponential_()
    index = (logits.float() - exponential.log()).argmax(dim=-1)
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype)


class Sampler:
    """The two draws a VAE needs, taken from one backend (``SAMPLER_NAMES``):
    ``relaxed(logits, tau, hard)``, differentiable, for training, and ``discrete(logits)``,
    exact and without gradient, for the unrelaxed loss, the test loss and reconstructions.
    Subclasses bind the backend's two functions in ``_bind``."""

    def __init__(self, name: str = "fused") -> None:
        if name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_NAMES)}")
        self.name = name
        self._relaxed, self._discrete = self._bind(name)

    def _bind(self, name: str) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]:
        raise NotImplementedError

    def relaxed(self, logits: Tensor, tau: float | Tensor, hard: bool) -> Tensor:
        return self._relaxed(logits, tau, hard)

    @torch.no_grad()
    def discrete(self, logits: Tensor) -> Tensor:
        return self._discrete(logits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _relaxed_function(name: str) -> Callable[..., Tensor]:
    if name == "fused":
        import fused_gumbel

        return fused_gumbel.gumbel_softmax
    if name == "reference":
        from fused_gumbel import reference

        return reference.gumbel_softmax
    return F.gumbel_softmax


def estimator_support_error(name: str) -> str | None:
    """Why sampler ``name``'s ``gumbel_softmax`` cannot take ``estimator=`` (None if it can)."""
    function = _relaxed_function(name)
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return f"the signature of {function!r} cannot be inspected"
    if "estimator" not in parameters:
        module = getattr(function, "__module__", "?")
        return (f"{module}.gumbel_softmax has no estimator= option in this build of fused_gumbel "
                "(gradient estimators beyond straight-through: issue 12)")
    return None


class LatentSampler(Sampler):
    """Categorical draws over the last dim.

    * ``fused``: ``fused_gumbel.gumbel_softmax`` and ``fused_gumbel.categorical``.
    * ``reference``: ``fused_gumbel.reference.gumbel_softmax`` and ``.categorical``.
    * ``torch``: ``torch.nn.functional.gumbel_softmax``; discrete draws by Gumbel-max
      with ``torch.Tensor.exponential_`` noise.

    ``estimator`` ("st", "gumbel_rao", "reinmax") and ``mc_samples`` choose the backward of
    hard samples; they are passed on only when not "st", so "st" runs on any build.
    """

    def __init__(self, name: str = "fused", estimator: str = "st", mc_samples: int | None = None) -> None:
        # Filled after the backend is bound and checked; the bound draw reads this same dict.
        self.estimator_options: dict[str, Any] = {}
        super().__init__(name)
        if estimator != "st":
            missing = estimator_support_error(name)
            if missing:
                raise ValueError(f"estimator {estimator!r}: {missing}")
            self.estimator_options["estimator"] = estimator
        if mc_samples is not None:
            self.estimator_options["mc_samples"] = mc_samples

    def _bind(self, name: str) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]:
        relaxed = _relaxed_function(name)
        options = self.estimator_options

        def draw(logits: Tensor, tau: float | Tensor, hard: bool) -> Tensor:
            return relaxed(logits, tau=tau, hard=hard, dim=-1, **options)

        if name == "torch":
            return draw, _torch_categorical_one_hot
        categorical = _categorical_function(name)
        return draw, lambda logits: categorical(logits, dim=-1, one_hot=True)


def _categorical_function(name: str) -> Callable[..., Tensor]:
    if name == "fused":
        import fused_gumbel

        return fused_gumbel.categorical
    from fused_gumbel import reference

    return reference.categorical


class MLPVAE(nn.Module):
    """The networks both VAEs share: encoder 784-512-256-``code_size``, decoder
    ``code_size``-256-512-784 (ReLU between layers), and an optional learnable temperature
    ``log_tau``. Subclasses say how the code is shaped, sampled and decoded from."""

    def __init__(self, code_size: int, learn_tau: bool = False, initial_tau: float = 1.0) -> None:
        super().__init__()
        self.code_size = code_size
        self.encoder = nn.Sequential(
            nn.Linear(IMAGE_PIXELS, 512), nn.ReLU(),
            nn.Linear(512, 256), nn.ReLU(),
            nn.Linear(256, code_size),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_size, 256), nn.ReLU(),
            nn.Linear(256, 512), nn.ReLU(),
            nn.Linear(512, IMAGE_PIXELS),
        )
        self.log_tau = nn.Parameter(torch.tensor(math.log(initial_tau))) if learn_tau else None

    @property
    def learns_tau(self) -> bool:
        return self.log_tau is not None

    def learned_tau(self) -> Tensor:
        if self.log_tau is None:
            raise RuntimeError("this model was built with learn_tau=False")
        return self.log_tau.exp()

    def decode_logits(self, codes: Tensor) -> Tensor:
        return self.decoder(codes.reshape(-1, self.code_size))

    def decode(self, codes: Tensor) -> Tensor:
        """Pixel probabilities in [0, 1], shape ``[B, 784]``."""
        return torch.sigmoid(self.decode_logits(codes))

    def forward(self, images: Tensor, sampler, tau: float | Tensor = 1.0, hard: bool = False) -> tuple[Tensor, Tensor]:
        encoder_logits = self.encode(images)
        temperature = self.learned_tau() if self.log_tau is not None else tau
        codes = sampler.relaxed(encoder_logits, temperature, hard)
        return self.decode_logits(codes), encoder_logits


class CategoricalVAE(MLPVAE):
    """MLP encoder/decoder around ``latent_dim`` categoricals of ``categories`` classes.

    ``forward`` returns ``(decoder_logits, encoder_logits)``: decoder output *before*
    the sigmoid (so the loss can use the numerically stable BCE-with-logits) and the
    encoder logits of shape ``[B, latent_dim, categories]``.
    With ``learn_tau=True`` the temperature is the parameter ``log_tau`` (trained through
    the Gumbel-Softmax gradient w.r.t. tau) and the ``tau`` argument of ``forward`` is
    ignored.
    """

    def __init__(
        self,
        latent_dim: int = 30,
        categories: int = 10,
        relu_logits: bool = False,
        learn_tau: bool = False,
        initial_tau: float = 1.0,
    ) -> None:
        super().__init__(latent_dim * categories, learn_tau, initial_tau)
        self.latent_dim = latent_dim
        self.categories = categories
        self.relu_logits = relu_logits

    def encode(self, images: Tensor) -> Tensor:
        logits = self.encoder(images.reshape(-1, IMAGE_PIXELS))
        if self.relu_logits:
            logits = F.relu(logits)
        return logits.view(-1, self.latent_dim, self.categories)


def negative_elbo(decoder_logits: Tensor, images: Tensor, encoder_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, bce, kl)``, each summed per image and averaged over the batch.

    ``KL(q || Uniform(K)) = sum_k q_k (log q_k + log K)``, computed from log-softmax so
    it needs no epsilon (the tutorial's ``log(q * K + 1e-20)`` is the same quantity).
    """
    batch = images.shape[0]
    targets = images.reshape(batch, -1).to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(decoder_logits.float(), targets, reduction="sum") / batch
    log_q = F.log_softmax(encoder_logits.float(), dim=-1)
    categories = encoder_logits.shape[-1]
    kl = (log_q.exp() * (log_q + math.log(categories))).sum() / batch
    return bce + kl, bce, kl
