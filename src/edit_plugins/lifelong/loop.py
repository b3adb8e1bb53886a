"""The loop of a lifelong run: edits accumulating with no rollback, each scored right after it is made,
every past edit again at checkpoints, state saved every ``save_every`` edits, Ctrl-C, and the diagnostics'
lifetime. Every method enters the same way, as a ``plugins.Method`` (EasyEdit's through ``easyedit_compat``).
"""
from __future__ import annotations

import dataclasses
import resource
import signal
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..easyedit_compat import sequential_apply_kwargs
from ..errors import CapacityReached
from ..events import EditEvent, collect_events, emit_after_edit
from ..files import atomic_write_json, atomic_write_jsonl
from ..plugins import Method, pm, start_diagnostic
from .data import EditRecord, UnrelatedQuestions
from .metrics import checkpoint, edit_metrics, true_answers_on_rephrases
from .options import RunOptions, checkpoint_steps
from .plots import write_plots
from .run_log import CHECKPOINTS, EDITS, SUMMARY, TIMING
from .scoring import Scorer
from .state import save_state, set_rng_state
from .summary import run_summary


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What ``before_sequence`` and ``after_sequence`` hooks receive about a lifelong run."""
    out_dir: Path
    hparams: object
    model: object
    tok: object
    records: list
    options: RunOptions


class Run:
    def __init__(self, run_dir: Path, hp, method: Method, model, tok, records: list[EditRecord], probes,
                 options: RunOptions, unrelated: UnrelatedQuestions | None = None):
        self.dir, self.hp, self.method, self.model, self.tok = run_dir, hp, method, model, tok
        self.records, self.probes, self.options = records, probes, options
        self.probe_pairs = [(p.prompt, p.answer) for p in probes]
        self.unrelated = unrelated or UnrelatedQuestions([], [])
        self.scorer = Scorer(model, tok, method.scoring)
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

    def compute_references(self):
        """What the unedited model predicts on every locality prompt, probe and unrelated question (locality is
        agreement with it)."""
        scores = self.scorer.groups({"probes": self.probe_pairs, "unrelated": self.unrelated.scored,
                                     **{i: list(r.locality) for i, r in enumerate(self.records)}})
        self.locality_reference = [[s.predicted for s in scores[i]] for i in range(len(self.records))]
        self.probe_reference = [s.predicted for s in scores["probes"]]
        self.unrelated_reference = [s.predicted for s in scores["unrelated"]]
        self.unedited_true_rephrase = true_answers_on_rephrases(self.scorer, self.records)

    def unrelated_for(self, step: int):
        """The unrelated (question, answer) that goes with edit ``step``, from the pool that is never scored."""
        pool = self.unrelated.pool
        return pool[(step - 1) % len(pool)] if pool else None

    def apply(self, batch: list[EditRecord], first_step: int) -> tuple[list, float]:
        # the record's case_id goes with its request: events are matched back to records by it
        requests = [{**r.request, "case_id": r.case_id} for r in batch]
        if self.method.request_for is not None:
            requests = [self.method.request_for(q, self.unrelated_for(first_step + i)) for i, q in enumerate(requests)]
        padding_side = getattr(self.tok, "padding_side", None)
        started = time.perf_counter()
        try:
            if self.method.padding_side:
                self.tok.padding_side = self.method.padding_side
            with collect_events() as events:
                edited, weights_copy = self.method.apply(self.model, self.tok, requests, self.hp,
                                                         **sequential_apply_kwargs())
        finally:
            if self.method.padding_side:
                self.tok.padding_side = padding_side
        # Methods of ours run the after_edit hooks (diagnostics) inside apply, EasyEdit's get them below, after
        # the clock: s/edit is the method's own time either way.
        seconds = time.perf_counter() - started - sum(result.get("after_edit_seconds", 0.0) for _, result in events)
        self.scorer.editor = edited
        restores_by_call = self.method.restores_by_call(weights_copy)
        if restores_by_call:
            # EasyEdit's memories (WISE, GRACE) keep their edits in objects no saved state holds
            self.resume_by_replay = self.method.from_easyedit or self.method.save_state is None
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

    def edit_metrics(self, step: int, record: EditRecord) -> dict:
        return edit_metrics(self.scorer, record, self.locality_reference[step - 1])

    def evaluate_checkpoint(self, step: int) -> dict:
        return checkpoint(self.scorer, step, self.records[:step], self.locality_reference,
                          self.probe_pairs, self.probe_reference, self.unrelated.scored, self.unrelated_reference)

    def save(self):
        atomic_write_jsonl(self.dir / EDITS, self.edits)
        atomic_write_jsonl(self.dir / CHECKPOINTS, self.checkpoint_rows)
        # (tensors, metadata) of the method's own state; None where it has none (WilKE without the guard)
        own = self.method.save_state(self.model) if self.method.save_state and self.position else None
        save_state(self.dir, self.model, self.changed_params, method_state=own, progress={
            "position": self.position, "edits": self.edits, "checkpoints": self.checkpoint_rows,
            "timings": self.timings, "changed_params": sorted(self.changed_params), "loop_seconds": self.loop_seconds,
            "resume_by_replay": self.resume_by_replay,
            "locality_reference": self.locality_reference, "probe_reference": self.probe_reference,
            "unrelated_reference": self.unrelated_reference, "unedited_true_rephrase": self.unedited_true_rephrase,
            "diagnostics": [d.state_dict() for d in self.diagnostics if hasattr(d, "state_dict")]})
        self.saved = True

    def load_progress(self, progress: dict):
        self.position = progress["position"]
        self.edits, self.checkpoint_rows = progress["edits"], progress["checkpoints"]
        self.timings, self.changed_params = progress["timings"], set(progress["changed_params"])
        self.loop_seconds = progress.get("loop_seconds", 0.0)
        self.resume_by_replay = progress.get("resume_by_replay", False)
        self.locality_reference, self.probe_reference = progress["locality_reference"], progress["probe_reference"]
        self.unrelated_reference = progress.get("unrelated_reference", [])
        self.unedited_true_rephrase = progress.get("unedited_true_rephrase")
        for diagnostic, state in zip([d for d in self.diagnostics if hasattr(d, "load_state_dict")],
                                     progress.get("diagnostics", [])):
            diagnostic.load_state_dict(state)
        set_rng_state(progress["rng"])

    def _diagnostics_postfix(self) -> dict:
        """What the diagnostics show on the progress bar (``progress_postfix()``, where they have it)."""
        postfix = {}
        for d in self.diagnostics:
            if hasattr(d, "progress_postfix"):
                postfix.update(d.progress_postfix())
        return postfix

    def summary(self) -> dict:
        return run_summary(self.hp.alg_name, self.records, self.position, self.edits, self.checkpoint_rows,
                           self.diagnostics, stopped_by=self.stopped_by, family=self.method.family,
                           unedited_true_rephrase=self.unedited_true_rephrase)

    def finish(self) -> dict:
        self.save()
        summary = self.summary()
        atomic_write_json(self.dir / SUMMARY, summary)
        edit_s = sum(t["edit_seconds"] for t in self.timings)
        eval_s = sum(t["eval_seconds"] for t in self.timings)
        atomic_write_json(self.dir / TIMING, {"edit_seconds": edit_s, "eval_seconds": eval_s,
                                              "wall_seconds": self.loop_seconds,
                                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        write_plots(self.dir, self.edits, self.checkpoint_rows, self.timings)
        return summary

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
                events, edit_seconds = self.apply(batch, self.position + 1)
            except CapacityReached as reached:  # nothing was written: measure the model as it is, and end here
                self.stopped_by = str(reached)
                tqdm.write(f"stopped after {self.position} edits: {reached}")
                if self.position and (not self.checkpoint_rows or self.checkpoint_rows[-1]["step"] != self.position):
                    self.checkpoint_rows.append(self.evaluate_checkpoint(self.position))
                break
            started = time.perf_counter()
            for i, record in enumerate(batch):
                step = self.position + i + 1
                hooks = {}
                for event, result in events:
                    if event.request.get("case_id", record.case_id) == record.case_id or len(batch) == 1:
                        hooks.update(result)
                info = next((e.info for e, _ in events if e.request.get("case_id") == record.case_id), {})
                self.edits.append({"step": step, "case_id": record.case_id, "layer": info.get("layer"),
                                   "modules": sorted({m for e, _ in events for m in e.modules}),
                                   "metrics": self.edit_metrics(step, record), "hooks": hooks,
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


def execute(run: Run, progress_bar: bool, progress: dict | None = None, on_early_failure=None, prelude=None) -> dict:
    """Run (or, given saved ``progress``, continue) the loop with diagnostics and Ctrl-C handling.

    ``prelude`` runs first, before the diagnostics start (a resume by replay). ``on_early_failure`` is called
    if the run fails before its first saved state (a new run removes what it wrote).
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
        if prelude is not None:
            prelude()
        for name in run.options.diagnostics:
            run.diagnostics.append(start_diagnostic(name, id(run), model=run.model, tok=run.tok, hparams=run.hp,
                                                    probes=run.probes))
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
        for diagnostic in run.diagnostics:
            pm.unregister(diagnostic)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
