"""Everything that knows which EasyEdit version (if any) is installed lives here.

Supported: PyPI ``easyeditor 0.0.1.dev0`` (transformers <= 4.55) and EasyEdit's GitHub HEAD
(torch 2.9, transformers 5.x). The rest of the package asks this module, never easyeditor.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .env import flag

# "1" keeps edit-plugins from importing easyeditor at all (it then acts as if it were absent).
NO_EASYEDIT_ENV = "EDIT_PLUGINS_NO_EASYEDIT"

_base = None


def easyeditor_module():
    """The imported ``easyeditor`` package, or None where it is absent or does not import."""
    if flag(NO_EASYEDIT_ENV):
        return None
    try:
        if importlib.util.find_spec("easyeditor") is None:
            return None
        return importlib.import_module("easyeditor")
    except Exception:  # a broken install (e.g. dev0 under transformers 5) counts as absent
        return None


def available() -> bool:
    return easyeditor_module() is not None


@dataclass
class _StandaloneHyperParams:
    """Stand-in for easyeditor's ``HyperParams`` where easyeditor is not installed."""


def hyperparams_base() -> type:
    """easyeditor's ``HyperParams`` dataclass where importable, else a stand-in."""
    global _base
    if _base is None:
        _base = _StandaloneHyperParams
        if easyeditor_module() is not None:
            try:
                _base = importlib.import_module("easyeditor.util.hparams").HyperParams
            except Exception:
                pass
    return _base


def alg_dict() -> dict:
    # dev0's star imports rebind the attribute easyeditor.util, so never use attribute access.
    return importlib.import_module("easyeditor.util.alg_dict").ALG_DICT


# EasyEdit's methods whose code reads second-moment statistics through layer_stats (HEAD's models/).
LAYER_STATS_METHODS = ("ROME", "R-ROME", "MEMIT", "MEMIT-FE", "PMET", "EMMET", "EAMET", "AlphaEdit", "SPHERE", "CORE")

# layer_stats' mom2_dataset names: the Hugging Face dataset and config each downloads.
LAYER_STATS_DATASETS = {"wikipedia": ("wikimedia/wikipedia", "20231101.en"),
                        "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
                        "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1")}


def layer_stats_path(stats_dir, model_name: str, dataset: str, layer_name: str, precision: str, sample_size: int) -> Path:
    """The cache file EasyEdit's ``layer_stats`` (MEMIT, AlphaEdit, EMMET, PMET) loads before it would download:
    the model's ``_name_or_path`` (EasyEdit loads ``model_name``) after its last '/', mom2_dataset verbatim."""
    return (Path(stats_dir) / model_name.rsplit("/")[-1] / f"{dataset}_stats"
            / f"{layer_name}_{precision}_mom2_{sample_size}.npz")


def read_layer_stats(path) -> "torch.Tensor":
    """C = mom2 / count from a layer_stats file."""
    import numpy as np
    import torch

    data = np.load(path)
    return torch.from_numpy(data["mom2.mom2"]).double() / float(data["mom2.count"])


# KnowEditDataset is HEAD's (0.0.1.dev0 has none: the file is then read by our reader alone).
_DATASET_CLASSES = {"zsre": "ZsreDataset", "counterfact_easyedit": "CounterFactDataset", "knowedit": "KnowEditDataset"}


def dataset_items(path, fmt: str):
    """EasyEdit's own reading of a dataset file (its dataset class's items), or None where easyeditor
    is absent or has no class for ``fmt``. Both versions: ``Cls(path)`` is a sequence of request dicts."""
    name = _DATASET_CLASSES.get(fmt)
    if name is None or easyeditor_module() is None:
        return None
    try:
        cls = getattr(importlib.import_module("easyeditor.dataset"), name)
    except Exception:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded dataset with N elements"
        dataset = cls(str(path))
    return [dataset[i] for i in range(len(dataset))]


def is_head() -> bool:
    """EasyEdit HEAD has ``sequential_edit`` on ``BaseEditor.edit``; 0.0.1.dev0 does not."""
    from easyeditor import BaseEditor

    return "sequential_edit" in inspect.signature(BaseEditor.edit).parameters


def _callable_restore_set():
    try:
        return importlib.import_module("easyeditor.editors.utils").CALLABLE_RESTORE_ALGS
    except (ImportError, AttributeError):
        return None  # dev0 has no editors/utils.py


_BATCH_EDIT_NAMES: set[str] = set()


