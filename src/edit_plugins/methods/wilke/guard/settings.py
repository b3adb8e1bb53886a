"""The interference guard's options: each defined once, here, as the WilKE hparams field a user writes;
their checks; and the presets a user can name instead of copying fields (docs/interference_guard.md)."""
from __future__ import annotations

import dataclasses

from ....errors import UserError
from ....hparams import HparamsError

GUARD_POSITIONS = ("subject_last", "readout", "prompt")  # keys guarded per edit (guard_positions)
GUARD_SCOPES = ("layer", "model")  # whose keys a layer guards (guard_scope)

# Named configurations (``guard_preset``): the fields a preset sets, which a file's own fields override.
GUARD_PRESETS = {
    # The best measured for long streams (docs/interference_guard.md, "Using it"): the soft guard over every
    # position each earlier edit's score reads, at every layer edited after it, stale keys refreshed at most
    # once per 10 edits. Memory per guarded layer does not grow with the edits held.
    "lifelong": {"interference_guard": True, "guard_scope": "model", "guard_positions": "prompt",
                 "guard_max_keys_fraction": 0.0, "guard_fallback_weight": 0.001, "guard_refresh_within_edit": False,
                 "guard_refresh_every": 10},
    # The exact guard on each layer's own earlier edits (what `interference_guard: true` alone gives): earlier
    # keys held exactly until they fill the layer (about 145 CounterFact edits per 1,536-wide layer), then
    # the regularised fallback.
    "exact": {"interference_guard": True},
}


class GuardError(UserError, ValueError):
    pass


@dataclasses.dataclass(kw_only=True)
class GuardSettings:
    """The guard's fields in WilKE's hparams; ``settings()`` is the frozen copy a guard keeps."""

    interference_guard: bool = False  # ΔW k_j = 0 for earlier edits' keys at the layer
    guard_preserved_knowledge: bool = False  # u in C's low-variance eigenvectors (AlphaEdit's null space)
    guard_null_space_energy: float = 0.05  # ... C's smallest eigen-directions carrying this share of its trace
    guard_min_residual: float = 0.1  # regularised fallback when the exact guard would grow ΔW over 1/this
    guard_max_keys_fraction: float = 0.9  # ... or once exact keys fill this share of the layer's width (0: always)
    guard_fallback_weight: float = 1.0  # λ of the fallback's (C + λ Σ k_j k_jᵀ)
    guard_refresh_stale_keys: bool = True  # recompute a layer's keys after edits at layers below it
    # ... also when the edit in progress has changed a layer below (a spread edit's lower pieces): one pass
    # per piece. Off: one pass before the edit serves all its layers, and its own lower pieces go unseen
    guard_refresh_within_edit: bool = True
    guard_refresh_every: int = 1  # ... at most once per this many edits (stale keys wait in between)
    # on refresh, map earlier keys that slipped back to their values (the soft guard: in least squares,
    # keeping each key's value, d_out floats, besides G)
    guard_repair: bool = False
    guard_repair_threshold: float = 0.1  # slipped: ‖W k_j − v_j‖ / ‖v_j‖ above this (0: every key)
    # keys guarded per edit: "subject_last"; also where the score reads the next token ("readout"); or every
    # position the score passes through ("prompt")
    guard_positions: str = "subject_last"
    # whose keys an edited layer holds: its own earlier edits ("layer"), or every earlier edit at whatever
    # layer it was made ("model"): then no edit below an earlier one moves that edit's inputs
    guard_scope: str = "layer"

    @property
    def guard_active(self) -> bool:
        return self.interference_guard or self.guard_preserved_knowledge

    def settings(self) -> "GuardSettings":
        """The guard's fields alone (from hparams that have more): what a model's guard is made with, and
        compared against to see whether the settings changed."""
        return GuardSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GuardSettings)})

    def validate_guard(self, source: str, mom2_adjustment: bool = True) -> None:
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
        if self.guard_preserved_knowledge and not mom2_adjustment:
            raise HparamsError(f"{source}: field 'guard_preserved_knowledge' needs C's eigenvectors, so "
                               "'mom2_adjustment' must be true")
        for name, allowed, what in (
                ("guard_positions", GUARD_POSITIONS, "the keys the past-edit guard holds"),
                ("guard_scope", GUARD_SCOPES, "whose keys the past-edit guard holds")):
            value = getattr(self, name)  # allowed[0]: the default, which needs no guard
            if value not in allowed:
                raise HparamsError(f"{source}: field {name!r} must be one of {list(allowed)}, got {value!r}")
            if value != allowed[0] and not self.interference_guard:
                raise HparamsError(f"{source}: field {name!r} chooses {what}: it needs 'interference_guard' true")
        if self.guard_repair and not (self.interference_guard and self.guard_refresh_stale_keys):
            raise HparamsError(f"{source}: field 'guard_repair' works on refreshed guarded keys: it needs "
                               "'interference_guard' and 'guard_refresh_stale_keys' true")


def with_preset(config: dict, source: str) -> dict:
    """An hparams mapping with its ``guard_preset``'s fields filled in where the mapping does not set them."""
    name = config.get("guard_preset")
    if name is None:
        return config
    if name not in GUARD_PRESETS:
        raise HparamsError(f"{source}: field 'guard_preset' must be one of {sorted(GUARD_PRESETS)} (or null), "
                           f"got {name!r}")
    return {**GUARD_PRESETS[name], **config}
