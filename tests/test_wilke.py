"""WilKE on the tiny GPT-2 (Conv1D path) and on SmolLM2 (Llama path)."""
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch

from conftest import EIFFEL, HPARAMS, changed_parameters, next_token, restore, snapshot
from edit_plugins import hparams
from edit_plugins.editing.layers import LayerError
from edit_plugins.editing.output_head import OutputHead
from edit_plugins.editing.requests import RequestError
from edit_plugins.events import collect_events
from edit_plugins.methods.wilke import apply_wilke_to_model
from edit_plugins.methods.wilke.model import FAST_SCAN_TRIES

# The random tiny GPT-2 attends weakly, so its test prompt ends with the subject.
TINY_REQUEST = {"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"}


@pytest.fixture
def tiny_hparams(stats_dir):
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir = stats_dir
    return hp


@pytest.fixture(scope="module")
def smollm2_hparams(stats_dir):
    hp = hparams.load(HPARAMS / "WilKE" / "smollm2-135m.yaml")
    hp.stats_dir, hp.mom2_n_samples = stats_dir, 100
    hp.layers = [3, 8, 14]  # a few candidates keep the test quick; the benchmark scans all 30
    return hp


def edit_and_check(model, tok, request, hp, prompt):
    before = snapshot(model)
    with collect_events() as events:
        _, weights_copy = apply_wilke_to_model(model, tok, [request], hp, copy=False, return_orig_weights=True,
                                               keep_original_weight=False, train_ds=None)
    (event, _), = events
    chosen = event.info["layer"]
    assert next_token(model, tok, prompt) == " " + request["target_new"]
    # Only the chosen layer's projection changed, and it is the argmin of the reported scores.
    assert changed_parameters(model, before) == [hp.rewrite_module_tmp.format(chosen) + ".weight"]
    scores = {int(k): v for k, v in event.info["layer_scores"].items()}
    eligible = {k: v for k, v in scores.items() if k not in event.info["ineligible_layers"]}
    assert sorted(set(scores) | set(event.info["ineligible_layers"])) == hp.layers
    assert chosen == min(eligible, key=eligible.get)
    # weights_copy restores every bit.
    assert list(weights_copy) == [hp.rewrite_module_tmp.format(chosen) + ".weight"]
    restore(model, weights_copy)
    assert changed_parameters(model, before) == []
    return event


def test_tiny_gpt2_edit_takes_hold_at_one_layer_and_restores(tiny_gpt2, tiny_hparams):
    model, tok = tiny_gpt2
    assert next_token(model, tok, TINY_REQUEST["prompt"]) != " Tokyo"
    event = edit_and_check(model, tok, TINY_REQUEST, tiny_hparams, TINY_REQUEST["prompt"])
    # Conv1D: the reported ΔW has the stored (in, out) layout.
    (name, delta), = event.weight_deltas.items()
    assert delta.shape == model.get_parameter(name).shape


@pytest.mark.slow
def test_smollm2_edit_takes_hold_at_one_layer_and_restores(smollm2, smollm2_hparams):
    model, tok = smollm2
    edit_and_check(model, tok, EIFFEL, smollm2_hparams, EIFFEL["prompt"])
    assert next_token(model, tok, EIFFEL["prompt"]) == " Paris"  # restored


@pytest.mark.slow
def test_fast_scan_edits_at_its_estimated_best_layer(smollm2, smollm2_hparams):
    model, tok = smollm2
    hp = hparams.load(HPARAMS / "WilKE" / "smollm2-135m-fast.yaml")
    hp.stats_dir, hp.mom2_n_samples, hp.layers = smollm2_hparams.stats_dir, 100, smollm2_hparams.layers
    event = edit_and_check(model, tok, EIFFEL, hp, EIFFEL["prompt"])
    assert event.info["scores_estimated"] is True and event.info["ineligible_layers"] == []