def _allow_batch_edit(name: str) -> None:
    """Let ``BaseEditor.batch_edit`` accept ``name``: EasyEdit asks ``BatchEditor.is_batchable_method``, a fixed
    list of its own methods; it is wrapped once to also accept ours."""
    try:
        batch_editor = importlib.import_module("easyeditor.editors.batch_editor").BatchEditor
    except (ImportError, AttributeError):
        return  # no batch editing in this EasyEdit
    if not _BATCH_EDIT_NAMES:
        theirs = batch_editor.is_batchable_method
        batch_editor.is_batchable_method = staticmethod(lambda alg_name: alg_name in _BATCH_EDIT_NAMES
                                                        or theirs(alg_name))
    _BATCH_EDIT_NAMES.add(name)


def register_methods(methods) -> list[str]:
    """Add methods to ALG_DICT (mutating it), at HEAD to the callable-restore set, and those that take batches to
    what batch_edit accepts."""
    table = alg_dict()
    restore_set = _callable_restore_set()
    added = []
    for method in methods:
        if table.get(method.name) is not method.apply:
            table[method.name] = method.apply
            added.append(method.name)
        if method.restore == "callable" and restore_set is not None:
            restore_set.add(method.name)
        if method.batch_edit:
            _allow_batch_edit(method.name)
    return added


def foreign_methods() -> dict:
    """EasyEdit's own methods (ROME, MEMIT, ...) as {name: apply_fn}; empty without easyeditor."""
    if not available():
        return {}
    return dict(alg_dict())


def foreign_hparams_class(alg_name: str):
    """easyeditor's hparams class for one of its methods (``ROMEHyperParams`` for ROME, ...)."""
    module = easyeditor_module()
    candidates = [f"{alg_name}HyperParams", f"{alg_name.replace('-', '_')}HyperParams",
                  f"{alg_name.capitalize()}HyperParams", f"{alg_name}Hparams"]
    for name in candidates:
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    # EasyEdit's spellings vary (ULTRAEDIT: UltraEditHyperParams): compare letters and digits only.
    key = "".join(c for c in alg_name.lower() if c.isalnum())
    for name in dir(module):
        if name.endswith("HyperParams") and "".join(c for c in name[: -len("HyperParams")].lower() if c.isalnum()) == key:
            return getattr(module, name)
    from .errors import UserError

    raise UserError(f"alg_name {alg_name!r}: this easyeditor has the method but no hparams class for it "
                    f"(looked for {candidates} and any *HyperParams spelled like it)")


# How comparisons group EasyEdit's methods: memories beside the weights, fine-tuning; the rest edit weights in place.
MEMORY_METHODS = ("WISE", "GRACE", "MELO", "DEFER", "SERAC", "IKE", "ICE")
FINE_TUNING_METHODS = ("FT", "FT-L", "FT-M", "LoRA", "QLoRA")

# EasyEdit's BaseEditor pads on the right for these (Llama-family models) and on the left for every other method.
RIGHT_PADDING_METHODS = ("ROME", "MEMIT", "EMMET", "EAMET", "R-ROME", "AlphaEdit", "CORE", "SPHERE")


def foreign_method(alg_name: str, method_class):
    """One of EasyEdit's own methods as an ordinary method object (``plugins.Method``): its apply function, its
    hparams class, the state it keeps across calls, the padding side BaseEditor gives it, and how EasyEdit
    scores it."""
    from .plugins import Scoring

    state = module_state_functions(alg_name) or (None, None)
    apply_fn = alg_dict()[alg_name]
    scoring = Scoring()
    if alg_name == "WISE":
        # Its adaptor routes a whole batch by one mean distance, and its editor's __call__ saves and merges side
        # memories: EasyEdit scores one prompt per forward, through the editor.
        scoring = Scoring(rows_alone=True, through_editor=True)
    elif alg_name == "GRACE":
        # Its codebook is queried at key_id, left at the last edit's prompt end; only GRACE.generate() resets it.
        scoring = Scoring(rows_alone=True, before_forward=grace_query_position)
    elif alg_name == "ULTRAEDIT":
        executor = getattr(apply_fn, "__self__", None)
        if executor is not None and hasattr(executor, "is_init"):
            apply_fn, state = _ultraedit_keeping_its_normaliser(executor)

    def prepare(hparams):
        prepare_for_sequential_use(alg_name, hparams)
        clear_module_state(alg_name)  # a resumed run loads it back with its state

    return method_class(alg_name, apply_fn, foreign_hparams_class(alg_name), plugin="EasyEdit",
                        save_state=state[0], load_state=state[1], from_easyedit=True, prepare=prepare,
                        request_for=lambda request, unrelated: method_request(alg_name, request, unrelated),
                        trains_on_unrelated_prompts=alg_name == "WISE", scoring=scoring,
                        padding_side="right" if alg_name in RIGHT_PADDING_METHODS else "left",
                        family="memory" if alg_name in MEMORY_METHODS
                        else "fine-tuning" if alg_name in FINE_TUNING_METHODS else "weight editor")


