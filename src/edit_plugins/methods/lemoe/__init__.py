"""LEMoE: a mixture-of-experts adaptor for lifelong editing (Wang & Li, EMNLP 2024).

config.py (hparams), layer.py (experts and routers), injection.py (in and out of a model), anchors.py,
training.py (one expert), order_planning.py, model.py (EasyEdit's apply contract), serialization.py.
"""
from .config import LEMoEHyperParams
from .injection import AdaptorError, find_adaptor, insert_adaptor, remove_adaptor
from .model import apply_lemoe_to_model
from .serialization import adaptor_size, adaptor_state, load_adaptor, load_adaptor_state, save_adaptor

__all__ = ["AdaptorError", "LEMoEHyperParams", "adaptor_size", "adaptor_state", "apply_lemoe_to_model", "find_adaptor",
           "insert_adaptor", "load_adaptor", "load_adaptor_state", "remove_adaptor", "save_adaptor"]
