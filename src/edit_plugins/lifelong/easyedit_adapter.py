"""Lifelong runs from EasyEdit code: request dicts as records, and an existing ``BaseEditor`` as the method."""
from __future__ import annotations

from ..editing.requests import normalize_request
from .data import EditRecord
from .options import RunOptions
from .start import run_lifelong


def records_from_requests(requests: list[dict]) -> list[EditRecord]:
    """EasyEdit request dicts (as ``BaseEditor.edit`` builds them) as lifelong records."""
    records = []
    for i, request in enumerate(requests):
        normalize_request(request, i)
        rephrase = request.get("rephrase_prompt")
        locality = [(v["prompt"], v["ground_truth"]) for v in (request.get("locality") or {}).values()
                    if isinstance(v, dict) and v.get("prompt")]
        portability = [(v["prompt"], v["ground_truth"]) for v in (request.get("portability") or {}).values()
                       if isinstance(v, dict) and v.get("prompt")]
        flat = lambda x: x[0] if isinstance(x, list) else x  # noqa: E731
        locality = [(flat(p), flat(a)) for p, a in locality]
        portability = [(flat(p), flat(a)) for p, a in portability]
        records.append(EditRecord(request.get("case_id", i), {**request, "case_id": request.get("case_id", i)},
                                  [rephrase] if isinstance(rephrase, str) else list(rephrase or []),
                                  locality, portability, "counterfact" if request.get("ground_truth") else "zsre"))
    return records


def lifelong_edit(editor, requests: list[dict], out_dir, options: RunOptions | None = None, progress_bar=True) -> dict:
    """EasyEdit entry point: run an existing ``BaseEditor``'s method as a lifelong sequence."""
    return run_lifelong(editor.hparams, records_from_requests(requests), out_dir, model=editor.model, tok=editor.tok,
                        options=options, progress_bar=progress_bar, apply_fn=editor.apply_algo)
