"""The interference guard: guarded rank-one updates leave earlier edits' keys mapped where they were."""
import itertools
from copy import deepcopy

import pytest
import torch

from conftest import EIFFEL, HPARAMS, changed_parameters, next_token, restore, snapshot
from edit_plugins import hparams
from edit_plugins.diagnostics.interference import InterferenceLog
from edit_plugins.methods.wilke.guard.layer import LayerGuard
from edit_plugins.methods.wilke.guard.model import current_keys
from edit_plugins.methods.wilke.guard.settings import GuardError, GuardSettings
from edit_plugins.methods.wilke.guard.space import MetricSpace
from edit_plugins.methods.wilke.model_state import drop_guard, model_guard
from edit_plugins.methods.wilke.serialization import load_guard as load_guard_state
from edit_plugins.methods.wilke.serialization import save_guard as guard_state
from edit_plugins.editing.keys import compute_keys, scored_position_keys
from edit_plugins.editing.layers import get_module, weight_out_in
from edit_plugins.editing.requests import normalize_requests, with_leading_space
from edit_plugins.editing.tokens import encode, subject_last_index, target_ids
from edit_plugins.events import collect_events
from edit_plugins.methods.wilke import apply_wilke_to_model
from edit_plugins.methods.wilke.model import layer_inverses
from edit_plugins.plugins import pm

