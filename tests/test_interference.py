"""The interference term: predicted from the closed form vs measured from the weights."""
import numpy as np
import pytest
import scipy.stats
import torch

from conftest import EIFFEL, HPARAMS
from edit_plugins import hparams
from edit_plugins.diagnostics.interference import InterferenceLog, describe
from edit_plugins.diagnostics.superposition_degree import superposition_degree
from edit_plugins.events import EditEvent, LinearEdit, collect_events
from edit_plugins.methods.wilke import apply_wilke_to_model
from edit_plugins.plugins import pm

TINY_REQUESTS = [
    {"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"},
    {"prompt": "The favourite food of Germany", "subject": "Germany", "target_new": "rice"},
    {"prompt": "The best known river of Egypt", "subject": "Egypt", "target_new": "Thames"},
    {"prompt": "The national sport of Canada", "subject": "Canada", "target_new": "cricket"},
]


def run_sequence(model, tok, hp, requests):
    log = InterferenceLog()
    pm.register(log)
    try:
        reports = []
        for request in requests:
            with collect_events() as events:
                apply_wilke_to_model(model, tok, [request], hp)
            reports.append(events[0][1]["interference"])
        return log, reports
    finally:
        pm.unregister(log)


def test_predicted_equals_measured_on_tiny_gpt2(tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir, hp.layers = stats_dir, [1]  # one layer: every edit interferes with the earlier ones
    log, reports = run_sequence(model, tok, hp, TINY_REQUESTS)
    assert reports[0]["edits_at_module"] == 1 and "measured_drift_rel" not in reports[0]
    last = reports[-1]
    assert last["edits_at_module"] == 4
    assert last["measured_drift_rel"]["max"] > 1e-3  # the interference is real, not zero
    assert last["prediction_error_max"] < 1e-4
    assert last["predicted_interference_rel"]["max"] == pytest.approx(last["measured_drift_rel"]["max"], rel=1e-3)


@pytest.mark.slow
def test_predicted_equals_measured_on_smollm2(smollm2, stats_dir):
    from edit_plugins.editing.layers import get_module

    model, tok = smollm2
    hp = hparams.load(HPARAMS / "WilKE" / "smollm2-135m-rome.yaml")
    hp.stats_dir, hp.mom2_n_samples = stats_dir, 100
    requests = [EIFFEL, {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
                         "target_new": "English"}, {"prompt": "Toko Yasuda, the", "subject": "Toko Yasuda", "target_new": "piano"}]
    module = get_module(model, hp.rewrite_module_tmp.format(hp.layers[0]))
    original = module.weight.detach().clone()
    try:
        _, reports = run_sequence(model, tok, hp, requests)
    finally:
        with torch.no_grad():
            module.weight.copy_(original)
    last = reports[-1]
    assert last["edits_at_module"] == 3 and last["measured_drift_rel"]["max"] > 1e-4
    assert last["prediction_error_max"] < 1e-3


def test_orthogonal_whitened_keys_do_not_interfere():
    """Hand-built: keys orthogonal under C⁻¹, so p(k_i, k_j) = 0 and later edits leave earlier ones exact."""
    torch.manual_seed(0)
    d_in, d_out = 6, 4
    A = torch.randn(d_in, d_in)
    C = A @ A.T + torch.eye(d_in)
    c_inv = torch.linalg.inv(C)
    L = torch.linalg.cholesky(C)
    keys = (L @ torch.eye(d_in)[:, :3]).T  # k_i = L e_i: k_iᵀ C⁻¹ k_j = e_iᵀ e_j
    assert torch.allclose(superposition_degree(c_inv @ keys[2], keys[2], keys[:2]), torch.zeros(2), atol=1e-5)

    module = torch.nn.Linear(d_in, d_out, bias=False)
    model = torch.nn.Sequential()
    model.add_module("proj", module)
    log = InterferenceLog()
    reports = []
    for k in keys:
        u = c_inv @ k
        residual = torch.randn(d_out)
        with torch.no_grad():
            module.weight.add_(torch.outer(residual, u) / k.dot(u))
        reports.append(log.after_edit(EditEvent(method="manual", request={}, model=model, hparams=None, modules=["proj"],
                                                linear_edits=[LinearEdit("proj", k, residual, u)]))["interference"])
    assert reports[-1]["superposition_abs_p"]["max"] < 1e-5
    assert reports[-1]["measured_drift_rel"]["max"] < 1e-5
    assert reports[-1]["predicted_interference_rel"]["max"] < 1e-5


def test_statistics_summary():
    values = np.arange(101.0)
    assert describe(values) == {"mean": 50.0, "max": 100.0, "p50": 50.0, "p90": 90.0, "p99": 99.0}


def test_interference_plugin_is_registered():
    from edit_plugins.plugins import registry

    assert registry().diagnostics["interference"].factory is InterferenceLog


def test_hparams_flag_turns_logging_on_outside_lifelong_mode(tiny_gpt2, stats_dir, tmp_path):
    model, tok = tiny_gpt2
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir, hp.layers = stats_dir, [1]
    hp.diagnostics, hp.diagnostics_log = ["interference"], str(tmp_path / "log.jsonl")
    try:
        for request in TINY_REQUESTS[:2]:
            apply_wilke_to_model(model, tok, [request], hp)
    finally:
        from edit_plugins import events

        for diagnostic in events._requested_diagnostics.values():
            pm.unregister(diagnostic)
        events._requested_diagnostics.clear()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"edits_at_module": 2' in lines[1]


def test_auc_of_interference_against_lost_edits():
    log = InterferenceLog()
    torch.manual_seed(0)
    W = torch.nn.Linear(4, 3, bias=False)
    model = torch.nn.Sequential()
    model.add_module("proj", W)
    for case in range(4):
        k, r = torch.randn(4), torch.randn(3)
        with torch.no_grad():
            W.weight.add_(torch.outer(r, k) / k.dot(k))
        log.after_edit(EditEvent(method="m", request={"case_id": case}, model=model, hparams=None, modules=["proj"],
                                 linear_edits=[LinearEdit("proj", k, r, k)]))
    scores = log.accumulated_interference()
    assert scores[3] == 0.0 and all(v > 0 for c, v in scores.items() if c != 3)
    ranked = sorted(scores, key=scores.get)
    perfect = log.summarize(lost_case_ids=ranked[2:])  # the two most interfered-with edits were lost
    assert perfect["auc_interference_predicts_loss"] == 1.0 and perfect["edits_lost"] == 2
    inverse = log.summarize(lost_case_ids=ranked[:2])
    assert inverse["auc_interference_predicts_loss"] == 0.0


def test_unknown_diagnostic_name_is_an_error_and_leaves_the_model_unedited(tiny_gpt2, stats_dir):
    from conftest import changed_parameters, snapshot

    model, tok = tiny_gpt2
    hp = hparams.load(HPARAMS / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir, hp.layers, hp.diagnostics = stats_dir, [1], ["nonesuch"]
    before = snapshot(model)
    with pytest.raises(ValueError, match="no diagnostic named 'nonesuch' is registered; known: \\['interference'\\]"):
        apply_wilke_to_model(model, tok, [TINY_REQUESTS[0]], hp)
    assert changed_parameters(model, before) == []


def test_adaptor_output_change_is_measured_once_per_adaptor_state_and_equals_a_full_recount(tiny_gpt2):
    """LEMoE's events of one expert share its state: the log reads each earlier input once per state."""
    from dataclasses import replace

    from edit_plugins.hookspecs import hookimpl
    from edit_plugins.methods.lemoe import apply_lemoe_to_model

    class CountingLog(InterferenceLog):
        def __init__(self, reuse):
            super().__init__()
            self.reuse, self.reports, self.rows_read = reuse, [], 0

        @hookimpl
        def after_edit(self, event):
            edits = []
            for e in event.output_edits:
                def added_output(x, mask, _added=e.added_output):
                    self.rows_read += len(x)
                    return _added(x, mask)
                edits.append(replace(e, added_output=added_output, state=e.state if self.reuse else None))
            result = super().after_edit(replace(event, output_edits=edits))
            self.reports.append(next(iter(result["output_change"].values())))
            return None

    model, tok = tiny_gpt2
    hp = hparams.load(HPARAMS / "LEMoE" / "tiny-gpt2.yaml")
    hp.routing_threshold, hp.order_planning = 0.0, False  # every prompt reaches every expert: outputs move
    requests = [dict(r, prompt=r["prompt"] + " is") for r in TINY_REQUESTS] * 2  # 8 edits, 4 experts
    reused, recounted = CountingLog(reuse=True), CountingLog(reuse=False)
    pm.register(reused)
    pm.register(recounted)
    try:
        apply_lemoe_to_model(model, tok, requests, hp)
    finally:
        pm.unregister(reused)
        pm.unregister(recounted)
    key = "earlier_edits_output_change_rel"
    assert [r["edits_at_module"] for r in reused.reports] == list(range(1, 9))
    assert reused.reports[1][key]["max"] < 1e-6  # edit 1 under the expert it trained with
    assert max(r[key]["max"] for r in reused.reports[2:]) > 1e-3  # later experts do move earlier edits' outputs
    for mine, full in zip(reused.reports[1:], recounted.reports[1:]):
        assert mine[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6)  # padding: float noise
    # Earlier inputs read: 1 + 2 + ... + 7 = 28 recounting every event, 1 + 2 + 1 + 4 + 1 + 6 + 1 = 16 reusing;
    # and each event's own input once (8).
    assert (reused.rows_read, recounted.rows_read) == (16 + 8, 28 + 8)
