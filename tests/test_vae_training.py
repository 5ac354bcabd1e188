"""End-to-end runs of the categorical VAE command line on real MNIST (from
``$FUSED_GUMBEL_DATA`` or ``../shared/data``): a 1-epoch run on 2,000 images, resuming,
the offline message, sampler parity and a 2-process gloo DDP run.

Training runs in subprocesses without ``TRITON_INTERPRET`` (the Triton interpreter is far
too slow to train with), so ``fused_gumbel.gumbel_softmax`` takes its CPU path.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("FUSED_GUMBEL_DATA") or REPO_ROOT.parent / "shared" / "data")
RAW_DIR = DATA_ROOT / "MNIST" / "raw"
OUTPUT_FILES = ("metrics.json", "checkpoint.pt", "samples.png", "reconstructions.png", "loss_curve.png")
# Negative ELBO of an untrained decoder (every pixel probability 1/2): 784 log 2.
UNTRAINED_LOSS = 784 * math.log(2)

pytestmark = pytest.mark.skipif(
    not all((RAW_DIR / name).is_file() for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")),
    reason=f"MNIST raw files not found under {RAW_DIR}",
)


def run_cli(args, cwd, module="fused_gumbel.vae", extra_env=None, timeout=240):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["FUSED_GUMBEL_DATA"] = str(DATA_ROOT)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def metrics_of(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """The default command (fused sampler, default recipe) on the first 2,000 images."""
    run_dir = tmp_path_factory.mktemp("vae") / "one_epoch"
    check_ok(run_cli(["--limit", 2000, "--epochs", 1, "--quiet", "--out", run_dir], cwd=run_dir.parent))
    return run_dir


def test_one_epoch_lowers_the_loss_and_writes_every_output(one_epoch_run):
    from PIL import Image

    for name in OUTPUT_FILES:
        assert (one_epoch_run / name).is_file(), name
    metrics = metrics_of(one_epoch_run)
    (epoch,) = metrics["epochs"]
    assert epoch["epoch"] == 1 and epoch["step"] == 20 and metrics["train_images"] == 2000
    for key in ("train_loss_relaxed", "train_loss_unrelaxed", "test_loss"):
        assert epoch[key] < 0.75 * UNTRAINED_LOSS, (key, epoch[key])
    assert epoch["tau"] == 1.0  # the schedule first moves at step 100
    assert epoch["seconds"] > 0 and epoch["samples_per_s"] > 0
    assert metrics["config"]["sampler"] == "fused" and metrics["finished"] is True
    assert {"torch", "triton", "fused-gumbel", "torchvision"} <= set(metrics["versions"])
    # 8 x 8 grid of 28-pixel images with save_image's 2-pixel padding.
    assert Image.open(one_epoch_run / "samples.png").size == (8 * 30 + 2, 8 * 30 + 2)
    assert Image.open(one_epoch_run / "reconstructions.png").size == (8 * 30 + 2, 4 * 30 + 2)
    assert Image.open(one_epoch_run / "loss_curve.png").size[0] > 100


def test_resume_continues_at_the_right_step_exactly(one_epoch_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(one_epoch_run, resumed)
    check_ok(run_cli(["--resume", resumed, "--epochs", 2, "--quiet"], cwd=tmp_path))
    straight = tmp_path / "straight"
    check_ok(run_cli(["--limit", 2000, "--epochs", 2, "--quiet", "--out", straight], cwd=tmp_path))

    import torch

    checkpoint = torch.load(resumed / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert (checkpoint["step"], checkpoint["epoch"]) == (40, 2)
    resumed_epochs, straight_epochs = metrics_of(resumed)["epochs"], metrics_of(straight)["epochs"]
    assert [e["step"] for e in resumed_epochs] == [20, 40]
    assert resumed_epochs[0] == metrics_of(one_epoch_run)["epochs"][0]
    # Weights, optimiser state, schedule, shuffle and noise all continue where they
    # stopped: the resumed second epoch is the uninterrupted run's second epoch.
    for key in ("train_loss_relaxed", "train_loss_unrelaxed", "test_loss", "tau"):
        assert resumed_epochs[1][key] == pytest.approx(straight_epochs[1][key], rel=1e-6), key


def test_offline_download_ends_with_a_short_message(tmp_path):
    # No MNIST under the root and no reachable server (proxy on the closed discard port).
    unreachable = "http://127.0.0.1:9"
    result = run_cli(["--data-root", tmp_path / "nowhere", "--epochs", 1, "--quiet", "--out", tmp_path / "run"],
                     cwd=tmp_path, extra_env={"http_proxy": unreachable, "https_proxy": unreachable,
                                              "HTTP_PROXY": unreachable, "HTTPS_PROXY": unreachable,
                                              "no_proxy": "", "NO_PROXY": ""})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in result.stderr
    assert "FUSED_GUMBEL_DATA" in result.stderr and "train-images-idx3-ubyte" in result.stderr


def test_sampler_parity_on_a_tiny_run(tmp_path):
    results = tmp_path / "bench.json"
    check_ok(run_cli(["--samplers", "fused", "reference", "torch", "--limit", 2000, "--epochs", 1,
                      "--repeats", 1, "--sampler-iterations", 0, "--json", results],
                     cwd=tmp_path, module="fused_gumbel.vae.bench"))
    test_loss = {name: row["test_loss_mean"] for name, row in json.loads(results.read_text())["training"].items()}
    assert all(loss < 0.75 * UNTRAINED_LOSS for loss in test_loss.values()), test_loss
    # Same weights, data order and number of steps; only the noise source differs, which
    # after 20 steps moves the test loss by a few tenths of a nat.
    assert max(test_loss.values()) - min(test_loss.values()) < 5.0, test_loss


def test_two_process_gloo_ddp_run(tmp_path):
    run_dir = tmp_path / "ddp"
    result = run_cli(["--standalone", "--nproc_per_node", 2, "-m", "fused_gumbel.vae",
                      "--limit", 400, "--epochs", 1, "--device", "cpu", "--quiet", "--out", run_dir],
                     cwd=tmp_path, module="torch.distributed.run", extra_env={"OMP_NUM_THREADS": "1"})
    check_ok(result)
    metrics = metrics_of(run_dir)
    (epoch,) = metrics["epochs"]
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    # Global batch 100 = 2 ranks x 50: 400 images are 4 optimiser steps.
    assert epoch["step"] == 4
    assert epoch["test_loss"] < UNTRAINED_LOSS and math.isfinite(epoch["train_loss_relaxed"])
    for name in OUTPUT_FILES:
        assert (run_dir / name).is_file(), name
    assert result.stdout.count("epoch 1/1 step 4") == 1  # only rank 0 reports


def test_bernoulli_latent_trains_and_is_recorded(tmp_path):
    run_dir = tmp_path / "bernoulli"
    check_ok(run_cli(["--latent", "bernoulli", "--limit", 500, "--epochs", 1, "--quiet", "--out", run_dir],
                     cwd=tmp_path))
    for name in OUTPUT_FILES:
        assert (run_dir / name).is_file(), name
    metrics = metrics_of(run_dir)
    (epoch,) = metrics["epochs"]
    assert metrics["config"]["latent"] == "bernoulli" and metrics["config"]["latent_dim"] == 200
    assert epoch["step"] == 5
    assert all(math.isfinite(epoch[key]) for key in ("train_loss_relaxed", "train_loss_unrelaxed", "test_loss"))
    # 5 steps already move the test loss well below the untrained decoder's 543 nats.
    assert epoch["test_loss"] < 0.9 * UNTRAINED_LOSS, epoch["test_loss"]

    import torch

    # The latent kind travels in the checkpoint, so --resume rebuilds the Bernoulli model.
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["config"]["latent"] == "bernoulli"
    assert checkpoint["model"]["encoder.4.weight"].shape == (200, 256)
