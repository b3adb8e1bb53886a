"""The hooks a plugin can implement. Built-in methods and diagnostics use exactly these."""
import pluggy

hookspec = pluggy.HookspecMarker("edit_plugins")
hookimpl = pluggy.HookimplMarker("edit_plugins")


@hookspec
def register_methods(register):
    """Register editing methods.

    Call ``register(name, apply_fn, hparams_class, restore="weights")`` once per method.
    ``apply_fn`` follows EasyEdit's contract
    ``apply_fn(model, tok, requests, hparams, copy=False, return_orig_weights=False,
    keep_original_weight=False, **kwargs) -> (model, weights_copy)``.
    ``name`` must be the ``ALG_NAME`` of ``hparams_class``.
    ``restore="callable"`` says that ``weights_copy`` is a callable that undoes the edit.
    Methods that keep state outside the parameters (an adaptor, guarded keys) also pass
    ``save_state(model) -> (tensors, metadata) or None`` and ``load_state(model, tensors, metadata)``
    so lifelong runs can resume, and may pass ``plan_order(model, tok, requests, hparams) -> order``
    to reorder a pool of edits known in advance (the identity where its hparams ask for no planning).
    A method whose edited model must be scored otherwise than by batched forwards of the bare model passes
    ``scoring=plugins.Scoring(...)`` (one row per forward, through the returned object, a hook before each
    forward), and ``padding_side="left"`` where its apply function expects a left-padding tokenizer.
    ``family`` ("weight editor", "memory" or "fine-tuning") groups it in comparisons. ``batch_edit=True`` lets
    EasyEdit's ``BaseEditor.batch_edit`` hand it ``hparams.batch_size`` requests per call.
    """


@hookspec
def register_diagnostics(register):
    """Register diagnostics: ``register(name, factory, default=False)``; ``default=True`` runs it in every
    lifelong run whose options name no diagnostics.

    ``factory(model=, tok=, hparams=, probes=, log_path=)`` returns an object that is registered as a
    plugin for the length of a run, so its ``after_edit`` etc. hook implementations are called
    (``tok``, ``probes`` (never-edited facts) and ``log_path`` (a JSONL file) may be None or empty).
    In lifelong runs it may also have ``progress_postfix() -> dict`` (shown on the progress bar),
    ``summarize(lost_case_ids) -> dict`` (in the summary) and ``state_dict()`` / ``load_state_dict()``
    (saved with the run: tensors, numbers, strings, lists and dicts).
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``edit-plugins`` command line: ``cli`` is its click group (``@cli.command()``)."""


@hookspec
def before_sequence(run):
    """Called once before a lifelong run's first edit, with its ``RunContext`` (out_dir, hparams,
    model, tok, records, options)."""


@hookspec
def after_edit(event):
    """Called after every edit with an :class:`edit_plugins.events.EditEvent`.

    Return a JSON-serialisable dict (or None); it is stored in that edit's log line.
    """


@hookspec
def after_sequence(run, summary):
    """Called once after a lifelong run ends, with its ``RunContext`` and its summary dict."""
