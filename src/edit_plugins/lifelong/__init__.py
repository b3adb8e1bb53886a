"""Lifelong-sequence mode: stream edits, re-check old ones at checkpoints, survive a kill."""
from .runner import lifelong_edit, run_lifelong

__all__ = ["lifelong_edit", "run_lifelong"]
