"""Registers LEMoE, exactly as a third-party plugin would."""
from ...hookspecs import hookimpl
from .config import LEMoEHyperParams
from .model import apply_lemoe_to_model
from .order_planning import plan_order
from .serialization import adaptor_state, load_adaptor_state


@hookimpl
def register_methods(register):
    register("LEMoE", apply_lemoe_to_model, LEMoEHyperParams, restore="callable",
             plan_order=plan_order, save_state=adaptor_state, load_state=load_adaptor_state, family="memory",
             batch_edit=True)
