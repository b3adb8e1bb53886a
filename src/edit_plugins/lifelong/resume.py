"""Resuming a lifelong run from its folder: the saved settings, the data checked by hash and order, and the
saved state loaded, or, for a method whose edits no saved state holds, replayed from the unedited model."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from .data import file_hash, load_records
from .loop import Run, execute
from .options import LifelongError, RunOptions
from .run_folder import RunFolder
from .start import CONFIG, in_planned_order, never_edited, prepare
from .state import has_state, load_state, seed_everything


def resume_lifelong(run_dir, *, model=None, tok=None, progress_bar: bool = True, records=None) -> dict:
    """Continue a run from its last saved state (from step 0 if it was killed before one), with the
    settings saved in the run folder. A run started from in-memory records is resumed with the same
    ``records`` (checked against the order the folder recorded)."""
    from .. import hparams as hparams_module

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise LifelongError(f"{run_dir}: not a lifelong run folder (no {CONFIG})")
    folder = RunFolder.open_existing(run_dir)
    try:
        config = yaml.safe_load((run_dir / CONFIG).read_text())
        if not isinstance(config, dict) or not {"hparams", "options", "data"} <= set(config):
            raise LifelongError(f"{run_dir}/{CONFIG}: not a run configuration (expected hparams, options, data)")
        if config["data"].get("path") is None and records is None:
            raise LifelongError(f"{run_dir}: this run was started from in-memory records; resume it from Python "
                                "with the same records (resume_lifelong(..., records=...))")
        if config["data"].get("path") is not None and records is not None:
            raise LifelongError(f"{run_dir}: this run reads its data from {config['data']['path']}; pass no records")
        hparams = hparams_module.from_dict(config["hparams"], f"{run_dir}/{CONFIG}: hparams")
        options = RunOptions(**config["options"])
        data_path = config["data"]["path"]
        for what, located in (("data", config["data"]), ("probe data", config.get("probe_data") or {}),
                              ("unrelated questions", config.get("unrelated_data") or {})):
            if located.get("path") and (not Path(located["path"]).is_file()
                                        or file_hash(located["path"]) != located["sha256"]):
                raise LifelongError(f"{located['path']}: the {what} file is missing or changed since the run started")
        if records is None:
            records = load_records(data_path, options.num_edits, options.start, options.shuffle, options.seed)
        probes, unrelated = never_edited(options, records)
        method, model, tok = prepare(hparams, model, tok)
        records = in_planned_order(records, method, hparams, model, tok)
        if [str(r.case_id) for r in records] != config["data"].get("order"):
            raise LifelongError(f"{run_dir}: the edits would run in a different order than when the run started")
        if not has_state(run_dir):  # killed before its first save: start over, as the run began
            seed_everything(options.seed)
            run = Run(run_dir, hparams, method, model, tok, records, probes, options, unrelated)
            run.compute_references()
            return execute(run, progress_bar)
        run = Run(run_dir, hparams, method, model, tok, records, probes, options, unrelated)
        progress = load_state(run_dir, model, method.load_state, positions=len(records))
        prelude = (lambda: replay(run, progress)) if progress.get("resume_by_replay") else None
        return execute(run, progress_bar, progress=progress, prelude=prelude)
    finally:
        folder.release()


def replay(run: Run, progress: dict) -> None:
    """Re-apply the first ``position`` edits, in the same batches, from the unedited model and the run's
    first random state; every replayed edit must give the metrics its log line holds."""
    seed_everything(run.options.seed)
    run.locality_reference = progress["locality_reference"]
    logged = progress["edits"]
    position, bs = progress["position"], run.batch_size
    for start in range(0, position, bs):
        batch = run.records[start: min(start + bs, position)]
        run.apply(batch, start + 1)
        for i, record in enumerate(batch):
            step = start + i + 1
            metrics = run.edit_metrics(step, record)
            expected = logged[step - 1]["metrics"]
            if not _same_metrics(metrics, expected):
                raise LifelongError(f"{run.dir}: resuming by replay, edit {step} (case_id {record.case_id!r}) "
                                    f"gave {metrics}, but the log has {expected}: {run.hp.alg_name} is not "
                                    "deterministic here, so this run cannot be resumed; start it again")


def _same_metrics(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all((x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6,
                                                                                           abs_tol=1e-9))
               for x, y in ((a[k], b[k]) for k in a))