def grace_query_position(model, prompt_length) -> None:
    """Where GRACE's codebook reads its query: the prompt's last token (where it was trained), or -1 before
    generate(), which makes the first forward take the prompt's last token, as GRACE's own generate() does."""
    for module in model.modules():
        if type(module).__name__ == "GRACEAdapter":
            module.key_id = -1 if prompt_length is None else prompt_length - 1


ULTRAEDIT_STATE_FORMAT = "edit-plugins ultraedit normaliser v1"


def _ultraedit_keeping_its_normaliser(executor):
    """UltraEdit's lifelong normaliser (running mean and variance of keys and gradients) is meant to last the
    whole stream, but EasyEdit's executor never sets ``is_init`` and builds a new one at every call. Keep it:
    build it at the run's first call (``clear_module_state`` clears ``is_init`` when a run starts) or on a new
    model, then reuse it; save and load its statistics."""
    pending = {}

    def apply(model, tok, requests, hparams, **kwargs):
        if not executor.is_init or getattr(executor, "model", None) is not model:
            executor.init_model(model, tok, hparams)
            if pending:
                executor.alg.lifelong_normalizer.load_state_dict(pending.pop("normaliser"))
        executor.is_init = True
        return executor.apply_to_model(model, tok, requests, hparams, **kwargs)

    def save_state(model):
        if not executor.is_init:
            return None
        tensors = {k: v.detach().cpu().contiguous() for k, v in executor.alg.lifelong_normalizer.state_dict().items()}
        return tensors, {"format": ULTRAEDIT_STATE_FORMAT}

    def load_state(model, tensors, metadata):
        if metadata.get("format") != ULTRAEDIT_STATE_FORMAT:
            raise ValueError(f"not UltraEdit's saved normaliser (format {metadata.get('format')!r}; expected "
                             f"{ULTRAEDIT_STATE_FORMAT!r})")
        executor.is_init = False
        pending["normaliser"] = dict(tensors)

    return apply, (save_state, load_state)


def prepare_for_sequential_use(alg_name: str, hparams) -> None:
    """Per-method settings so that an EasyEdit method keeps its edits across apply calls."""
    if alg_name == "WISE":
        # HEAD's WISE keeps its side memory across calls only with this set in code.
        hparams.sequential_edit = True


# Module globals in which EasyEdit's editors keep state across apply calls, besides the weights:
# CONTEXT_TEMPLATES_CACHE (ROME, MEMIT, AlphaEdit, ...): prefixes sampled from the model at the first call, so a
# fresh process would sample other ones from the edited model; cache_c (AlphaEdit, SPHERE): Σ k kᵀ of the past
# edits' keys, the past-edits term of every later solve, with cache_c_new saying whether it exists yet.
# A lifelong run saves them with its state, and clears them when it starts: a second run in one process would
# otherwise begin with the first run's. WISE keeps the inputs of its edits in lists beside its editor class
# (edit_history, merge_group_edit_history: replayed at later edits when retrieve and replay are set); a resumed
# run rebuilds them by replaying its edits, and a new one starts them empty.
_TEMPLATES = "CONTEXT_TEMPLATES_CACHE"
_EDIT_HISTORIES = ("edit_history", "merge_group_edit_history")
MODULE_STATE_FORMAT = "edit-plugins easyedit module state v1"


def _apply_module(alg_name: str):
    """The EasyEdit module of ``alg_name``'s apply function; None where EasyEdit is absent or it is not EasyEdit's."""
    if easyeditor_module() is None:
        return None
    apply_fn = alg_dict().get(alg_name)
    module = inspect.getmodule(apply_fn) if apply_fn is not None else None
    return module if module is not None and module.__name__.startswith("easyeditor.") else None


def _state_module(alg_name: str):
    """The module of EasyEdit's apply function for ``alg_name``, where it keeps any of those globals."""
    module = _apply_module(alg_name)
    return module if hasattr(module, _TEMPLATES) or hasattr(module, "cache_c_new") else None


def _package_modules(alg_name: str) -> list:
    """The loaded modules of the EasyEdit package that holds ``alg_name``'s apply function."""
    module = _apply_module(alg_name)
    if module is None or not module.__name__.startswith("easyeditor.models."):
        return []
    package = module.__name__.rpartition(".")[0]
    return [m for name, m in list(sys.modules.items()) if m is not None and name.startswith(package + ".")]


