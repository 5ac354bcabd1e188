"""Categorical VAE pieces in-process (fast, no training): model shapes, the negative
ELBO against the seed tutorial's formula, the samplers' draws, the recipes and the
command line's config resolution, and the data root / offline handling."""
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fused_gumbel.vae import data as vae_data
from fused_gumbel.vae.__main__ import build_parser, config_from_args
from fused_gumbel.vae.model import CategoricalVAE, LatentSampler, negative_elbo
from fused_gumbel.vae.model import estimator_support_error
from fused_gumbel.vae.train import DEFAULT_RECIPE, RECIPES, REINMAX_RECIPE, SEED_RECIPE, TrainConfig, _noise_seed

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_mnist_root() -> Path:
    return Path(os.environ.get("FUSED_GUMBEL_DATA") or REPO_ROOT.parent / "shared" / "data")


def test_shapes_and_relu_on_logits():
    torch.manual_seed(0)
    images = torch.rand(4, 1, 28, 28)
    for relu_logits in (False, True):
        model = CategoricalVAE(relu_logits=relu_logits)
        decoder_logits, encoder_logits = model(images, LatentSampler("torch"), tau=0.5)
        assert decoder_logits.shape == (4, 784) and encoder_logits.shape == (4, 30, 10)
        assert bool((encoder_logits >= 0).all()) == relu_logits
        assert model.decode(torch.zeros(2, 300)).shape == (2, 784)


