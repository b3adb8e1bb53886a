"""LocFT-BF: breadth-first fine-tuning of one located module, on the tiny GPT-2."""
import pytest

from conftest import HPARAMS, SHARED_DATA, changed_parameters, snapshot

ZSRE = SHARED_DATA / "zsre_mend_eval.json"


def test_one_call_trains_its_edits_together_in_the_located_module_only_and_undoes_exactly(tiny_gpt2):
    import torch

    from edit_plugins import hparams
    from edit_plugins.lifelong.data import load_records
    from edit_plugins.lifelong.scoring import score_answers
    from edit_plugins.methods.locft import apply_locft_to_model

    model, tok = tiny_gpt2
    hp = hparams.load(HPARAMS / "LocFT" / "tiny-gpt2.yaml")
    records = load_records(ZSRE, num_edits=4, start=40)
    pairs = [(r.request["prompt"], r.request["target_new"]) for r in records]
    assert not all(s.exact for s in score_answers(model, tok, pairs))
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    _, weights_copy = apply_locft_to_model(model, tok, [r.request for r in records], hp, return_orig_weights=True)
    assert all(s.exact for s in score_answers(model, tok, pairs))
    assert changed_parameters(model, before) == ["transformer.h.3.mlp.c_proj.weight"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for name, value in weights_copy.items():
        model.get_parameter(name).data.copy_(value)
    assert changed_parameters(model, before) == []
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_lifelong_run_hands_it_a_calls_worth_of_edits_and_keeps_them(tmp_path, tiny_gpt2):
    from edit_plugins.lifelong import RunOptions, run_lifelong

    model, tok = tiny_gpt2
    summary = run_lifelong(HPARAMS / "LocFT" / "tiny-gpt2.yaml", ZSRE, tmp_path / "run", model=model, tok=tok,
                           options=RunOptions(num_edits=8, checkpoints=[4, 8], diagnostics=[]), progress_bar=False)
    assert summary["family"] == "fine-tuning" and summary["complete"]
    assert summary["immediate"]["rewrite_acc"] == 1.0  # each call of 4 edits trained together
    assert summary["protocols"]["end_of_sequence"]["reliability"] > 0.5


@pytest.mark.parametrize("field, value, message", [
    ("rewrite_module_tmp", "transformer.h.3.mlp.c_proj", r"field 'rewrite_module_tmp' must contain '\{\}'"),
    ("epochs", 0, r"field 'epochs' must be positive"),
    ("layers", [], r"field 'layers' must name at least one layer"),
])
def test_bad_hparams_are_refused_by_field(tmp_path, field, value, message):
    import yaml

    from edit_plugins import hparams

    config = yaml.safe_load((HPARAMS / "LocFT" / "tiny-gpt2.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**config, field: value}))
    with pytest.raises(hparams.HparamsError, match=message):
        hparams.load(path)
