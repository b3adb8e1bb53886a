"""Starting a lifelong run: its method and model, the checks that need the model, the planned order, and
the provenance saved in the run folder (``config.yaml``). A run that fails before its first saved state
leaves no trace."""
from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import yaml

from ..files import atomic_write_text
from ..plugins import Method, resolve
from .data import (EditRecord, UnrelatedQuestions, check_lengths, check_unique_case_ids, file_hash, load_probe_facts,
                   load_records, load_unrelated_questions)
from .loop import Run, execute
from .options import LifelongError, RunOptions
from .run_folder import RunFolder
from .state import seed_everything

CONFIG = "config.yaml"


def prepare(hparams, model, tok, apply_fn=None) -> tuple[Method, object, object]:
    """What a new and a resumed run both need: the method (its ``apply`` replaced by ``apply_fn``, an
    EasyEdit editor's, where given), the method's preparation, and the model."""
    from ..models import load_model

    method = resolve(hparams.alg_name)
    if apply_fn is not None:
        method = dataclasses.replace(method, apply=apply_fn)
    if method.prepare is not None:
        method.prepare(hparams)
    if model is None:
        model, tok = load_model(hparams.model_name, hparams.device, hparams.model_parallel)
    return method, model, tok


def in_planned_order(records: list[EditRecord], method: Method, hparams, model, tok) -> list[EditRecord]:
    """The whole stream is known in advance: let a method that plans its order (LEMoE) reorder it."""
    if method.plan_order is None:
        return records
    order = method.plan_order(model, tok, [r.request for r in records], hparams)
    if sorted(order) != list(range(len(records))):
        raise LifelongError(f"{hparams.alg_name}: plan_order did not return a permutation of the {len(records)} edits")
    return [records[i] for i in order]


def never_edited(options: RunOptions, records: list[EditRecord]) -> tuple[list, UnrelatedQuestions]:
    """What the run scores beside its edits and never edits: probe facts, and unrelated questions (with the
    pool of those never scored)."""
    probes = load_probe_facts(options.probe_data, options.num_probes, options.seed) if options.probe_data else []
    unrelated = load_unrelated_questions(options.unrelated_data, options.num_unrelated, records) \
        if options.unrelated_data else UnrelatedQuestions([], [])
    return probes, unrelated


def needs_unrelated_questions(alg_name: str) -> str:
    """What to tell a user who runs a method that trains on unrelated questions (WISE) without them."""
    return (f"{alg_name} trains on an unrelated question beside each edit, drawn from a pool that is never scored: "
            "give --unrelated-data (a ZsRE file whose loc/loc_ans are Natural Questions, such as zsre_mend_eval.json)")


def check_before_editing(hparams, method: Method, model, tok, records, probes, unrelated: UnrelatedQuestions) -> None:
    """Checks that need the model: the method's own (layers exist, ...), its inputs, and that every text fits."""
    check = getattr(hparams, "check_model", None)
    if check is not None:
        check(model)
    if method.trains_on_unrelated_prompts and not unrelated.pool:
        raise LifelongError(needs_unrelated_questions(hparams.alg_name) + " with more than --num-unrelated questions")
    check_lengths(records, probes, tok, model)


def run_lifelong(hparams, data, out_dir, *, model=None, tok=None, options: RunOptions | None = None,
                 progress_bar: bool = True, apply_fn=None) -> dict:
    """Run a lifelong sequence and return its summary. ``hparams`` is an object or a YAML path.

    Everything is checked before the first edit; a run that fails before its first saved state leaves
    no trace in ``out_dir``. The folder is locked for the run's whole life.
    """
    from .. import hparams as hparams_module

    options = options or RunOptions()
    options.check()
    if isinstance(hparams, (str, Path)):
        hparams = hparams_module.load(hparams)
    records = data if isinstance(data, list) else load_records(data, options.num_edits, options.start,
                                                                 options.shuffle, options.seed)
    check_unique_case_ids(records, "in-memory records" if isinstance(data, list) else str(data))
    probes, unrelated = never_edited(options, records)
    folder = RunFolder.create(out_dir)
    try:
        method, model, tok = prepare(hparams, model, tok, apply_fn)
        check_before_editing(hparams, method, model, tok, records, probes, unrelated)
        records = in_planned_order(records, method, hparams, model, tok)
        atomic_write_text(folder.path / CONFIG, yaml.safe_dump(run_config(hparams, options, data, records),
                                                               sort_keys=False))
        seed_everything(options.seed)
        run = Run(folder.path, hparams, method, model, tok, records, probes, options, unrelated)
        run.compute_references()
    except BaseException:
        folder.discard()
        raise
    try:
        return execute(run, progress_bar, on_early_failure=folder.discard)
    finally:
        folder.release()


def run_settings(hparams, options: RunOptions, data) -> dict:
    """What makes a run what it is: the resolved hparams, the options, the data, probe data and unrelated
    questions by absolute path and hash. A run folder keeps them (``run_config``); ``compare`` checks a folder
    against them."""
    def located(path):
        return {"path": str(Path(path).resolve()), "sha256": file_hash(path)} if path else {"path": None, "sha256": None}

    return {"hparams": _hparams_dict(hparams),
            "options": {**dataclasses.asdict(options),
                        **{name: str(Path(getattr(options, name)).resolve()) if getattr(options, name) else None
                           for name in ("probe_data", "unrelated_data")}},
            "data": located(None if isinstance(data, list) else data),
            "probe_data": located(options.probe_data), "unrelated_data": located(options.unrelated_data)}


def run_config(hparams, options: RunOptions, data, records: list[EditRecord]) -> dict:
    """What resuming needs, inside the folder: the run's settings, its records' order, and the versions that
    made it."""
    settings = run_settings(hparams, options, data)
    settings["data"].update(records=len(records), order=[str(r.case_id) for r in records])
    return {**settings, "versions": _versions()}


def _versions() -> dict:
    out = {}
    for dist in ("edit-plugins", "torch", "transformers", "easyeditor"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _hparams_dict(hp) -> dict:
    from ..models import embedded_alias

    raw = hp.to_dict() if hasattr(hp, "to_dict") else dict(vars(hp))
    if embedded_alias(raw.get("model_name")):  # the alias, not this machine's cache path: the run folder moves
        raw["model_name"] = embedded_alias(raw["model_name"])
    return {k: (v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else repr(v)) for k, v in raw.items()}
