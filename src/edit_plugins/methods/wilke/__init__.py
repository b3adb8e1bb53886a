"""WilKE: wise-layer knowledge editing (Hu et al. 2024, arXiv 2402.10987).

config.py (hparams), layer_selection.py (LA's norms and fast_scan's estimates), model.py (EasyEdit's apply
contract), serialization.py (its state in a lifelong run).
"""
from .config import WilKEHyperParams
from .model import apply_wilke_to_model, execute_wilke

__all__ = ["WilKEHyperParams", "apply_wilke_to_model", "execute_wilke"]
