"""Registers WilKE, exactly as a third-party plugin would."""
from ...hookspecs import hookimpl
from .config import WilKEHyperParams
from .model import apply_wilke_to_model
from .serialization import load_wilke_state, save_wilke_state


@hookimpl
def register_methods(register):
    register("WilKE", apply_wilke_to_model, WilKEHyperParams, save_state=save_wilke_state, load_state=load_wilke_state)
