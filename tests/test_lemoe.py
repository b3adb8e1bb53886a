"""LEMoE on the tiny GPT-2 (Conv1D FFN) and on SmolLM2 (Llama FFN): edits, freezing, routing, save/load, removal."""
import contextlib

import numpy as np
import pytest
import torch

from conftest import HPARAMS, next_token, shared_json, snapshot
from edit_plugins import easyedit_compat, hparams
from edit_plugins.editing.layers import LayerError
from edit_plugins.editing.requests import RequestError
from edit_plugins.events import collect_events
from edit_plugins.hparams import HparamsError
from edit_plugins.lifelong.scoring import score_answers
from edit_plugins.methods import lemoe
from edit_plugins.methods.lemoe import model as lemoe_model
from edit_plugins.methods.lemoe.layer import LEMoELayer
from edit_plugins.methods.lemoe.order_planning import cluster_order as plan_order

TINY_REQUESTS = [
    {"prompt": "The capital city of France is", "subject": "France", "target_new": "Tokyo", "case_id": 0},
    {"prompt": "The favourite food of Alice Walker is", "subject": "Alice Walker", "target_new": "soup", "case_id": 1},
    {"prompt": "Mount Everest stands in the country of", "subject": "Mount Everest", "target_new": "Chile", "case_id": 2},
    {"prompt": "The language spoken by Tom Hanks is", "subject": "Tom Hanks", "target_new": "Dutch", "case_id": 3},
]


def logits(model, tok, prompt):
    with torch.no_grad():
        return model(**tok(prompt, return_tensors="pt")).logits


def apply(model, tok, requests, hp):
    """Apply and get the restore callable back, under whichever EasyEdit convention is installed."""
    return lemoe.apply_lemoe_to_model(model, tok, requests, hp, **easyedit_compat.sequential_apply_kwargs())


@contextlib.contextmanager
def edits_applied(model, tok, requests, hp):
    """The model with these edits applied for the block, restored after it whatever happens."""
    model, restore = apply(model, tok, requests, hp)
    try:
        yield model
    finally:
        restore()


def base_weights_unchanged(model, before) -> bool:
    """The wrapped model's own parameters (adaptor ones left out) equal ``before`` bit for bit."""
    own = {n.replace(".base.", "."): p for n, p in model.named_parameters() if ".experts." not in n and ".router." not in n}
    return own.keys() == before.keys() and all(torch.equal(p, before[n]) for n, p in own.items())


def tiny_hp(**changes):
    hp = hparams.load(HPARAMS / "LEMoE" / "tiny-gpt2.yaml")
    for k, v in changes.items():
        setattr(hp, k, v)
    return hp


def answers_correct(model, tok, requests, prompt_key="prompt"):
    pairs = [(r[prompt_key].format(r["subject"]) if "{}" in r[prompt_key] else r[prompt_key], r["target_new"])
             for r in requests]
    return [s.exact for s in score_answers(model, tok, pairs)]


@pytest.mark.oldest_transformers
def test_tiny_gpt2_edits_take_hold_earlier_experts_stay_frozen_and_removal_restores(tiny_gpt2):
    model, tok = tiny_gpt2
    hp = tiny_hp()
    before = snapshot(model)
    unedited = {r["prompt"]: logits(model, tok, r["prompt"]) for r in TINY_REQUESTS}
    model, restore_first = apply(model, tok, TINY_REQUESTS[:2], hp)
    adaptor = model.get_submodule("transformer.h.1.mlp")
    assert isinstance(adaptor, LEMoELayer) and len(adaptor.experts) == 1
    assert all(answers_correct(model, tok, TINY_REQUESTS[:2]))
    first_expert = {k: v.clone() for k, v in adaptor.experts[0].state_dict().items()}

    model, restore_second = apply(model, tok, TINY_REQUESTS[2:], hp)  # sequential use
    assert len(adaptor.experts) == 2
    assert all(answers_correct(model, tok, TINY_REQUESTS))  # the first batch still holds
    for k, v in adaptor.experts[0].state_dict().items():
        assert torch.equal(v, first_expert[k]), f"expert 0's {k} changed while expert 1 trained"
    assert base_weights_unchanged(model, before)  # the base model's own weights are never touched

    restore_second()  # undoes only the second call
    assert len(adaptor.experts) == 1 and all(answers_correct(model, tok, TINY_REQUESTS[:2]))
    restore_first()  # removes the adaptor
    assert type(model.get_submodule("transformer.h.1.mlp")).__name__ == "GPT2MLP"
    for r in TINY_REQUESTS:
        assert torch.equal(logits(model, tok, r["prompt"]), unedited[r["prompt"]])
    assert not model.base_model._forward_pre_hooks  # the routing-context hook went with it


