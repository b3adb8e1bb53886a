"""LocFT-BF: localized fine-tuning, breadth-first (Yang et al., "Fine-tuning Done Right in Model Editing",
ICLR 2026, arXiv 2509.22072).

config.py (hparams), breadth_first.py (epochs of mini-batches over a call's edits), model.py (EasyEdit's apply
contract), plugin.py (its registration).
"""
from .config import LocFTHyperParams
from .model import apply_locft_to_model

__all__ = ["LocFTHyperParams", "apply_locft_to_model"]
