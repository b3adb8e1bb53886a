"""Methods side by side: one lifelong run each, on the same records in the same order with the same
checkpoints and probes, then one table and one retention plot.

Each method runs in a fresh process (its peak RSS is its own and nothing is shared between methods); a run
folder that is complete is kept, one that was stopped is resumed.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ..errors import UserError
from ..files import atomic_write_text
from .run_log import read_checkpoints, read_summary, read_timing


class CompareError(UserError, ValueError):
    pass


def labels_for(hparams_paths) -> list[str]:
    """A run folder name per hparams file: its stem, with its parent folder where stems repeat."""
    paths = [Path(p) for p in hparams_paths]
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}-{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def check_all(hparams_paths) -> None:
    """Every hparams file loads (known method, valid fields) before any method runs."""
    from .. import hparams

    if not hparams_paths:
        raise CompareError("give at least one --hparams file")
    for path in hparams_paths:
        hparams.load(path)
    if len(set(labels_for(hparams_paths))) != len(hparams_paths):
        raise CompareError(f"two --hparams files would share a run folder: {list(hparams_paths)}")


def differences(folder: Path, hparams_path, data, options) -> list[str]:
    """How the run in ``folder`` was made otherwise than this invocation would make it: data (by hash), record
    range and options, hparams. Empty: the folder's run is this one."""
    from .. import hparams as hparams_module
    from ..plugins import resolve
    from .run_folder import check_is_run
    from .start import run_settings

    check_is_run(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    hp = hparams_module.load(hparams_path)
    method = resolve(hp.alg_name)
    if method.prepare is not None:  # what the run recorded: its hparams as the method prepared them
        method.prepare(hp)
    wanted = run_settings(hp, options, data)
    found = []
    for part in ("data", "probe_data", "options", "hparams"):
        have, want = config.get(part) or {}, wanted[part]
        for key in sorted(set(have) | set(want)):
            if part in ("data", "probe_data") and key not in ("path", "sha256"):
                continue  # the records' order and count follow from the rest
            if have.get(key) != want.get(key):
                found.append(f"{part}.{key}: the folder's run has {have.get(key)!r}, this one {want.get(key)!r}")
    return found


def run_all(hparams_paths, data, out_dir, lifelong_args: list[str], quiet: bool = True, options=None,
            fresh: bool = False) -> list[Path]:
    """Run each method into its own folder of ``out_dir``. A folder there is kept (complete) or resumed
    (stopped) only when it was made by these settings (``options``: this invocation's ``RunOptions``);
    otherwise it is refused, naming the difference, unless ``fresh`` starts every method over."""
    check_all(hparams_paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = list(zip(hparams_paths, labels_for(hparams_paths)))
    if options is not None:
        for path, label in labelled:  # all checked before any method runs
            folder = out_dir / label
            if not folder.exists():
                continue
            if fresh:
                from .run_folder import check_is_run

                check_is_run(folder)  # only a run folder is removed
                shutil.rmtree(folder)
                continue
            if (folder / "config.yaml").is_file():
                found = differences(folder, path, data, options)
                if found:
                    raise CompareError(f"{folder}: made for other settings than this comparison ("
                                       + "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
                                       + "); use another --out, or --fresh to run every method again")
    folders = []
    for path, label in labelled:
        folder = out_dir / label
        folders.append(folder)
        if (read_summary(folder) or {}).get("complete"):
            continue
        command = [sys.executable, "-m", "edit_plugins.cli", "lifelong", "--out", str(folder)]
        if (folder / "config.yaml").is_file():
            command += ["--resume"]
        else:
            command += ["--hparams", str(path), "--data", str(data), *lifelong_args]
        if quiet:
            command += ["--quiet"]
        done = subprocess.run(command)
        if done.returncode != 0:
            raise CompareError(f"{label}: the lifelong run failed (exit {done.returncode}); its folder is {folder}")
    return folders


def _fmt(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _retention_at(checkpoints: list[dict], step) -> float | None:
    row = next((c for c in checkpoints if c["step"] == step), None)
    return None if row is None else row.get("retention_exact")


def _reordered(config: dict) -> bool | None:
    """Did the run edit its records in an order of its own (LEMoE's planning) rather than the data's? None
    where the records came from memory."""
    from .data import load_records

    path, options = config["data"].get("path"), config["options"]
    if not path:
        return None
    records = load_records(path, options.get("num_edits"), options.get("start", 0), options.get("shuffle", False),
                           options.get("seed", 0))
    return [str(r.case_id) for r in records] != config["data"]["order"]


def rows(folders) -> list[dict]:
    out = []
    for folder in folders:
        folder = Path(folder)
        summary, checkpoints, timing = read_summary(folder), read_checkpoints(folder), read_timing(folder)
        end = summary["protocols"]["end_of_sequence"]
        overhead = (timing["wall_seconds"] - timing["edit_seconds"] - timing["eval_seconds"]) / timing["wall_seconds"] \
            if timing.get("wall_seconds") else None
        config = yaml.safe_load((folder / "config.yaml").read_text())
        out.append({"label": folder.name, "method": summary["method"], "edits": summary["edits_done"],
                    "order": config["data"]["order"], "planned_order": _reordered(config),
                    "complete": summary["complete"], "end": end, "checkpoints": checkpoints,
                    "retention_10": _retention_at(checkpoints, 10), "retention_100": _retention_at(checkpoints, 100),
                    "retention_last": checkpoints[-1].get("retention_exact") if checkpoints else None,
                    # a batch's seconds are logged once, on its first record: divide the total by the edits
                    "seconds_per_edit": timing["edit_seconds"] / summary["edits_done"] if summary["edits_done"] else None,
                    "peak_rss_mb": timing.get("peak_rss_mb"), "overhead": overhead})
    return out


def table(rows_: list[dict]) -> str:
    """Markdown: end-of-sequence scores (token accuracy / generation exact match), the retention curve at
    10, 100 and the last step, probe locality, cost."""
    head = ("| method | edits | reliability, end of sequence (acc / gen EM) | generality, end of sequence (acc / gen EM) "
            "| locality, end of sequence | retention @10 | retention @100 | retention @last | probe locality "
            "| s/edit | peak RSS MB | runner overhead |")
    lines = [head, "|" + "---|" * 12]
    for r in rows_:
        e = r["end"]
        planned = r.get("planned_order")
        if planned is None:  # records from memory, or a row kept from before the flag: tell by the first row
            planned = r["order"] != rows_[0]["order"]
        own_order = " (in its own planned order)" if planned else ""
        lines.append(
            f"| {r['label']} ({r['method']}){own_order} | {r['edits']}{'' if r['complete'] else ' (stopped)'} "
            f"| {_fmt(e['reliability'])} / {_fmt(e['reliability_gen_em'])} "
            f"| {_fmt(e['generality'])} / {_fmt(e['generality_gen_em'])} | {_fmt(e['locality'])} "
            f"| {_fmt(r['retention_10'])} | {_fmt(r['retention_100'])} | {_fmt(r['retention_last'])} "
            f"| {_fmt(e['probe_locality'])} | {_fmt(r['seconds_per_edit'], 2)} "
            f"| {_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['overhead'], 4)} |")
    return "\n".join(lines) + "\n"


def plot(rows_: list[dict], path: Path) -> None:
    """Retention (exact match of every past edit, re-scored at each checkpoint) vs step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lines = [(r["label"], [(c["step"], c["retention_exact"]) for c in r["checkpoints"]
                           if c.get("retention_exact") is not None]) for r in rows_]
    lines = [(label, points) for label, points in lines if points]
    markers = "osD^v"  # the colour cycle repeats after 10 lines: the marker tells those apart
    for i, (label, points) in enumerate(lines):
        ax.plot(*zip(*points), marker=markers[i // 10 % len(markers)], label=label)
    ax.set_xscale("log")
    ax.set(xlabel="edits so far", ylabel="past edits still exact (teacher-forced)", ylim=(-0.02, 1.02),
           title="Retention curve: every past edit re-scored at each checkpoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no curve
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(folders, out_dir) -> tuple[Path, Path]:
    rows_ = rows(folders)
    out_dir = Path(out_dir)
    table_path, plot_path = out_dir / "comparison.md", out_dir / "retention.png"
    atomic_write_text(table_path, table(rows_))
    plot(rows_, plot_path)
    return table_path, plot_path
