"""Our runner against EasyEdit HEAD's own ``BaseEditor.edit(..., sequential_edit=True)``: the same edits, on the
same model, from the same random state, through each of EasyEdit's methods. Each edit's immediate rewrite and
locality scores must agree, or the difference is the documented protocol difference pinned here."""
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SHARED_DATA

pytestmark = pytest.mark.easyeditor

ROOT = Path(__file__).resolve().parents[1]
ZSRE = SHARED_DATA / "zsre_mend_eval.json"
EDITS = 8
COVARIANCE = ("ROME", "MEMIT", "AlphaEdit")


def _hparams_file(alg_name, stats_dir, tmp_path) -> Path:
    """The shipped tiny-gpt2 file with the test run's statistics cache (and AlphaEdit's projection) filled."""
    from edit_plugins.easyedit_stats import fill_stats

    config = yaml.safe_load((ROOT / "hparams" / "easyedit" / alg_name / "tiny-gpt2.yaml").read_text())
    if "stats_dir" in config:
        config["stats_dir"] = stats_dir
    if "P_loc" in config:
        config["P_loc"] = str(tmp_path / "P.pt")
    path = tmp_path / f"{alg_name}.yaml"
    path.write_text(yaml.safe_dump(config))
    if alg_name in COVARIANCE:
        fill_stats(path)
    return path


def _easyedit_scores(metrics) -> tuple[list, list]:
    rewrite = [float(np.mean(m["post"]["rewrite_acc"])) for m in metrics]
    locality = [float(np.mean(m["post"]["locality"]["nq_acc"])) for m in metrics]
    return rewrite, locality


@pytest.mark.parametrize("alg_name", ["ROME", "MEMIT", "AlphaEdit", "WISE", "GRACE", "ULTRAEDIT", "FT"])
def test_each_edit_scores_as_easyedits_own_sequential_edit_scores_it(alg_name, stats_dir, tmp_path, monkeypatch):
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.lifelong import RunOptions, run_lifelong
    from edit_plugins.lifelong.data import load_records, load_unrelated_questions
    from edit_plugins.lifelong.run_log import read_edits
    from edit_plugins.lifelong.state import seed_everything

    if not easyedit_compat.is_head():
        pytest.skip("sequential_edit and these methods are EasyEdit HEAD's")
    from easyeditor import BaseEditor

    monkeypatch.chdir(tmp_path)  # EasyEdit writes into the working directory
    if alg_name == "ULTRAEDIT":
        # Documented difference: our adapter keeps UltraEdit's lifelong normaliser across calls, EasyEdit's executor
        # builds a new one at each (tests/test_easyedit.py checks ours); here both build it anew, so that only
        # scoring is compared. Measured on these 8 edits with it kept: rewrite 0.35 against 0.52.
        monkeypatch.setattr(easyedit_compat, "_ultraedit_keeping_its_normaliser",
                            lambda executor: (executor.apply_to_model, (None, None)))
    path = _hparams_file(alg_name, stats_dir, tmp_path)
    records = load_records(ZSRE, num_edits=EDITS, start=100)
    unrelated = load_unrelated_questions(ZSRE, 200, records)

    hp = hparams.load(path)
    if alg_name == "AlphaEdit":  # its code knows GPT-2's layout by the model name "gpt2-xl" only
        (tmp_path / "tiny-gpt2-xl").symlink_to(hp.model_name)
        hp.model_name = str(tmp_path / "tiny-gpt2-xl")
    if alg_name == "WISE":
        hp.sequential_edit = True  # how EasyEdit's WISE keeps its side memory across calls
    editor = BaseEditor.from_hparams(hp)
    model = deepcopy(editor.model)  # ours starts from the same weights
    easyedit_compat.clear_module_state(alg_name)  # as in a fresh process: no other test's templates
    seed_everything(0)
    metrics, _, _ = editor.edit(
        prompts=[r.request["prompt"] for r in records], target_new=[r.request["target_new"] for r in records],
        ground_truth=[r.request["ground_truth"] for r in records], subject=[r.request["subject"] for r in records],
        rephrase_prompts=[r.rephrase_prompts[0] for r in records],
        locality_inputs={"nq": {"prompt": [r.locality[0][0] for r in records],
                                "ground_truth": [r.locality[0][1] for r in records]}},
        loc_prompts=[f"{q} {a}" for q, a in unrelated.pool[:EDITS]], sequential_edit=True, verbose=False)
    theirs_rewrite, theirs_locality = _easyedit_scores(metrics)

    options = RunOptions(checkpoints=[EDITS], save_every=EDITS, diagnostics=[], unrelated_data=str(ZSRE))
    ours_hp = hparams.load(path)
    ours_hp.model_name = hp.model_name
    run_lifelong(ours_hp, records, tmp_path / "run", model=model, tok=editor.tok, options=options,
                 progress_bar=False)
    logged = read_edits(tmp_path / "run")
    ours_rewrite = [e["metrics"]["rewrite_acc"] for e in logged]
    ours_locality = [e["metrics"]["locality_acc"] for e in logged]

    assert len(ours_rewrite) == len(theirs_rewrite) == EDITS
    if alg_name == "GRACE":
        # Documented difference (docs/comparison/README.md): EasyEdit scores GRACE by generation against the target
        # tokenised without its leading space, a token sequence a BPE model (GPT-2, SmolLM2) does not produce
        # after a prompt; we score the target as the model continues the prompt, with the space.
        assert theirs_rewrite == [0.0] * EDITS and np.mean(ours_rewrite) > 0.1
        theirs_rewrite = ours_rewrite
    assert np.mean(ours_rewrite) == pytest.approx(np.mean(theirs_rewrite), abs=0.05), (ours_rewrite, theirs_rewrite)
    assert np.mean(ours_locality) == pytest.approx(np.mean(theirs_locality), abs=0.05), (ours_locality,
                                                                                          theirs_locality)
