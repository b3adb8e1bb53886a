"""The lifelong runner: any registered (or EasyEdit) method, edits accumulating with no rollback.

The loop, checkpoints, saving and resuming, Ctrl-C, and the diagnostics' lifetime. What a method or
diagnostic contributes comes through the registry (``Method``, ``Diagnostic``) and hook results;
metrics and the summary are ``evaluate``'s, run folders ``run_folder``'s, EasyEdit's editors enter
through ``easyedit_adapter``.

After each edit: that edit's metrics. At checkpoints (1, 2, 4, 8, ... and the last): every past edit
again (retention) and never-edited probe facts (locality). State is saved every ``save_every`` edits,
so a killed run resumes to the same ``summary.json``. A method whose edits live in objects the runner cannot
save (EasyEdit's WISE and GRACE return a restore callable and register no save_state) resumes by replay:
the logged edits are re-applied in order from the unedited model, and each must give its logged metrics.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import random
import resource
import signal
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .. import easyedit_compat
from ..errors import CapacityReached, UserError
from ..events import EditEvent, collect_events, emit_after_edit
from ..files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from ..plugins import pm, registry, resolve, start_diagnostic
from . import evaluate
from .data import EditRecord, check_lengths, file_hash, load_probe_facts, load_records
from .plots import write_plots
from .run_folder import RunFolder
from .state import has_state, load_state, save_state, set_rng_state



class LifelongError(UserError, ValueError):
    pass


@dataclasses.dataclass
class RunOptions:
    num_edits: int | None = None
    start: int = 0
    shuffle: bool = False
    seed: int = 0
    batch_size: int | None = None  # edits per apply call; default: hparams.edits_per_call(), else its batch_size
    checkpoints: list | None = None  # explicit steps; default 1, 2, 4, ... and the last
    save_every: int = 10
    probe_data: str | None = None  # never-edited facts (ROME's known_1000.json format)
    num_probes: int = 100
    diagnostics: list = dataclasses.field(default_factory=lambda: ["interference"])

    def check(self) -> None:
        """Refuse values that would silently run something else than asked."""
        for name, least in (("num_edits", 1), ("start", 0), ("batch_size", 1), ("save_every", 1), ("num_probes", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise LifelongError(f"{name.replace('_', '-')} must be an integer of at least {least}, got {value!r}")
        if self.checkpoints is not None and not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                    for s in self.checkpoints):
            raise LifelongError(f"checkpoints must be steps of at least 1, got {self.checkpoints!r}")
        known = registry().diagnostics
        unknown = [d for d in self.diagnostics if d not in known]
        if unknown:
            raise LifelongError(f"unknown diagnostic(s) {unknown}; known: {sorted(known)}")


def checkpoint_steps(total: int, explicit=None) -> list[int]:
    if explicit:
        return sorted({s for s in explicit if 1 <= s <= total} | {total})
    steps, s = set(), 1
    while s < total:
        steps.add(s)
        s *= 2
    return sorted(steps | {total})


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


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What ``before_sequence`` and ``after_sequence`` hooks receive about a lifelong run."""
    out_dir: Path
    hparams: object
    model: object
    tok: object
    records: list
    options: RunOptions


