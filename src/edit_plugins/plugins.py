"""The project's one PluginManager, entry-point loading, and the registries filled by hooks."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import pluggy

from . import hookspecs
from .env import flag
from .errors import UserError

ENTRY_POINT_GROUP = "edit_plugins"
# "1" turns entry-point loading off; plugins can still be registered with pm.register().
NO_ENTRY_POINTS_ENV = "EDIT_PLUGINS_NO_ENTRY_POINTS"
# Comma-separated entry-point names: only these are loaded ("wilke,interference").
LOAD_PLUGINS_ENV = "EDIT_PLUGINS_LOAD"

pm = pluggy.PluginManager("edit_plugins")
pm.add_hookspecs(hookspecs)

_loaded = False


@dataclass(frozen=True)
class Scoring:
    """How a method's edited model must be scored to score what its authors score, where batched forwards of
    the bare model would score something else."""
    rows_alone: bool = False  # one unpadded row per forward: its forward decides once per batch (WISE)
    through_editor: bool = False  # forwards and generate() through the object apply returned (its __call__ acts)
    before_forward: Callable | None = None  # (model, prompt length, or None before generate()) -> None


FAMILIES = ("weight editor", "memory", "fine-tuning")  # how comparisons group methods


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable
    hparams_class: type
    restore: str = "weights"  # how weights_copy undoes an edit: original "weights", or a "callable"
    plugin: str = ""
    # Optional, for methods that keep state outside the model's parameters (adaptors, guarded keys):
    plan_order: Callable | None = None  # (model, tok, requests, hparams) -> permutation of a known pool
    save_state: Callable | None = None  # (model) -> (tensors, metadata)
    load_state: Callable | None = None  # (model, tensors, metadata) -> None
    # Set where easyedit_compat adapts one of EasyEdit's own methods (their hparams load through EasyEdit):
    from_easyedit: bool = False
    prepare: Callable | None = None  # (hparams) -> None: before a run's first edit, settings that keep edits
    request_for: Callable | None = None  # (request, unrelated (question, answer) or None) -> the method's request
    trains_on_unrelated_prompts: bool = False  # request_for needs an unrelated question beside each edit
    scoring: Scoring = Scoring()
    padding_side: str | None = None  # the tokenizer's padding side while it edits (EasyEdit's BaseEditor sets one)
    family: str = "weight editor"  # one of FAMILIES: edits weights in place, adds a memory, or fine-tunes
    batch_edit: bool = False  # EasyEdit's BaseEditor.batch_edit may hand it batch_size requests per call

    def restores_by_call(self, weights_copy) -> bool:
        """Whether ``weights_copy`` is a callable that undoes the edit (EasyEdit's memories return one)."""
        return self.restore == "callable" or callable(weights_copy)

    def undo(self, model, weights_copy) -> None:
        """Take back an edit made with ``return_orig_weights=True``: call ``weights_copy``, or write its
        original weights back."""
        if self.restores_by_call(weights_copy):
            weights_copy()
            return
        from .editing.layers import restore_weights

        restore_weights(model, weights_copy)


@dataclass(frozen=True)
class Diagnostic:
    name: str
    factory: Callable
    plugin: str = ""
    default: bool = False  # runs in every lifelong run whose options name no diagnostics


@dataclass
class Registry:
    methods: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)