def test_unrelated_prompt_gets_exactly_the_unedited_logits(tiny_gpt2):
    model, tok = tiny_gpt2
    unrelated = "Yesterday the weather in the harbour was"
    reference = logits(model, tok, unrelated)
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp()) as model:
        edited = logits(model, tok, unrelated)
        adaptor = model.get_submodule("transformer.h.1.mlp")
        assert bool((adaptor.last_routes < 0).all())  # no anchor matched
        assert torch.equal(edited, reference)


@pytest.mark.oldest_transformers
def test_routes_are_the_same_in_a_teacher_forced_pass_and_in_cached_generation(tiny_gpt2):
    model, tok = tiny_gpt2
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp()) as model:
        for prompt in (TINY_REQUESTS[0]["prompt"], "Yes. " + TINY_REQUESTS[0]["prompt"]):
            ids = tok(prompt, return_tensors="pt")
            cached = model.generate(**ids, max_new_tokens=6, do_sample=False, use_cache=True,
                                    pad_token_id=tok.eos_token_id)
            uncached = model.generate(**ids, max_new_tokens=6, do_sample=False, use_cache=False,
                                      pad_token_id=tok.eos_token_id)
            assert cached.tolist() == uncached.tolist()
        assert tok.decode(uncached[0, ids.input_ids.shape[1]]) != "" and next_token(
            model, tok, TINY_REQUESTS[0]["prompt"]).strip() == "Tokyo"
        # The route latches at the subject and holds to the end; nothing routes before it.
        logits(model, tok, TINY_REQUESTS[0]["prompt"])
        routes = model.get_submodule("transformer.h.1.mlp").last_routes[0].tolist()
        subject_end = len(tok("The capital city of France").input_ids) - 1
        assert routes[:subject_end] == [-1] * subject_end and set(routes[subject_end:]) == {0}


@pytest.mark.oldest_transformers
def test_left_padding_routes_like_no_padding(tiny_gpt2):
    model, tok = tiny_gpt2
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp()) as model:
        prompts = [TINY_REQUESTS[0]["prompt"], "Hello"]
        tok.padding_side = "left"
        batch = tok(prompts, return_tensors="pt", padding=True)
        tok.padding_side = "right"
        with torch.no_grad():
            padded = model(**batch).logits[0, -1]
        single = logits(model, tok, prompts[0])[0, -1]
        assert padded.argmax() == single.argmax()
        torch.testing.assert_close(padded, single, rtol=1e-4, atol=1e-4)


@pytest.mark.oldest_transformers
def test_save_and_load_round_trip(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    model, restore = apply(model, tok, TINY_REQUESTS, tiny_hp())
    edited = {r["prompt"]: logits(model, tok, r["prompt"]) for r in TINY_REQUESTS}
    path = lemoe.save_adaptor(model, tmp_path / "adaptor.safetensors")
    restore()
    assert lemoe.find_adaptor(model) is None
    lemoe.load_adaptor(model, path)
    try:
        for r in TINY_REQUESTS:
            assert torch.equal(logits(model, tok, r["prompt"]), edited[r["prompt"]])
        assert lemoe.adaptor_size(model)["parameters"] == 2 * 2 * 16 * 64  # 2 experts of rank 16, hidden 64
        floors = lemoe.find_adaptor(model)[1].router.anchor_floor
        assert len(floors) == 4 and (floors > -1).all()  # each anchor's floor came back with it
    finally:
        lemoe.remove_adaptor(model)


def test_an_adaptor_saved_before_anchors_had_floors_loads_with_none(tiny_gpt2):
    model, tok = tiny_gpt2
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp(generic_text_margin=None)) as model:
        tensors, metadata = lemoe.adaptor_state(model)
        edited = logits(model, tok, TINY_REQUESTS[0]["prompt"])
    del tensors["router.anchor_floor"]
    lemoe.load_adaptor_state(model, tensors, metadata)
    try:
        assert lemoe.find_adaptor(model)[1].router.anchor_floor.tolist() == [-1.0, -1.0]
        assert torch.equal(logits(model, tok, TINY_REQUESTS[0]["prompt"]), edited)
    finally:
        lemoe.remove_adaptor(model)


