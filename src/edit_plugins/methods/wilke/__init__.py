"""WilKE: wise-layer knowledge editing (Hu et al. 2024, arXiv 2402.10987).

config.py (hparams), layer_selection.py (LA's norms and fast_scan's estimates), spread.py (an edit shared by
several layers), change_budget.py (each layer's accumulated change), guard/ (the interference guard),
model_state.py (what WilKE keeps on a model between edits), serialization.py (that state in a lifelong run),
model.py (EasyEdit's apply contract), plugin.py (its registration).
"""
from .config import WilKEHyperParams
from .model import apply_wilke_to_model, execute_wilke

__all__ = ["WilKEHyperParams", "apply_wilke_to_model", "execute_wilke"]
