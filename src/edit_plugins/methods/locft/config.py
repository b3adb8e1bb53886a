"""LocFT-BF hparams: which weights are tuned, and the breadth-first schedule (the paper's defaults)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, List

from ...hparams import EditHyperParams, HparamsError, check_steps


@dataclasses.dataclass(kw_only=True)
class LocFTHyperParams(EditHyperParams):
    ALG_NAME: ClassVar[str] = "LocFT"

    layers: List[int]  # the tuned location: one layer in the paper (e.g. 22 of Llama-3-8B's 32)
    rewrite_module_tmp: str  # the tuned module, e.g. "model.layers.{}.mlp.down_proj"
    lr: float = 5e-4  # Adam
    weight_decay: float = 0.0
    epochs: int = 25  # passes over the call's edits (the paper's num_steps)
    mini_batch_size: int = 100
    loss_threshold: float = 1e-2  # a mini-batch below it takes no step; an epoch below it ends the training
    append_eos: bool = True  # train each target followed by end-of-text, as the paper does
    # Edits trained together per apply call in a lifelong run (the paper edits its whole stream in one call).
    # EasyEdit's BaseEditor.edit hands over one request per call and requires batch_size 1.
    call_size: int = 100
    batch_size: int = 1

    def edits_per_call(self) -> int:
        return max(self.batch_size, self.call_size)

    def check_model(self, model) -> None:
        from ...editing.layers import check_layers

        check_layers(model, self.rewrite_module_tmp, self.layers)

    def validate(self, source: str) -> None:
        super().validate(source)
        if "{}" not in self.rewrite_module_tmp:
            raise HparamsError(f"{source}: field 'rewrite_module_tmp' must contain '{{}}' for the layer index, "
                               f"got {self.rewrite_module_tmp!r}")
        if not self.layers:
            raise HparamsError(f"{source}: field 'layers' must name at least one layer")
        for name in ("lr", "epochs", "mini_batch_size", "call_size", "batch_size"):
            if getattr(self, name) <= 0:
                raise HparamsError(f"{source}: field {name!r} must be positive, got {getattr(self, name)!r}")
        if self.weight_decay < 0 or self.loss_threshold < 0:
            raise HparamsError(f"{source}: fields 'weight_decay' and 'loss_threshold' must not be negative")
        check_steps(self.epochs, "epochs", source)