@pytest.mark.parametrize("span", ["sequence", "token"])
def test_an_anchor_fires_only_above_both_the_threshold_and_its_floor(span):
    from edit_plugins.methods.lemoe.layer import AnchorRouter

    router = AnchorRouter(4, threshold=0.5, span=span)
    router.add_anchors(torch.eye(4)[:2], expert=0, floors=torch.tensor([-1.0, 0.9]))
    router.add_anchors(torch.eye(4)[2:3], expert=1)  # no floor given: the threshold alone
    cosine = lambda axis, c: c * torch.eye(4)[axis] + (1 - c * c) ** 0.5 * torch.eye(4)[3]  # noqa: E731
    # per position: cos 0.6 to anchor 0, 0.8 and 0.95 to anchor 1 (floor 0.9), 0.6 to anchor 2 (expert 1)
    x = torch.stack([cosine(0, 0.6), cosine(1, 0.8), cosine(1, 0.95), cosine(2, 0.6)]).unsqueeze(0)
    routes = []
    for position in range(4):  # each position alone, so the sequence span's running best does not carry over
        route, _ = router(x[:, position : position + 1], torch.ones(1, 1, dtype=torch.bool), past=1)
        routes.append(int(route[0, 0]))
    assert routes == [0, -1, 0, 1]


def test_loading_into_the_wrong_model_names_the_problem(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    model, restore = apply(model, tok, TINY_REQUESTS[:2], tiny_hp())
    tensors, metadata = lemoe.adaptor_state(model)
    restore()
    with pytest.raises(lemoe.AdaptorError, match="made for hidden size 65, this model has 64"):
        lemoe.load_adaptor_state(model, tensors, {**metadata, "config": metadata["config"].replace('"hidden": 64',
                                                                                                  '"hidden": 65')})
    with pytest.raises(lemoe.AdaptorError, match="not a LEMoE adaptor"):
        lemoe.load_adaptor_state(model, tensors, {"format": "something else"})
    assert lemoe.find_adaptor(model) is None


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "The capital of France is", "subject": "Spain", "target_new": "Rome"}, "does not occur"),
    ({"prompt": "The capital of France is", "subject": "France", "target_new": "  "}, "target_new"),
])
def test_bad_requests_fail_before_anything_changes(tiny_gpt2, bad, message):
    model, tok = tiny_gpt2
    with pytest.raises(RequestError, match=message):
        apply(model, tok, [TINY_REQUESTS[0], bad], tiny_hp())
    assert lemoe.find_adaptor(model) is None


def test_unknown_layer_fails_before_anything_changes(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(LayerError, match="layer 9 does not exist"):
        apply(model, tok, TINY_REQUESTS[:2], tiny_hp(layer=9))
    assert lemoe.find_adaptor(model) is None


def test_failure_while_training_leaves_no_adaptor_behind(tiny_gpt2, monkeypatch):
    model, tok = tiny_gpt2
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp()) as model:
        def explode(*args, **kwargs):
            raise RuntimeError("out of memory (simulated)")

        monkeypatch.setattr(lemoe_model, "train_expert", explode)  # where the apply function looks it up
        with pytest.raises(RuntimeError, match="simulated"):
            apply(model, tok, TINY_REQUESTS[2:], tiny_hp())
        adaptor = lemoe.find_adaptor(model)[1]
        assert len(adaptor.experts) == 1 and len(adaptor.router.anchors) == 2  # the earlier batch only


@pytest.mark.parametrize("span", ["sequence", "token"])
def test_editing_a_fact_again_supersedes_the_earlier_edit(tiny_gpt2, span):
    model, tok = tiny_gpt2
    hp = tiny_hp(edits_per_expert=1, routing_span=span)
    first, again = TINY_REQUESTS[0], dict(TINY_REQUESTS[0], target_new="Lima")  # the same prompt: tied anchors
    with edits_applied(model, tok, [first], hp) as model, edits_applied(model, tok, [again], hp) as model:
        logits(model, tok, first["prompt"])
        routes = model.get_submodule("transformer.h.1.mlp").last_routes[0]
        assert set(routes[routes >= 0].tolist()) == {1}  # the second expert's anchors win the ties
        if span == "sequence":  # where the expert serves the answer's position (token: only the subject's)
            assert answers_correct(model, tok, [again, first]) == [True, False]


def test_a_batch_that_routes_nowhere_fails_clearly_and_leaves_no_expert(tiny_gpt2, monkeypatch):
    from edit_plugins.methods.lemoe.layer import AnchorRouter

    model, tok = tiny_gpt2
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp()) as model:
        def nowhere(self, x, valid, past=0, decoding=False):
            return torch.full(x.shape[:2], -1, dtype=torch.long), torch.zeros(x.shape[:2], dtype=x.dtype)

        monkeypatch.setattr(AnchorRouter, "forward", nowhere)
        with pytest.raises(lemoe.AdaptorError, match="routes to its new expert.*routing_threshold"):
            apply(model, tok, TINY_REQUESTS[2:], tiny_hp())
        assert len(lemoe.find_adaptor(model)[1].experts) == 1

