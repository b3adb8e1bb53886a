"""GPT-J, Qwen2, Qwen3 and Mistral: the editing paths on tiny randomly initialised models.

GPT-2 (Conv1D) and Llama (SmolLM2) have their own tests; these check that the other families users edit
go through the same code: the cached-prefix runner, WilKE's scan, and LEMoE's adaptor.
"""
import pytest
import torch

from conftest import HPARAMS, changed_parameters, restore, snapshot
from edit_plugins import hparams
from edit_plugins.editing.requests import normalize_requests
from edit_plugins.editing.templates import context_templates
from edit_plugins.editing.runtime import SuffixRunner
from edit_plugins.methods.lemoe import apply_lemoe_to_model
from edit_plugins.methods.wilke import apply_wilke_to_model

REQUEST = {"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"}
# The subject mid-prompt, so that the runner caches a prefix and runs a suffix of several tokens.
MID_REQUEST = {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
               "target_new": "English"}
UNRELATED = "A completely unrelated sentence about"


def _config(family, vocab_size):
    import transformers

    common = dict(vocab_size=vocab_size, initializer_range=0.3)
    decoder = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "gptj":
        return transformers.GPTJConfig(n_layer=3, n_embd=64, n_head=4, rotary_dim=8, n_positions=256, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(**decoder)
    if family == "qwen3":
        if not hasattr(transformers, "Qwen3Config"):  # added in transformers 4.51
            pytest.skip(f"transformers {transformers.__version__} has no Qwen3")
        return transformers.Qwen3Config(head_dim=16, **decoder)
    return transformers.MistralConfig(sliding_window=8, **decoder)  # a window shorter than the test prompts


FAMILIES = {  # family: (WilKE's rewrite_module_tmp, LEMoE's ffn_module_tmp)
    "gptj": ("transformer.h.{}.mlp.fc_out", "transformer.h.{}.mlp"),
    "qwen2": ("model.layers.{}.mlp.down_proj", "model.layers.{}.mlp"),
    "qwen3": ("model.layers.{}.mlp.down_proj", "model.layers.{}.mlp"),
    "mistral": ("model.layers.{}.mlp.down_proj", "model.layers.{}.mlp"),
}


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    _, tok = tiny_gpt2  # any tokenizer will do for a random model: the GPT-2 one
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(request.param, len(tok))).eval()
    return request.param, model, tok


def target_log_prob(model, tok, prompt, target):
    with torch.no_grad():
        logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]
    return float(logits.log_softmax(-1)[tok(" " + target).input_ids[0]])


@pytest.mark.oldest_transformers
def test_cached_prefix_runner_matches_a_full_forward_pass(tiny_model):
    family, model, tok = tiny_model
    request = normalize_requests([MID_REQUEST])[0]
    templates = context_templates(model, tok, [[5, 2]])
    runner = SuffixRunner.for_request(model, tok, request, templates)
    assert runner.split is not None  # the subject is mid-prompt: a prefix was cached
    batch = runner.batch
    with torch.no_grad():
        full = model.base_model(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False).last_hidden_state
        expected = full[batch.loss_rows, batch.loss_pos]
        for copies in (1, 3):  # the runner as WilKE's scan repeats it, once per candidate layer
            twin = runner.repeated(copies)
            got = twin.hidden_at(twin.group_rows(batch.loss_rows, copies - 1), batch.loss_pos)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=f"{family}, {copies} copies")


@pytest.mark.oldest_transformers
@pytest.mark.parametrize("fast_scan", [False, True])
def test_wilke_edits_one_layer_and_restores(tiny_model, stats_dir, fast_scan):
    family, model, tok = tiny_model
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.model_name, hp.stats_dir, hp.fast_scan = f"tiny-{family}", stats_dir, fast_scan
    hp.layers, hp.rewrite_module_tmp = [0, 1, 2], FAMILIES[family][0]
    before_lp = target_log_prob(model, tok, REQUEST["prompt"], REQUEST["target_new"])
    before = snapshot(model)
    _, weights_copy = apply_wilke_to_model(model, tok, [REQUEST], hp, return_orig_weights=True,
                                            keep_original_weight=True)  # the originals under any EasyEdit
    # A random model does not always make the target its top token, but the edit must move it a long way.
    assert target_log_prob(model, tok, REQUEST["prompt"], REQUEST["target_new"]) > before_lp + 5
    (changed,) = changed_parameters(model, before)
    assert changed in {hp.rewrite_module_tmp.format(layer) + ".weight" for layer in hp.layers}
    assert list(weights_copy) == [changed]
    restore(model, weights_copy)
    assert changed_parameters(model, before) == []


