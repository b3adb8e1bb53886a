"""Lifelong-sequence mode: stream edits, re-check old ones at checkpoints, survive a kill."""
from .easyedit_adapter import lifelong_edit, records_from_requests
from .runner import RunOptions, resume_lifelong, run_lifelong

__all__ = ["RunOptions", "lifelong_edit", "records_from_requests", "resume_lifelong", "run_lifelong"]
