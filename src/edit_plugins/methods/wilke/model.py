"""WilKE's edit: a full rank-one edit per candidate layer, applied only where it is smallest."""
from __future__ import annotations

import logging
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from ... import easyedit_compat
from ...editing.covariance import safe_inverse, second_moments, stats_model_key
from ...editing.keys import compute_keys
from ...editing.layers import add_to_weight, check_layers, get_module, is_transposed, restore_weights, weight_out_in
from ...editing.rank_one import rank_one_update, update_direction
from ...editing.requests import EditRequest, normalize_requests
from ...editing.runtime import SuffixRunner
from ...editing.templates import context_templates
from ...editing.values import Candidate, optimise_deltas
from ...events import EditEvent, LinearEdit, emit_after_edit
from .change_budget import LayerBudgetSpent, layer_change, remember_original, spent_layers
from .config import WilKEHyperParams
from .guard.model import ModelGuard
from .layer_selection import estimate_layer_scores, la_norms
from .model_state import guard_for, wilke_state
from .spread import SpreadDiverged, spread_edit, spread_layers

LOG = logging.getLogger(__name__)

# fast_scan optimises at most this many layers, in the estimate's order, looking for one where δ reaches
# the target. Usually the first does.
FAST_SCAN_TRIES = 3

@dataclass
class LayerEdit:
    layer: int
    module: str
    delta: torch.Tensor  # ΔW, (out, in)
    relative_size: float  # LA = ‖ΔW‖_F / ‖W‖_F (‖W‖ as hparams.la_norm says)
    key: torch.Tensor  # the prompt's own key k (mapped exactly to v*)
    residual: torch.Tensor  # r = v* − W k = δ
    c_inv_key: torch.Tensor  # the update direction u: C⁻¹k̄, or the interference guard's
    target: torch.Tensor  # v* (before the bias): what k is mapped to
    direction_key: torch.Tensor  # k̄, the template-mean key
    steps: int
    nll: float
    initial_nll: float
    guard: dict = field(default_factory=dict)  # the guard's path and residual ratio, where it is on

    @property
    def reached_target(self) -> bool:
        """Did optimising δ here make the target likely? Where it cannot (δ has no path to the
        prediction, e.g. the last layer when the subject is not the last token) δ stays near 0 and
        LA would be spuriously small, so such a layer is not eligible."""
        return self.nll <= max(0.5 * self.initial_nll, 0.05)


@dataclass
class WilKEResult:
    chosen: LayerEdit
    layer_scores: dict = field(default_factory=dict)  # {layer: LA_l}, all candidates
    estimated: bool = False  # True when the scores come from fast_scan's estimate
    ineligible: list = field(default_factory=list)  # candidates whose δ could not reach the target

    def report(self) -> dict:
        out = {"layer": self.chosen.layer, "layer_scores": {str(k): v for k, v in self.layer_scores.items()},
               "ineligible_layers": self.ineligible, "scores_estimated": self.estimated,
               "v_steps": self.chosen.steps, "v_nll": self.chosen.nll}
        if self.chosen.guard:
            out["guard"] = self.chosen.guard
        return out


def layer_inverses(model, tok, hp: WilKEHyperParams, module_names) -> dict:
    """C⁻¹ per module (None when mom2_adjustment is off), cached per model."""
    if not hp.mom2_adjustment:
        return {name: None for name in module_names}
    cache = wilke_state(model).inverses  # C never changes during editing
    settings = (hp.mom2_dataset, hp.mom2_n_samples, hp.mom2_damping)
    missing = [n for n in module_names if (n, settings) not in cache]
    if missing:
        moments = second_moments(model, tok, missing, source=hp.mom2_dataset, n_samples=hp.mom2_n_samples,
                                 stats_dir=hp.stats_dir, model_key=stats_model_key(hp.model_name, model))
        for name in missing:
            cache[(name, settings)] = safe_inverse(moments[name], hp.mom2_damping, what=f"C at {name}")
    return {n: cache[(n, settings)] for n in module_names}


def statistics_modules(hp: WilKEHyperParams) -> list[str]:
    """Every module whose C an edit under ``hp`` can need: each candidate layer and the layers it spreads over."""
    layers = sorted({low for top in hp.layers for low in spread_layers(top, hp.spread_layers)})
    return [hp.rewrite_module_tmp.format(layer) for layer in layers]