@pytest.mark.parametrize("span", ["sequence", "token"])
def test_routing_span_sets_which_positions_an_expert_serves(tiny_gpt2, span):
    model, tok = tiny_gpt2
    request = TINY_REQUESTS[1]  # "The favourite food of Alice Walker is"
    with edits_applied(model, tok, [request], tiny_hp(routing_span=span)) as model:
        logits(model, tok, request["prompt"])
        routed = (model.get_submodule("transformer.h.1.mlp").last_routes[0] >= 0).tolist()
        subject_last = len(tok("The favourite food of Alice Walker").input_ids) - 1
        assert routed[subject_last] and not any(routed[:subject_last - 1])
        if span == "sequence":  # the route holds from the subject to the end of the prompt
            assert all(routed[subject_last:])
        else:  # only tokens that themselves match the anchor: " is" after the subject does not
            assert not routed[-1]


def test_negative_templates_keep_the_subjects_other_relations_as_they_were(tiny_gpt2):
    model, tok = tiny_gpt2
    request = TINY_REQUESTS[1]  # Alice Walker's favourite food
    negatives = ["The birthplace of {} is", "The employer of {} is", "The spouse of {} is"]
    # the tiny model reads Alice Walker differently behind each relation: route every prompt about her
    routed = {"routing_threshold": 0.0, "generic_text_margin": None}
    held_out = "The occupation of Alice Walker is"  # another relation, not among the negatives

    def drift(prompt, **changes):
        """KL(unedited ‖ edited) of the next token on ``prompt``, and whether the edit took hold."""
        before = torch.log_softmax(logits(model, tok, prompt)[0, -1], dim=-1)
        with edits_applied(model, tok, [request], tiny_hp(**changes)) as edited:
            after = torch.log_softmax(logits(edited, tok, prompt)[0, -1], dim=-1)
            took_hold = answers_correct(edited, tok, [request])[0]
        return float((before.exp() * (before - after)).sum()), took_hold

    for prompt in (negatives[0].format(request["subject"]), held_out):
        plain, plain_hold = drift(prompt, **routed)
        guarded, guarded_hold = drift(prompt, **routed, negative_templates=negatives, negative_weight=10.0)
        assert plain_hold and guarded_hold
        assert guarded < 0.5 * plain, (prompt, plain, guarded)


@pytest.mark.parametrize("field, value, message", [
    ("routing_span", "all", "field 'routing_span' must be one of"),
    ("routing", "topk", "field 'routing' must be one of"),
    ("routing_threshold", 1.5, "field 'routing_threshold'"),
    ("generic_text_margin", -0.1, "field 'generic_text_margin' is a cosine margin and must lie in"),
    ("expert_rank", 0, "field 'expert_rank' must be positive"),
    ("ffn_module_tmp", "transformer.h.mlp", "field 'ffn_module_tmp' must contain"),
    ("negative_templates", ["The occupation of is"], "field 'negative_templates' entry 0 must be a string with one"),
    ("negative_weight", -1.0, "field 'negative_weight' must be >= 0"),
])
def test_bad_hparams_name_the_field(field, value, message):
    import yaml

    config = yaml.safe_load((HPARAMS / "LEMoE" / "tiny-gpt2.yaml").read_text())
    config[field] = value
    with pytest.raises(HparamsError, match=message):
        lemoe.LEMoEHyperParams.from_dict(config, "tiny.yaml")


def test_every_shipped_hparams_file_loads():
    files = sorted((HPARAMS / "LEMoE").glob("*.yaml"))
    assert {f.stem for f in files} >= {"llama-2-7b", "mistral-7b", "smollm2-135m", "tiny-gpt2"}
    for f in files:
        hp = hparams.load(f)
        # EasyEdit's editor.edit requires batch_size 1; a lifelong run hands over one expert's edits per call
        assert hp.alg_name == "LEMoE" and hp.batch_size == 1 and hp.edits_per_call() == hp.edits_per_expert


def test_order_planning_groups_clusters_into_batches():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    labels = np.repeat(np.arange(3), 4)
    features = centres[labels] + rng.normal(size=(12, 16))
    shuffled = rng.permutation(12)
    order = plan_order(features[shuffled], edits_per_expert=4, seed=0)
    assert sorted(order) == list(range(12))
    batches = [set(labels[shuffled[order[i : i + 4]]]) for i in range(0, 12, 4)]
    assert all(len(b) == 1 for b in batches)  # each expert gets exactly one cluster
    assert order == plan_order(features[shuffled], edits_per_expert=4, seed=0)  # deterministic