@pytest.mark.oldest_transformers
def test_guarded_wilke_leaves_the_earlier_edits_key_where_it_was(tiny_model, stats_dir):
    from edit_plugins.editing.keys import compute_keys
    from edit_plugins.editing.layers import get_module, weight_out_in

    family, model, tok = tiny_model
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.model_name, hp.stats_dir, hp.layers, hp.rewrite_module_tmp = f"tiny-{family}", stats_dir, [1], FAMILIES[family][0]
    hp.interference_guard = True
    module = hp.rewrite_module_tmp.format(1)
    apply_wilke_to_model(model, tok, [REQUEST], hp)
    key = compute_keys(model, tok, normalize_requests([REQUEST]), [module])[module][0]
    value = weight_out_in(get_module(model, module)).detach().float() @ key
    apply_wilke_to_model(model, tok, [MID_REQUEST], hp)
    after = weight_out_in(get_module(model, module)).detach().float() @ key
    assert float((after - value).norm() / value.norm()) < 1e-5


@pytest.mark.oldest_transformers
def test_a_spread_edit_under_the_soft_guard_holds_each_layers_keys_as_one_pass_found_them(tiny_model, stats_dir):
    """The configuration the lifelong benchmark runs (each edit over three layers, the soft guard over every
    scored position of every earlier edit, one refresh pass per edit): each layer's update is rank one and
    holds G of the earlier keys as recomputed on the model before the edit, and the residual stream after
    the top block, at the subject's last token, ends where v* asked."""
    from edit_plugins.methods.wilke.guard.layer import LayerGuard
    from edit_plugins.methods.wilke.guard.model import current_keys
    from edit_plugins.methods.wilke.model_state import drop_guard, model_guard
    from edit_plugins.editing.keys import key_and_block_output
    from edit_plugins.events import collect_events
    from edit_plugins.methods.wilke.model import execute_wilke

    family, model, tok = tiny_model
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.model_name, hp.stats_dir, hp.layers, hp.rewrite_module_tmp = f"tiny-{family}", stats_dir, [1], FAMILIES[family][0]
    fields = dict(spread_layers=2, interference_guard=True, guard_scope="model", guard_positions="prompt",
                  guard_max_keys_fraction=0.0, guard_fallback_weight=1e-3, guard_refresh_within_edit=False)
    for name, value in fields.items():
        setattr(hp, name, value)
    modules = [hp.rewrite_module_tmp.format(layer) for layer in (0, 1)]
    before = snapshot(model)
    seen, real_direction = {}, LayerGuard.direction

    def seen_direction(self, key, direction_key):
        seen[self.module] = self.gram.clone()
        return real_direction(self, key, direction_key)

    try:
        apply_wilke_to_model(model, tok, [REQUEST], hp)
        earlier = current_keys(model, tok, modules, model_guard(model).layers[modules[0]].sources)
        request = normalize_requests([MID_REQUEST])[0]
        delta = execute_wilke(model, tok, request, hp).chosen.residual
        _, start = key_and_block_output(model, tok, request, modules[-1], 1)
        LayerGuard.direction = seen_direction
        try:
            with collect_events() as fired:
                apply_wilke_to_model(model, tok, [MID_REQUEST], hp)
        finally:
            LayerGuard.direction = real_direction
        event = fired[0][0]
        assert [p["layer"] for p in event.info["spread"]] == [0, 1]
        assert [p["guard"]["path"] for p in event.info["spread"]] == ["fallback"] * 2
        for update in event.weight_deltas.values():
            assert torch.linalg.matrix_rank(update.double(), rtol=1e-6) == 1
        for m in modules:
            keys = earlier[m].double()
            torch.testing.assert_close(seen[m], keys.T @ keys, rtol=1e-5, atol=1e-5 * float(seen[m].abs().max()))
        _, end = key_and_block_output(model, tok, request, modules[-1], 1)
        assert float(delta.norm()) > 0
        torch.testing.assert_close(end, start + delta, rtol=1e-3, atol=1e-3 * float(delta.norm()))
    finally:
        restore(model, before)
        drop_guard(model)


@pytest.mark.oldest_transformers
def test_lemoe_edit_takes_hold_and_the_adaptor_comes_off_exactly(tiny_model):
    family, model, tok = tiny_model
    hp = hparams.load(HPARAMS / "LEMoE" / "tiny-gpt2.yaml")
    hp.model_name, hp.ffn_module_tmp = f"tiny-{family}", FAMILIES[family][1]
    inputs = tok([REQUEST["prompt"], UNRELATED], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**inputs).logits
    before = snapshot(model)
    _, restore_adaptor = apply_lemoe_to_model(model, tok, [REQUEST, MID_REQUEST], hp, keep_original_weight=True)
    with torch.no_grad():
        top = model(**tok(REQUEST["prompt"], return_tensors="pt")).logits[0, -1].argmax()
    assert tok.decode(top) == " " + REQUEST["target_new"]
    # the model's own weights are untouched: the edit lives in the adaptor
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    restore_adaptor()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)