def second_moment(model, tok, hp: WilKEHyperParams):
    """name -> C at that module (from the statistics cache layer_inverses filled)."""
    def moment(name):
        return second_moments(model, tok, [name], source=hp.mom2_dataset, n_samples=hp.mom2_n_samples,
                              stats_dir=hp.stats_dir, model_key=stats_model_key(hp.model_name, model))[name]
    return moment


def candidate_modules(model, tok, hp: WilKEHyperParams) -> dict[int, str]:
    """{layer: module} of the candidate layers, less those past ``layer_change_budget``."""
    names = {layer: hp.rewrite_module_tmp.format(layer) for layer in hp.layers}
    if hp.layer_change_budget is None:
        return names
    spent = spent_layers(model, names.values(), hp.layer_change_budget, second_moment(model, tok, hp))
    if len(spent) == len(names):
        changes = {layer: round(spent[name], 4) for layer, name in names.items()}
        raise LayerBudgetSpent(f"layer_change_budget {hp.layer_change_budget}: every candidate layer has moved its "
                               f"output by that share or more (‖W − W₀‖_C/‖W₀‖_C per layer: {changes}); no edit was "
                               "made. Raise the budget or add candidate layers")
    return {layer: name for layer, name in names.items() if name not in spent}


def update_directions(model, guard: ModelGuard | None, names: dict, keys, mean_keys, c_invs) -> dict:
    """u per candidate module: C⁻¹k̄ (k̄: template mean), or the interference guard's direction (with no
    guard, or with the guard applied only at the chosen layer, ``guard_layer_choice: plain``)."""
    out = {}
    for layer, name in names.items():
        if guard is None:
            out[name] = (update_direction(mean_keys[name], c_invs[name]), {})
        else:
            d = guard.layer(model, name, layer, c_invs[name]).direction(keys[name], mean_keys[name])
            out[name] = (d.u, d.report())
    return out


def _layer_edits(model, runner, hp, layers, names, keys, mean_keys, directions, norms) -> Iterator[LayerEdit]:
    """ROME's edit at each of ``layers``: v* = W k + δ at the prompt's own key k, direction u from
    ``update_directions``. The δ of all of them are optimised together, one copy of the batch each; the
    edits are built one at a time, so a caller keeping only the best holds one ΔW besides it."""
    candidates, currents = [], []
    for layer in layers:
        module = get_module(model, names[layer])
        current = weight_out_in(module).detach().float() @ keys[names[layer]].to(module.weight.device)
        bias = getattr(module, "bias", None)
        candidates.append(Candidate(layer, names[layer], current + (bias.detach().float() if bias is not None else 0)))
        currents.append(current)
    values = optimise_deltas(model, runner, candidates, hp)
    for layer, current, value in zip(layers, currents, values):
        name = names[layer]
        W = weight_out_in(get_module(model, name)).detach().float()
        key, mean_key = keys[name].to(W.device), mean_keys[name].to(W.device)
        u, guard_info = directions[name]
        target = current + value.delta.to(W.device)
        delta = rank_one_update(W, key, target, None, direction=u)
        yield LayerEdit(layer, name, delta, float(delta.norm()) / norms[name], key, value.delta.to(W.device), u.to(W.device),
                        target, mean_key, value.steps, value.nll, value.initial_nll, dict(guard_info))


def _better(edit: LayerEdit, best: LayerEdit | None) -> bool:
    if best is None:
        return True
    if edit.reached_target != best.reached_target:
        return edit.reached_target
    if not edit.reached_target:  # no layer reached the target: take the one that came closest
        return edit.nll < best.nll
    return edit.relative_size < best.relative_size


