"""What the after-edit hook receives, and the one place that fires it."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .plugins import pm


@dataclass
class LinearEdit:
    """A closed-form edit W ← W + ΔW at one module, as the superposition algebra sees it."""

    module: str
    key: torch.Tensor  # k, mapped exactly to v*
    residual: torch.Tensor  # r = v* − W_before k
    c_inv_key: torch.Tensor  # the update's direction u: C⁻¹k (ROME/WilKE: C⁻¹k̄, k̄ the template mean)


@dataclass
class OutputEdit:
    """A non-linear edit at one module (an adaptor): what it adds to the module's output."""

    module: str
    inputs: torch.Tensor  # this edit's module inputs on its own prompt, (T, d)
    added_output: Any  # callable (inputs (B, T, d), attention_mask) -> what the edits now add to the output
    original_output: Any  # callable: the unedited module, inputs (B, T, d) -> outputs
    # The same object (``is``) on events between which the adaptor did not change, e.g. the edits of one
    # expert; diagnostics then reuse what they measured on earlier inputs. None: never reused.
    state: Any = None


@dataclass
class EditEvent:
    method: str
    request: dict
    model: Any
    hparams: Any
    modules: list = field(default_factory=list)  # names of the edited modules
    weight_deltas: dict | None = None  # {parameter name: ΔW as stored}, where the method has one
    linear_edits: list = field(default_factory=list)  # LinearEdit per module, for linear methods
    output_edits: list = field(default_factory=list)  # OutputEdit per module, for adaptor methods
    # The method's own report. "layer" (the decoder layer edited, where there is one) is read by lifelong
    # runs for their layer histogram, and "not_applied" (why, where the method refused the edit and left
    # the model as it was) for their count of refused edits; the rest is logged as it is (WilKE: layer_scores, ...).
    info: dict = field(default_factory=dict)
    step: int | None = None


_collectors: list[list] = []


@contextlib.contextmanager
def collect_events():
    """Collect ``(event, hook_results)`` for every edit fired inside the block (used by lifelong runs)."""
    sink: list = []
    _collectors.append(sink)
    try:
        yield sink
    finally:
        _collectors.remove(sink)


# Outside lifelong runs (which start their own), diagnostics are turned on by the hparams field
# `diagnostics: [name, ...]` or this env var, and write JSONL to `diagnostics_log` or LOG_ENV.
DIAGNOSTICS_ENV = "EDIT_PLUGINS_DIAGNOSTICS"
LOG_ENV = "EDIT_PLUGINS_DIAGNOSTICS_LOG"
_requested_diagnostics: dict = {}


def requested_diagnostics(hparams) -> list[str]:
    names = list(getattr(hparams, "diagnostics", None) or [])
    names += [n.strip() for n in os.environ.get(DIAGNOSTICS_ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _activate_requested_diagnostics(event: EditEvent) -> None:
    from .plugins import start_diagnostic

    names = [] if _collectors else requested_diagnostics(event.hparams)
    for name in names:
        key = (name, id(event.model))
        if key not in _requested_diagnostics:
            log_path = getattr(event.hparams, "diagnostics_log", None) or os.environ.get(LOG_ENV) or f"{name}.jsonl"
            try:
                _requested_diagnostics[key] = start_diagnostic(name, id(event.model), model=event.model,
                                                               hparams=event.hparams, log_path=log_path)
            except KeyError as error:
                raise ValueError(f"diagnostics: {error.args[0]}") from None


def emit_after_edit(event: EditEvent) -> dict:
    """Run every after_edit hook; merge what they return (later plugins win on clashes)."""
    _activate_requested_diagnostics(event)
    merged = {}
    started = time.perf_counter()
    for result in reversed(pm.hook.after_edit(event=event)):  # pluggy calls last-registered first
        if result:
            merged.update(result)
    if merged:  # what the hooks cost, so benchmarks can hold them to their budget
        merged["after_edit_seconds"] = round(time.perf_counter() - started, 5)
    for sink in _collectors:
        sink.append((event, merged))
    return merged
