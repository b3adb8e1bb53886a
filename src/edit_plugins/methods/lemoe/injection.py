"""Putting the adaptor around one FFN of a model, finding it again, and taking it out."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...editing.corpora import read_texts
from ...editing.keys import capture_inputs, run_until_captured
from ...editing.layers import LayerError, check_layer_index, get_module, input_device
from ...editing.tokens import pad_batch
from ...errors import UserError
from .layer import LEMoELayer

if TYPE_CHECKING:  # annotations only: config imports find_ffn from here
    from .config import LEMoEHyperParams

class AdaptorError(UserError, ValueError):
    pass


def find_adaptor(model) -> tuple[str, LEMoELayer] | None:
    for name, module in model.named_modules():
        if isinstance(module, LEMoELayer):
            return name, module
    return None


def hidden_size(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or getattr(config, "n_embd")


def find_ffn(model, hp: LEMoEHyperParams) -> str:
    """The name of the FFN module the adaptor wraps; LayerError if the hparams do not name one."""
    check_layer_index(model, hp.layer)
    name = hp.ffn_module_tmp.format(hp.layer)
    module = get_module(model, name)
    if not isinstance(module, LEMoELayer) and not any(True for _ in module.parameters()):
        raise LayerError(f"module {name!r} (ffn_module_tmp at layer {hp.layer}) has no parameters: "
                         "expected the FFN block")
    return name


def _set_module(model, name: str, module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def reference_inputs(model, tok, module_name: str, source: str, n_samples: int, max_tokens: int = 64) -> torch.Tensor:
    """The FFN inputs (N, d) at every token of reference text but each text's first."""
    texts = read_texts(source, n_samples)
    seqs = [s for s in (tok(t, truncation=True, max_length=max_tokens).input_ids for t in texts) if len(s) > 1]
    device = input_device(model)
    rows = []
    for start in range(0, len(seqs), 16):
        ids, mask = pad_batch(tok, seqs[start : start + 16], device)
        with capture_inputs(model, [module_name], stop_early=True) as captured:
            run_until_captured(model, input_ids=ids, attention_mask=mask)
        keep = mask.bool().clone()
        keep[:, 0] = False
        rows.append(captured[module_name][keep.to(captured[module_name].device)].float())
    return torch.cat(rows)


def generic_features(model, tok, adaptor: LEMoELayer, hp: LEMoEHyperParams) -> torch.Tensor:
    """The routing features of the reference text (what the statistics standardise), computed once per adaptor
    object: an anchor's floor is its best match among them."""
    if adaptor.generic_features is None:
        inputs = reference_inputs(model, tok, adaptor.module_name, hp.reference_source, hp.reference_samples)
        adaptor.generic_features = adaptor.router.features(inputs)
    return adaptor.generic_features


def new_adaptor(model, name: str, *, rank: int, scale: float, routing: str, threshold: float,
                 temperature: float, span: str) -> LEMoELayer:
    base = get_module(model, name)
    adaptor = LEMoELayer(base, hidden_size(model), rank=rank, scale=scale, routing=routing, threshold=threshold,
                         temperature=temperature, span=span)
    adaptor.router.to(next(base.parameters()).device)
    _set_module(model, name, adaptor)
    adaptor.context_hook = model.base_model.register_forward_pre_hook(adaptor.context, with_kwargs=True)
    adaptor.module_name = name
    return adaptor


def insert_adaptor(model, tok, hp: LEMoEHyperParams) -> LEMoELayer:
    """The model's adaptor, created (with its routing statistics) on first use."""
    name = find_ffn(model, hp)
    found = find_adaptor(model)
    if found is not None:
        if found[0] != name:
            raise AdaptorError(f"the model already has a LEMoE adaptor at {found[0]!r}; hparams put it at {name!r} "
                               f"(layer {hp.layer})")
        return found[1]
    adaptor = new_adaptor(model, name, rank=hp.expert_rank, scale=hp.expert_scale, routing=hp.routing,
                           threshold=hp.routing_threshold, temperature=hp.routing_temperature,
                           span=hp.routing_span)
    if hp.routing == "anchor":
        try:
            inputs = reference_inputs(model, tok, name, hp.reference_source, hp.reference_samples)
        except BaseException:
            remove_adaptor(model)
            raise
        adaptor.router.feature_mean.copy_(inputs.mean(0))
        adaptor.router.feature_std.copy_(inputs.std(0).clamp_min(1e-6))
        adaptor.generic_features = adaptor.router.features(inputs)
    return adaptor


def remove_adaptor(model) -> None:
    """Put the original FFN back: the model is then exactly what it was before LEMoE."""
    found = find_adaptor(model)
    if found is None:
        return
    name, adaptor = found
    adaptor.context_hook.remove()
    _set_module(model, name, adaptor.base)
