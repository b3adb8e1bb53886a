"""Finding modules by name template and reading/writing FFN output projections as (out, in)."""
from __future__ import annotations

import hashlib

import torch

from ..errors import UserError


class LayerError(UserError, ValueError):
    pass


def get_module(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LayerError(f"the model has no module named {name!r}") from None


def num_layers(model) -> int:
    return model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layer


def check_layer_index(model, layer) -> None:
    total = num_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < total:
        raise LayerError(f"layer {layer!r} does not exist: the model has layers 0..{total - 1}")


def check_layers(model, template: str, layers) -> None:
    """Fail before any weight is touched if a layer index or the module template is wrong."""
    for layer in layers:
        check_layer_index(model, layer)
        module = get_module(model, template.format(layer))
        if getattr(module, "weight", None) is None or module.weight.dim() != 2:
            raise LayerError(f"module {template.format(layer)!r} has no 2-D weight to edit")


def is_transposed(module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out); nn.Linear as (out, in)."""
    return type(module).__name__ == "Conv1D"


def weight_out_in(module) -> torch.Tensor:
    """The weight as an (out, in) matrix (a view, no copy)."""
    return module.weight.t() if is_transposed(module) else module.weight


def add_to_weight(module, delta_out_in: torch.Tensor) -> None:
    if not bool(torch.isfinite(delta_out_in).all()):
        raise ArithmeticError("the weight update is not finite (NaN or inf); no weight was written")
    with torch.no_grad():
        delta = delta_out_in.to(module.weight.device, module.weight.dtype)
        module.weight.add_(delta.t() if is_transposed(module) else delta)


def restore_weights(model, weights: dict) -> None:
    """Write saved parameters back by name (EasyEdit's ``weights_copy``, or a snapshot)."""
    with torch.no_grad():
        for name, value in weights.items():
            model.get_parameter(name).copy_(value)


def weight_digest(weight: torch.Tensor) -> str:
    """A fingerprint of the weight's bytes, whatever its dtype (bf16 too): has anything written to it since?"""
    raw = weight.detach().contiguous().view(torch.uint8).cpu().numpy()
    return hashlib.blake2b(raw.tobytes(), digest_size=16).hexdigest()


def decoder_layers(model):
    """The ModuleList of transformer blocks (GPT-2 ``transformer.h``, Llama ``model.layers``, ...)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise LayerError(f"cannot find the decoder layers of {type(model).__name__}")


def input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


# The FFN output projection per architecture: its input is the key k.
_FFN_OUTPUT = {
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "gptj": "transformer.h.{}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
    "llama": "model.layers.{}.mlp.down_proj",
    "mistral": "model.layers.{}.mlp.down_proj",
    "qwen2": "model.layers.{}.mlp.down_proj",
    "qwen3": "model.layers.{}.mlp.down_proj",
    "gemma": "model.layers.{}.mlp.down_proj",
    "phi3": "model.layers.{}.mlp.down_proj",
}


def ffn_output_template(model) -> str:
    model_type = getattr(model.config, "model_type", "")
    if model_type not in _FFN_OUTPUT:
        raise LayerError(f"unknown architecture {model_type!r}: pass the FFN output projection's module template "
                         f"(known: {sorted(_FFN_OUTPUT)})")
    return _FFN_OUTPUT[model_type]
