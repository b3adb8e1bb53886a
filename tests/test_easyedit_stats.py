"""`edit-plugins stats`: EasyEdit's layer_stats files from our statistics engine, offline, without easyeditor."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from edit_plugins.easyedit_stats import StatsError, fill_stats, plan
from edit_plugins.editing.covariance import moment_sums
from edit_plugins.models import materialize

TINY = {"alg_name": "MEMIT", "layers": [1, 2], "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
        "mom2_dataset": "pydoc", "mom2_n_samples": 20, "mom2_dtype": "float32"}


def write(tmp_path, **changes):
    config = {**TINY, "model_name": str(materialize("tiny-gpt2")), "stats_dir": str(tmp_path / "stats"), **changes}
    path = tmp_path / "memit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_stats_fill_the_files_layer_stats_reads_with_our_second_moments(tmp_path, tiny_gpt2):
    model, tok = tiny_gpt2
    path = write(tmp_path)
    written = fill_stats(path, model=model, tok=tok)
    name = materialize("tiny-gpt2").name
    assert written == [tmp_path / "stats" / name / "pydoc_stats" / f"transformer.h.{l}.mlp.c_proj_float32_mom2_20.npz"
                       for l in (1, 2)]
    sums, count = moment_sums(model, tok, ["transformer.h.1.mlp.c_proj"], source="pydoc", n_samples=20)
    data = np.load(written[0])
    # what layer_stats' tally and SecondMoment read: the sum, the count, the sample size its cache check compares
    assert int(data["mom2.count"]) == count and int(data["sample_size"]) == 20
    torch.testing.assert_close(torch.from_numpy(data["mom2.mom2"]), sums["transformer.h.1.mlp.c_proj"].float())
    assert fill_stats(path, model=model, tok=tok) == []  # present files are kept


def test_alphaedits_projection_is_written_where_p_loc_says(tmp_path, tiny_gpt2):
    model, tok = tiny_gpt2
    path = write(tmp_path, alg_name="AlphaEdit", nullspace_threshold=1e-2, P_loc=str(tmp_path / "P.pt"))
    fill_stats(path, model=model, tok=tok)
    P = torch.load(tmp_path / "P.pt", weights_only=True)
    assert P.shape == (2, 256, 256)
    torch.testing.assert_close(P[0] @ P[0], P[0], atol=1e-4, rtol=1e-4)  # a projection


@pytest.mark.parametrize("changes, message", [
    ({"mom2_dataset": "wikipedia"}, "mom2_dataset 'wikipedia' is the Hugging Face dataset wikimedia/wikipedia"),
    ({"mom2_dataset": "missing.txt"}, "mom2_dataset 'missing.txt': no such file"),
    ({"mom2_dataset": "c4"}, "mom2_dataset 'c4' is not a corpus edit-plugins knows"),
    ({"mom2_n_samples": "many"}, "field 'mom2_n_samples' must be int"),
    ({"layers": [99]}, "layer 99"),
])
def test_a_corpus_that_is_not_here_is_refused_before_anything_is_written(tmp_path, tiny_gpt2, monkeypatch,
                                                                         changes, message):
    monkeypatch.delenv("EDIT_PLUGINS_ALLOW_DOWNLOAD", raising=False)
    model, tok = tiny_gpt2
    with pytest.raises(Exception, match=message):
        fill_stats(write(tmp_path, **changes), model=model, tok=tok)
    assert not (tmp_path / "stats").exists()


@pytest.mark.process
def test_the_stats_command_prints_each_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edit_plugins.cli", "stats", "--hparams", write(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["written", "written"]
    bad = subprocess.run([sys.executable, "-m", "edit_plugins.cli", "stats", "--hparams",
                          write(tmp_path, mom2_dataset="wikipedia")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Statistics of one corpus are never written under another" in bad.stderr