def seed_everything(seed: int) -> None:
    """The random state a run starts from (torch, Python, NumPy), so that a replay starts from it too."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _same_metrics(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all((x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6,
                                                                                           abs_tol=1e-9))
               for x, y in ((a[k], b[k]) for k in a))


class _Run:
    def __init__(self, run_dir: Path, hp, model, tok, records: list[EditRecord], probes, options: RunOptions,
                 apply_fn):
        self.dir, self.hp, self.model, self.tok = run_dir, hp, model, tok
        self.records, self.probes, self.options = records, probes, options
        self.probe_pairs = [(p.prompt, p.answer) for p in probes]
        self.apply_fn = apply_fn
        self.method = registry().methods.get(hp.alg_name)  # None for EasyEdit's own methods
        # (save, load) of state the weights do not hold: a registered method's, or an EasyEdit method's globals
        own = ((self.method.save_state, self.method.load_state) if self.method and self.method.save_state
               else easyedit_compat.module_state_functions(hp.alg_name))
        self.save_method_state, self.load_method_state = own or (None, None)
        per_call = hp.edits_per_call() if hasattr(hp, "edits_per_call") else getattr(hp, "batch_size", None)
        self.batch_size = max(1, options.batch_size or per_call or 1)  # EasyEdit's own hparams: their batch_size
        self.checkpoints = checkpoint_steps(len(records), options.checkpoints)
        self.edits, self.checkpoint_rows, self.timings = [], [], []
        self.changed_params: set = set()
        self.position = 0
        self.stop_requested = False
        self.stopped_by = None  # why the method could take no more edits (CapacityReached), if it said so
        self.saved = False  # whether a state has been saved (before that, a failed new run leaves no folder)
        self.resume_by_replay = False  # the method's edits cannot be saved: a resume re-applies them
        self.diagnostics = []
        self.loop_seconds = 0.0  # all of the loop, state saving included (for the overhead figure)

    def context(self) -> RunContext:
        return RunContext(self.dir, self.hp, self.model, self.tok, self.records, self.options)

    # -- references from the unedited model ------------------------------------------------------
    def compute_references(self):
        pairs = [pair for r in self.records for pair in r.locality]
        preds = [s.predicted for s in evaluate.score_answers(self.model, self.tok, pairs)] if pairs else []
        self.locality_reference, i = [], 0
        for r in self.records:
            self.locality_reference.append(preds[i : i + len(r.locality)])
            i += len(r.locality)
        self.probe_reference = [s.predicted for s in evaluate.score_answers(self.model, self.tok, self.probe_pairs)] \
            if self.probes else []

    # -- one edit ---------------------------------------------------------------------------------
    def apply(self, batch: list[EditRecord]) -> tuple[list, float]:
        # the record's case_id goes with its request: events are matched back to records by it
        requests = [easyedit_compat.method_request(self.hp.alg_name, {**r.request, "case_id": r.case_id}, r.locality)
                    for r in batch]
        started = time.perf_counter()
        with collect_events() as events:
            _, weights_copy = self.apply_fn(self.model, self.tok, requests, self.hp,
                                            **easyedit_compat.sequential_apply_kwargs())
        seconds = time.perf_counter() - started
        restores_by_call = self.method.restore == "callable" if self.method else callable(weights_copy)
        if restores_by_call:
            self.resume_by_replay = self.method is None or self.method.save_state is None
        else:
            self.changed_params.update(weights_copy or {})
        if not events and not restores_by_call:  # a method that does not fire the hook itself (EasyEdit's)
            deltas = {n: (self.model.get_parameter(n).detach() - w.to(self.model.get_parameter(n).device))
                      for n, w in (weights_copy or {}).items()}
            for request in requests:
                with collect_events() as fired:
                    emit_after_edit(EditEvent(method=self.hp.alg_name, request=request, model=self.model,
                                              hparams=self.hp, modules=[n.rsplit(".", 1)[0] for n in deltas],
                                              weight_deltas=deltas))
                events.extend(fired)
        return events, seconds

    def evaluate_checkpoint(self, step: int) -> dict:
        return evaluate.checkpoint(self.model, self.tok, step, self.records[:step], self.locality_reference,
                                   self.probe_pairs, self.probe_reference)

    # -- saving -----------------------------------------------------------------------------------
    def save(self):
        atomic_write_jsonl(self.dir / "edits.jsonl", self.edits)
        atomic_write_jsonl(self.dir / "checkpoints.jsonl", self.checkpoint_rows)
        # (tensors, metadata) of the method's own state; None where it has none (WilKE without the guard)
        own = self.save_method_state(self.model) if self.save_method_state and self.position else None
        save_state(self.dir, self.model, self.changed_params, method_state=own, progress={
            "position": self.position, "edits": self.edits, "checkpoints": self.checkpoint_rows,
            "timings": self.timings, "changed_params": sorted(self.changed_params), "loop_seconds": self.loop_seconds,
            "resume_by_replay": self.resume_by_replay,
            "locality_reference": self.locality_reference, "probe_reference": self.probe_reference,
            "diagnostics": [d.state_dict() for d in self.diagnostics if hasattr(d, "state_dict")]})
        self.saved = True

    def load_progress(self, progress: dict):
        self.position = progress["position"]
        self.edits, self.checkpoint_rows = progress["edits"], progress["checkpoints"]
        self.timings, self.changed_params = progress["timings"], set(progress["changed_params"])
        self.loop_seconds = progress.get("loop_seconds", 0.0)
        self.resume_by_replay = progress.get("resume_by_replay", False)
        self.locality_reference, self.probe_reference = progress["locality_reference"], progress["probe_reference"]
        for diagnostic, state in zip([d for d in self.diagnostics if hasattr(d, "load_state_dict")],
                                     progress.get("diagnostics", [])):
            diagnostic.load_state_dict(state)
        set_rng_state(progress["rng"])

    def replay(self, progress: dict) -> None:
        """Re-apply the first ``position`` edits, in the same batches, from the unedited model and the run's
        first random state; every replayed edit must give the metrics its log line holds."""
        seed_everything(self.options.seed)
        logged = progress["edits"]
        position, bs = progress["position"], self.batch_size
        for start in range(0, position, bs):
            batch = self.records[start: min(start + bs, position)]
            self.apply(batch)
            for i, record in enumerate(batch):
                step = start + i + 1
                metrics = evaluate.edit_metrics(self.model, self.tok, record, progress["locality_reference"][step - 1])
                expected = logged[step - 1]["metrics"]
                if not _same_metrics(metrics, expected):
                    raise LifelongError(f"{self.dir}: resuming by replay, edit {step} (case_id {record.case_id!r}) "
                                        f"gave {metrics}, but the log has {expected}: {self.hp.alg_name} is not "
                                        "deterministic here, so this run cannot be resumed; start it again")

    def _diagnostics_postfix(self) -> dict:
        """What the diagnostics show on the progress bar (``progress_postfix()``, where they have it)."""
        postfix = {}
        for d in self.diagnostics:
            if hasattr(d, "progress_postfix"):
                postfix.update(d.progress_postfix())
        return postfix

    def summary(self) -> dict:
        return evaluate.run_summary(self.hp.alg_name, self.records, self.position, self.edits, self.checkpoint_rows,
                                    self.diagnostics, stopped_by=self.stopped_by)

    def finish(self) -> dict:
        self.save()
        summary = self.summary()
        atomic_write_json(self.dir / "summary.json", summary)
        edit_s = sum(t["edit_seconds"] for t in self.timings)
        eval_s = sum(t["eval_seconds"] for t in self.timings)
        atomic_write_json(self.dir / "timing.json", {"edit_seconds": edit_s, "eval_seconds": eval_s,
                                                     "wall_seconds": self.loop_seconds,
                                                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        write_plots(self.dir, self.edits, self.checkpoint_rows, self.timings)
        return summary

    # -- the loop ---------------------------------------------------------------------------------
    def loop(self, progress_bar: bool = True):
        started_loop = time.perf_counter()
        try:
            self._loop(progress_bar)
        finally:
            self.loop_seconds += time.perf_counter() - started_loop

    def _loop(self, progress_bar: bool):
        bs = self.batch_size
        bar = tqdm(total=len(self.records), initial=self.position, desc=f"lifelong {self.hp.alg_name}",
                   unit="edit", disable=not progress_bar)
        next_save = self.position + self.options.save_every
        while self.position < len(self.records) and not self.stop_requested:
            wall = time.perf_counter()
            batch = self.records[self.position : self.position + bs]
            try:
                events, edit_seconds = self.apply(batch)
            except CapacityReached as reached:  # nothing was written: measure the model as it is, and end here
                self.stopped_by = str(reached)
                tqdm.write(f"stopped after {self.position} edits: {reached}")
                if self.position and (not self.checkpoint_rows or self.checkpoint_rows[-1]["step"] != self.position):
                    self.checkpoint_rows.append(self.evaluate_checkpoint(self.position))
                break
            started = time.perf_counter()
            for i, record in enumerate(batch):
                step = self.position + i + 1
                metrics = evaluate.edit_metrics(self.model, self.tok, record, self.locality_reference[step - 1])
                hooks = {}
                for event, result in events:
                    if event.request.get("case_id", record.case_id) == record.case_id or len(batch) == 1:
                        hooks.update(result)
                info = next((e.info for e, _ in events if e.request.get("case_id") == record.case_id), {})
                self.edits.append({"step": step, "case_id": record.case_id, "layer": info.get("layer"),
                                   "modules": sorted({m for e, _ in events for m in e.modules}),
                                   "metrics": metrics, "hooks": hooks,
                                   "info": {k: v for k, v in info.items() if k != "layer"}})
            self.position += len(batch)
            for step in [s for s in self.checkpoints if self.position - len(batch) < s <= self.position]:
                self.checkpoint_rows.append(self.evaluate_checkpoint(step))
            eval_seconds = time.perf_counter() - started
            self.timings.append({"step": self.position, "edit_seconds": edit_seconds, "eval_seconds": eval_seconds,
                                 "wall_seconds": time.perf_counter() - wall})
            self.edits[-1]["seconds"] = round(edit_seconds, 4)
            bar.update(len(batch))
            postfix = {"retention": f"{self.checkpoint_rows[-1]['retention_exact']:.3f}"} if self.checkpoint_rows else {}
            bar.set_postfix({**postfix, **self._diagnostics_postfix()})
            if self.position >= next_save:
                self.save()
                next_save = self.position + self.options.save_every
        bar.close()


def _start_diagnostics(run: _Run):
    for name in run.options.diagnostics:
        run.diagnostics.append(start_diagnostic(name, id(run), model=run.model, tok=run.tok, hparams=run.hp,
                                                probes=run.probes))


def _stop_diagnostics(run: _Run):
    for diagnostic in run.diagnostics:
        pm.unregister(diagnostic)


def _execute(run: _Run, progress_bar: bool, progress: dict | None = None, on_early_failure=None) -> dict:
    """Run (or, given saved ``progress``, continue) the loop with diagnostics and Ctrl-C handling.

    ``on_early_failure`` is called if the run fails before its first saved state (a new run removes
    what it wrote).
    """
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum, frame):  # Ctrl-C: finish the current edit, save, then stop
        run.stop_requested = True
        tqdm.write("stopping after the current edit; results will be saved")

    try:
        signal.signal(signal.SIGINT, request_stop)
    except ValueError:  # not the main thread
        previous = None
    try:
        if progress is not None and progress.get("resume_by_replay"):
            run.replay(progress)  # before the diagnostics start: they resume from the state they saved
        _start_diagnostics(run)
        if progress is None:
            pm.hook.before_sequence(run=run.context())
        else:
            run.load_progress(progress)
        run.loop(progress_bar)
        summary = run.finish()
        pm.hook.after_sequence(run=run.context(), summary=summary)
        return summary
    except BaseException:
        if on_early_failure is not None and not run.saved:
            on_early_failure()
        raise
    finally:
        _stop_diagnostics(run)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _prepare(hparams, model, tok, apply_fn=None):
    """What a new and a resumed run both need: the method, its quirks, the model."""
    from ..models import load_model

    apply_fn = apply_fn or resolve(hparams.alg_name).apply
    easyedit_compat.prepare_for_sequential_use(hparams.alg_name, hparams)
    easyedit_compat.clear_module_state(hparams.alg_name)  # a resumed run loads it back with its state
    if model is None:
        model, tok = load_model(hparams.model_name, hparams.device, hparams.model_parallel)
    return apply_fn, model, tok


def _in_planned_order(records: list[EditRecord], hparams, model, tok) -> list[EditRecord]:
    """The whole stream is known in advance: let a method that plans its order (LEMoE) reorder it."""
    method = registry().methods.get(hparams.alg_name)
    if method is None or method.plan_order is None:
        return records
    order = method.plan_order(model, tok, [r.request for r in records], hparams)
    if sorted(order) != list(range(len(records))):
        raise LifelongError(f"{hparams.alg_name}: plan_order did not return a permutation of the {len(records)} edits")
    return [records[i] for i in order]


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
    probes = load_probe_facts(options.probe_data, options.num_probes, options.seed) if options.probe_data else []
    folder = RunFolder.create(out_dir)
    try:
        apply_fn, model, tok = _prepare(hparams, model, tok, apply_fn)
        _check_before_editing(hparams, model, tok, records, probes)
        records = _in_planned_order(records, hparams, model, tok)
        atomic_write_text(folder.path / "config.yaml", yaml.safe_dump(
            _run_config(hparams, options, data, records), sort_keys=False))
        seed_everything(options.seed)
        run = _Run(folder.path, hparams, model, tok, records, probes, options, apply_fn)
        run.compute_references()
    except BaseException:
        folder.discard()
        raise
    try:
        return _execute(run, progress_bar, on_early_failure=folder.discard)
    finally:
        folder.release()


def _run_config(hparams, options: RunOptions, data, records: list[EditRecord]) -> dict:
    """What resuming needs, inside the folder: the resolved hparams, the data by absolute path and hash."""
    def located(path):
        return {"path": str(Path(path).resolve()), "sha256": file_hash(path)} if path else {"path": None, "sha256": None}

    in_memory = isinstance(data, list)
    return {"hparams": _hparams_dict(hparams),
            "options": {**dataclasses.asdict(options),
                        "probe_data": str(Path(options.probe_data).resolve()) if options.probe_data else None},
            "data": {**(located(None) if in_memory else located(data)), "records": len(records),
                     "order": [str(r.case_id) for r in records]},
            "probe_data": located(options.probe_data),
            "versions": _versions()}


def _check_before_editing(hparams, model, tok, records, probes) -> None:
    """Checks that need the model: the method's own (layers exist, ...) and that every text fits."""
    check = getattr(hparams, "check_model", None)
    if check is not None:
        check(model)
    check_lengths(records, probes, tok, model)