def execute_wilke(model, tok, request: EditRequest, hp: WilKEHyperParams) -> WilKEResult:
    """Compute (but do not apply) WilKE's edit for one request."""
    names = candidate_modules(model, tok, hp)
    templates = context_templates(model, tok, hp.context_template_length_params)
    modules = list(names.values())
    mean_keys = {n: k[0] for n, k in compute_keys(model, tok, [request], modules, templates).items()}
    keys = {n: k[0] for n, k in compute_keys(model, tok, [request], modules, ("{}",)).items()}
    # all at once, before the first edit writes: a layer's C is the unedited model's, whichever edit needs it first
    c_invs = layer_inverses(model, tok, hp, statistics_modules(hp))
    ranking_guard = guard_for(model, hp) if hp.guard_layer_choice == "guarded" else None
    directions = update_directions(model, ranking_guard, names, keys, mean_keys, c_invs)
    norms = la_norms(model, modules, hp.la_norm)
    runner = SuffixRunner.for_request(model, tok, request, templates)  # shared by every candidate
    if hp.fast_scan and len(names) > 1:
        estimates = estimate_layer_scores(model, runner, modules, keys, {n: u for n, (u, _) in directions.items()},
                                          norms)
        scores = {layer: estimates[name] for layer, name in names.items() if name in estimates}
        ineligible = [layer for layer in names if layer not in scores]
        ranked = sorted(scores, key=scores.get)[: max(hp.fast_scan_candidates, FAST_SCAN_TRIES)] or list(names)[:1]
        # The best-estimated fast_scan_candidates layers are optimised together and the faithful rule picks
        # among them. A layer where δ does not reach the target is not eligible, so if none of them is,
        # the next estimates are tried one at a time (in sequential runs, late layers of an already-edited
        # model sometimes cannot carry the fact).
        chosen = None
        passes = [ranked[: hp.fast_scan_candidates]] + [[layer] for layer in ranked[hp.fast_scan_candidates:]]
        for layers in passes:
            for edit in _layer_edits(model, runner, hp, layers, names, keys, mean_keys, directions, norms):
                if _better(edit, chosen):  # reached the target with the smallest LA, else the closest so far
                    chosen = edit
                if not edit.reached_target and edit.layer not in ineligible:
                    ineligible.append(edit.layer)  # the first candidate stands in when no layer is reachable
            if chosen.reached_target:
                break
        return WilKEResult(chosen, scores, estimated=True, ineligible=ineligible)
    chosen, scores, ineligible = None, {}, []
    layers = sorted(names)  # neighbours share a pass: each pass starts at its lowest layer
    for start in range(0, len(layers), hp.scan_layers_per_pass):
        for edit in _layer_edits(model, runner, hp, layers[start: start + hp.scan_layers_per_pass],
                                 names, keys, mean_keys, directions, norms):
            scores[edit.layer] = edit.relative_size
            if not edit.reached_target:
                ineligible.append(edit.layer)
            if _better(edit, chosen):
                chosen = edit  # keep only the winner: the other candidates leave no trace
    return WilKEResult(chosen, scores, ineligible=ineligible)


def _guarded_final(model, tok, hp: WilKEHyperParams, guard: ModelGuard, edit: LayerEdit):
    """The chosen layer's update against its guard made current (``ModelGuard.prepare``: stale keys recomputed,
    and with ``guard_repair`` slipped ones mapped back, which changes W; in scope "model", other layers'
    earlier edits added), then u and ΔW. Returns the edit and the repair's ΔW (None if none)."""
    layer_guard = guard.layers.get(edit.module)  # None if the layers were ranked without the guard
    if layer_guard is None:
        c_inv = layer_inverses(model, tok, hp, [edit.module])[edit.module]
        layer_guard = guard.layer(model, edit.module, edit.layer, c_inv)
    report = guard.prepare(model, tok, layer_guard)
    if not report and edit.guard:  # ranked with the guard's u, and nothing changed since
        return edit, None
    repair = report.pop("repair_delta", None)
    W = weight_out_in(get_module(model, edit.module)).detach().float()
    d = layer_guard.direction(edit.key, edit.direction_key)
    delta = rank_one_update(W, edit.key, edit.target, None, direction=d.u)
    info = {**d.report(), **report}
    norm = la_norms(model, [edit.module], hp.la_norm)[edit.module]
    return replace(edit, delta=delta, relative_size=float(delta.norm()) / norm, residual=edit.target - W @ edit.key,
                   c_inv_key=d.u.to(W.device), guard=info), repair