def load_plugins() -> None:
    """Load plugins from the ``edit_plugins`` entry-point group (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    if flag(NO_ENTRY_POINTS_ENV):
        return
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    from importlib.metadata import entry_points

    names = {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in names and pm.get_plugin(ep.name) is None:
            pm.register(ep.load(), name=ep.name)
            names.discard(ep.name)
    if names:
        raise RuntimeError(
            f"{LOAD_PLUGINS_ENV} names plugins that no installed package provides: {sorted(names)}"
        )


def _plugin_name(plugin) -> str:
    name = pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"{name} ({dist.project_name} {dist.version})"
    return name


def registry() -> Registry:
    """Collect every registered method and diagnostic, with the plugin each came from."""
    load_plugins()
    reg = Registry()
    # Call each plugin's hooks separately so every entry knows where it came from.
    for impl in pm.hook.register_methods.get_hookimpls():
        source = _plugin_name(impl.plugin)

        def register_method(name, apply_fn, hparams_class, restore="weights", *, plan_order=None, save_state=None,
                            load_state=None, scoring=None, padding_side=None, family="weight editor",
                            batch_edit=False, _source=source):
            if restore not in ("weights", "callable"):
                raise ValueError(f"method {name!r}: restore must be 'weights' or 'callable', got {restore!r}")
            if name in reg.methods:
                raise ValueError(
                    f"method {name!r} is registered twice: by {reg.methods[name].plugin} and by {_source}"
                )
            if (save_state is None) != (load_state is None):
                raise ValueError(f"method {name!r}: save_state and load_state must be given together")
            if padding_side not in (None, "left", "right"):
                raise ValueError(f"method {name!r}: padding_side must be 'left', 'right' or None, got {padding_side!r}")
            if family not in FAMILIES:
                raise ValueError(f"method {name!r}: family must be one of {FAMILIES}, got {family!r}")
            reg.methods[name] = Method(name, apply_fn, hparams_class, restore, _source, plan_order, save_state,
                                       load_state, scoring=scoring or Scoring(), padding_side=padding_side,
                                       family=family, batch_edit=bool(batch_edit))

        impl.function(register=register_method)
    for method in reg.methods.values():  # the name is written once: the hparams class's ALG_NAME
        alg_name = getattr(method.hparams_class, "ALG_NAME", "") or method.name
        if alg_name != method.name:
            raise ValueError(f"method {method.name!r} from {method.plugin}: its hparams class "
                             f"{method.hparams_class.__name__} is for alg_name {alg_name!r}; register it under that name")
    for impl in pm.hook.register_diagnostics.get_hookimpls():
        source = _plugin_name(impl.plugin)

        def register_diagnostic(name, factory, default=False, _source=source):
            reg.diagnostics[name] = Diagnostic(name, factory, _source, bool(default))

        impl.function(register=register_diagnostic)
    return reg


class UnknownMethodError(UserError, KeyError):
    def __str__(self):
        return self.args[0]


def resolve(alg_name: str) -> Method:
    """The one lookup of an ``alg_name``, for hparams files and lifelong runs alike: a registered method, or
    (where easyeditor imports) one of EasyEdit's own, adapted by ``easyedit_compat``."""
    from . import easyedit_compat

    methods = registry().methods
    if alg_name in methods:
        return methods[alg_name]
    foreign = easyedit_compat.foreign_methods()
    if alg_name in foreign:
        return easyedit_compat.foreign_method(alg_name, Method)
    raise UnknownMethodError(f"unknown method {alg_name!r}; registered methods: {sorted(set(methods) | set(foreign))}"
                             + ("" if foreign else " (easyeditor is not installed)"))


def default_diagnostics() -> list[str]:
    """The diagnostics a lifelong run starts when its options name none: those registered as defaults."""
    return sorted(d.name for d in registry().diagnostics.values() if d.default)


def register_commands(cli) -> None:
    """Let every loaded plugin add its commands to ``cli``."""
    load_plugins()
    core = dict(cli.commands)
    pm.hook.register_commands(cli=cli)
    cli.commands.update(core)  # a plugin adds commands; it cannot replace one of the core's


def start_diagnostic(name: str, key, *, model, hparams, tok=None, probes=(), log_path=None):
    """Create diagnostic ``name`` with the arguments every factory receives (see the hookspec) and
    register it for ``after_edit`` under ``key``. The caller unregisters it when its run ends."""
    available = registry().diagnostics
    if name not in available:
        raise KeyError(f"no diagnostic named {name!r} is registered; known: {sorted(available)}")
    diagnostic = available[name].factory(model=model, tok=tok, hparams=hparams, probes=probes, log_path=log_path)
    pm.register(diagnostic, name=f"diagnostic:{name}:{key}")
    return diagnostic


def get_method(name: str) -> Method:
    methods = registry().methods
    if name not in methods:
        raise KeyError(f"no editing method named {name!r} is registered; known: {sorted(methods)}")
    return methods[name]