def test_fast_scan_leaves_out_the_last_layer_when_the_subject_is_mid_prompt(tiny_gpt2, tiny_hparams):
    """δ at the last layer reaches no later position: with the subject mid-prompt that layer is not scored."""
    model, tok = tiny_gpt2
    before = snapshot(model)
    tiny_hparams.fast_scan, tiny_hparams.layers = True, [0, 1, 2, 3]
    request = {"prompt": "France has its capital city in", "subject": "France", "target_new": "Tokyo"}
    with collect_events() as events:
        _, weights_copy = apply_wilke_to_model(model, tok, [request], tiny_hparams, return_orig_weights=True)
    (event, _), = events
    assert event.info["scores_estimated"] is True
    assert 3 in event.info["ineligible_layers"] and "3" not in event.info["layer_scores"]
    assert set(event.info["layer_scores"]) == {"0", "1", "2"}
    restore(model, weights_copy)
    assert changed_parameters(model, before) == []


def test_fast_scan_tries_the_next_estimate_where_delta_cannot_reach_the_target(tiny_gpt2, tiny_hparams):
    model, tok = tiny_gpt2
    before = snapshot(model)
    # One tiny step: δ reaches the target nowhere, so every candidate up to FAST_SCAN_TRIES is optimised.
    tiny_hparams.fast_scan, tiny_hparams.v_num_grad_steps, tiny_hparams.v_lr = True, 1, 1e-6
    with collect_events() as events:
        _, weights_copy = apply_wilke_to_model(model, tok, [TINY_REQUEST], tiny_hparams, return_orig_weights=True)
    (event, _), = events
    tried = event.info["ineligible_layers"]
    assert len(tried) == min(FAST_SCAN_TRIES, len(tiny_hparams.layers)) == 3 and event.info["layer"] in tried
    estimates = event.info["layer_scores"]
    assert [str(layer) for layer in tried] == sorted(estimates, key=estimates.get)[: len(tried)]  # in estimate order
    restore(model, weights_copy)
    assert changed_parameters(model, before) == []


def test_fast_scan_over_every_candidate_picks_the_faithful_scans_layer(tiny_gpt2, tiny_hparams):
    model, tok = tiny_gpt2
    results = {}
    for fast in (False, True):
        hp = deepcopy(tiny_hparams)
        hp.fast_scan, hp.fast_scan_candidates, hp.scan_layers_per_pass = fast, len(hp.layers), 1
        with collect_events() as events:
            _, weights_copy = apply_wilke_to_model(model, tok, [TINY_REQUEST], hp, return_orig_weights=True)
        (event, _), = events
        restore(model, weights_copy)
        results[fast] = event.info
    faithful, fast = results[False], results[True]
    assert fast["scores_estimated"] and not faithful["scores_estimated"]
    assert fast["layer"] == faithful["layer"]
    assert fast["v_nll"] == pytest.approx(faithful["v_nll"], rel=1e-3)


@pytest.mark.parametrize("request_, message", [
    ({**TINY_REQUEST, "subject": "Germany"}, "'Germany' does not occur in the prompt"),
    ({**TINY_REQUEST, "target_new": "  "}, "field 'target_new' must be a non-empty string"),
    ({**TINY_REQUEST, "target_new": {"str": ""}}, "field 'target_new' must be a non-empty string"),
    ({"prompt": "x", "target_new": "y"}, "field 'subject' must be a non-empty string"),
])
def test_bad_requests_fail_before_any_weight_is_touched(tiny_gpt2, tiny_hparams, request_, message):
    model, tok = tiny_gpt2
    before = snapshot(model)
    with pytest.raises(RequestError, match=message):
        # the bad request comes second: the first must not be applied either
        apply_wilke_to_model(model, tok, [TINY_REQUEST, request_], tiny_hparams)
    assert changed_parameters(model, before) == []


@pytest.mark.parametrize("layers, template, message", [
    ([0, 7], "transformer.h.{}.mlp.c_proj", "layer 7 does not exist: the model has layers 0..3"),
    ([0], "transformer.h.{}.mlp.nonesuch", "no module named 'transformer.h.0.mlp.nonesuch'"),
])
def test_unknown_layer_fails_before_any_weight_is_touched(tiny_gpt2, tiny_hparams, layers, template, message):
    model, tok = tiny_gpt2
    tiny_hparams.layers, tiny_hparams.rewrite_module_tmp = layers, template
    before = snapshot(model)
    with pytest.raises(LayerError, match=message):
        apply_wilke_to_model(model, tok, [TINY_REQUEST], tiny_hparams)
    assert changed_parameters(model, before) == []


