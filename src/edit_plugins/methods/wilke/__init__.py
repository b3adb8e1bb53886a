"""WilKE: wise-layer knowledge editing (Hu et al. 2024, arXiv 2402.10987)."""
from .config import WilKEHyperParams
from .wilke_main import apply_wilke_to_model, execute_wilke

__all__ = ["WilKEHyperParams", "apply_wilke_to_model", "execute_wilke"]
