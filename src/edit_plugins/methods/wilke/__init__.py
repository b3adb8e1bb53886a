"""WilKE: wise-layer knowledge editing (Hu et al. 2024, arXiv 2402.10987).

config.py (hparams), layer_selection.py (fast_scan's estimates), model.py (EasyEdit's apply contract).
"""
from .config import WilKEHyperParams
from .model import apply_wilke_to_model, execute_wilke

__all__ = ["WilKEHyperParams", "apply_wilke_to_model", "execute_wilke"]
