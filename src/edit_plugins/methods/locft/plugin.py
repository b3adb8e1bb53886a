"""Registers LocFT, exactly as a third-party plugin would."""
from ...hookspecs import hookimpl
from .config import LocFTHyperParams
from .model import apply_locft_to_model


@hookimpl
def register_methods(register):
    register("LocFT", apply_locft_to_model, LocFTHyperParams, family="fine-tuning")
