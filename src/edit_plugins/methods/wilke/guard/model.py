"""The guard of one model: every guarded layer, the log of which layers were edited (for stale keys), and the
policy across layers: refreshing stale keys, repair, and in scope "model" every earlier edit's keys."""
from __future__ import annotations

import torch

from ....editing.layers import add_to_weight, get_module, weight_digest, weight_out_in
from .layer import LayerGuard
from .settings import GuardSettings
from .space import MetricSpace


class ModelGuard:
    """Every guarded layer of one model, and the log of which layers were edited (for stale keys)."""

    def __init__(self, settings: GuardSettings, pending: dict | None = None):
        self.settings = settings
        self.pending = {} if pending is None else pending  # saved layers not yet used since loading (state.py)
        self.layers: dict[str, LayerGuard] = {}
        self.edit_log: list[int] = []
        self.sources: list[tuple[int, tuple]] = []  # scope "model": every edit's (edit id, key source), in order

    def layer(self, model, module: str, layer: int, c_inv: torch.Tensor | None) -> LayerGuard:
        weight = weight_out_in(get_module(model, module))
        guard = self.layers.get(module)
        if guard is None:
            guard = self.layers[module] = LayerGuard(module, layer, MetricSpace(c_inv, weight.shape[1], self.settings,
                                                                            weight.device), self.settings)
            saved = self.pending.pop(module, None)
            if saved is not None:
                guard.sources, guard.edit_ids, guard.fresh_at = saved["sources"], saved["edit_ids"], saved["fresh_at"]
                keys, gram = saved["keys"], saved.get("gram")
                if guard.stores_values:
                    guard.values = saved["values"]
                if keys:  # the exact guard's, or a state saved before the soft guard kept only G
                    guard._rebuild(keys, weight.device)
                if gram is not None and (keys or not guard.stores_keys):
                    guard.gram = gram.to(weight.device)  # as the saving run summed it, to the last bit
                elif not keys:
                    guard._lose_keys()
            guard.snapshots = [(guard.count, weight_digest(weight))]  # the weights these keys belong to
        else:
            self._sync(model, [module])
        return guard

    def sync(self, model) -> None:
        """Follow every guarded layer back to the weights the caller left (before a call's first edit: in
        scope "model" an edit undone at one layer must leave every layer's guard)."""
        self._sync(model, list(self.layers))

    def _sync(self, model, modules: list[str]) -> None:
        undone = set()
        for module in modules:
            guard = self.layers[module]
            dropped = guard.sync(weight_out_in(get_module(model, module)))
            undone |= {e for e in dropped if 0 <= e < len(self.edit_log) and self.edit_log[e] == guard.layer}
        if undone and self.settings.guard_scope == "model":
            self.sources = [(e, s) for e, s in self.sources if e not in undone]
            for guard in self.layers.values():
                guard.forget(undone, guard.basis.device)

    def is_stale(self, guard: LayerGuard, edited_now: tuple = ()) -> bool:
        """Has a layer below been edited since the keys were computed (``edited_now``: layers the edit in
        progress has already changed, counted with ``refresh_within_edit``), and is a refresh due
        (``refresh_every``)? With ``repair``, an edit at the layer itself counts too: the soft guard's own
        updates move the outputs of the keys it holds, though not the keys."""
        if guard.needs_keys:
            return True
        since = self.edit_log[guard.fresh_at:]
        periodic = self.settings.guard_refresh_every > 1
        if periodic and len(since) < self.settings.guard_refresh_every:
            return False
        if periodic or not self.settings.guard_refresh_within_edit:
            edited_now = ()
        top = guard.layer + 1 if self.settings.guard_repair else guard.layer
        below = any(l < top for l in (*since, *edited_now))
        return self.settings.guard_refresh_stale_keys and bool(guard.count) and below

    def refresh_stale(self, model, tok, guards: list[LayerGuard]) -> dict[str, dict]:
        """Before an edit over several layers: recompute every stale one of ``guards`` in one pass (the pieces'
        ``prepare`` then finds them current). Returns each refreshed layer's report."""
        stale = [g for g in guards if self.is_stale(g)]
        return self.refresh(model, tok, stale) if stale else {}

    def prepare(self, model, tok, guard: LayerGuard, edited_now: tuple = ()) -> dict:
        """Before an edit at ``guard``'s layer: recompute its keys if a layer below was edited since (or by
        the edit in progress, ``edited_now``); in scope "model", add the keys of earlier edits made at other
        layers (their outputs here are kept as they are now). Returns what was done, for the edit's report
        (empty: nothing)."""
        report = self.refresh(model, tok, [guard])[guard.module] if self.is_stale(guard, edited_now) else {}
        if self.settings.guard_scope == "model":
            have = set(guard.edit_ids)
            missing = [(e, s) for e, s in self.sources if e not in have]
            if missing:
                weight = weight_out_in(get_module(model, guard.module))
                keys = current_keys(model, tok, [guard.module], [s for _, s in missing])[guard.module]
                keys = keys.to(weight.device)
                guard.record(list(keys), list(keys @ weight.detach().float().T), [s for _, s in missing],
                             [e for e, _ in missing], weight, len(self.edit_log))
                report["keys_added"] = len(missing)
        return report

    def record_edit(self, model, tok, request, pieces: list[tuple]) -> None:
        """After an edit is applied, at one layer or spread over several (``pieces``: (module name, layer,
        key, value) each): guard each piece's key at its layer (mapped to its value) and the layer's input
        at the edit's other scored positions (mapped where the edited layer now maps them): with ``positions:
        readout`` those whose next token the score reads, with ``prompt`` every one; log the edit's lowest
        layer, the one that makes the keys above it stale."""
        from ....editing.keys import scored_position_keys
        from ....editing.tokens import encode, subject_last_index

        edit_id = len(self.edit_log)
        fact = (request.prompt, request.subject, request.target_new)
        sources, others = [(*fact, None)], []
        if self.settings.guard_positions != "subject_last":  # every piece's layer from one pass over the edited model
            sequences = scored_position_keys(model, tok, [request], [name for name, *_ in pieces])
            own = subject_last_index(tok, "{}", request)  # already guarded, with its value v*
            first = len(encode(tok, request.text)) - 1 if self.settings.guard_positions == "readout" else 0
            others = [i for i in range(first, len(sequences[pieces[0][0]][0])) if i != own]
            sources += [(*fact, i) for i in others]
        for module_name, _, key, value in pieces:
            weight = weight_out_in(get_module(model, module_name))
            W = weight.detach().float()
            keys, values = [key.to(W.device)], [value.to(W.device)]
            if others:
                at_others = sequences[module_name][0].float().to(W.device)[others]
                keys += list(at_others)
                values += list(at_others @ W.T)
            self.layers[module_name].record(keys, values, sources, [edit_id] * len(keys), weight, edit_id)
        if self.settings.guard_scope == "model":
            self.sources += [(edit_id, s) for s in sources]
        self.log_edit(min(layer for _, layer, _, _ in pieces))

    def refresh(self, model, tok, guards: list[LayerGuard]) -> dict[str, dict]:
        """Recompute these layers' keys (one batched forward pass, cut off at the highest); with ``repair``,
        map the ones that slipped back to their values, lowest layer first: a repair moves the keys of the
        layers above, so they are read again before theirs. Returns what was done per layer, for the edit's
        report."""
        reports = {}
        left = sorted(guards, key=lambda g: g.layer)
        while left:
            sources = list(dict.fromkeys(s for g in left for s in g.sources))
            fresh = current_keys(model, tok, [g.module for g in left], sources)
            row = {s: i for i, s in enumerate(sources)}
            for done, guard in enumerate(left, start=1):
                module = get_module(model, guard.module)
                keys = fresh[guard.module][[row[s] for s in guard.sources]]
                report = reports[guard.module] = {"keys_refreshed": guard.count}
                if guard.keys:  # the soft guard keeps no keys to compare
                    old = torch.stack(guard.keys).to(keys.device)
                    report["key_change_max"] = float(((keys - old).norm(dim=1) / old.norm(dim=1).clamp_min(1e-12)).max())
                old_gram = None if guard.gram is None or guard.needs_keys else guard.gram.clone()
                guard.replace_keys(keys, len(self.edit_log), weight_out_in(module).device)
                if old_gram is not None and guard.gram is not None:  # how stale the keys had gone, all at once
                    report["gram_change"] = float((guard.gram - old_gram.to(guard.gram.device)).norm() / old_gram.norm())
                delta = None
                if self.settings.guard_repair:
                    delta, info = guard.repair_update(weight_out_in(module), keys)
                    report.update({f"repair_{k}": v for k, v in info.items()})
                    if delta is not None:
                        add_to_weight(module, delta)
                        report["repair_delta"] = delta
                guard.snapshots.append((guard.count, weight_digest(weight_out_in(module))))
                if delta is not None:
                    break
            left = left[done:]
        return reports

    def log_edit(self, layer: int) -> None:
        self.edit_log.append(layer)

    def memory(self) -> dict:
        return {name: g.nbytes() for name, g in self.layers.items()}


