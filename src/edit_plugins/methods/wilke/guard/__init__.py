"""WilKE's interference guard: rank-one edits that leave earlier edits' keys mapped where they were.

settings (the hparams fields, their checks, presets), space (u's metric), layer (one layer's keys and the
guarded direction), model (every guarded layer, stale keys and repair), state (saving and loading).
"""
from .layer import Direction, LayerGuard
from .model import ModelGuard, current_keys
from .settings import GUARD_PRESETS, GuardError, GuardSettings

__all__ = ["GUARD_PRESETS", "Direction", "GuardError", "GuardSettings", "LayerGuard", "ModelGuard", "current_keys"]