def test_failure_mid_batch_leaves_the_model_unedited(tiny_gpt2, tiny_hparams, monkeypatch):
    from edit_plugins.methods.wilke import model as wilke_main

    model, tok = tiny_gpt2
    before = snapshot(model)
    real, calls = wilke_main.execute_wilke, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(wilke_main, "execute_wilke", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        apply_wilke_to_model(model, tok, [TINY_REQUEST, {**TINY_REQUEST, "target_new": "Oslo"}], tiny_hparams)
    assert changed_parameters(model, before) == []


def test_copy_leaves_the_original_model_alone(tiny_gpt2, tiny_hparams):
    model, tok = tiny_gpt2
    before = snapshot(model)
    edited, _ = apply_wilke_to_model(model, tok, [TINY_REQUEST], tiny_hparams, copy=True)
    assert edited is not model and changed_parameters(model, before) == []
    assert next_token(edited, tok, TINY_REQUEST["prompt"]) == " Tokyo"


def test_single_candidate_layer_is_plain_rome(tiny_gpt2, tiny_hparams):
    model, tok = tiny_gpt2
    tiny_hparams.layers = [1]
    with collect_events() as events:
        apply_wilke_to_model(model, tok, [TINY_REQUEST], tiny_hparams)
    assert events[0][0].info["layer"] == 1 and list(events[0][0].info["layer_scores"]) == ["1"]


def test_rank_one_update_maps_the_key_exactly():
    from edit_plugins.editing.rank_one import rank_one_update

    torch.manual_seed(0)
    W, k, v = torch.randn(5, 7), torch.randn(7), torch.randn(5)
    A = torch.randn(7, 7)
    c_inv = torch.linalg.inv(A @ A.T + torch.eye(7))
    delta = rank_one_update(W, k, v, c_inv)
    assert torch.allclose((W + delta) @ k, v, atol=1e-5)
    assert torch.linalg.matrix_rank(delta) == 1
    # with C = I the update is the minimum-norm one: its row space is k
    plain = rank_one_update(W, k, v, None)
    assert torch.allclose(plain, torch.outer(v - W @ k, k) / k.dot(k), atol=1e-6)


def test_rome_form_maps_the_prompt_key_exactly_along_the_mean_key_direction():
    from edit_plugins.editing.rank_one import rank_one_update

    torch.manual_seed(1)
    W, k, k_mean, v = torch.randn(5, 7), torch.randn(7), torch.randn(7), torch.randn(5)
    A = torch.randn(7, 7)
    c_inv = torch.linalg.inv(A @ A.T + torch.eye(7))
    delta = rank_one_update(W, k, v, c_inv, direction_key=k_mean)
    assert torch.allclose((W + delta) @ k, v, atol=1e-5)  # the prompt's own key is mapped exactly
    u = c_inv @ k_mean
    assert torch.allclose(delta, torch.outer(delta @ u / u.dot(u), u), atol=1e-5)  # rows along C⁻¹k̄


def test_one_direction_for_two_keys_maps_both_with_the_least_norm_and_a_repeated_key_asks_nothing_more():
    from edit_plugins.editing.rank_one import direction_for_keys

    torch.manual_seed(2)
    B = torch.randn(7, 7, dtype=torch.float64)
    A = B @ B.T + torch.eye(7, dtype=torch.float64)  # the metric: C, or the soft guard's C + λG
    k1, k2 = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    u = direction_for_keys([k1, k2], [torch.linalg.solve(A, k1), torch.linalg.solve(A, k2)]).double()
    torch.testing.assert_close(torch.stack([k1 @ u, k2 @ u]), torch.ones(2, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    K = torch.stack([k1, k2], 1)
    least = torch.linalg.solve(A, K) @ torch.linalg.solve(K.T @ torch.linalg.solve(A, K), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(u, least, rtol=1e-5, atol=1e-6)
    alone = torch.linalg.solve(A, k1) / (k1 @ torch.linalg.solve(A, k1))
    repeated = direction_for_keys([k1, k1.clone()], [torch.linalg.solve(A, k1)] * 2).double()
    torch.testing.assert_close(repeated, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_prefix_cache_gives_the_same_log_probs_as_a_full_pass(model_fixture, request):
    from edit_plugins.editing.requests import normalize_request
    from edit_plugins.editing.runtime import SuffixRunner

    model, tok = request.getfixturevalue(model_fixture)
    edit = normalize_request({"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
                              "target_new": "English"})
    runner = SuffixRunner.for_request(model, tok, edit, ["{}", "Hello there my friend. {}", "A. {}"])
    assert runner.split is not None  # the cached path is the one under test
    rows = torch.cat([runner.batch.loss_rows, runner.batch.kl_rows])
    positions = torch.cat([runner.batch.loss_pos, runner.batch.kl_pos])
    head = OutputHead(model)
    with torch.no_grad():
        cached = head.log_probs(runner.hidden_at(rows, positions))
        runner.split = None
        full = head.log_probs(runner.hidden_at(rows, positions))
    assert torch.allclose(cached, full, atol=1e-4)


@pytest.mark.oldest_transformers  # the prefix cache's type differs between transformers versions
@pytest.mark.parametrize("prompt, subject", [("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
                                             ("Paris is the capital of", "Paris")])  # no prefix to cache
@pytest.mark.parametrize("model_fixture, layers, template", [
    ("tiny_gpt2", [0, 1, 2], "transformer.h.{}.mlp.c_proj"),
    pytest.param("smollm2", [3, 8, 14], "model.layers.{}.mlp.down_proj", marks=pytest.mark.slow)])
def test_delta_optimised_beside_other_layers_is_the_delta_optimised_alone(model_fixture, layers, template, prompt,
                                                                          subject, request, tiny_hparams):
    from edit_plugins.editing.requests import normalize_request
    from edit_plugins.editing.runtime import SuffixRunner
    from edit_plugins.editing.values import Candidate, optimise_deltas

    model, tok = request.getfixturevalue(model_fixture)
    edit = normalize_request({"prompt": prompt, "subject": subject, "target_new": "English"})
    hp = deepcopy(tiny_hparams)
    hp.v_num_grad_steps, hp.v_lr = 12, 5.0
    hp.v_early_stop_loss = 12.0 if model_fixture == "tiny_gpt2" else 1.0  # some copies stop early, some do not
    runner = SuffixRunner.for_request(model, tok, edit, ["{}", "Hello there my friend. {}", "A. {}"])
    assert (runner.split is None) == prompt.startswith(subject)
    v0 = torch.full((model.config.hidden_size,), 20.0)  # sets only the scale of the weight decay and clamp
    candidates = [Candidate(layer, template.format(layer), v0) for layer in layers]
    before = snapshot(model)
    together = optimise_deltas(model, runner, candidates, hp)
    alone = [optimise_deltas(model, runner, [candidate], hp)[0] for candidate in candidates]
    assert changed_parameters(model, before) == []
    if model_fixture == "tiny_gpt2" and runner.split is not None:
        assert len({r.steps for r in alone}) > 1  # copies that stop early beside copies that do not
    for t, a in zip(together, alone):
        assert t.steps == a.steps
        assert t.nll == pytest.approx(a.nll, rel=1e-3, abs=1e-4)
        assert torch.allclose(t.delta, a.delta, rtol=1e-3, atol=1e-4 * float(a.delta.norm()))


def _loss_terms(head, hidden, labels, reference_hidden):
    hidden = hidden.detach().clone().requires_grad_(True)
    reference = head.reference(reference_hidden)
    log_z = head.log_partition(hidden)
    token = head.token_log_probs(hidden, labels, log_z)
    kl = head.kl_from(reference, hidden, log_z)
    (token.sum() + kl).backward()
    return token.detach(), kl.detach(), hidden.grad


def _log_softmax_terms(model, hidden, labels, reference_hidden):
    """The same terms from plain logits and torch's own log_softmax and kl_div."""
    head = model.get_output_embeddings()
    hidden = hidden.detach().clone().requires_grad_(True)
    log_probs = torch.log_softmax(head(hidden), dim=-1)
    with torch.no_grad():
        reference = torch.log_softmax(head(reference_hidden), dim=-1)
    token = log_probs.gather(1, labels[:, None])[:, 0]
    kl = torch.nn.functional.kl_div(log_probs, reference, log_target=True, reduction="batchmean")
    (token.sum() + kl).backward()
    return token.detach(), kl.detach(), hidden.grad


def _head_only(linear):
    return SimpleNamespace(config=SimpleNamespace(), get_output_embeddings=lambda: linear)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", pytest.param("smollm2", marks=pytest.mark.slow), "biased",
                                           "biased-bfloat16"])
def test_streamed_head_gives_the_log_softmax_values_and_gradients(model_fixture, request):
    """The one-pass log-partition (online softmax over vocabulary chunks) against plain logits."""
    if model_fixture.startswith("biased"):  # a GPT-J-style head with a bias, over several chunks and a remainder
        torch.manual_seed(0)
        linear = torch.nn.Linear(16, 5000)
        if model_fixture.endswith("bfloat16"):  # read in float32 chunks; compare with an exact float32 copy
            linear = linear.to(torch.bfloat16)
            model, plain_model = _head_only(linear), _head_only(deepcopy(linear).float())
        else:
            model = plain_model = _head_only(linear)
    else:
        model, _ = request.getfixturevalue(model_fixture)
        plain_model = model
    d = model.get_output_embeddings().weight.shape[1]
    torch.manual_seed(1)
    hidden, reference_hidden = torch.randn(5, d) * 3, torch.randn(5, d) * 3
    labels = torch.tensor([0, 7, 11, 42, 99])
    want = _log_softmax_terms(plain_model, hidden, labels, reference_hidden)
    assert float(want[1]) > 0.1  # the KL term is really exercised
    assert OutputHead(model).streamed
    for streamed in (True, False):  # False: the fallback for heads that are not one linear map
        if not streamed and model is not plain_model:
            continue  # the fallback multiplies in the head's own precision
        got = _loss_terms(OutputHead(model, streamed=streamed), hidden, labels, reference_hidden)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-5), (streamed, g, w)


def test_cached_statistics_of_another_model_are_a_clear_error(tiny_gpt2, tmp_path):
    """The cache is keyed by model name, as in ROME/EasyEdit: a file of the wrong width must not be used."""
    import numpy as np

    from edit_plugins.editing.covariance import StatisticsError, cache_path, second_moments

    model, tok = tiny_gpt2
    module = "transformer.h.0.mlp.c_proj"
    path = cache_path(tmp_path, "tiny", "pydoc", module, 10)
    path.parent.mkdir(parents=True)
    np.savez(path, **{"mom2.mom2": np.eye(7), "mom2.count": np.array(1)})
    with pytest.raises(StatisticsError, match=r"mom2_10\.npz: cached statistics are \(7, 7\).*width"):
        second_moments(model, tok, [module], source="pydoc", n_samples=10, stats_dir=tmp_path, model_key="tiny")


def test_statistics_being_computed_elsewhere_block_only_their_own_module(tiny_gpt2, tmp_path):
    """Another process computing one module's statistics (its lock held) makes a caller of that module wait
    and read its file; a caller of another module goes on beside it."""
    import threading

    from filelock import FileLock

    from edit_plugins.editing.covariance import cache_path, second_moments

    model, tok = tiny_gpt2
    busy, free = "transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"
    where = dict(source="pydoc", n_samples=10, stats_dir=tmp_path, model_key="tiny")
    path = cache_path(tmp_path, "tiny", "pydoc", busy, 10)
    path.parent.mkdir(parents=True)
    got = {}
    with FileLock(f"{path}.lock"):
        assert free in second_moments(model, tok, [free], **where)  # not held up
        waiting = threading.Thread(target=lambda: got.update(second_moments(model, tok, [busy], **where)))
        waiting.start()
        waiting.join(2)
        assert waiting.is_alive() and not path.exists()
    waiting.join(120)
    assert not waiting.is_alive() and got[busy].shape == (256, 256)


@pytest.mark.parametrize("guarded", [False, True])
def test_a_spread_edit_takes_every_layers_statistics_from_the_model_before_it(tiny_gpt2, tiny_hparams, tmp_path,
                                                                               guarded):
    """The layers below the chosen one first need their C during a spread edit, after its lower pieces have
    changed the model. C, and the cache that later runs reuse, must be the model's as it was before the edit."""
    from edit_plugins.editing.covariance import second_moments, stats_model_key

    model, tok = tiny_gpt2
    before = snapshot(model)
    hp = tiny_hparams
    hp.stats_dir, hp.layers, hp.spread_layers, hp.interference_guard = str(tmp_path / "run"), [3], 3, guarded
    _, weights_copy = apply_wilke_to_model(model, tok, [TINY_REQUEST], hp, return_orig_weights=True)
    restore(model, weights_copy)
    assert changed_parameters(model, before) == []
    modules = [hp.rewrite_module_tmp.format(layer) for layer in (1, 2, 3)]
    settings = dict(source=hp.mom2_dataset, n_samples=hp.mom2_n_samples, model_key=stats_model_key(hp.model_name, model))
    cached = second_moments(model, tok, modules, stats_dir=hp.stats_dir, **settings)
    second_moments(model, tok, modules, stats_dir=tmp_path / "unedited", **settings)
    unedited = second_moments(model, tok, modules, stats_dir=tmp_path / "unedited", **settings)  # as cached
    assert all(torch.equal(cached[m], unedited[m]) for m in modules)


def test_a_soft_capped_head_falls_back_to_capped_logits():
    """Gemma-2 style models cap logits in their forward, outside the head: the loss must see the cap."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 300, bias=False)
    model = SimpleNamespace(config=SimpleNamespace(final_logit_softcapping=2.0), get_output_embeddings=lambda: linear)
    head = OutputHead(model)
    assert not head.streamed
    hidden, labels = torch.randn(3, 16) * 4, torch.tensor([1, 2, 3])
    with torch.no_grad():
        capped = torch.log_softmax(torch.tanh(linear(hidden) / 2.0) * 2.0, dim=-1)
        assert torch.allclose(head.token_log_probs(hidden, labels), capped.gather(1, labels[:, None])[:, 0], atol=1e-5)
        assert not torch.allclose(capped, torch.log_softmax(linear(hidden), dim=-1), atol=1e-2)


@pytest.mark.parametrize("la_norm", ["current", "original"])
def test_la_divides_by_the_layers_norm_now_or_before_the_first_edit(tiny_gpt2, tiny_hparams, la_norm):
    model, tok = tiny_gpt2
    model = deepcopy(model)
    hp = deepcopy(tiny_hparams)
    hp.layers, hp.la_norm = [2], la_norm  # both edits at one layer, whose norm the first one changes
    name = hp.rewrite_module_tmp.format(2) + ".weight"
    second = {"prompt": "The capital city of Italy", "subject": "Italy", "target_new": "Paris"}
    weights = [model.get_parameter(name).detach().clone()]
    with collect_events() as events:
        for request in (TINY_REQUEST, second):
            apply_wilke_to_model(model, tok, [request], hp, copy=False)
            weights.append(model.get_parameter(name).detach().clone())
    norms = [float(w.norm()) for w in weights]
    assert abs(norms[1] - norms[0]) > 1e-3 * norms[0]  # so the two rules differ
    delta = float((weights[2] - weights[1]).norm())
    score = events[1][0].info["layer_scores"]["2"]
    assert score == pytest.approx(delta / (norms[1] if la_norm == "current" else norms[0]), rel=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"la_norm": "initial"}, r"field 'la_norm' must be one of \['current', 'original'\]"),
    ({"layer_change_budget": 0}, "field 'layer_change_budget' must be a positive number"),
    ({"layer_change_budget": 0.5, "mom2_adjustment": False}, "'layer_change_budget' measures change with C"),
])
def test_bad_layer_choice_settings_are_refused_naming_the_field(change, message):
    config = hparams.read_yaml(HPARAMS / "WilKE" / "tiny-gpt2.yaml")[0]
    with pytest.raises(hparams.HparamsError, match=message):
        hparams.from_dict({**config, **change}, "wilke.yaml")


def _output_change(model, tok, hp, name, original) -> float:
    """‖W − W₀‖_C / ‖W₀‖_C as RMS outputs: √tr(A C Aᵀ) over √tr(W₀ C W₀ᵀ), C from the edit's statistics."""
    from edit_plugins.editing.covariance import second_moments, stats_model_key
    from edit_plugins.editing.layers import get_module, weight_out_in

    C = second_moments(model, tok, [name], source=hp.mom2_dataset, n_samples=hp.mom2_n_samples,
                       stats_dir=hp.stats_dir, model_key=stats_model_key(hp.model_name, model))[name].double()
    W0 = original.double()
    A = weight_out_in(get_module(model, name)).detach().double() - W0
    return float(torch.trace(A @ C @ A.T) / torch.trace(W0 @ C @ W0.T)) ** 0.5


def test_a_layer_past_its_change_budget_takes_no_more_edits(tiny_gpt2, tiny_hparams):
    from edit_plugins.editing.layers import get_module, weight_out_in
    from edit_plugins.methods.wilke.change_budget import LayerBudgetSpent

    model, tok = tiny_gpt2
    model = deepcopy(model)
    hp = deepcopy(tiny_hparams)
    hp.layers, hp.layer_change_budget = [1, 2], 100.0
    originals = {layer: weight_out_in(get_module(model, hp.rewrite_module_tmp.format(layer))).detach().clone()
                 for layer in hp.layers}
    second = {"prompt": "The capital city of Italy", "subject": "Italy", "target_new": "Paris"}
    with collect_events() as events:
        apply_wilke_to_model(model, tok, [TINY_REQUEST], hp, copy=False)
    first = events[0][0].info
    name = hp.rewrite_module_tmp.format(first["layer"])
    measured = _output_change(model, tok, hp, name, originals[first["layer"]])
    assert measured > 0 and first["layer_change"] == pytest.approx(measured, rel=1e-4)

    hp.layer_change_budget = 0.9 * measured  # the first edit's layer has now spent it; the other has not
    with collect_events() as events:
        apply_wilke_to_model(model, tok, [second], hp, copy=False)
    assert events[0][0].info["layer"] != first["layer"]

    hp.layer_change_budget = 1e-9  # both spent: refused, naming the field, and nothing written
    before = snapshot(model)
    with pytest.raises(LayerBudgetSpent, match="layer_change_budget 1e-09: every candidate layer"):
        apply_wilke_to_model(model, tok, [TINY_REQUEST], hp, copy=False)
    assert changed_parameters(model, before) == []


def test_the_change_budgets_original_weights_survive_a_saved_state(tiny_gpt2, tiny_hparams, tmp_path):
    from edit_plugins.files import load_tensors, save_tensors
    from edit_plugins.methods.wilke.change_budget import layer_change
    from edit_plugins.methods.wilke.model import second_moment
    from edit_plugins.methods.wilke.serialization import load_wilke_state
    from edit_plugins.methods.wilke.serialization import save_wilke_state as wilke_state

    model, tok = tiny_gpt2
    model = deepcopy(model)
    hp = deepcopy(tiny_hparams)
    hp.layer_change_budget = 100.0
    with collect_events() as events:
        apply_wilke_to_model(model, tok, [TINY_REQUEST], hp, copy=False)
    name = hp.rewrite_module_tmp.format(events[0][0].info["layer"])
    save_tensors(tmp_path / "state.safetensors", *wilke_state(model))
    moment = second_moment(model, tok, hp)
    resumed = deepcopy(model)  # the edited weights, and no record of the layer before the edit
    assert layer_change(resumed, name, moment) == 0.0
    resumed = deepcopy(model)
    load_wilke_state(resumed, *load_tensors(tmp_path / "state.safetensors"))
    assert layer_change(resumed, name, moment) == layer_change(model, name, moment) > 0


def test_original_norms_survive_a_saved_state(tiny_gpt2, tiny_hparams, tmp_path):
    from edit_plugins.files import load_tensors, save_tensors
    from edit_plugins.methods.wilke.layer_selection import la_norms
    from edit_plugins.methods.wilke.serialization import load_wilke_state
    from edit_plugins.methods.wilke.serialization import save_wilke_state as wilke_state

    model, tok = tiny_gpt2
    model = deepcopy(model)
    hp = deepcopy(tiny_hparams)
    hp.la_norm = "original"
    names = [hp.rewrite_module_tmp.format(layer) for layer in hp.layers]
    assert wilke_state(model) is None
    apply_wilke_to_model(model, tok, [TINY_REQUEST], hp, copy=False)
    save_tensors(tmp_path / "state.safetensors", *wilke_state(model))
    resumed = deepcopy(model)  # the edited weights, and no record of the norms before the edit
    assert la_norms(resumed, names, "original") == la_norms(resumed, names, "current")
    resumed = deepcopy(model)
    load_wilke_state(resumed, *load_tensors(tmp_path / "state.safetensors"))
    assert la_norms(resumed, names, "original") == la_norms(model, names, "original") != la_norms(model, names, "current")
