"""WilKE hparams. Field names follow EasyEdit's ROME wherever the meaning is the same."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, List, Optional

from ...editing.layers import check_layers
from ...hparams import EditHyperParams, HparamsError, check_steps
from .guard.settings import GuardSettings, with_preset
from .layer_selection import LA_NORMS

# How candidate layers are ranked when the guard is on: by the update the guard would make there (its cost
# counts against a layer), or by ROME's C⁻¹k̄ with the guard applied only at the layer chosen.
GUARD_LAYER_CHOICES = ("guarded", "plain")
SPREAD_DIRECTIONS = ("own_key", "own_and_mean_key")  # what each piece of a spread edit maps (spread.py)


@dataclasses.dataclass(kw_only=True)
class WilKEHyperParams(GuardSettings, EditHyperParams):
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
    la_norm: str = "current"  # LA's ‖W‖: the layer's norm now, or its "original" one (before this model's first WilKE edit)
    # A layer whose output on C's text has moved by this share, ‖W − W₀‖_C/‖W₀‖_C, takes no more edits; None: no bound
    layer_change_budget: Optional[float] = None
    batch_size: int = 1
    # Each edit shared by the chosen layer and the spread_layers − 1 below it, MEMIT's way (1: the chosen one alone)
    spread_layers: int = 1
    # each piece maps the prompt's own key k ("own_key"), or k and ROME's template mean k̄ at once
    spread_direction: str = "own_key"
    # The interference guard's fields are GuardSettings' (guard/settings.py); a named preset fills them in
    guard_preset: Optional[str] = None
    guard_layer_choice: str = "guarded"  # rank candidate layers by the guarded update, or by the "plain" one

    @classmethod
    def from_dict(cls, config: dict, source: str = "<dict>"):
        if isinstance(config, dict):
            config = with_preset(config, source)
        return super().from_dict(config, source)

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
                     "fast_scan_candidates", "spread_layers"):
            if getattr(self, name) <= 0:
                raise HparamsError(f"{source}: field {name!r} must be positive, got {getattr(self, name)!r}")
        check_steps(self.v_num_grad_steps, "v_num_grad_steps", source)
        self.validate_guard(source, self.mom2_adjustment)
        if self.layer_change_budget is not None:
            if self.layer_change_budget <= 0:
                raise HparamsError(f"{source}: field 'layer_change_budget' must be a positive number (a share of "
                                   f"the layer's output) or null, got {self.layer_change_budget!r}")
            if not self.mom2_adjustment:
                raise HparamsError(f"{source}: field 'layer_change_budget' measures change with C, so "
                                   "'mom2_adjustment' must be true")
        if self.la_norm not in LA_NORMS:
            raise HparamsError(f"{source}: field 'la_norm' must be one of {list(LA_NORMS)}, got {self.la_norm!r}")
        if self.guard_layer_choice not in GUARD_LAYER_CHOICES:
            raise HparamsError(f"{source}: field 'guard_layer_choice' must be one of {list(GUARD_LAYER_CHOICES)}, "
                               f"got {self.guard_layer_choice!r}")
        if self.guard_layer_choice != GUARD_LAYER_CHOICES[0] and not self.interference_guard:
            raise HparamsError(f"{source}: field 'guard_layer_choice' chooses how layers are ranked under the "
                               "past-edit guard: it needs 'interference_guard' true")
        if self.spread_direction not in SPREAD_DIRECTIONS:
            raise HparamsError(f"{source}: field 'spread_direction' must be one of {list(SPREAD_DIRECTIONS)}, got "
                               f"{self.spread_direction!r}")
        if self.spread_direction != SPREAD_DIRECTIONS[0] and self.spread_layers == 1:
            raise HparamsError(f"{source}: field 'spread_direction' directs the pieces of a spread edit: it needs "
                               "'spread_layers' above 1")
