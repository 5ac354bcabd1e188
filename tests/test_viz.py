"""``fused_gumbel.viz temperature`` (Jang et al. 2017, Fig. 1): the command writes a PNG, and
the numbers it plots behave as the figure claims: as tau -> 0 the samples become the one-hot
categorical draw and their expectation the class probabilities; as tau -> infinity both
become uniform."""
import pytest
import torch

from fused_gumbel import viz

from conftest import interpreted

PROBABILITIES = torch.tensor(viz.DEFAULT_LOGITS, dtype=torch.float64).softmax(-1)
UNIFORM = torch.full((4,), 0.25, dtype=torch.float64)


def test_command_writes_a_small_png(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "figures" / "temperature.png"
    assert viz.main(["temperature", "--out", str(out), "--samples", "2000", "--backend", "reference"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 150
    assert out.stat().st_size < 100_000
    printed = capsys.readouterr().out
    assert "tau 0.1: expectation" in printed and "tau 10: expectation" in printed and str(out) in printed


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        viz.main(["temperature", "--out", str(tmp_path / "x.png"), "--samples", "0"])
    with pytest.raises(ValueError, match="tau"):
        viz.temperature_data(taus=(0.5, 0.0), samples=10)


def test_expectation_goes_from_the_probabilities_to_uniform():
    # 20,000 draws: the Monte Carlo error of each mean is below 0.5 / sqrt(20000) = 0.0035.
    taus = (0.01, 0.1, 0.5, 1.0, 10.0, 1000.0)
    data = viz.temperature_data(taus=taus, samples=20_000, seed=3, backend="reference")
    expectation = data["expectation"]
    assert torch.allclose(data["probabilities"], PROBABILITIES)
    assert torch.allclose(expectation.sum(-1), torch.ones(len(taus), dtype=torch.float64))
    assert (expectation[0] - PROBABILITIES).abs().max() < 0.015  # tau 0.01: a categorical's mean
    assert (expectation[-1] - UNIFORM).abs().max() < 0.01  # tau 1000: uniform
    to_probabilities = (expectation - PROBABILITIES).abs().max(-1).values
    to_uniform = (expectation - UNIFORM).abs().max(-1).values
    # Monotone in tau (beyond the Monte Carlo error) from one end to the other.
    assert all(b > a - 0.01 for a, b in zip(to_probabilities, to_probabilities[1:])), to_probabilities
    assert all(b < a + 0.01 for a, b in zip(to_uniform, to_uniform[1:])), to_uniform
    assert to_probabilities[-1] > 0.2 and to_uniform[0] > 0.2


def test_samples_go_from_the_one_hot_draw_to_uniform():
    data = viz.temperature_data(taus=(0.001, 1.0, 1e4), samples=1, seed=0, backend="reference")
    cold, _, hot = data["sample"]
    one_hot = data["categorical_sample"]
    assert sorted(one_hot.tolist()) == [0.0, 0.0, 0.0, 1.0]
    # Same noise at every tau: the coldest sample is the categorical draw itself.
    assert cold.argmax() == one_hot.argmax() and cold.max() > 0.999
    assert (hot - UNIFORM).abs().max() < 1e-3


@pytest.mark.skipif(not interpreted(), reason="the triton backend on CPU needs TRITON_INTERPRET=1")
def test_triton_and_reference_plot_the_same_numbers():
    triton = viz.temperature_data(samples=64, seed=5, backend="triton")
    reference = viz.temperature_data(samples=64, seed=5, backend="reference")
    for key in ("expectation", "sample", "categorical_sample"):
        torch.testing.assert_close(triton[key], reference[key], rtol=1e-9, atol=1e-12)
