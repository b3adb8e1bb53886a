"""Registers LEMoE, exactly as a third-party plugin would."""
from ...hookspecs import hookimpl
from .config import LEMoEHyperParams
from .model import adaptor_state, apply_lemoe_to_model, load_adaptor_state, plan_requests


@hookimpl
def register_methods(register):
    register("LEMoE", apply_lemoe_to_model, LEMoEHyperParams, restore="callable",
             plan_order=plan_requests, save_state=adaptor_state, load_state=load_adaptor_state)
