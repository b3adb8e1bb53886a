"""LocFT-BF under EasyEdit's apply contract: the located weights fine-tuned on the call's edits; the original
weights come back as ``weights_copy``."""
from __future__ import annotations

import time
from copy import deepcopy

from ... import easyedit_compat
from ...editing.layers import restore_weights
from ...editing.requests import normalize_requests
from ...events import EditEvent, emit_after_edit
from .breadth_first import train_breadth_first
from .config import LocFTHyperParams


def apply_locft_to_model(model, tok, requests, hparams: LocFTHyperParams, copy=False, return_orig_weights=False,
                         keep_original_weight=False, **kwargs):
    """Fine-tune the located modules' weights on all ``requests`` together, breadth-first."""
    normalized = normalize_requests(requests)  # bad requests fail before anything is changed
    hparams.check_model(model)
    if copy:
        model = deepcopy(model)
    names = [f"{hparams.rewrite_module_tmp.format(layer)}.weight" for layer in hparams.layers]
    params = [model.get_parameter(name) for name in names]
    originals = {name: p.detach().clone() for name, p in zip(names, params)}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    started = time.perf_counter()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        report = train_breadth_first(model, tok, normalized, params, hparams)
        if not all(bool(p.isfinite().all()) for p in params):
            raise ArithmeticError("fine-tuning diverged (a tuned weight is not finite); the weights were put back")
    except BaseException:
        restore_weights(model, originals)  # never leave a half-trained model behind
        raise
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name])
    report["train_seconds"] = round(time.perf_counter() - started, 3)
    deltas = {name: (p.detach() - originals[name]) for name, p in zip(names, params)}
    for request in normalized:
        emit_after_edit(EditEvent(method=hparams.alg_name, request=request.raw, model=model, hparams=hparams,
                                  modules=[n.rsplit(".", 1)[0] for n in names], weight_deltas=deltas,
                                  info=dict(report)))
    weights_copy = originals if return_orig_weights else {}
    return model, easyedit_compat.weights_copy_for_caller(weights_copy, keep_original_weight)