def apply_wilke_to_model(model, tok, requests, hparams: WilKEHyperParams, copy=False, return_orig_weights=False,
                         keep_original_weight=False, **kwargs):
    """EasyEdit's apply contract. Requests are applied one after another, each at its own best layer."""
    normalized = normalize_requests(requests)  # bad requests fail before any weight is touched
    check_layers(model, hparams.rewrite_module_tmp, hparams.layers)
    if copy:
        model = deepcopy(model)
    originals: dict = {}
    guard = guard_for(model, hparams)
    if guard is not None and guard.settings.guard_scope == "model":
        guard.sync(model)  # every layer at once: an edit undone at one layer leaves every layer's guard

    def keep_original(name):
        if f"{name}.weight" not in originals:
            originals[f"{name}.weight"] = get_module(model, name).weight.detach().clone()
        if hparams.layer_change_budget is not None:
            remember_original(model, name)

    try:
        for request in normalized:
            result = execute_wilke(model, tok, request, hparams)
            edit = result.chosen
            if hparams.spread_layers > 1:
                _apply_spread(model, tok, request, hparams, result, guard, keep_original)
                continue
            param_name = f"{edit.module}.weight"
            module = get_module(model, edit.module)
            keep_original(edit.module)
            total = edit.delta
            if guard is not None:
                edit, repair = _guarded_final(model, tok, hparams, guard, edit)
                result.chosen = edit  # the report shows the update applied
                total = edit.delta if repair is None else edit.delta + repair
            add_to_weight(module, edit.delta)
            if guard is not None:
                guard.record_edit(model, tok, request, [(edit.module, edit.layer, edit.key, edit.target)])
            report = result.report()
            if hparams.layer_change_budget is not None:
                report["layer_change"] = layer_change(model, edit.module, second_moment(model, tok, hparams))
            LOG.info("WilKE edited layer %d (LA=%.3g); candidates: %s", edit.layer, edit.relative_size,
                     {k: round(v, 5) for k, v in result.layer_scores.items()})
            emit_after_edit(EditEvent(
                method=hparams.alg_name, request=request.raw, model=model, hparams=hparams, modules=[edit.module],
                weight_deltas={param_name: total.t() if is_transposed(module) else total},
                linear_edits=[LinearEdit(edit.module, edit.key, edit.residual, edit.c_inv_key)],
                info=report))
    except BaseException:
        restore_weights(model, originals)  # never leave the model half-edited
        raise
    weights_copy = originals if return_orig_weights else {}
    return model, easyedit_compat.weights_copy_for_caller(weights_copy, keep_original_weight)


def _apply_spread(model, tok, request, hp: WilKEHyperParams, result: WilKEResult, guard, keep_original) -> None:
    """The chosen edit spread over its layer and the ``spread_layers`` − 1 below it, then logged as one edit."""
    edit = result.chosen
    templates = None
    if hp.spread_direction == "own_and_mean_key":
        templates = context_templates(model, tok, hp.context_template_length_params)
    try:
        pieces = spread_edit(model, tok, request, hp.rewrite_module_tmp, edit.layer, edit.module, edit.residual,
                             hp.spread_layers, lambda name: layer_inverses(model, tok, hp, [name])[name],
                             guard, keep_original, templates)
    except SpreadDiverged as diverged:  # the model is as it was: the edit is reported, not applied
        LOG.warning("WilKE, request %r: %s", request.prompt.format(request.subject), diverged)
        report = {**result.report(), "layer": None, "not_applied": str(diverged), "diverged_at_layer": diverged.layer}
        report.pop("guard", None)
        emit_after_edit(EditEvent(method=hp.alg_name, request=request.raw, model=model, hparams=hp, modules=[],
                                  weight_deltas={}, info=report))
        return
    if guard is not None:
        guard.record_edit(model, tok, request, [(p.module, p.layer, p.key, p.target) for p in pieces])
    report = result.report()
    report.pop("guard", None)  # the ranking's; each layer's own is in "spread"
    report["spread"] = [p.report() for p in pieces]
    if hp.layer_change_budget is not None:
        report["layer_change"] = {p.layer: layer_change(model, p.module, second_moment(model, tok, hp)) for p in pieces}
    LOG.info("WilKE edited layers %d-%d (chosen %d, LA=%.3g)", pieces[0].layer, edit.layer, edit.layer,
             edit.relative_size)
    deltas = {}
    for p in pieces:
        module = get_module(model, p.module)
        total = p.delta if p.repair is None else p.delta + p.repair
        deltas[f"{p.module}.weight"] = total.t() if is_transposed(module) else total
    emit_after_edit(EditEvent(
        method=hp.alg_name, request=request.raw, model=model, hparams=hp, modules=[p.module for p in pieces],
        weight_deltas=deltas, linear_edits=[LinearEdit(p.module, p.key, p.residual, p.direction) for p in pieces],
        info=report))
