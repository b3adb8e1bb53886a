"""PNG plots of a lifelong run."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _line(path, xs, series: dict, xlabel, ylabel, title, logx=False):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, ys in series.items():
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 40 else None, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(ax.get_lines()) > 1:  # series with no points drew nothing
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(run_dir: Path, edits: list, checkpoints: list, timings: list) -> None:
    steps = [c["step"] for c in checkpoints]
    _line(run_dir / "retention.png", steps, {
        "past edits: token accuracy": [c["retention_acc"] for c in checkpoints],
        "past edits: exact match": [c["retention_exact"] for c in checkpoints]},
        "edits so far", "retention", "Retention of past edits", logx=True)
    _line(run_dir / "locality.png", steps, {
        "never-edited facts": [c.get("probe_locality") for c in checkpoints],
        "edits' locality prompts": [c.get("locality_acc") for c in checkpoints]},
        "edits so far", "agreement with unedited model", "Locality", logx=True)
    _line(run_dir / "seconds_per_edit.png", [t["step"] for t in timings], {
        "edit": [t["edit_seconds"] for t in timings]}, "step", "seconds", "Seconds per edit")
