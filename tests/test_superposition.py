"""Superposition analysis: matrices, statistics, errors, and real runs through the CLI."""
import json

import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

from conftest import SHARED_DATA
from edit_plugins.cli import main
from edit_plugins.diagnostics import superposition as sp
from edit_plugins.editing.covariance import StatisticsError, safe_inverse
from edit_plugins.editing.layers import LayerError


def test_kurtosis_matches_a_hand_computation_and_scipy():
    sample = np.array([1.0, 2.0, 3.0, 4.0, 100.0, -3.0, 0.5])
    centred = sample - sample.mean()
    by_hand = np.mean(centred ** 4) / np.mean(centred ** 2) ** 2 - 3  # Fisher excess, biased
    stats = sp.distribution_stats(sample)
    assert stats["kurtosis"] == pytest.approx(by_hand, rel=1e-12)
    assert stats["kurtosis"] == pytest.approx(scipy.stats.kurtosis(sample), rel=1e-12)
    assert stats["skewness"] == pytest.approx(scipy.stats.skew(sample), rel=1e-12)
    assert stats["tail_mass_3sigma"] == pytest.approx(0.0)  # one outlier among 7 stays within 3σ here


def test_matrices_on_a_hand_built_case():
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    m = sp.superposition_matrices(keys, torch.eye(2))
    assert torch.allclose(m["P"].diagonal(), torch.ones(3, dtype=torch.float64))
    assert m["P"][1, 0].item() == pytest.approx(0.5)  # k_1·k_0 / k_1·k_1 = 1/2
    assert m["P"][0, 1].item() == pytest.approx(1.0)  # asymmetric: k_0·k_1 / k_0·k_0 = 1
    assert m["whitened_cos"][0, 2].item() == pytest.approx(0.0)
    assert torch.allclose(m["whitened_cos"], m["raw_cos"])  # C = I


def test_singular_c_without_damping_is_a_clear_error():
    C = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(StatisticsError, match="singular or not positive definite.*set a positive damping"):
        safe_inverse(C, damping=0.0)
    assert torch.isfinite(safe_inverse(C, damping=1e-3)).all()


def test_too_few_facts_and_unknown_layer(tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    facts = sp.facts_from_file(SHARED_DATA / "known_1000.json", 10)
    with pytest.raises(sp.SuperpositionError, match="at least 3 facts, got 2"):
        sp.analyze(model, tok, facts[:2], [0], stats_dir=stats_dir)
    with pytest.raises(LayerError, match="layer 9 does not exist: the model has layers 0..3"):
        sp.analyze(model, tok, facts, [0, 9], stats_dir=stats_dir)


def test_cli_on_tiny_gpt2(tmp_path, stats_dir):
    out = CliRunner().invoke(main, ["superposition", "--model", "tiny-gpt2", "--data", str(SHARED_DATA / "known_1000.json"),
                                    "--num-facts", "40", "--out", str(tmp_path), "--mom2-n-samples", "100",
                                    "--stats-dir", stats_dir])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "superposition.json").read_text())
    assert result["n_facts"] == 40 and result["layers"] == [0, 1, 2, 3]
    for layer in map(str, result["layers"]):
        p = result["stats"][layer]["P"]
        assert np.isfinite([p["mean"], p["std"], p["kurtosis"]]).all()
    assert (tmp_path / "superposition.csv").read_text().count("\n") == 1 + 4 * 4
    assert (tmp_path / "kurtosis_mean_per_layer.png").is_file() and (tmp_path / "layer0_P_heatmap_hist.png").is_file()


@pytest.mark.slow
def test_smollm2_whitened_keys_are_in_superposition(smollm2, stats_dir):
    """The paper's qualitative claim on a real model: near-zero mean, heavy tails."""
    model, tok = smollm2
    facts = sp.facts_from_file(SHARED_DATA / "known_1000.json", 120)
    result = sp.analyze(model, tok, facts, [4, 14], model_label="smollm2-135m", mom2_n_samples=100, stats_dir=stats_dir)
    for layer in (4, 14):
        w = result.stats[layer]["whitened_cos"]
        assert abs(w["mean"]) < 0.2 and w["std"] > 0.01
        assert w["kurtosis"] > 0  # heavier tails than a Gaussian
