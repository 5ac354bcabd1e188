"""Categorical VAE on MNIST with the fused Gumbel-Softmax sampler dropped in.

Reproduces the classic PyTorch Gumbel-Softmax VAE tutorial (Jang, Gu & Poole,
"Categorical Reparameterization with Gumbel-Softmax", ICLR 2017) and improves on it.
Run it with ``python -m fused_gumbel.vae`` or the ``fused-gumbel-vae`` console script;
see ``docs/vae.md``.
"""
from fused_gumbel.vae.data import MNISTUnavailableError, load_mnist, resolve_data_root
from fused_gumbel.vae.model import CategoricalVAE, LatentSampler, negative_elbo
from fused_gumbel.vae.train import Trainer, TrainConfig, run_training

__all__ = [
    "CategoricalVAE",
    "LatentSampler",
    "negative_elbo",
    "MNISTUnavailableError",
    "load_mnist",
    "resolve_data_root",
    "TrainConfig",
    "Trainer",
    "run_training",
]
