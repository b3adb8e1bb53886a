"""LEMoE under EasyEdit's apply contract: one frozen expert per batch of edits; the returned callable
undoes the call."""
from __future__ import annotations

import logging
import time
from copy import deepcopy

import torch

from ... import easyedit_compat
from ...editing.requests import normalize_requests
from ...events import EditEvent, OutputEdit, emit_after_edit
from .anchors import anchor_features, anchor_floors, ffn_inputs, template_anchor_features
from .config import LEMoEHyperParams
from .injection import find_adaptor, find_ffn, generic_features, insert_adaptor, remove_adaptor
from .order_planning import plan_order
from .training import train_expert

LOG = logging.getLogger(__name__)


class _Undo:
    """Undo one apply call: drop the experts it added, or the whole adaptor if it created it."""

    def __init__(self, model, created: bool, n_before: int):
        self.model, self.created, self.n_before = model, created, n_before

    def __call__(self):
        found = find_adaptor(self.model)
        if found is None:
            return
        if self.created:
            remove_adaptor(self.model)
            return
        adaptor = found[1]
        while len(adaptor.experts) > self.n_before:
            adaptor.drop_last_expert()


def apply_lemoe_to_model(model, tok, requests, hparams: LEMoEHyperParams, copy=False, return_orig_weights=False,
                         keep_original_weight=False, **kwargs):
    """Add one frozen expert per ``edits_per_expert`` requests. Returns a callable that undoes this call."""
    normalized = normalize_requests(requests)  # bad requests fail before anything is changed
    find_ffn(model, hparams)
    if copy:
        model = deepcopy(model)
    found = find_adaptor(model)
    created, n_before = found is None, (len(found[1].experts) if found else 0)
    undo = _Undo(model, created, n_before)
    order = plan_order(model, tok, normalized, hparams)
    try:
        adaptor = insert_adaptor(model, tok, hparams)
        for start in range(0, len(order), hparams.edits_per_expert):
            batch = [normalized[i] for i in order[start : start + hparams.edits_per_expert]]
            started = time.perf_counter()
            expert = adaptor.add_expert()
            # The FFN inputs come from the blocks below the adaptor: the experts never change them.
            inputs = ffn_inputs(model, tok, batch, adaptor.module_name)
            floors = None
            if hparams.routing == "anchor":
                features = anchor_features(tok, batch, inputs, adaptor.router)
                if hparams.anchor_templates:
                    features = torch.cat([features, template_anchor_features(model, tok, batch, adaptor, hparams)])
                if hparams.generic_text_margin is not None:
                    floors = anchor_floors(features, generic_features(model, tok, adaptor, hparams),
                                           hparams.generic_text_margin)
                adaptor.router.add_anchors(features, expert, floors)
            report = train_expert(model, tok, adaptor, batch, hparams)
            if floors is not None:  # anchors that look like generic text: held above the threshold by their floor
                report["generic_anchors"] = int((floors > adaptor.router.threshold).sum())
            report.update(expert=expert, n_experts=len(adaptor.experts),
                          train_seconds=round(time.perf_counter() - started, 3))
            LOG.info("LEMoE expert %d: %s", expert, report)
            trained = object()  # the adaptor's state for this batch's events
            for request, x in zip(batch, inputs):
                emit_after_edit(EditEvent(
                    method=hparams.alg_name, request=request.raw, model=model, hparams=hparams,
                    modules=[adaptor.module_name], info=dict(report),
                    output_edits=[OutputEdit(adaptor.module_name, x, adaptor.added_output, adaptor.base, trained)]))
    except BaseException:
        undo()  # never leave a half-trained expert behind
        raise
    return model, easyedit_compat.restore_for_caller(undo, keep_original_weight)
