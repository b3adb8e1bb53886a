"""Registers WilKE, exactly as a third-party plugin would."""
from ...editing.interference_guard import guard_state, load_guard_state
from ...hookspecs import hookimpl
from .config import WilKEHyperParams
from .model import apply_wilke_to_model


@hookimpl
def register_methods(register):
    register("WilKE", apply_wilke_to_model, WilKEHyperParams, save_state=guard_state, load_state=load_guard_state)