TINY_REQUESTS = [
    {"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"},
    {"prompt": "The favourite food of Germany", "subject": "Germany", "target_new": "rice"},
    {"prompt": "The best known river of Egypt", "subject": "Egypt", "target_new": "Thames"},
    {"prompt": "The national sport of Canada", "subject": "Canada", "target_new": "cricket"},
    {"prompt": "The oldest city of Italy", "subject": "Italy", "target_new": "Oslo"},
]
SMOLLM2_REQUESTS = [
    EIFFEL,
    {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux", "target_new": "English"},
    {"prompt": "Toko Yasuda, the", "subject": "Toko Yasuda", "target_new": "piano"},
    {"prompt": "Autonomous University of Madrid, which is located in", "subject": "Autonomous University of Madrid",
     "target_new": "Sweden"},
]


def tiny_hp(stats_dir, layers=(1,), **guard):
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir, hp.layers = stats_dir, list(layers)
    hp.interference_guard = True
    for name, value in guard.items():
        setattr(hp, name, value)
    return hp


# The guard's guarantees are algebra that holds for any value an edit asks for: the tests of them alone on
# SmolLM2 optimise it in fewer steps.
ALGEBRA_ONLY = {"v_num_grad_steps": 5}


def smollm2_hp(stats_dir, **guard):
    hp = hparams.load(HPARAMS / "WilKE" / "smollm2-135m-rome.yaml")
    hp.stats_dir, hp.mom2_n_samples = stats_dir, 100
    for name, value in guard.items():
        setattr(hp, name, value)
    return hp


def key_at(model, tok, request, module):
    return compute_keys(model, tok, normalize_requests([request]), [module])[module][0]


def edit_sequence(model, tok, hp, requests):
    """Apply the requests one call each; after each, how far every earlier key has moved from the value it
    was mapped to right after its own edit (relative), and the event."""
    module = hp.rewrite_module_tmp.format(hp.layers[0])
    log = InterferenceLog()
    pm.register(log)
    keys, values, drifts, events = [], [], [], []
    try:
        for request in requests:
            W_before = weight_out_in(get_module(model, module)).detach().float().clone()
            with collect_events() as fired:
                apply_wilke_to_model(model, tok, [request], hp)
            (event, results), = fired
            events.append((event, results, W_before))
            W = weight_out_in(get_module(model, module)).detach().float()
            drifts.append([float((W @ k - v).norm() / v.norm()) for k, v in zip(keys, values)])
            keys.append(key_at(model, tok, request, module))
            values.append(W @ keys[-1])
    finally:
        pm.unregister(log)
    return drifts, events


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_guarded_edits_keep_every_earlier_key_mapped_to_its_value(model_fixture, stats_dir, request):
    model, tok = request.getfixturevalue(model_fixture)
    before = snapshot(model)
    hp, requests = (tiny_hp(stats_dir), TINY_REQUESTS) if model_fixture == "tiny_gpt2" else (
        smollm2_hp(stats_dir, interference_guard=True, **ALGEBRA_ONLY), SMOLLM2_REQUESTS)
    try:
        drifts, events = edit_sequence(model, tok, hp, requests)
        assert max(max(d) for d in drifts[1:]) < 1e-5  # float precision, after every edit
        for event, results, W_before in events:
            (edit,) = event.linear_edits
            (delta,) = event.weight_deltas.values()
            delta = delta.double() if delta.shape == W_before.shape else delta.double().T
            assert torch.linalg.matrix_rank(delta, rtol=1e-6) == 1
            # ΔW maps k to v*: W_before k + ΔW k = W_before k + r
            torch.testing.assert_close(delta.float() @ edit.key, edit.residual, rtol=1e-4, atol=1e-5)
        # the interference log sees the guarantee: predicted ≈ 0 on the guarded keys, and measured too
        last = events[-1][1]["interference"]
        assert last["predicted_interference_rel"]["max"] < 1e-5
        assert last["measured_drift_rel"]["max"] < 1e-5
        assert [e.info["guard"]["path"] for e, _, _ in events] == ["plain"] + ["guard"] * (len(requests) - 1)
        # the same edits unguarded do move the earlier keys (so the check above can fail)
        restore(model, before)
        hp.interference_guard = False
        unguarded, _ = edit_sequence(model, tok, hp, requests)
        assert max(max(d) for d in unguarded[1:]) > 1e-3
    finally:
        restore(model, before)


def scored_logits(model, tok, request):
    """Logits at every position a teacher-forced score of the request reads."""
    r = normalize_requests([request])[0]
    ids = encode(tok, r.text) + target_ids(tok, with_leading_space(r.target_new))[:-1]
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_guarding_every_scored_position_leaves_earlier_edits_forward_pass_as_it_was(tiny_gpt2, stats_dir):
    """With guard_positions: prompt, later edits at the layer leave an earlier edit's whole teacher-forced
    forward pass as it was right after its own edit (nothing below the layer changes); guarding the subject's
    last token alone does not."""
    model, tok = tiny_gpt2
    before = snapshot(model)
    moved = {}
    try:
        for positions in ("prompt", "subject_last"):
            restore(model, before)
            hp = tiny_hp(stats_dir, guard_positions=positions)
            own, paths = [], []
            for request in TINY_REQUESTS:
                with collect_events() as fired:
                    apply_wilke_to_model(model, tok, [request], hp)
                paths.append(fired[0][0].info["guard"]["path"])
                own.append(scored_logits(model, tok, request))
            assert paths == ["plain"] + ["guard"] * (len(TINY_REQUESTS) - 1)
            moved[positions] = max(float((scored_logits(model, tok, r) - logits).abs().max() / logits.abs().max())
                                   for r, logits in zip(TINY_REQUESTS[:-1], own[:-1]))
    finally:
        restore(model, before)
    assert moved["prompt"] < 1e-5
    assert moved["subject_last"] > 1e-3


def test_readout_positions_guard_where_the_score_reads_the_next_token_and_no_other_position(tiny_gpt2, stats_dir):
    """With guard_positions: readout, later edits leave the edited layer's output as it was at an earlier edit's
    subject key and at every position whose next-token prediction its score reads (the prompt's last token and
    the target's); at the prompt's other positions it moves."""
    model, tok = tiny_gpt2
    before = snapshot(model)
    hp = tiny_hp(stats_dir, guard_positions="readout")
    module = hp.rewrite_module_tmp.format(hp.layers[0])
    requests = normalize_requests(TINY_REQUESTS)
    try:
        outputs, readout, counts = [], [], []
        for raw, request in zip(TINY_REQUESTS, requests):
            apply_wilke_to_model(model, tok, [raw], hp)
            counts.append(model_guard(model).layers[module].count)
            keys = scored_position_keys(model, tok, [request], [module])[module][0].float()
            outputs.append(keys @ weight_out_in(get_module(model, module)).detach().float().T)
            first = len(encode(tok, request.text)) - 1
            readout.append({subject_last_index(tok, "{}", request), *range(first, len(keys))})
        W = weight_out_in(get_module(model, module)).detach().float()
        held, free = [], []
        for request, out, positions in zip(requests[:-1], outputs[:-1], readout[:-1]):
            keys = scored_position_keys(model, tok, [request], [module])[module][0].float()
            moved = ((keys @ W.T - out).norm(dim=1) / out.norm(dim=1)).tolist()
            held += [moved[i] for i in positions]
            free += [m for i, m in enumerate(moved) if i not in positions]
    finally:
        restore(model, before)
    assert counts == list(itertools.accumulate(len(p) for p in readout))  # those keys, and only those, per edit
    assert max(held) < 1e-5
    assert free and max(free) > 1e-3


def test_guarding_every_earlier_edit_at_every_layer_leaves_its_forward_pass_as_it_was(tiny_gpt2, stats_dir):
    """With guard_scope: model, an edit at a layer below an earlier edit's leaves that edit's whole teacher-forced
    forward pass as it was; guarding each layer's own edits only (scope "layer") does not."""
    model, tok = tiny_gpt2
    before = snapshot(model)
    layers = (2, 1, 0, 2, 1)  # each edit below the one before, then layer 2 again with stale keys
    moved, reports = {}, {}
    try:
        for scope in ("model", "layer"):
            restore(model, before)
            own, reports[scope] = [], []
            for request, layer in zip(TINY_REQUESTS, layers):
                hp = tiny_hp(stats_dir, layers=(layer,), guard_positions="prompt", guard_scope=scope)
                with collect_events() as fired:
                    apply_wilke_to_model(model, tok, [request], hp)
                reports[scope].append(fired[0][0].info["guard"])
                own.append(scored_logits(model, tok, request))
            moved[scope] = max(float((scored_logits(model, tok, r) - logits).abs().max() / logits.abs().max())
                               for r, logits in zip(TINY_REQUESTS[:-1], own[:-1]))
    finally:
        restore(model, before)
    assert [r["path"] for r in reports["model"]] == ["plain"] + ["guard"] * (len(TINY_REQUESTS) - 1)
    assert reports["model"][1]["keys_added"] == reports["model"][1]["keys_guarded"] > 1  # edit 0's, every position
    assert "keys_refreshed" in reports["model"][3] and reports["model"][3]["keys_added"] > 0
    assert moved["model"] < 1e-5
    assert moved["layer"] > 1e-3


def _synthetic_guard(d=16, **settings):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    C = A @ A.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    c_inv = torch.linalg.inv(C).float()
    settings = GuardSettings(interference_guard=True, **{f"guard_{name}": value for name, value in settings.items()})
    return LayerGuard("m", 0, MetricSpace(c_inv, d, settings, torch.device("cpu")), settings), C, g


def _interference(u, key, earlier):
    return max(abs(float(u.double() @ k.double())) for k in earlier) / abs(float(u.double() @ key.double()))


def test_guarded_direction_is_exactly_orthogonal_and_its_cost_is_one_over_rho():
    guard, C, g = _synthetic_guard()
    weight = torch.zeros(1, 16)
    earlier = [torch.randn(16, generator=g) for _ in range(5)]
    for k in earlier:
        guard.record([k], [torch.zeros(1)], [("{}", "x", " y", None)], [0], weight, 0)
    key = torch.randn(16, generator=g)
    d = guard.direction(key, key)
    assert d.path == "guard" and d.keys_guarded == 5
    assert _interference(d.u, key, earlier) < 1e-6
    plain = torch.linalg.solve(C, key.double())
    # ρ: the guarded ΔW's C-norm is 1/ρ times the unguarded one's
    cost = lambda u: float(u.double() @ C @ u.double()) ** 0.5 / abs(float(u.double() @ key.double()))
    assert cost(d.u) / cost(plain) == pytest.approx(1 / d.residual_ratio, rel=1e-5)


def _rms_interference(u, key, earlier):
    return float(torch.stack([u.double() @ k.double() for k in earlier]).pow(2).mean().sqrt()) / abs(
        float(u.double() @ key.double()))


@pytest.mark.parametrize("soft", [False, True])
def test_the_report_gives_the_rms_interference_on_the_guarded_keys_from_g_alone(soft):
    """interference_rms is the RMS over guarded keys of p_j = uᵀk_j / uᵀk, read from G (uᵀGu); beside it,
    the unguarded C⁻¹k's. The exact guard's is ≈ 0; the soft guard's is smaller than the unguarded one's."""
    settings = dict(max_keys_fraction=0.0, fallback_weight=1e-3, min_residual=1e-3) if soft else {}
    guard, C, g = _synthetic_guard(**settings)
    earlier = [torch.randn(16, generator=g) for _ in range(5)]
    for k in earlier:
        guard.record([k], [torch.zeros(1)], [("{}", "x", " y", None)], [0], torch.zeros(1, 16), 0)
    key = torch.randn(16, generator=g)
    d = guard.direction(key, key)
    assert d.path == ("fallback" if soft else "guard")
    plain = torch.linalg.solve(C, key.double())
    assert d.unguarded_interference_rms == pytest.approx(_rms_interference(plain, key, earlier), rel=1e-4)
    assert d.interference_rms == pytest.approx(_rms_interference(d.u, key, earlier), rel=1e-4, abs=1e-6)
    if soft:
        assert d.interference_rms < d.unguarded_interference_rms
    else:
        assert d.interference_rms < 1e-6 < 1e-2 < d.unguarded_interference_rms
    assert {"interference_rms", "unguarded_interference_rms"} <= set(d.report())


def test_fallback_takes_over_past_the_documented_thresholds():
    guard, C, g = _synthetic_guard(max_keys_fraction=0.5, min_residual=0.1)
    weight = torch.zeros(1, 16)
    earlier = []
    for i in range(8):  # 8 = 0.5 × width: the exact guard's capacity
        key = torch.randn(16, generator=g)
        assert guard.direction(key, key).path == ("plain" if i == 0 else "guard")
        guard.record([key], [torch.zeros(1)], [("{}", "x", " y", None)], [0], weight, 0)
        earlier.append(key)
    key = torch.randn(16, generator=g)
    full = guard.direction(key, key)
    assert full.path == "fallback" and full.exact_ratio > 0.1  # full, though the key itself is independent
    # the regularised direction still damps interference on the earlier keys, far below the unguarded one
    plain = torch.linalg.solve(C, key.double())
    cost = lambda u: float(u.double() @ C @ u.double()) ** 0.5 / abs(float(u.double() @ key.double()))
    assert cost(full.u) / cost(plain) == pytest.approx(1 / full.residual_ratio, rel=1e-5)  # ρ of the update taken
    assert _interference(full.u, key, earlier) < 0.2 * _interference(plain, key, earlier)

    guard, C, g = _synthetic_guard(min_residual=0.1)
    earlier = [torch.randn(16, generator=g) for _ in range(3)]
    for k in earlier:
        guard.record([k], [torch.zeros(1)], [("{}", "x", " y", None)], [0], weight, 0)
    near = earlier[0] + 0.5 * earlier[1] + 0.02 * torch.randn(16, generator=g)  # nearly in their span
    d = guard.direction(near, near)
    assert d.path == "fallback" and d.exact_ratio < 0.1 <= d.residual_ratio
    assert guard.in_basis == [0, 1, 2]
    guard.record([near], [torch.zeros(1)], [("{}", "x", " y", None)], [0], weight, 0)
    assert guard.in_basis == [0, 1, 2]  # a nearly dependent key is not admitted to the exact basis
    # the fallback's G, grown one key at a time, is every key's outer product, and its factor that of C + λG
    Z = torch.stack(earlier + [near]).double()
    torch.testing.assert_close(guard.gram, Z.T @ Z)
    inverse_of_c = torch.linalg.inv(guard.space.metric_matrix)
    torch.testing.assert_close(torch.cholesky_inverse(guard._fallback_factor(Z.device)),
                               torch.linalg.inv(inverse_of_c + Z.T @ Z))
    # a key that all but repeats an earlier one cannot be held by a small update, not even by the fallback
    # at λ = 1: past the same bound (an update over 1/min_residual times ROME's) the largest λ within it is
    # taken. Keys scaled as on real layers (kᵀC⁻¹k ≈ 3,400 here, ≈ 3,300 on SmolLM2's layer 4).
    guard, C, g = _synthetic_guard(min_residual=0.1)
    earlier = [10 * torch.randn(16, generator=g) for _ in range(3)]
    for k in earlier:
        guard.record([k], [torch.zeros(1)], [("{}", "x", " y", None)], [0], weight, 0)
    near = earlier[2] + 0.1 * torch.randn(16, generator=g)
    conflict = guard.direction(near, near)
    cost = lambda u: float(u.double() @ C @ u.double()) ** 0.5 / abs(float(u.double() @ near.double()))  # ‖ΔW‖_C/‖r‖
    plain = torch.linalg.solve(C, near.double())
    # what the fallback at λ = 1 would have done
    fallback = torch.cholesky_solve(near.double().unsqueeze(1), guard._fallback_factor(near.device)).squeeze(1)
    assert cost(fallback) > 10 * cost(plain)
    assert conflict.path == "bounded" and 0 < conflict.fallback_weight < 1
    assert conflict.residual_ratio == pytest.approx(0.1, rel=1e-6) and conflict.exact_ratio < 0.1
    assert cost(conflict.u) == pytest.approx(10 * cost(plain), rel=1e-4)  # at the bound, not past it
    # it is the regularised direction at that λ, and it moves the earlier keys less than ROME's direction does
    Z = torch.stack(earlier).double()
    direct = torch.linalg.solve(C + conflict.fallback_weight * Z.T @ Z, near.double())
    torch.testing.assert_close(conflict.u.double() / conflict.u.norm(), direct / direct.norm(), rtol=1e-4, atol=1e-6)
    squared = lambda u: sum(float(u.double() @ k.double()) ** 2 for k in earlier) / float(u.double() @ near.double()) ** 2
    assert squared(conflict.u) < 0.8 * squared(plain)  # Σ_j p(k, k_j)²: 0.80 against ROME's 1.21 here


def test_max_keys_fraction_zero_is_a_soft_guard_whose_weight_trades_interference_for_size():
    """guard_max_keys_fraction: 0 keeps no exact keys: every edit after a layer's first takes the regularised
    direction, which moves the earlier keys less the larger λ is, and never to zero."""
    interference, size = [], []
    for weight in (1e-3, 1e-1, 10.0):
        guard, C, g = _synthetic_guard(max_keys_fraction=0.0, fallback_weight=weight, min_residual=1e-3)
        earlier = []
        for i in range(6):
            key = torch.randn(16, generator=g)
            assert guard.direction(key, key).path == ("plain" if i == 0 else "fallback")
            guard.record([key], [torch.zeros(1)], [("{}", "x", " y", None)], [0], torch.zeros(1, 16), 0)
            earlier.append(key)
        assert guard.in_basis == []
        key = torch.randn(16, generator=g)
        d = guard.direction(key, key)
        assert d.path == "fallback" and d.fallback_weight == weight
        Z = torch.stack(earlier).double()
        direct = torch.linalg.solve(C + weight * Z.T @ Z, key.double())
        torch.testing.assert_close(d.u.double() / d.u.norm(), direct / direct.norm(), rtol=1e-4, atol=1e-6)
        interference.append(_interference(d.u, key, earlier))
        size.append(float(d.u.double() @ C @ d.u.double()) ** 0.5 / abs(float(d.u.double() @ key.double())))
    plain = torch.linalg.solve(C, key.double())
    assert _interference(plain, key, earlier) > interference[0] > interference[1] > interference[2] > 1e-4
    assert size[0] < size[1] < size[2]


def test_the_soft_guards_memory_does_not_grow_with_the_keys_it_holds():
    """With no exact keys the soft guard needs only G = Σ k_j k_jᵀ: it keeps no keys, and its memory after 10
    keys is what it is after 200 (only each key's source, a few strings, grows)."""
    guard, C, g = _synthetic_guard(max_keys_fraction=0.0, fallback_weight=1e-3, min_residual=1e-3)
    keys = torch.randn(200, 16, generator=g)
    sizes = {}
    for i, key in enumerate(keys):
        guard.direction(key, key)
        guard.record([key], [torch.zeros(1)], [("{}", "x", " y", None)], [i], torch.zeros(1, 16), 0)
        sizes[i + 1] = guard.nbytes()
    guard.direction(keys[0], keys[0])
    assert guard.keys == [] and guard.values == [] and guard.count == 200
    assert sizes[200] == sizes[10] > 0
    torch.testing.assert_close(guard.gram, keys.double().T @ keys.double())


@pytest.mark.parametrize("scope, soft", [("layer", False), ("model", False), ("model", True)])
def test_weights_copy_restores_every_bit_and_the_guard_forgets_the_undone_edit(tiny_gpt2, stats_dir, scope, soft):
    model, tok = tiny_gpt2
    soft = {"guard_max_keys_fraction": 0.0, "guard_fallback_weight": 1e-3} if soft else {}
    first, later = (tiny_hp(stats_dir, layers=layers, guard_scope=scope, **soft) for layers in ((1,), (2, 1)))
    apply_wilke_to_model(model, tok, [TINY_REQUESTS[0]], first)
    after_first = snapshot(model)
    hp = later if scope == "model" else first  # in scope "model", undone edits at a second layer too
    _, weights_copy = apply_wilke_to_model(model, tok, TINY_REQUESTS[1:3], hp, return_orig_weights=True)
    assert changed_parameters(model, after_first)
    restore(model, weights_copy)
    assert changed_parameters(model, after_first) == []  # every bit
    for layers in ((2,), (1,)):
        with collect_events() as fired:
            apply_wilke_to_model(model, tok, [TINY_REQUESTS[3]],
                                 tiny_hp(stats_dir, layers=layers, guard_scope=scope, **soft))
        guarded = fired[0][0].info["guard"]["keys_guarded"]
        assert guarded == (1 if scope == "model" or layers == (1,) else 0)  # only the edit still in the weights
        if soft:  # G, which cannot be taken apart, was made again from the keys still guarded, as they are now
            layer_guard = model_guard(model).layers[fired[0][0].modules[0]]
            keys = current_keys(model, tok, [layer_guard.module], layer_guard.sources)[layer_guard.module].double()
            fresh = keys.T @ keys  # float32 keys from passes batched otherwise: equal to rounding, not bit for bit
            assert float((layer_guard.gram - fresh).norm() / fresh.norm()) < 1e-5
        restore(model, after_first)


@pytest.mark.parametrize("positions, scope, spread, soft", [
    ("subject_last", "layer", 1, False), ("prompt", "layer", 1, False), ("prompt", "model", 1, False),
    ("subject_last", "model", 2, False), ("prompt", "model", 2, True), ("readout", "model", 2, "repair")])
def test_saved_guard_state_continues_with_the_same_numbers(tiny_gpt2, stats_dir, positions, scope, spread, soft):
    loaded, tok = tiny_gpt2
    model = deepcopy(loaded)  # both sides copies: BLAS results can depend on how a tensor is allocated
    guard = {"guard_max_keys_fraction": 0.0, "guard_fallback_weight": 1e-3} if soft else {"guard_repair": True}
    if soft == "repair":  # the soft guard's values are saved too
        guard.update(guard_repair=True, guard_repair_threshold=0.0)
    hp = tiny_hp(stats_dir, layers=(1, 2), guard_positions=positions, guard_scope=scope, spread_layers=spread,
                 **guard)
    apply_wilke_to_model(model, tok, TINY_REQUESTS[:3], hp)
    tensors, metadata = guard_state(model)
    twin = deepcopy(model)
    load_guard_state(twin, tensors, metadata)
    assert guard_state(twin)[0].keys() == tensors.keys()  # saved again before any use: nothing dropped
    assert any(name.endswith(".values") for name in tensors) == bool(hp.guard_repair)
    apply_wilke_to_model(model, tok, TINY_REQUESTS[3:], hp)
    apply_wilke_to_model(twin, tok, TINY_REQUESTS[3:], hp)
    assert all(torch.equal(p, twin.get_parameter(n)) for n, p in model.named_parameters())


def test_preserved_knowledge_keeps_the_update_off_cs_high_variance_directions(tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    hp = tiny_hp(stats_dir, guard_preserved_knowledge=True, guard_null_space_energy=0.2)
    hp.interference_guard = False  # the projection alone (an ablation row)
    module = hp.rewrite_module_tmp.format(1)
    with collect_events() as fired:
        apply_wilke_to_model(model, tok, [TINY_REQUESTS[0]], hp)
    (event, _), = fired
    delta = next(iter(event.weight_deltas.values())).double().T  # Conv1D stores (in, out)
    c_inv = layer_inverses(model, tok, hp, [module])[module].double()
    mu, vectors = torch.linalg.eigh(c_inv)  # C's eigenvalues 1/μ, largest first
    energy_from_smallest = torch.cumsum((1 / mu).flip(0), 0).flip(0) / (1 / mu).sum()
    high = vectors[:, energy_from_smallest > 0.2]  # the directions that carry 80% of C's trace
    assert 0 < high.shape[1] < len(mu)
    assert float((delta @ high).norm() / delta.norm()) < 1e-5
    (edit,) = event.linear_edits
    torch.testing.assert_close(delta.float() @ edit.key, edit.residual, rtol=1e-4, atol=1e-5)

    hp.guard_null_space_energy = 1e-9  # no direction is that quiet: a clear error, nothing written
    before = snapshot(model)
    with pytest.raises(GuardError, match="raise it to leave the update room"):
        apply_wilke_to_model(model, tok, [TINY_REQUESTS[1]], hp)
    assert changed_parameters(model, before) == []


def test_stale_keys_are_refreshed_and_slipped_edits_repaired(tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    upper, lower = tiny_hp(stats_dir, layers=(2,), guard_repair=True), tiny_hp(stats_dir, layers=(0,), guard_repair=True)
    module = upper.rewrite_module_tmp.format(2)
    apply_wilke_to_model(model, tok, TINY_REQUESTS[:2], upper)
    values = [weight_out_in(get_module(model, module)).detach().float() @ key_at(model, tok, r, module)
              for r in TINY_REQUESTS[:2]]
    apply_wilke_to_model(model, tok, TINY_REQUESTS[2:4], lower)  # edits below: layer 2's keys go stale
    W = weight_out_in(get_module(model, module)).detach().float()
    slipped = [float((W @ key_at(model, tok, r, module) - v).norm() / v.norm()) for r, v in zip(TINY_REQUESTS, values)]
    assert max(slipped) > 0.1
    with collect_events() as fired:
        apply_wilke_to_model(model, tok, [TINY_REQUESTS[4]], upper)
    report = fired[0][0].info["guard"]
    assert report["keys_refreshed"] == 2 and report["repair_slipped"] == sum(s > 0.1 for s in slipped)
    W = weight_out_in(get_module(model, module)).detach().float()
    for request, value, drift in zip(TINY_REQUESTS, values, slipped):
        if drift > 0.1:  # mapped back; the others were left as they were
            torch.testing.assert_close(W @ key_at(model, tok, request, module), value, rtol=1e-4, atol=1e-4)


def _one_edit(model, tok, request, hp):
    with collect_events() as fired:
        apply_wilke_to_model(model, tok, [request], hp)
    (event, _), = fired
    return event


def test_layers_ranked_without_the_guard_rank_as_unguarded_wilke_and_the_chosen_layer_is_still_guarded(
        tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    other = deepcopy(model)  # for the same edits ranked with the guard
    layers = (0, 1, 2)
    hp, guarded, plain = (tiny_hp(stats_dir, layers=layers, guard_layer_choice=c) for c in ("plain", "guarded", "plain"))
    plain.interference_guard, plain.guard_layer_choice = False, "guarded"
    scores, guarded_scores, paths = [], [], []
    for request in TINY_REQUESTS[:4]:
        state = snapshot(model)
        unguarded = _one_edit(model, tok, request, plain)  # unguarded WilKE from the same weights
        restore(model, state)
        event = _one_edit(model, tok, request, hp)
        assert event.info["layer_scores"] == unguarded.info["layer_scores"]
        assert event.info["layer"] == unguarded.info["layer"]
        scores.append(event.info["layer_scores"])
        paths.append(event.info["guard"]["path"])
        guarded_scores.append(_one_edit(other, tok, request, guarded).info["layer_scores"])
    assert "guard" in paths  # a layer edited twice: its second update held the first edit's key
    assert guarded_scores != scores  # ranking with the guard's u differs (so the checks above can fail)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_a_spread_edit_reaches_its_goal_through_every_layer_and_the_guard_holds_each_layers_current_keys(
        model_fixture, stats_dir, request, monkeypatch):
    """spread_layers: 2 shares each edit between the chosen layer and the one below it, one rank-one update
    each, and the top one closes the gap: the residual stream after the chosen block at the subject's last
    token ends at its goal (before + δ, δ the change v* asks there). With the guard (scope "model") each
    update leaves every earlier edit's key at its layer where it was, the keys as they are after this edit's update below it:
    the chosen layer alternates, so a layer last edited at the bottom of a spread goes stale within the next
    edit, and is recomputed there. Unguarded the keys move."""
    from edit_plugins.editing.keys import key_and_block_output
    from edit_plugins.methods.wilke import model as wilke_model

    results = []  # what the edit itself computed: the δ its spread will carry

    def recorded(*args):
        results.append(execute_wilke(*args))
        return results[-1]

    execute_wilke = wilke_model.execute_wilke
    monkeypatch.setattr(wilke_model, "execute_wilke", recorded)
    model, tok = request.getfixturevalue(model_fixture)
    before = snapshot(model)
    tops, requests = ((3, 2), TINY_REQUESTS) if model_fixture == "tiny_gpt2" else ((6, 5), SMOLLM2_REQUESTS)
    make = (lambda **kw: tiny_hp(stats_dir, **kw)) if model_fixture == "tiny_gpt2" else (
        lambda **kw: smollm2_hp(stats_dir, **kw, **ALGEBRA_ONLY))
    moved = {}
    try:
        for guarded in (True, False):
            restore(model, before)
            sources, worst, paths = [], 0.0, []
            for i, raw in enumerate(requests):
                top = tops[i % 2]
                hp = make(layers=[top], interference_guard=guarded, spread_layers=2)
                hp.guard_scope = "model" if guarded else "layer"  # every earlier edit's key at every layer
                module = hp.rewrite_module_tmp.format(top)
                r = normalize_requests([raw])[0]
                _, start = key_and_block_output(model, tok, r, module, top)
                event = _one_edit(model, tok, raw, hp)
                delta = results[-1].chosen.residual
                assert [p["layer"] for p in event.info["spread"]] == [top - 1, top]
                assert len(event.weight_deltas) == len(event.linear_edits) == 2
                for d in event.weight_deltas.values():
                    assert torch.linalg.matrix_rank(d.double(), rtol=1e-6) == 1
                _, end = key_and_block_output(model, tok, r, module, top)
                torch.testing.assert_close(end, start + delta, rtol=1e-3, atol=1e-3 * float(delta.norm()))
                for edit in event.linear_edits:
                    keys = current_keys(model, tok, [edit.module], sources)[edit.module] if sources else None
                    if keys is None:
                        continue
                    d = event.weight_deltas[f"{edit.module}.weight"].float()
                    d = d if d.shape[1] == keys.shape[1] else d.T  # GPT-2's Conv1D stores (in, out)
                    worst = max(worst, float((keys @ d.T).norm(dim=1).max() / edit.residual.norm()))
                if guarded:
                    paths += [p["guard"]["path"] for p in event.info["spread"]]
                sources.append((r.prompt, r.subject, r.target_new, None))
            if guarded:
                assert paths == ["plain"] * 2 + ["guard"] * (len(paths) - 2)  # edit 0 had nothing to hold
            moved[guarded] = worst
    finally:
        restore(model, before)
    assert moved[True] < 1e-5
    assert moved[False] > 1e-3


@pytest.mark.parametrize("within_edit", [True, False])
def test_a_spread_edits_stale_keys_are_recomputed_per_piece_or_in_one_pass_before_it(tiny_gpt2, stats_dir,
                                                                                      within_edit):
    """With ``guard_refresh_within_edit`` (the default) each piece above the lowest recomputes its layer's keys
    after the pieces below it: one pass per layer. Off, one pass before the edit recomputes every stale layer,
    and each piece holds the keys as they were before the edit. Either way the edit reaches its goal."""
    from edit_plugins.methods.wilke.guard import model as guard_module
    from edit_plugins.editing.keys import key_and_block_output
    from edit_plugins.methods.wilke.model import execute_wilke

    model, tok = tiny_gpt2
    before = snapshot(model)
    hp = tiny_hp(stats_dir, layers=[3], spread_layers=3, guard_scope="model", guard_positions="prompt",
                 guard_max_keys_fraction=0.0, guard_fallback_weight=1e-3, guard_refresh_within_edit=within_edit)
    modules = [hp.rewrite_module_tmp.format(layer) for layer in (1, 2, 3)]
    passes, grams = [], {}
    real_keys, real_direction = guard_module.current_keys, LayerGuard.direction

    def counted_keys(model, tok, module_names, sources):
        passes.append(list(module_names))
        return real_keys(model, tok, module_names, sources)

    def seen_direction(self, key, direction_key):
        grams[self.module] = self.gram.clone()  # G as the piece uses it
        return real_direction(self, key, direction_key)

    try:
        for raw in TINY_REQUESTS[:3]:
            apply_wilke_to_model(model, tok, [raw], hp)
        sources = list(model_guard(model).layers[modules[0]].sources)
        earlier = {m: k.double() for m, k in real_keys(model, tok, modules, sources).items()}
        r = normalize_requests([TINY_REQUESTS[3]])[0]
        delta = execute_wilke(model, tok, r, hp).chosen.residual
        _, start = key_and_block_output(model, tok, r, modules[-1], 3)
        guard_module.current_keys, LayerGuard.direction = counted_keys, seen_direction
        try:
            apply_wilke_to_model(model, tok, [TINY_REQUESTS[3]], hp)
        finally:
            guard_module.current_keys, LayerGuard.direction = real_keys, real_direction
        _, end = key_and_block_output(model, tok, r, modules[-1], 3)
        torch.testing.assert_close(end, start + delta, rtol=1e-3, atol=1e-3 * float(delta.norm()))
        refreshes = [p for p in passes if len(p) > 1 or p[0] != modules[0]]  # not the new edit's own keys
        stale_by_earlier_edits = modules[1:]  # the earlier edits' lowest layer was 1
        if within_edit:
            assert passes[:2] == [[modules[1]], [modules[2]]]
        else:
            assert passes[0] == stale_by_earlier_edits and len(refreshes) == 1
            for m in stale_by_earlier_edits:  # the keys of the model before the edit, at every layer
                torch.testing.assert_close(grams[m], earlier[m].T @ earlier[m], rtol=1e-6, atol=1e-6)
        bare = [s for s in sources if s[3] is None]  # subject keys read from the position pass equal the bare prompt's
        merged = real_keys(model, tok, [modules[1]], sources)[modules[1]]
        alone = real_keys(model, tok, [modules[1]], bare)[modules[1]]
        torch.testing.assert_close(merged[[sources.index(s) for s in bare]], alone, rtol=1e-5, atol=1e-5)
    finally:
        restore(model, before)


def test_refresh_every_n_edits_waits_between_refreshes_and_reports_how_far_the_keys_went_stale(tiny_gpt2, stats_dir):
    """``guard_refresh_every: 2``: stale keys are recomputed at most once per two edits (edits 2 and 4 here:
    every edit is at layers 1-3, so layers 2 and 3 go stale at each), and each refresh reports how far G
    had moved, ‖G_new − G_old‖_F / ‖G_old‖_F."""
    model, tok = tiny_gpt2
    before = snapshot(model)
    hp = tiny_hp(stats_dir, layers=[3], spread_layers=3, guard_scope="model", guard_positions="prompt",
                 guard_max_keys_fraction=0.0, guard_fallback_weight=1e-3, guard_refresh_within_edit=False,
                 guard_refresh_every=2)
    try:
        refreshed = []
        for raw in TINY_REQUESTS:
            pieces = _one_edit(model, tok, raw, hp).info["spread"]
            refreshed.append([p["layer"] for p in pieces if "keys_refreshed" in p["guard"]])
            for p in pieces:
                if "keys_refreshed" in p["guard"]:
                    assert 0 < p["guard"]["gram_change"] < 1
        assert refreshed == [[], [], [2, 3], [], [2, 3]]
    finally:
        restore(model, before)


@pytest.mark.parametrize("guarded", [False, True])
def test_own_and_mean_key_pieces_map_the_template_mean_key_to_the_same_share(tiny_gpt2, stats_dir, guarded):
    """``spread_direction: own_and_mean_key``: each piece is still rank one and maps the prompt's own key k to
    its share r, and now also ROME's template mean k̄ (at that layer, on the model as the piece found it, which
    no piece at or above the layer changes) to the same r; the edit still reaches its goal. With
    ``own_key`` k̄ is not mapped to r."""
    from edit_plugins.editing.keys import key_and_block_output
    from edit_plugins.editing.templates import context_templates
    from edit_plugins.methods.wilke.model import execute_wilke

    model, tok = tiny_gpt2
    before = snapshot(model)
    guard = dict(guard_scope="model", guard_positions="prompt", guard_max_keys_fraction=0.0,
                 guard_fallback_weight=1e-3) if guarded else {}
    try:
        misses = {}
        for direction in ("own_key", "own_and_mean_key"):
            restore(model, before)
            drop_guard(model)
            hp = tiny_hp(stats_dir, layers=[3], spread_layers=3, spread_direction=direction, **guard)
            hp.interference_guard = guarded
            templates = context_templates(model, tok, hp.context_template_length_params)
            misses[direction] = 0.0
            for raw in TINY_REQUESTS[:3]:
                r = normalize_requests([raw])[0]
                delta = execute_wilke(model, tok, r, hp).chosen.residual
                _, start = key_and_block_output(model, tok, r, hp.rewrite_module_tmp.format(3), 3)
                event = _one_edit(model, tok, raw, hp)
                _, end = key_and_block_output(model, tok, r, hp.rewrite_module_tmp.format(3), 3)
                torch.testing.assert_close(end, start + delta, rtol=1e-3, atol=1e-3 * float(delta.norm()))
                for edit in event.linear_edits:
                    d = event.weight_deltas[f"{edit.module}.weight"].float()
                    d = d if d.shape[1] == edit.key.shape[0] else d.T  # GPT-2's Conv1D stores (in, out)
                    assert torch.linalg.matrix_rank(d.double(), rtol=1e-6) == 1
                    torch.testing.assert_close(d @ edit.key, edit.residual, rtol=1e-4, atol=1e-4 * float(edit.residual.norm()))
                    mean_key = compute_keys(model, tok, [r], [edit.module], templates)[edit.module][0]
                    misses[direction] = max(misses[direction],
                                            float((d @ mean_key - edit.residual).norm() / edit.residual.norm()))
        assert misses["own_and_mean_key"] < 1e-3 < misses["own_key"]
    finally:
        restore(model, before)
        drop_guard(model)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["own_key", "own_and_mean_key"])
def test_a_spread_edit_whose_subject_opens_the_prompt_stays_small_and_leaves_other_prompts(smollm2, stats_dir,
                                                                                           direction):
    """A subject at position 0 meets the first token's outsized activations: the bare prompt's key is nearly
    C⁻¹-orthogonal to the template mean k̄, so mapping it along C⁻¹k̄ (ROME's update) takes a huge ΔW (874 at
    layer 7 here, ‖W‖ ≈ 175). The spread edit maps it along its own C⁻¹k (or maps k and k̄ at once, about the
    sum of two small updates): each piece stays a small change of its layer, the edit takes, and unrelated
    prompts keep their next token."""
    model, tok = smollm2
    before = snapshot(model)
    raw = {"prompt": "Germany is a part of the continent of", "subject": "Germany", "target_new": "Antarctica"}
    others = ["The capital of France is", "Water is made of hydrogen and", "The Eiffel Tower is located in"]
    expected = [next_token(model, tok, p) for p in others]
    try:
        event = _one_edit(model, tok, raw, smollm2_hp(stats_dir, layers=[7], spread_layers=5,
                                                      spread_direction=direction))
        for name, d in event.weight_deltas.items():
            assert float(d.norm()) < 0.25 * float(before[name].norm()), name  # ROME here: 5 × ‖W‖
        assert next_token(model, tok, raw["prompt"]) == tok.decode(target_ids(tok, " Antarctica")[0])
        assert [next_token(model, tok, p) for p in others] == expected
    finally:
        restore(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("guarded", [False, True])
def test_a_spread_that_diverges_through_the_first_tokens_outsized_layers_is_taken_back(smollm2, stats_dir, guarded):
    """At layers 8-11 SmolLM2 builds the first token's outsized activation (norm ~23,000 out of layer 11, ~30
    elsewhere). A subject at position 0 spread over them moves the top layer's output away from v* (gap 5 →
    thousands by layer 10), and the rest of the edit would break every prompt. The pieces are taken back to
    the bit, the guard holds nothing of the edit, and the report says where it diverged."""
    from edit_plugins.methods.wilke.model_state import guard_for

    model, tok = smollm2
    before = snapshot(model)
    raw = {"prompt": "Germany is a part of the continent of", "subject": "Germany", "target_new": "Antarctica"}
    fields = dict(layers=[11], spread_layers=4)
    if guarded:
        fields.update(interference_guard=True, guard_scope="model", guard_positions="prompt",
                      guard_max_keys_fraction=0.0, guard_refresh_within_edit=False)
    try:
        event = _one_edit(model, tok, raw, smollm2_hp(stats_dir, **fields))
        assert changed_parameters(model, before) == []
        assert event.modules == [] and not event.weight_deltas and event.info["layer"] is None
        assert 8 <= event.info["diverged_at_layer"] <= 10
        assert "diverged at layer" in event.info["not_applied"]
        if guarded:
            assert guard_for(model, smollm2_hp(stats_dir, **fields)).sources == []
    finally:
        restore(model, before)
        drop_guard(model)


@pytest.mark.slow
def test_the_shipped_lifelong_hparams_edit_smollm2_in_sequence_and_keep_the_earlier_edits(smollm2, stats_dir):
    """hparams/WilKE/smollm2-135m-lifelong.yaml, as a user loads it: each edit spread over layers 3-7 under
    the soft guard takes hold, the earlier edits still answer, and the guard damps the interference the
    unguarded direction would put on the keys it holds."""
    model, tok = smollm2
    before = snapshot(model)
    hp = hparams.load(HPARAMS / "WilKE" / "smollm2-135m-lifelong.yaml")
    hp.stats_dir, hp.mom2_n_samples = stats_dir, 100
    answer = {r["prompt"]: tok.decode(target_ids(tok, with_leading_space(r["target_new"]))[0]) for r in SMOLLM2_REQUESTS}
    try:
        for n, request in enumerate(SMOLLM2_REQUESTS):
            event = _one_edit(model, tok, request, hp)
            assert [piece["layer"] for piece in event.info["spread"]] == [3, 4, 5, 6, 7]
            for piece in event.info["spread"]:
                guard = piece["guard"]
                assert guard["path"] == ("plain" if n == 0 else "fallback")
                if n:
                    assert guard["interference_rms"] < 0.5 * guard["unguarded_interference_rms"]
            for earlier in SMOLLM2_REQUESTS[: n + 1]:
                assert next_token(model, tok, earlier["prompt"]) == answer[earlier["prompt"]], (n, earlier["prompt"])
        assert changed_parameters(model, before) == [f"model.layers.{l}.mlp.down_proj.weight" for l in range(3, 8)]
    finally:
        restore(model, before)
        drop_guard(model)


@pytest.mark.parametrize("change, message", [
    ({"guard_preserved_knowledge": True, "mom2_adjustment": False}, "'mom2_adjustment' must be true"),
    ({"guard_min_residual": 1.5}, "field 'guard_min_residual' must be at most 1"),
    ({"guard_fallback_weight": 0}, "field 'guard_fallback_weight' must be positive"),
    ({"guard_repair_threshold": -0.1}, "field 'guard_repair_threshold' must be 0 or more"),
    ({"guard_max_keys_fraction": -0.1}, "field 'guard_max_keys_fraction' must be between 0 and 1"),
    ({"guard_max_keys_fraction": 1.5}, "field 'guard_max_keys_fraction' must be at most 1"),
    ({"guard_repair": True}, "'guard_repair' works on refreshed guarded keys"),
    ({"guard_positions": "all", "interference_guard": True}, "field 'guard_positions' must be one of"),
    ({"guard_positions": "prompt"}, "'guard_positions' chooses the keys the past-edit guard holds"),
    ({"guard_scope": "all", "interference_guard": True}, "field 'guard_scope' must be one of"),
    ({"guard_scope": "model"}, "'guard_scope' chooses whose keys the past-edit guard holds"),
    ({"guard_layer_choice": "best", "interference_guard": True}, "field 'guard_layer_choice' must be one of"),
    ({"guard_layer_choice": "plain"}, "'guard_layer_choice' chooses how layers are ranked under the past-edit guard"),
    ({"spread_layers": 0}, "field 'spread_layers' must be positive"),
    ({"spread_direction": "mean_key", "spread_layers": 2}, "field 'spread_direction' must be one of"),
    ({"spread_direction": "own_and_mean_key"}, "'spread_direction' directs the pieces of a spread edit"),
    ({"guard_refresh_every": 0}, "field 'guard_refresh_every' must be a whole number of edits, 1 or more"),
    ({"guard_refresh_every": 2.5}, "field 'guard_refresh_every' must be an integer"),
])
def test_bad_guard_settings_are_refused_naming_the_field(change, message):
    config = hparams.read_yaml(HPARAMS / "WilKE" / "tiny-gpt2.yaml")[0]
    with pytest.raises(hparams.HparamsError, match=message):
        hparams.from_dict({**config, **change}, "guard.yaml")


def test_the_weight_digest_sees_every_bit_in_any_dtype():
    from edit_plugins.editing.layers import weight_digest

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        weight = torch.randn(6, 4).to(dtype)
        changed = weight.clone()
        changed.view(torch.int16 if dtype != torch.float32 else torch.int32)[2, 1] ^= 1  # one bit
        assert weight_digest(weight) == weight_digest(weight.clone()) != weight_digest(changed)


def test_soft_guard_repair_maps_slipped_keys_back_lowest_layer_first(tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    guard = dict(guard_max_keys_fraction=0.0, guard_fallback_weight=10.0, guard_repair=True, guard_scope="model",
                 guard_refresh_within_edit=False)
    spread, below = tiny_hp(stats_dir, layers=(2,), spread_layers=2, **guard), tiny_hp(stats_dir, layers=(0,), **guard)
    modules = [spread.rewrite_module_tmp.format(layer) for layer in (1, 2)]

    def outputs(requests):
        return {m: [weight_out_in(get_module(model, m)).detach().float() @ key_at(model, tok, r, m) for r in requests]
                for m in modules}

    values = {m: [] for m in modules}
    for request in TINY_REQUESTS[:2]:
        with collect_events() as fired:
            apply_wilke_to_model(model, tok, [request], spread)
        for m, (v,) in outputs([request]).items():
            values[m].append(v)
    # the lowest layer's keys are never stale here, but its own soft-guarded update moved their outputs
    assert fired[0][0].info["spread"][0]["guard"]["keys_refreshed"] == 1

    def drifts():
        return {m: [float((now - v).norm() / v.norm()) for now, v in zip(outputs(TINY_REQUESTS[:2])[m], values[m])]
                for m in modules}

    apply_wilke_to_model(model, tok, TINY_REQUESTS[2:4], below)  # edits below: layers 1 and 2's keys go stale
    before = drifts()
    assert min(min(d) for d in before.values()) > 0.1  # every earlier key at both layers has slipped
    with collect_events() as fired:
        apply_wilke_to_model(model, tok, [TINY_REQUESTS[4]], spread)
    lower, upper = (piece["guard"] for piece in fired[0][0].info["spread"])
    assert lower["keys_refreshed"] == upper["keys_refreshed"] == 2
    assert lower["repair_slipped"] == upper["repair_slipped"] == 2
    assert lower["repair_drift_max_after"] < 0.01 * lower["repair_drift_max"]  # the log shows what is left
    # layer 2's keys were read again after layer 1's repair had moved them back toward where they were
    assert upper["repair_drift_max"] < 0.9 * max(before[modules[1]])
    after = drifts()
    for module in modules:  # back to about their values (λ = 10 holds hard; the new edit moves them a little)
        assert all(a < 0.1 * b for a, b in zip(after[module], before[module])), (module, before, after)
