"""WilKE hparams. Field names follow EasyEdit's ROME wherever the meaning is the same."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, List, Optional

from ...editing.interference_guard import GUARD_POSITIONS, GUARD_SCOPES, GuardSettings
from ...editing.layers import check_layers
from ...hparams import EditHyperParams, HparamsError
from .layer_selection import LA_NORMS

# How candidate layers are ranked when the guard is on: by the update the guard would make there (its cost
# counts against a layer), or by ROME's C⁻¹k̄ with the guard applied only at the layer chosen.
GUARD_LAYER_CHOICES = ("guarded", "plain")
SPREAD_DIRECTIONS = ("own_key", "own_and_mean_key")  # what each piece of a spread edit maps (spread.py)


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
    la_norm: str = "current"  # LA's ‖W‖: the layer's norm now, or its "original" one (before this model's first WilKE edit)
    # A layer whose output on C's text has moved by this share, ‖W − W₀‖_C/‖W₀‖_C, takes no more edits; None: no bound
    layer_change_budget: Optional[float] = None
    batch_size: int = 1
    # Each edit shared by the chosen layer and the spread_layers − 1 below it, MEMIT's way (1: the chosen one alone)
    spread_layers: int = 1
    # each piece maps the prompt's own key k ("own_key"), or k and ROME's template mean k̄ at once
    spread_direction: str = "own_key"
    # The interference guard (docs/interference_guard.md): each part on or off, for ablations.
    interference_guard: bool = False  # ΔW leaves every earlier edit's key at the layer mapped as it was
    guard_preserved_knowledge: bool = False  # u in C's low-variance eigenvectors (AlphaEdit's null space)
    guard_null_space_energy: float = 0.05  # ... C's smallest eigen-directions carrying this share of its trace
    guard_min_residual: float = 0.1  # regularised fallback when the exact guard would grow ΔW over 1/this
    guard_max_keys_fraction: float = 0.9  # ... or once exact keys fill this share of the layer's width (0: always)
    guard_fallback_weight: float = 1.0  # λ of the fallback's (C + λ Σ k_j k_jᵀ)
    guard_refresh_stale_keys: bool = True  # recompute a layer's keys after edits at layers below it
    guard_refresh_within_edit: bool = True  # ... and after a spread edit's own lower pieces (off: once per edit)
    guard_refresh_every: int = 1  # ... at most once per this many edits (stale keys wait in between)
    # on refresh, map earlier keys that slipped back to their values (the soft guard: in least squares,
    # keeping each key's value, d_out floats, besides G)
    guard_repair: bool = False
    guard_repair_threshold: float = 0.1  # slipped: ‖W k_j − v_j‖ / ‖v_j‖ above this (0: every key)
    # keys guarded per edit: "subject_last"; also where the score reads the next token ("readout"); or every
    # position the score passes through ("prompt")
    guard_positions: str = "subject_last"
    guard_scope: str = "layer"  # whose keys an edited layer holds: its own earlier edits, or every earlier "model" edit
    guard_layer_choice: str = "guarded"  # rank candidate layers by the guarded update, or by the "plain" one

    def guard_settings(self) -> GuardSettings:
        return GuardSettings(
            past_edits=self.interference_guard, preserved_knowledge=self.guard_preserved_knowledge,
            null_space_energy=self.guard_null_space_energy, min_residual=self.guard_min_residual,
            max_keys_fraction=self.guard_max_keys_fraction, fallback_weight=self.guard_fallback_weight,
            refresh_stale_keys=self.guard_refresh_stale_keys, refresh_within_edit=self.guard_refresh_within_edit,
            refresh_every=self.guard_refresh_every, repair=self.guard_repair,
            repair_threshold=self.guard_repair_threshold, positions=self.guard_positions,
            scope=self.guard_scope)

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
        for name in ("guard_null_space_energy", "guard_min_residual", "guard_fallback_weight"):
            if getattr(self, name) <= 0:
                raise HparamsError(f"{source}: field {name!r} must be positive, got {getattr(self, name)!r}")
        if self.guard_repair_threshold < 0:  # 0: every held key is mapped back toward its value
            raise HparamsError(f"{source}: field 'guard_repair_threshold' must be 0 or more, got "
                               f"{self.guard_repair_threshold!r}")
        if self.guard_refresh_every < 1:  # an integer: the loader checks the field's type
            raise HparamsError(f"{source}: field 'guard_refresh_every' must be a whole number of edits, 1 or more, "
                               f"got {self.guard_refresh_every!r}")
        if self.guard_max_keys_fraction < 0:  # 0: no exact keys, every edit takes the regularised form
            raise HparamsError(f"{source}: field 'guard_max_keys_fraction' must be between 0 and 1, got "
                               f"{self.guard_max_keys_fraction!r}")
        for name in ("guard_min_residual", "guard_max_keys_fraction", "guard_null_space_energy"):
            if getattr(self, name) > 1:
                raise HparamsError(f"{source}: field {name!r} must be at most 1, got {getattr(self, name)!r}")
        if self.guard_preserved_knowledge and not self.mom2_adjustment:
            raise HparamsError(f"{source}: field 'guard_preserved_knowledge' needs C's eigenvectors, so "
                               "'mom2_adjustment' must be true")
        if self.layer_change_budget is not None:
            if self.layer_change_budget <= 0:
                raise HparamsError(f"{source}: field 'layer_change_budget' must be a positive number (a share of "
                                   f"the layer's output) or null, got {self.layer_change_budget!r}")
            if not self.mom2_adjustment:
                raise HparamsError(f"{source}: field 'layer_change_budget' measures change with C, so "
                                   "'mom2_adjustment' must be true")
        if self.la_norm not in LA_NORMS:
            raise HparamsError(f"{source}: field 'la_norm' must be one of {list(LA_NORMS)}, got {self.la_norm!r}")
        for name, allowed, what in (
                ("guard_positions", GUARD_POSITIONS, "the keys the past-edit guard holds"),
                ("guard_scope", GUARD_SCOPES, "whose keys the past-edit guard holds"),
                ("guard_layer_choice", GUARD_LAYER_CHOICES, "how layers are ranked under the past-edit guard")):
            value = getattr(self, name)  # allowed[0]: the default, which needs no guard
            if value not in allowed:
                raise HparamsError(f"{source}: field {name!r} must be one of {list(allowed)}, got {value!r}")
            if value != allowed[0] and not self.interference_guard:
                raise HparamsError(f"{source}: field {name!r} chooses {what}: it needs 'interference_guard' true")
        if self.spread_direction not in SPREAD_DIRECTIONS:
            raise HparamsError(f"{source}: field 'spread_direction' must be one of {list(SPREAD_DIRECTIONS)}, got "
                               f"{self.spread_direction!r}")
        if self.spread_direction != SPREAD_DIRECTIONS[0] and self.spread_layers == 1:
            raise HparamsError(f"{source}: field 'spread_direction' directs the pieces of a spread edit: it needs "
                               "'spread_layers' above 1")
        if self.guard_repair and not (self.interference_guard and self.guard_refresh_stale_keys):
            raise HparamsError(f"{source}: field 'guard_repair' works on refreshed guarded keys: it needs "
                               "'interference_guard' and 'guard_refresh_stale_keys' true")