def current_keys(model, tok, module_names: list[str], sources: list[tuple]) -> dict[str, torch.Tensor]:
    """The keys ``sources`` name at each module, recomputed on the model as it is now: {module: (len(sources),
    d)}. Where a prompt's other positions are guarded too, its subject key is read from the same pass (a
    causal model's input at the subject's last token does not depend on what follows it)."""
    from ....editing.keys import compute_keys, scored_position_keys
    from ....editing.requests import EditRequest
    from ....editing.tokens import subject_last_index

    def request(source):
        return EditRequest(prompt=source[0], subject=source[1], target_new=source[2])

    texts = list(dict.fromkeys(s[:3] for s in sources if s[3] is not None))  # each prompt once, in order
    sequences = scored_position_keys(model, tok, [request(t) for t in texts], module_names)
    text_row = {t: n for n, t in enumerate(texts)}
    bare = [i for i, s in enumerate(sources) if s[3] is None and s[:3] not in text_row]
    found = compute_keys(model, tok, [request(sources[i]) for i in bare], module_names) if bare else {}
    out = {}
    for name in module_names:
        parts = dict(zip(bare, found[name])) if bare else {}
        for i, source in enumerate(sources):
            if i not in parts:
                position = subject_last_index(tok, "{}", request(source)) if source[3] is None else source[3]
                parts[i] = sequences[name][text_row[source[:3]]][position].float()
        out[name] = torch.stack([parts[i] for i in range(len(sources))])
    return out
