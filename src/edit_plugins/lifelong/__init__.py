"""Lifelong-sequence mode: stream edits, re-check old ones at checkpoints, survive a kill."""
from .easyedit_adapter import lifelong_edit, records_from_requests
from .options import LifelongError, RunOptions
from .resume import resume_lifelong
from .start import run_lifelong

__all__ = ["LifelongError", "RunOptions", "lifelong_edit", "records_from_requests", "resume_lifelong", "run_lifelong"]
