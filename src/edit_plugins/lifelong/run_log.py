"""Reading a run folder's logs: one edit or checkpoint per JSON line, the summary and timing as JSON."""
from __future__ import annotations

import json
from pathlib import Path

EDITS = "edits.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
SUMMARY = "summary.json"
TIMING = "timing.json"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_edits(folder) -> list[dict]:
    return read_jsonl(Path(folder) / EDITS)


def read_checkpoints(folder) -> list[dict]:
    return read_jsonl(Path(folder) / CHECKPOINTS)


def read_summary(folder) -> dict | None:
    """The summary, or None while the run has not finished once."""
    path = Path(folder) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def read_timing(folder) -> dict:
    return json.loads((Path(folder) / TIMING).read_text())
