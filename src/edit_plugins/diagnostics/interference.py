"""The interference term of lifelong linear editing, logged after every edit.

After n closed-form edits at one module ("Knowledge in Superposition", Hu et al. 2024):
    W_n k_j = v_j + Σ_{i>j} r_i · p(k_i, k_j),   p(k_i, k_j) = k_iᵀC⁻¹k_j / k_iᵀC⁻¹k_i,
with r_i = v_i − W_{i−1} k_i. Per module we keep k_j, C⁻¹k_j, r_j and v_j of earlier edits and the
accumulated interference I_j, updated in O(t·d) per edit:  I_j += r_t · p(k_t, k_j).
The measured drift W_t k_j − v_j comes from the actual weights; for rank-one edits the two agree.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..editing.keys import compute_keys, module_input_sequences, pad_sequences
from ..editing.layers import get_module, weight_out_in
from ..editing.requests import EditRequest
from ..hookspecs import hookimpl
from .superposition_degree import superposition_degree

PERCENTILES = (50, 90, 99)
# An edit is "at risk" once the predicted interference on it is half the size of its value vector.
RISK_THRESHOLD = 0.5


def describe(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    out = {"mean": float(values.mean()), "max": float(values.max())}
    out.update({f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES})
    return out


class _ModuleHistory:
    def __init__(self, weight0: torch.Tensor):
        self.weight0 = weight0  # W before the first edit at this module, (out, in)
        self.keys, self.values, self.interference = [], [], []
        self.case_ids = []

    def stacked(self):
        return (torch.stack(self.keys), torch.stack(self.values), torch.stack(self.interference))


class InterferenceLog:
    """After-edit diagnostic. Register an instance as a plugin (lifelong mode does this)."""

    def __init__(self, model=None, tok=None, hparams=None, probes=(), log_path=None, **_):
        self.model, self.tok = model, tok
        self.history: dict[str, _ModuleHistory] = {}
        self.log_path = Path(log_path) if log_path else None
        self.probe_keys: dict[str, torch.Tensor] = {}
        self.probe_prompts = [p.prompt for p in probes if getattr(p, "prompt", None)]
        self.probe_inputs: dict[str, list] = {}
        self.output_history: dict[str, dict] = {}
        # {module: (OutputEdit.state, earlier inputs' output change under it)}: not saved, only reused
        self._moved_under_state: dict[str, tuple] = {}
        self.step = 0
        modules = []
        if hparams is not None and getattr(hparams, "rewrite_module_tmp", None) and getattr(hparams, "layers", None):
            modules = [hparams.rewrite_module_tmp.format(l) for l in hparams.layers]
        probe_requests = [EditRequest(prompt=p.prompt.replace(p.subject, "{}", 1), subject=p.subject, target_new=" x")
                          for p in probes if getattr(p, "subject", None) and p.subject in p.prompt]
        if model is not None and modules and probe_requests:
            # Probe keys come from the unedited model, once: no forward pass per edit.
            self.probe_keys = {m: k.detach() for m, k in compute_keys(model, tok, probe_requests, modules).items()}

    @hookimpl
    def after_edit(self, event):
        self.step += 1
        if event.output_edits:
            return self._log(event, {"output_change": {e.module: self._output_change(event, e)
                                                        for e in event.output_edits}})
        if not event.linear_edits:
            return self._probe_only(event)
        report = {}
        for edit in event.linear_edits:
            report[edit.module] = self._update(event.model, edit, event.request.get("case_id"))
        return self._log(event, {"interference": report if len(report) > 1 else next(iter(report.values()))})

    def _log(self, event, result: dict) -> dict:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"step": self.step, "method": event.method,
                                    "case_id": event.request.get("case_id"), **result}) + "\n")
        return result

    def _update(self, model, edit, case_id=None) -> dict:
        W = weight_out_in(get_module(model, edit.module)).detach().float()
        key, c_inv_key, residual = edit.key.float().to(W.device), edit.c_inv_key.float().to(W.device), edit.residual.float().to(W.device)
        history = self.history.get(edit.module)
        if history is None:
            weight0 = W - torch.outer(residual, c_inv_key) / torch.dot(key, c_inv_key)
            history = self.history[edit.module] = _ModuleHistory(weight0)
        out = {"edits_at_module": len(history.keys) + 1}
        if history.keys:
            keys_old = torch.stack(history.keys)
            p = superposition_degree(c_inv_key, key, keys_old)  # O(t·d)
            for j, p_j in enumerate(p):
                history.interference[j] = history.interference[j] + residual * p_j
            keys, values, predicted = history.stacked()
            measured = keys @ W.T - values  # W_t k_j − v_j from the actual weights
            value_norms = values.norm(dim=1).clamp_min(1e-12)
            out["superposition_abs_p"] = describe(p.abs().cpu())
            out["predicted_interference_rel"] = describe((predicted.norm(dim=1) / value_norms).cpu())
            out["measured_drift_rel"] = describe((measured.norm(dim=1) / value_norms).cpu())
            out["prediction_error_max"] = float((predicted - measured).norm(dim=1).max() / value_norms.max())
        if edit.module in self.probe_keys:
            probes = self.probe_keys[edit.module].to(W.device)
            drift = (probes @ (W - history.weight0).T).norm(dim=1) / (probes @ history.weight0.T).norm(dim=1).clamp_min(1e-12)
            out["probe_drift_rel"] = describe(drift.cpu())
        # The new edit itself: W_t k_t = v_t exactly, so its own interference starts at 0.
        history.keys.append(key)
        history.values.append(W @ key)
        history.interference.append(torch.zeros_like(residual))
        history.case_ids.append(case_id)
        return out

    @torch.no_grad()
    def _output_change(self, event, edit) -> dict:
        """Adaptor methods: how far the module's output moved on earlier edits' inputs and on probes.

        ``‖added_now(x) − added_then(x)‖ / ‖FFN₀(x)‖`` for each earlier edit's input x, and
        ``‖added_now(x)‖ / ‖FFN₀(x)‖`` on never-edited probe prompts. No whole-model forward pass
        after the first event (which reads the probes' inputs to the module once).
        """
        history = self.output_history.setdefault(edit.module, {"inputs": [], "added": [], "base_norm": []})
        if edit.module not in self.probe_inputs and self.probe_prompts:
            self.probe_inputs[edit.module] = module_input_sequences(event.model, self.tok, self.probe_prompts,
                                                                    edit.module)
        out = {"edits_at_module": len(history["inputs"]) + 1}
        if history["inputs"]:
            state, moved = self._moved_under_state.get(edit.module, (None, []))
            if edit.state is None or state is not edit.state:
                moved = []
            new = range(len(moved), len(history["inputs"]))  # O(T) once per adaptor state, not per edit
            x, mask = pad_sequences([history["inputs"][i] for i in new])
            now = edit.added_output(x, mask)
            moved = moved + [(now[row, : len(history["inputs"][i])] - history["added"][i]).norm().item()
                             / history["base_norm"][i] for row, i in enumerate(new)]
            self._moved_under_state[edit.module] = (edit.state, moved)
            out["earlier_edits_output_change_rel"] = describe(torch.tensor(moved))
        if self.probe_inputs.get(edit.module):
            x, mask = pad_sequences(self.probe_inputs[edit.module])
            added = edit.added_output(x, mask) * mask.unsqueeze(-1)
            base = edit.original_output(x) * mask.unsqueeze(-1)
            out["probe_output_change_rel"] = describe((added.flatten(1).norm(dim=1)
                                                       / base.flatten(1).norm(dim=1).clamp_min(1e-12)).cpu())
        x = edit.inputs.unsqueeze(0)
        history["inputs"].append(edit.inputs)
        history["added"].append(edit.added_output(x, None)[0])
        history["base_norm"].append(max(edit.original_output(x)[0].norm().item(), 1e-12))
        return out

    def _probe_only(self, event) -> dict | None:
        """Methods without a linear update: how much the edited modules' outputs moved on probe keys."""
        out = {}
        for name, delta in (event.weight_deltas or {}).items():
            module = name.rsplit(".", 1)[0]
            if module in self.probe_keys:
                W = weight_out_in(get_module(event.model, module)).detach().float()
                d = delta.float().to(W.device)
                d = d.T if d.shape != W.shape else d
                probes = self.probe_keys[module].to(W.device)
                out[module] = {"probe_output_change_rel": describe(
                    ((probes @ d.T).norm(dim=1) / (probes @ (W - d).T).norm(dim=1).clamp_min(1e-12)).cpu())}
        return {"interference": out} if out else None

    def progress_postfix(self) -> dict:
        """What a lifelong run's progress bar shows for this diagnostic: the edits at risk so far."""
        return {"at_risk": sum(v > RISK_THRESHOLD for v in self.accumulated_interference().values())}

    def accumulated_interference(self) -> dict:
        """{case_id: ‖I_j‖/‖v_j‖}: how far later edits have pushed each edit's value, per the closed form."""
        out = {}
        for h in self.history.values():
            if h.keys:
                rel = torch.stack(h.interference).norm(dim=1) / torch.stack(h.values).norm(dim=1).clamp_min(1e-12)
                out.update(zip(h.case_ids, rel.tolist()))
        return out

    def summarize(self, lost_case_ids) -> dict:
        """Does accumulated interference predict which edits are lost? ROC AUC (0.5 = no signal)."""
        scores = self.accumulated_interference()
        lost = set(map(str, lost_case_ids))
        pos = [v for k, v in scores.items() if str(k) in lost]
        neg = [v for k, v in scores.items() if str(k) not in lost]
        out = {"edits_scored": len(scores), "edits_lost": len(pos),
               "edits_at_risk": sum(v > RISK_THRESHOLD for v in scores.values()), "risk_threshold": RISK_THRESHOLD}
        if pos and neg:
            import scipy.stats

            u = scipy.stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
            out["auc_interference_predicts_loss"] = float(u / (len(pos) * len(neg)))
        return out

    def state_dict(self) -> dict:
        return {"step": self.step, "output_history": self.output_history, "history": {m: {"weight0": h.weight0, "keys": h.keys,
                                                   "values": h.values, "interference": h.interference,
                                                   "case_ids": h.case_ids}
                                               for m, h in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.output_history = state.get("output_history", {})
        self.history = {}
        for m, h in state["history"].items():
            history = _ModuleHistory(h["weight0"])
            history.keys = h["keys"]
            history.values, history.interference = h["values"], h["interference"]
            history.case_ids = h["case_ids"]
            self.history[m] = history


@hookimpl
def register_diagnostics(register):
    register("interference", InterferenceLog, default=True)
