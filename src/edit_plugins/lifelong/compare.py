"""Methods side by side: one lifelong run each, on the same records in the same order with the same
checkpoints and probes, then one table and one retention plot.

Each method runs in a fresh process (its peak RSS is its own and nothing is shared between methods); a run
folder that is complete is kept, one that was stopped is resumed.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ..errors import UserError
from ..files import atomic_write_text
from .run_log import read_checkpoints, read_edits, read_summary, read_timing
from .state import STATE


class CompareError(UserError, ValueError):
    pass


def labels_for(hparams_paths) -> list[str]:
    """A run folder name per hparams file: its stem, with its parent folder where stems repeat."""
    paths = [Path(p) for p in hparams_paths]
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}-{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def check_all(hparams_paths, options=None) -> None:
    """Before any method runs: every hparams file loads (known method, valid fields), all edit one model, each
    method has what it needs here and offline (unrelated questions for WISE's training prompts, EasyEdit's
    layer statistics for the covariance methods, which would otherwise download a corpus)."""
    from .. import easyedit_compat, hparams
    from ..models import embedded_alias
    from ..plugins import resolve
    from .start import needs_unrelated_questions

    if not hparams_paths:
        raise CompareError("give at least one --hparams file")
    loaded = [(path, hparams.load(path)) for path in hparams_paths]
    if len(set(labels_for(hparams_paths))) != len(hparams_paths):
        raise CompareError(f"two --hparams files would share a run folder: {list(hparams_paths)}")
    models = {}
    for path, hp in loaded:
        models.setdefault(embedded_alias(str(hp.model_name)) or str(hp.model_name), []).append(str(path))
    if len(models) > 1:
        raise CompareError("the --hparams files edit different models, so their rows would not be side by side: "
                           + "; ".join(f"{name} in {', '.join(paths)}" for name, paths in models.items()))
    for path, hp in loaded:
        method = resolve(hp.alg_name)
        if method.trains_on_unrelated_prompts and not (options and options.unrelated_data):
            raise CompareError(f"{path}: {needs_unrelated_questions(hp.alg_name)}")
        if hp.alg_name in easyedit_compat.LAYER_STATS_METHODS and getattr(hp, "mom2_adjustment", True):
            from ..easyedit_stats import plan

            missing = [f for f in plan(path).files if not f.is_file()]
            if missing:
                raise CompareError(f"{path}: EasyEdit's {hp.alg_name} would download a corpus for its layer "
                                   f"statistics ({missing[0]} is missing); run `edit-plugins stats --hparams {path}` "
                                   "first")


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
    for part in ("data", "probe_data", "unrelated_data", "options", "hparams"):
        have, want = config.get(part) or {}, wanted[part]
        for key in sorted(set(have) | set(want)):
            if part in ("data", "probe_data", "unrelated_data") and key not in ("path", "sha256"):
                continue  # the records' order and count follow from the rest
            if have.get(key) != want.get(key):
                found.append(f"{part}.{key}: the folder's run has {have.get(key)!r}, this one {want.get(key)!r}")
    return found


ORDER_SUFFIX = re.compile(r"-order(\d+)$")


def order_runs(labelled, lifelong_args: list[str], options, orders: int) -> list[tuple]:
    """(hparams path, folder label, lifelong arguments, options) per order and method: order 0 is the data's
    order, order k >= 1 the records shuffled with seed k (the run seeded with k too), in ``<label>-order<k>``."""
    runs = [(path, label, lifelong_args, options) for path, label in labelled]
    args = [a for i, a in enumerate(lifelong_args) if a != "--seed" and (i == 0 or lifelong_args[i - 1] != "--seed")]
    for k in range(1, orders):
        runs += [(path, f"{label}-order{k}", [*args, "--shuffle", "--seed", str(k)],
                  None if options is None else dataclasses.replace(options, shuffle=True, seed=k))
                 for path, label in labelled]
    return runs


def run_all(hparams_paths, data, out_dir, lifelong_args: list[str], quiet: bool = True, options=None,
            fresh: bool = False, orders: int = 1) -> list[Path]:
    """Run each method into its own folder of ``out_dir`` (``orders`` > 1: also on that many shuffled orders).
    A folder there is kept (complete) or resumed (stopped) only when it was made by these settings (``options``:
    this invocation's ``RunOptions``); otherwise it is refused, naming the difference, unless ``fresh`` starts
    every method over."""
    check_all(hparams_paths, options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = order_runs(list(zip(hparams_paths, labels_for(hparams_paths))), lifelong_args, options, orders)
    if options is not None:
        for path, label, _, run_options in runs:  # all checked before any method runs
            folder = out_dir / label
            if not folder.exists():
                continue
            if fresh:
                from .run_folder import check_is_run

                check_is_run(folder)  # only a run folder is removed
                shutil.rmtree(folder)
                continue
            if (folder / "config.yaml").is_file():
                found = differences(folder, path, data, run_options)
                if found:
                    raise CompareError(f"{folder}: made for other settings than this comparison ("
                                       + "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
                                       + "); use another --out, or --fresh to run every method again")
    folders = []
    for path, label, args, _ in runs:
        folder = out_dir / label
        folders.append(folder)
        if (read_summary(folder) or {}).get("complete"):
            continue
        command = [sys.executable, "-m", "edit_plugins.cli", "lifelong", "--out", str(folder)]
        if (folder / "config.yaml").is_file():
            command += ["--resume"]
        else:
            command += ["--hparams", str(path), "--data", str(data), *args]
        if quiet:
            command += ["--quiet"]
        done = subprocess.run(command)
        if done.returncode != 0:
            raise CompareError(f"{label}: the lifelong run failed (exit {done.returncode}); its folder is {folder}")
    return folders


def _fmt(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


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


def headline_score(end: dict) -> float | None:
    """One score to rank by: the mean of end-of-sequence reliability and generality (generation exact match)
    and locality on the records' own prompts; None where any is missing."""
    parts = [end.get("reliability_gen_em"), end.get("generality_gen_em"), end.get("locality")]
    return None if any(v is None for v in parts) else sum(parts) / len(parts)


def rows(folders) -> list[dict]:
    out = []
    for folder in folders:
        folder = Path(folder)
        summary, checkpoints, timing = read_summary(folder), read_checkpoints(folder), read_timing(folder)
        end = summary["protocols"]["end_of_sequence"]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        out.append({"label": folder.name, "method": summary["method"], "family": summary.get("family"),
                    "edits": summary["edits_done"], "order": config["data"]["order"],
                    "planned_order": _reordered(config), "complete": summary["complete"], "end": end,
                    "immediate": summary["protocols"]["immediate"], "checkpoints": checkpoints,
                    # a call's seconds are logged once, on its last record: divide the total by the edits
                    "seconds_per_edit": timing["edit_seconds"] / summary["edits_done"] if summary["edits_done"] else None,
                    **seconds_per_edit_at_ends(read_edits(folder)),
                    "peak_rss_mb": timing.get("peak_rss_mb"), "state_mb": _megabytes(folder / STATE),
                    "unedited_true_rephrase": (summary.get("unedited_model") or {}).get("true_answer_on_rephrases")})
    return out


def seconds_per_edit_at_ends(edits: list[dict]) -> dict:
    """s/edit over the first and the last tenth of the edits, to show how the cost grows with T. In whole
    calls (a call's seconds are logged on its last record): at least a tenth of the edits each."""
    calls, size = [], 0  # (edits in the call, its seconds)
    for e in edits:
        size += 1
        if "seconds" in e:
            calls.append((size, e["seconds"]))
            size = 0
    tenth = len(edits) // 10
    if not tenth or not calls:
        return {"seconds_per_edit_first_tenth": None, "seconds_per_edit_last_tenth": None}

    def rate(in_order):
        count = seconds = 0
        for n, s in in_order:
            count, seconds = count + n, seconds + s
            if count >= tenth:
                break
        return seconds / count
    return {"seconds_per_edit_first_tenth": rate(calls), "seconds_per_edit_last_tenth": rate(reversed(calls))}


def _megabytes(folder: Path) -> float | None:
    """What a folder holds on disk, in MB (None where it does not exist)."""
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _with_spread(value, others) -> str:
    """A value, and the min-max over every order where there are several."""
    values = [v for v in [value, *others] if v is not None]
    if not others or len(values) < 2:
        return _fmt(value)
    return f"{_fmt(value)} ({_fmt(min(values))}–{_fmt(max(values))})"


def table(rows_: list[dict]) -> str:
    """Markdown, best first by ``headline_score``: generation exact match first, teacher-forced token accuracy
    beside it; locality three ways; cost. Runs of one method on other orders (``<label>-order<k>``) give the
    min-max beside its row's values."""
    head = ("| method | family | edits | score | reliability, right after each edit (gen EM) "
            "| reliability, end (gen EM / acc) | generality, end (gen EM / acc) "
            "| locality, end: records' own prompts / unrelated questions / known facts "
            "| s/edit: all / first tenth / last tenth of the edits | peak RSS MB | state MB |")
    lines = [head, "|" + "---|" * 11]
    groups: dict = {}
    for r in rows_:
        groups.setdefault(ORDER_SUFFIX.sub("", r["label"]), []).append(r)
    shown = []
    for label, runs in groups.items():
        first = next((r for r in runs if r["label"] == label), runs[0])
        shown.append((headline_score(first["end"]), first, [r for r in runs if r is not first]))
    for score, r, others in sorted(shown, key=lambda t: -1 if t[0] is None else t[0], reverse=True):
        e, immediate = r["end"], r.get("immediate") or {}
        spread = lambda key: _with_spread(e.get(key), [o["end"].get(key) for o in others])  # noqa: E731
        planned = r.get("planned_order")
        if planned is None:  # records from memory: tell by the first row's order
            planned = r["order"] != rows_[0]["order"]
        own_order = " (its own planned order)" if planned else ""
        orders = f", {len(others) + 1} orders" if others else ""
        lines.append(
            f"| {r['label']} ({r['method']}){own_order} | {r.get('family') or '—'} "
            f"| {r['edits']}{'' if r['complete'] else ' (stopped)'}{orders} "
            f"| {_with_spread(score, [headline_score(o['end']) for o in others])} "
            f"| {_fmt(immediate.get('reliability_gen_em'))} "
            f"| {spread('reliability_gen_em')} / {_fmt(e.get('reliability'))} "
            f"| {spread('generality_gen_em')} / {_fmt(e.get('generality'))} "
            f"| {spread('locality')} / {spread('unrelated_locality')} / {spread('probe_locality')} "
            f"| {_fmt(r['seconds_per_edit'], 2)} / {_fmt(r.get('seconds_per_edit_first_tenth'), 2)} "
            f"/ {_fmt(r.get('seconds_per_edit_last_tenth'), 2)} | {_fmt(r['peak_rss_mb'], 0)} "
            f"| {_fmt(r.get('state_mb'), 1)} |")
    return "\n".join(lines) + "\n"


LINE_STYLES = {"weight editor": "-", "memory": "--", "fine-tuning": ":"}


def plot(rows_: list[dict], path: Path) -> None:
    """Retention (generation exact match of every past edit, re-scored at each checkpoint) against the number of
    edits so far, one line per method (on the data's order), one line style per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lines = [(r, [(c["step"], c["retention_gen_em"]) for c in r["checkpoints"]
                  if c.get("retention_gen_em") is not None]) for r in rows_ if not ORDER_SUFFIX.search(r["label"])]
    markers = "osD^v"  # the colour cycle repeats after 10 lines: the marker tells those apart
    for i, (r, points) in enumerate((r, p) for r, p in lines if p):
        ax.plot(*zip(*points), linestyle=LINE_STYLES.get(r.get("family"), "-."),
                marker=markers[i // 10 % len(markers)], markersize=4,
                label=f"{r['label']} ({r['method']}, {r.get('family') or 'family not recorded'})")
    ax.set_xscale("log")
    ax.set(xlabel="edits so far", ylabel="past edits still produced (gen EM)", ylim=(0, 1.0),
           title="Retention: every past edit re-scored at each checkpoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no curve
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def unedited_generality(rows_: list[dict]) -> str:
    """What generality would be if the edits generalised as the model's own facts do: the unedited model on the
    rephrases with the true answers (the rows' first run that measured it; all rows edit the same records)."""
    found = next((r for r in rows_ if r.get("unedited_true_rephrase")), None)
    if found is None:
        return ""
    u = found["unedited_true_rephrase"]
    return (f"\nThe unedited model answers these records' rephrases with their true answers at {_fmt(u['gen_em'])} "
            f"gen EM / {_fmt(u['acc'])} acc ({u['prompts']} prompts): what "
            "generality would be if every edit generalised as the model's own facts do.\n")


def write_report(folders, out_dir) -> tuple[Path, Path]:
    rows_ = rows(folders)
    out_dir = Path(out_dir)
    table_path, plot_path = out_dir / "comparison.md", out_dir / "retention.png"
    atomic_write_text(table_path, table(rows_) + unedited_generality(rows_))
    plot(rows_, plot_path)
    return table_path, plot_path