def clear_module_state(alg_name: str) -> None:
    """The method's next call starts as in a fresh process: no templates yet, no past edits."""
    module = _state_module(alg_name)
    if module is not None:
        if hasattr(module, _TEMPLATES):
            setattr(module, _TEMPLATES, None)
        if hasattr(module, "cache_c_new"):
            module.cache_c_new = False  # what its own reset_cache does
        if hasattr(module, "P_loaded"):
            module.P_loaded = False  # AlphaEdit loads its projection once per process: this run's P_loc
    for sibling in _package_modules(alg_name):
        for name in _EDIT_HISTORIES:
            if isinstance(getattr(sibling, name, None), list):
                setattr(sibling, name, [])
    executor = getattr(alg_dict().get(alg_name) if easyeditor_module() is not None else None, "__self__", None)
    if hasattr(executor, "is_init"):
        executor.is_init = False  # an executor object in ALG_DICT (UltraEdit's) holding an earlier run's model


def module_state_functions(alg_name: str):
    """(save_state(model), load_state(model, tensors, metadata)) for an EasyEdit method that keeps state in
    those globals, as a registered method's; None for every other method."""
    module = _state_module(alg_name)
    if module is None:
        return None

    def save_state(model):
        tensors, metadata = {}, {"format": MODULE_STATE_FORMAT, "alg_name": alg_name}
        if getattr(module, _TEMPLATES, None) is not None:
            metadata["context_templates"] = json.dumps(getattr(module, _TEMPLATES))
        if getattr(module, "cache_c_new", False):
            tensors["cache_c"] = module.cache_c.detach().cpu().contiguous()
        return (tensors, metadata) if len(metadata) > 2 or tensors else None

    def load_state(model, tensors, metadata):
        if metadata.get("format") != MODULE_STATE_FORMAT or metadata.get("alg_name") != alg_name:
            raise ValueError(f"not {alg_name}'s saved state (format {metadata.get('format')!r}, method "
                             f"{metadata.get('alg_name')!r}; expected {MODULE_STATE_FORMAT!r}, {alg_name!r})")
        if "context_templates" in metadata:
            setattr(module, _TEMPLATES, json.loads(metadata["context_templates"]))
        if "cache_c" in tensors:
            module.cache_c = tensors["cache_c"].clone()
            module.cache_c_new = True

    return save_state, load_state


def method_request(alg_name: str, request: dict, unrelated) -> dict:
    """A request as the EasyEdit method needs it. WISE trains on an unrelated prompt and answer beside each edit
    ("loc_prompt"), as its authors draw them from Natural Questions; ``unrelated`` is one such (question, answer)
    from a pool that is never scored."""
    if alg_name == "WISE" and "loc_prompt" not in request:
        if unrelated is None:
            raise ValueError("WISE trains on an unrelated prompt beside each edit: give the run unrelated "
                             "questions (--unrelated-data, a ZsRE file whose loc/loc_ans are Natural Questions)")
        prompt, answer = unrelated
        return {**request, "loc_prompt": f"{prompt} {answer}"}
    return request


def weights_copy_for_caller(weights_copy: dict, keep_original_weight: bool) -> dict:
    """What an apply function returns as ``weights_copy``.

    0.0.1.dev0 restores whatever is returned, so edits stay only if we return {} when
    ``keep_original_weight`` is False. HEAD always passes False and decides itself (via
    ``sequential_edit``) whether to restore, so it must always get the originals.
    """
    if not keep_original_weight and available() and not is_head():
        return {}
    return weights_copy


class _RestoreOnIteration:
    """0.0.1.dev0 restores by ``for k, v in weights_copy.items()``: that loop runs the restore callable."""

    def __init__(self, restore):
        self.restore = restore

    def __call__(self):
        self.restore()

    def items(self):
        self.restore()
        return iter(())


def restore_for_caller(restore, keep_original_weight: bool):
    """What an adaptor method returns as ``weights_copy``: HEAD calls it (CALLABLE_RESTORE_ALGS); dev0
    only knows dicts of weights, and restores only when ``keep_original_weight`` is True."""
    if available() and not is_head():
        return _RestoreOnIteration(restore) if keep_original_weight else {}
    return restore


def sequential_apply_kwargs() -> dict:
    """Apply-function arguments under which the edit stays in the model and the originals come back.

    dev0 returns the originals only when ``keep_original_weight`` is True (it never restores them
    itself inside the apply function); HEAD always returns them with ``return_orig_weights``.
    """
    head_or_absent = not available() or is_head()
    return {"copy": False, "return_orig_weights": True, "keep_original_weight": not head_or_absent}