@pytest.mark.slow
def test_smollm2_edits_take_hold_generalise_and_leave_unrelated_prompts_alone(smollm2):
    model, tok = smollm2
    records = shared_json("zsre_mend_eval.json")[200:210]  # not among the records the design was tried on
    requests = [{"prompt": r["src"], "subject": r["subject"], "target_new": r["alt"], "case_id": i}
                for i, r in enumerate(records)]
    hp = hparams.load(HPARAMS / "LEMoE" / "smollm2-135m.yaml")
    hp.edits_per_expert = 5
    before = snapshot(model)
    eiffel = "The Eiffel Tower is located in the city of"
    reference = logits(model, tok, eiffel)
    with edits_applied(model, tok, requests[:5], hp) as model:
        adaptor = lemoe.find_adaptor(model)[1]
        first = {k: v.clone() for k, v in adaptor.experts[0].state_dict().items()}
        apply(model, tok, requests[5:], hp)
        assert len(adaptor.experts) == 2
        for k, v in adaptor.experts[0].state_dict().items():
            assert torch.equal(v, first[k])
        reliability = np.mean([s.accuracy for s in score_answers(model, tok, [(r["src"], r["alt"]) for r in records])])
        generality = np.mean([s.accuracy for s in score_answers(model, tok, [(r["rephrase"], r["alt"]) for r in records])])
        assert reliability >= 0.9 and generality >= 0.5, (reliability, generality)
        assert torch.equal(logits(model, tok, eiffel), reference)
        # On a real model the route latches at the subject even behind a prefix it was not trained with.
        prefix = "Here is a question. "
        logits(model, tok, prefix + records[0]["src"])
        routes = adaptor.last_routes[0].tolist()
        subject_end = len(tok(prefix + records[0]["src"][: records[0]["src"].index(records[0]["subject"])]
                              + records[0]["subject"]).input_ids) - 1
        assert set(routes[subject_end:]) == {routes[-1]} and routes[-1] >= 0 and set(routes[:subject_end - 1]) == {-1}
        assert next_token(model, tok, eiffel).strip() == "Paris"
        assert base_weights_unchanged(model, before)
    assert lemoe.find_adaptor(model) is None and torch.equal(logits(model, tok, eiffel), reference)


@pytest.mark.slow
def test_smollm2_an_anchor_that_looks_like_ordinary_text_does_not_route_it(smollm2):
    """A two-token subject at the start of its prompt: its last token, next to the attention sink, looks like
    " the" to the router (cosine 0.82 at layer 4). Its floor keeps ordinary prompts out; without it they route."""
    model, tok = smollm2
    edit = {"prompt": "Akbar follows the religion of", "subject": "Akbar", "target_new": "Christianity"}
    ordinary = ["Vinson Massif is located in the continent of", "Don Shula professionally plays the sport of",
                "Iron Man is affiliated with the"]
    reference = {p: logits(model, tok, p) for p in ordinary}
    hp = hparams.load(HPARAMS / "LEMoE" / "smollm2-135m.yaml")
    with collect_events() as events, edits_applied(model, tok, [edit], hp) as edited:
        assert answers_correct(edited, tok, [edit]) == [True]
        assert all(torch.equal(logits(edited, tok, p), reference[p]) for p in ordinary)
    assert events[0][0].info["generic_anchors"] == 1
    hp.generic_text_margin = None
    with edits_applied(model, tok, [edit], hp) as edited:
        assert not any(torch.equal(logits(edited, tok, p), reference[p]) for p in ordinary)


def test_softmax_router_ablation_touches_every_input_and_round_trips(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    unrelated = "Yesterday the weather in the harbour was"
    reference = logits(model, tok, unrelated)
    with edits_applied(model, tok, TINY_REQUESTS[:2], tiny_hp(routing="softmax")) as model:
        assert all(answers_correct(model, tok, TINY_REQUESTS[:2]))
        edited = logits(model, tok, unrelated)
        assert not torch.equal(edited, reference)  # no threshold: every input goes through an expert
        path = lemoe.save_adaptor(model, tmp_path / "softmax.safetensors")
    lemoe.load_adaptor(model, path)
    try:
        assert torch.equal(logits(model, tok, unrelated), edited)
    finally:
        lemoe.remove_adaptor(model)
