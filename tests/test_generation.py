"""What users see: after an edit, greedy ``generate()`` with the KV cache on (the default) starts with
the new target, beside the teacher-forced metric. Run in both environments (newest and oldest transformers)."""
import pytest
import torch

from conftest import HPARAMS, snapshot
from edit_plugins import easyedit_compat, hparams
from edit_plugins.lifelong.scoring import generated_answers, score_answers
from edit_plugins.plugins import get_method

TINY_REQUESTS = {  # the random tiny GPT-2 attends weakly, so WilKE's prompt ends with the subject
    "WilKE": [{"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"}],
    "LEMoE": [{"prompt": "The capital city of France is", "subject": "France", "target_new": "Tokyo", "case_id": 0},
              {"prompt": "The favourite food of Alice Walker is", "subject": "Alice Walker", "target_new": "soup",
               "case_id": 1}],
}
# Two tokens on SmolLM2, so generation has to carry the edit past its first token.
SMOLLM2_REQUEST = {"prompt": "The Eiffel Tower is located in the city of", "subject": "Eiffel Tower",
                   "target_new": "Buenos Aires", "ground_truth": "Paris", "case_id": 0}


def edit_generate_and_restore(model, tok, method_name, requests, hp):
    method = get_method(method_name)
    pairs = [(r["prompt"], r["target_new"]) for r in requests]
    before = snapshot(model)
    assert not any(generated_answers(model, tok, pairs))
    model, weights_copy = method.apply(model, tok, requests, hp, **easyedit_compat.sequential_apply_kwargs())
    try:
        teacher_forced = [s.exact for s in score_answers(model, tok, pairs)]
        generated = generated_answers(model, tok, pairs)
        # The same through generate() directly, as a user would call it.
        ids = tok(pairs[0][0], return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids.input_ids.shape[1]:])
    finally:
        method.undo(model, weights_copy)
    assert teacher_forced == [True] * len(pairs)
    assert generated == [True] * len(pairs)
    assert text.startswith(" " + pairs[0][1]), text
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.oldest_transformers
@pytest.mark.parametrize("method_name", ["WilKE", "LEMoE"])
def test_tiny_gpt2_greedy_generation_starts_with_the_new_target(tiny_gpt2, stats_dir, method_name):
    model, tok = tiny_gpt2
    hp = hparams.load(HPARAMS / method_name / "tiny-gpt2.yaml")
    if method_name == "WilKE":
        hp.stats_dir = stats_dir
    edit_generate_and_restore(model, tok, method_name, TINY_REQUESTS[method_name], hp)


# At the oldest transformers LEMoE only: WilKE's Llama path is test_wilke's SmolLM2 δ test there (its statistics, 3
# layers of SmolLM2, would cost that environment a minute).
@pytest.mark.slow
@pytest.mark.parametrize("method_name", ["WilKE", pytest.param("LEMoE", marks=pytest.mark.oldest_transformers)])
def test_smollm2_greedy_generation_starts_with_the_new_target(smollm2, stats_dir, method_name):
    model, tok = smollm2
    assert len(tok(" Buenos Aires", add_special_tokens=False).input_ids) >= 2
    hp = hparams.load(HPARAMS / method_name / "smollm2-135m.yaml")
    if method_name == "WilKE":
        hp.stats_dir, hp.mom2_n_samples, hp.layers = stats_dir, 100, [3, 8, 14]
    edit_generate_and_restore(model, tok, method_name, [SMOLLM2_REQUEST], hp)