def test_negative_elbo_equals_the_seed_tutorial_formula():
    torch.manual_seed(1)
    images = torch.rand(8, 784)
    decoder_logits = torch.randn(8, 784) * 3
    encoder_logits = torch.randn(8, 30, 10) * 4
    loss, bce, kl = negative_elbo(decoder_logits, images, encoder_logits)
    q = F.softmax(encoder_logits, dim=-1).reshape(8, 300)
    seed_bce = F.binary_cross_entropy(torch.sigmoid(decoder_logits), images, reduction="sum") / 8
    seed_kl = torch.sum(q * torch.log(q * 10 + 1e-20), dim=-1).mean()
    assert bce.item() == pytest.approx(seed_bce.item(), rel=1e-5)
    assert kl.item() == pytest.approx(seed_kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx((seed_bce + seed_kl).item(), rel=1e-5)


def test_kl_to_the_uniform_prior_is_zero_only_for_uniform_q():
    images = torch.rand(3, 784)
    _, _, kl_uniform = negative_elbo(torch.zeros(3, 784), images, torch.full((3, 30, 10), 2.5))
    assert abs(kl_uniform.item()) < 1e-5
    peaked = torch.full((3, 30, 10), -1e4)
    peaked[..., 0] = 0.0
    _, _, kl_peaked = negative_elbo(torch.zeros(3, 784), images, peaked)
    assert kl_peaked.item() == pytest.approx(30 * math.log(10), rel=1e-5)  # log K per latent


@pytest.mark.parametrize("name", ["reference", "torch"])
def test_discrete_draws_are_one_hot_with_the_softmax_frequencies(name):
    torch.manual_seed(2)
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probabilities.log().expand(20_000, 4).contiguous()
    draws = LatentSampler(name).discrete(logits)
    assert draws.dtype == logits.dtype and set(draws.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(draws.sum(-1), torch.ones(20_000))
    frequencies = draws.mean(0)
    # 5 standard errors of a binomial proportion with n = 20,000.
    assert torch.all((frequencies - probabilities).abs() < 5 * (probabilities * (1 - probabilities) / 20_000).sqrt())


@pytest.mark.parametrize("name", ["reference", "torch"])
def test_learned_temperature_receives_a_gradient(name):
    torch.manual_seed(3)
    model = CategoricalVAE(learn_tau=True, initial_tau=0.8)
    assert model.learned_tau().item() == pytest.approx(0.8)
    images = torch.rand(16, 784)
    decoder_logits, encoder_logits = model(images, LatentSampler(name), tau=123.0)  # tau argument unused
    loss, _, _ = negative_elbo(decoder_logits, images, encoder_logits)
    loss.backward()
    assert model.log_tau.grad is not None and torch.isfinite(model.log_tau.grad) and model.log_tau.grad != 0


def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="unknown sampler"):
        LatentSampler("numpy")


def test_recipes():
    seed = TrainConfig.from_recipe(seed_recipe=True)
    assert (seed.relu_logits, seed.tau, seed.anneal_rate, seed.hard) == (True, 1.0, 0.0, False)
    assert seed.make_schedule()(10_000) == 1.0
    ours = TrainConfig.from_recipe()
    assert (ours.relu_logits, ours.anneal_rate, ours.min_tau) == (False, 1e-4, 0.5)
    schedule = ours.make_schedule()
    assert schedule(0) == 1.0 and schedule(99) == 1.0 and schedule(100) < 1.0 and schedule(10**6) == 0.5
    assert (ours.sampler, ours.batch_size, ours.lr, ours.latent_dim, ours.categories) == ("fused", 100, 1e-3, 30, 10)
    assert set(SEED_RECIPE) <= set(TrainConfig.__dataclass_fields__) and set(DEFAULT_RECIPE) <= set(TrainConfig.__dataclass_fields__)


def test_reinmax_recipe_is_liu_et_al_mnist_vae_setting():
    # github.com/LiyuanLucasLiu/ReinMax, mnist_vae/reinmax_10_30.sh: --lr 5e-4 --temperature 1.3
    # --method reinmax --optim radam --categorical-dim 10 --latent-dim 30; 160 epochs, batch 100.
    assert REINMAX_RECIPE == dict(relu_logits=False, tau=1.3, anneal_rate=0.0, hard=True, estimator="reinmax",
                                  optimizer="radam", lr=5e-4, epochs=160)
    assert set(RECIPES) == {"default", "seed", "reinmax"}
    # With "st" (which every build runs) the rest of the recipe applies unchanged.
    config = TrainConfig.from_recipe(recipe="reinmax", estimator="st")
    assert (config.recipe, config.seed_recipe, config.tau, config.make_schedule()(10**6), config.optimizer,
            config.lr, config.epochs, config.hard, config.batch_size, config.latent_dim, config.categories) == (
        "reinmax", False, 1.3, 1.3, "radam", 5e-4, 160, True, 100, 30, 10)
    assert TrainConfig.from_recipe(seed_recipe=True).recipe == "seed"
    assert TrainConfig(seed_recipe=True).recipe == "seed"  # a checkpoint from before ``recipe``
    with pytest.raises(ValueError, match="contradicts"):
        TrainConfig.from_recipe(seed_recipe=True, recipe="default")


def test_estimator_options_are_checked():
    with pytest.raises(ValueError, match="add --hard"):
        TrainConfig.from_recipe(estimator="reinmax")  # the default recipe is soft
    with pytest.raises(ValueError, match="add --hard"):
        TrainConfig.from_recipe(seed_recipe=True, estimator="gumbel_rao")
    with pytest.raises(ValueError, match="needs --estimator gumbel_rao"):
        TrainConfig.from_recipe(hard=True, mc_samples=4)
    with pytest.raises(ValueError, match=">= 1"):
        TrainConfig.from_recipe(hard=True, estimator="gumbel_rao", mc_samples=0)
    with pytest.raises(ValueError, match="--sampler fused or reference"):
        TrainConfig.from_recipe(hard=True, estimator="reinmax", sampler="torch")
    with pytest.raises(ValueError, match="categorical latents"):
        TrainConfig.from_recipe(hard=True, estimator="reinmax", latent="bernoulli")
    with pytest.raises(ValueError, match="unknown estimator"):
        TrainConfig.from_recipe(hard=True, estimator="rebar")
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig.from_recipe(optimizer="sgd")
    assert TrainConfig.from_recipe(hard=True).estimator == "st"
    parser = build_parser()
    with pytest.raises(SystemExit):
        config_from_args(parser.parse_args(["--estimator", "reinmax"]), parser)


def test_estimator_needs_an_op_that_takes_it():
    assert estimator_support_error("torch") is not None  # F.gumbel_softmax: straight-through only
    for name in ("fused", "reference"):
        missing = estimator_support_error(name)
        if missing is None:
            continue
        assert "estimator=" in missing
        with pytest.raises(ValueError, match="no estimator= option"):
            LatentSampler(name, "reinmax")
        with pytest.raises(ValueError, match="no estimator= option"):
            TrainConfig.from_recipe(hard=True, estimator="reinmax", sampler=name)


def test_st_sampler_passes_no_estimator_option_and_trains_hard():
    sampler = LatentSampler("reference", "st")
    assert sampler.estimator_options == {}
    torch.manual_seed(4)
    logits = torch.randn(8, 30, 10, requires_grad=True)
    codes = sampler.relaxed(logits, 0.7, True)
    assert set(codes.unique().tolist()) == {0.0, 1.0} and torch.equal(codes.sum(-1), torch.ones(8, 30))
    (codes * torch.randn(8, 30, 10)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_learned_tau_replaces_annealing_and_conflicts_with_an_explicit_rate():
    assert TrainConfig.from_recipe(learn_tau=True).anneal_rate == 0.0
    with pytest.raises(ValueError, match="exclusive"):
        TrainConfig.from_recipe(learn_tau=True, anneal_rate=1e-4)


def test_cli_options_override_the_recipe():
    parser = build_parser()
    config, checkpoint = config_from_args(parser.parse_args(
        ["--seed-recipe", "--hard", "--sampler", "torch", "--epochs", "3", "--limit", "500"]), parser)
    assert checkpoint is None
    assert (config.seed_recipe, config.relu_logits, config.hard, config.sampler, config.epochs, config.limit) == (
        True, True, True, "torch", 3, 500)


def test_resume_refuses_to_change_the_model_but_allows_more_epochs(tmp_path):
    config = TrainConfig.from_recipe(sampler="torch", epochs=1)
    torch.save({"config": config.__dict__}, tmp_path / "checkpoint.pt")
    parser = build_parser()
    resumed, checkpoint = config_from_args(parser.parse_args(["--resume", str(tmp_path), "--epochs", "4"]), parser)
    assert resumed.epochs == 4 and resumed.out == str(tmp_path) and checkpoint is not None
    with pytest.raises(SystemExit):
        config_from_args(parser.parse_args(["--resume", str(tmp_path), "--tau", "0.3"]), parser)


def test_resume_keeps_the_estimator(tmp_path):
    config = TrainConfig.from_recipe(hard=True, epochs=1)
    stored = dict(config.__dict__)
    del stored["estimator"], stored["mc_samples"], stored["optimizer"], stored["recipe"]  # an older checkpoint
    torch.save({"config": stored}, tmp_path / "checkpoint.pt")
    parser = build_parser()
    resumed, _ = config_from_args(parser.parse_args(["--resume", str(tmp_path), "--epochs", "2"]), parser)
    assert (resumed.estimator, resumed.optimizer, resumed.recipe, resumed.hard) == ("st", "adam", "default", True)
    for change in (["--estimator", "reinmax"], ["--recipe", "seed"], ["--optimizer", "radam"]):
        with pytest.raises(SystemExit):
            config_from_args(parser.parse_args(["--resume", str(tmp_path), *change]), parser)


def test_each_rank_and_epoch_gets_its_own_noise_seed():
    seeds = {_noise_seed(seed, rank, epoch) for seed in range(3) for rank in range(4) for epoch in range(50)}
    assert len(seeds) == 3 * 4 * 50


def test_data_root_precedence(monkeypatch):
    monkeypatch.delenv(vae_data.DATA_ENV_VAR, raising=False)
    assert vae_data.resolve_data_root() == Path("./data")
    monkeypatch.setenv(vae_data.DATA_ENV_VAR, "/somewhere/mnist")
    assert vae_data.resolve_data_root() == Path("/somewhere/mnist")
    assert vae_data.resolve_data_root("/explicit") == Path("/explicit")


def test_offline_download_failure_says_where_to_put_the_files(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    # Nothing listens on the discard port: the download fails at once, network or not.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(vae_data.MNISTUnavailableError) as raised:
        vae_data.load_mnist(tmp_path / "empty", train=False)
    message = str(raised.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "FUSED_GUMBEL_DATA" in message and all(name in message for name in vae_data.RAW_FILES)
    assert "Traceback" not in message and len(message.splitlines()) <= 4


def test_loads_from_a_read_only_root_without_writing():
    root = shared_mnist_root()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST raw files not found under {root}")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    images = vae_data.load_mnist(root, train=False, download=False)
    assert images.shape == (10_000, 784) and images.dtype == torch.float32
    assert images.min().item() == 0.0 and images.max().item() == 1.0
    # ToTensor semantics: pixel / 255 exactly.
    assert torch.all(torch.isclose(images * 255, (images * 255).round(), atol=1e-4))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
