"""Categorical VAE on MNIST with the fused Gumbel-Softmax sampler dropped in.

Reproduces the classic PyTorch Gumbel-Softmax VAE tutorial (Jang, Gu & Poole,
"Categorical Reparameterization with Gumbel-Softmax", ICLR 2017) and improves on it.
``--latent bernoulli`` trains the binary-latent variant instead (200 Bernoulli latents with
a Bernoulli(0.5) prior, relaxed by ``fused_gumbel.relaxed_bernoulli``).
Run it with ``python -m fused_gumbel.vae`` or the ``fused-gumbel-vae`` console script;
``--estimator st|gumbel_rao|reinmax`` picks the gradient of hard samples, and
``python -m fused_gumbel.vae.study`` trains estimators x seeds and writes the results table and
plot that docs/vae.md shows; see ``docs/vae.md``.
"""
from fused_gumbel.vae.bernoulli import BernoulliSampler, BernoulliVAE, negative_elbo_bernoulli
from fused_gumbel.vae.data import MNISTUnavailableError, load_mnist, resolve_data_root
from fused_gumbel.vae.model import CategoricalVAE, LatentSampler, negative_elbo
from fused_gumbel.vae.train import Trainer, TrainConfig, run_training

__all__ = [
    "CategoricalVAE",
    "LatentSampler",
    "negative_elbo",
    "BernoulliVAE",
    "BernoulliSampler",
    "negative_elbo_bernoulli",
    "MNISTUnavailableError",
    "load_mnist",
    "resolve_data_root",
    "TrainConfig",
    "Trainer",
    "run_training",
]
