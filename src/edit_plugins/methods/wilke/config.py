"""WilKE hparams. Field names follow EasyEdit's ROME wherever the meaning is the same."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, List, Optional

from ...editing.layers import check_layers
from ...hparams import EditHyperParams, HparamsError


@dataclasses.dataclass(kw_only=True)
class WilKEHyperParams(EditHyperParams):
    ALG_NAME: ClassVar[str] = "WilKE"

    layers: List[int]  # candidate layers; a single one is plain ROME
    rewrite_module_tmp: str  # the FFN output projection, e.g. "model.layers.{}.mlp.down_proj"
    fact_token: str = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: Optional[int] = None  # kept for EasyEdit files; the loss is always read at the output
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_early_stop_loss: float = 0.05  # stop when NLL + kl_factor·KL drops below this
    mom2_adjustment: bool = True
    mom2_dataset: str = "pydoc"  # offline: CPython's bundled docs; or "self", a .txt/.jsonl file, an HF dataset
    mom2_n_samples: int = 1000
    mom2_dtype: str = "float32"
    mom2_damping: float = 1e-4  # relative ridge added to C before inversion
    stats_dir: str = "data/stats"
    context_template_length_params: List[List[int]] = dataclasses.field(default_factory=lambda: [[10, 5]])
    fast_scan: bool = False  # rank layers by an estimate of LA; optimise only the winner
    fast_scan_candidates: int = 1  # fast_scan: optimise this many best-estimated layers together, keep the smallest edit
    # Faithful scan: how many candidate layers (neighbours) have their δ optimised together, one copy of the
    # batch each. Same result as one at a time (1); larger passes run closer to the CPU's speed but cost memory.
    scan_layers_per_pass: int = 5
    batch_size: int = 1

    def check_model(self, model) -> None:
        check_layers(model, self.rewrite_module_tmp, self.layers)

    def validate(self, source: str) -> None:
        super().validate(source)
        if not self.layers:
            raise HparamsError(f"{source}: field 'layers' must list at least one candidate layer")
        if "{}" not in self.rewrite_module_tmp:
            raise HparamsError(f"{source}: field 'rewrite_module_tmp' must contain '{{}}' for the layer index, "
                               f"got {self.rewrite_module_tmp!r}")
        if self.fact_token != "subject_last":
            raise HparamsError(f"{source}: field 'fact_token' must be 'subject_last', got {self.fact_token!r}")
        if self.mom2_dtype != "float32":
            raise HparamsError(f"{source}: field 'mom2_dtype' must be 'float32', got {self.mom2_dtype!r}")
        for name in ("v_lr", "clamp_norm_factor", "mom2_n_samples", "v_num_grad_steps", "scan_layers_per_pass",
                     "fast_scan_candidates"):
            if getattr(self, name) <= 0:
                raise HparamsError(f"{source}: field {name!r} must be positive, got {getattr(self, name)!r}")