def resume_lifelong(run_dir, *, model=None, tok=None, progress_bar: bool = True, records=None) -> dict:
    """Continue a run from its last saved state (from step 0 if it was killed before one), with the
    settings saved in the run folder. A run started from in-memory records is resumed with the same
    ``records`` (checked against the order the folder recorded)."""
    from .. import hparams as hparams_module

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise LifelongError(f"{run_dir}: not a lifelong run folder (no config.yaml)")
    folder = RunFolder.open_existing(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        if not isinstance(config, dict) or not {"hparams", "options", "data"} <= set(config):
            raise LifelongError(f"{run_dir}/config.yaml: not a run configuration (expected hparams, options, data)")
        if config["data"].get("path") is None and records is None:
            raise LifelongError(f"{run_dir}: this run was started from in-memory records; resume it from Python "
                                "with the same records (resume_lifelong(..., records=...))")
        if config["data"].get("path") is not None and records is not None:
            raise LifelongError(f"{run_dir}: this run reads its data from {config['data']['path']}; pass no records")
        hparams = hparams_module.from_dict(config["hparams"], f"{run_dir}/config.yaml: hparams")
        options = RunOptions(**config["options"])
        data_path = config["data"]["path"]
        for what, located in (("data", config["data"]), ("probe data", config.get("probe_data") or {})):
            if located.get("path") and (not Path(located["path"]).is_file()
                                        or file_hash(located["path"]) != located["sha256"]):
                raise LifelongError(f"{located['path']}: the {what} file is missing or changed since the run started")
        if records is None:
            records = load_records(data_path, options.num_edits, options.start, options.shuffle, options.seed)
        probes = load_probe_facts(options.probe_data, options.num_probes, options.seed) if options.probe_data else []
        apply_fn, model, tok = _prepare(hparams, model, tok)
        records = _in_planned_order(records, hparams, model, tok)
        if [str(r.case_id) for r in records] != config["data"].get("order"):
            raise LifelongError(f"{run_dir}: the edits would run in a different order than when the run started")
        if not has_state(run_dir):  # killed before its first save: start over, as the run began
            seed_everything(options.seed)
            run = _Run(run_dir, hparams, model, tok, records, probes, options, apply_fn)
            run.compute_references()
            return _execute(run, progress_bar)
        run = _Run(run_dir, hparams, model, tok, records, probes, options, apply_fn)
        return _execute(run, progress_bar, progress=load_state(run_dir, model, run.load_method_state))
    finally:
        folder.release()
