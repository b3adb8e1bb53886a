"""Reading EasyEdit's dataset files into validated edit records, before anything is edited.

Formats (detected per file):
- ZsRE, MEND/EasyEdit: ``src, alt, answers, rephrase, loc, loc_ans`` (+ ``subject``, ``portability``)
- CounterFact, EasyEdit: ``prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``
- CounterFact, ROME: ``requested_rewrite{prompt "{}", subject, target_new{str}, target_true{str}}, paraphrase_prompts, neighborhood_prompts``
- ROME known facts (``known_1000.json``): ``subject, prompt, attribute`` (probe facts, never edited)
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .. import easyedit_compat
from ..editing.requests import RequestError, normalize_request


class DataError(ValueError):
    pass


@dataclass
class EditRecord:
    case_id: object
    request: dict  # EasyEdit request: prompt (subject filled in), subject, target_new, ground_truth
    rephrase_prompts: list = field(default_factory=list)
    locality: list = field(default_factory=list)  # [(prompt, answer)] that must not change
    portability: list = field(default_factory=list)  # [(prompt, answer)]
    kind: str = "zsre"  # zsre | counterfact


def detect_format(record: dict) -> str:
    if "requested_rewrite" in record:
        return "counterfact_rome"
    if {"src", "alt"} <= set(record):
        return "zsre"
    if {"prompt", "target_new"} <= set(record):
        return "counterfact_easyedit"
    if {"subject", "attribute", "prompt"} <= set(record):
        return "known_facts"
    raise DataError(f"unrecognised record format with fields {sorted(record)}")


def _need(record, name, index, source):
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{source}: record {index}: missing or empty field {name!r}")
    return value


def _to_record(record: dict, fmt: str, index: int, source: str) -> EditRecord:
    if fmt == "zsre":
        answers = record.get("answers") or []
        request = {"prompt": _need(record, "src", index, source), "subject": _need(record, "subject", index, source),
                   "target_new": _need(record, "alt", index, source),
                   "ground_truth": answers[0] if answers else None, "case_id": record.get("case_id", index)}
        rephrase = [record["rephrase"]] if record.get("rephrase") else []
        locality = [(record["loc"], record["loc_ans"])] if record.get("loc") and record.get("loc_ans") else []
        port = record.get("portability") or {}
        portability = [(port["New Question"], port["New Answer"])] if port.get("New Question") and port.get("New Answer") else []
        edit = EditRecord(request["case_id"], request, rephrase, locality, portability, "zsre")
    elif fmt == "counterfact_easyedit":
        request = {"prompt": _need(record, "prompt", index, source), "subject": _need(record, "subject", index, source),
                   "target_new": _need(record, "target_new", index, source),
                   "ground_truth": _need(record, "ground_truth", index, source), "case_id": record.get("case_id", index)}
        rephrase = [record["rephrase_prompt"]] if record.get("rephrase_prompt") else []
        locality = ([(record["locality_prompt"], record["locality_ground_truth"])]
                    if record.get("locality_prompt") and record.get("locality_ground_truth") else [])
        edit = EditRecord(request["case_id"], request, rephrase, locality, [], "counterfact")
    elif fmt == "counterfact_rome":
        rewrite = record["requested_rewrite"]
        subject = _need(rewrite, "subject", index, source)
        template = _need(rewrite, "prompt", index, source)
        target_true = (rewrite.get("target_true") or {}).get("str")
        request = {"prompt": template.format(subject) if "{}" in template else template, "subject": subject,
                   "target_new": (rewrite.get("target_new") or {}).get("str"), "ground_truth": target_true,
                   "case_id": record.get("case_id", index)}
        if not isinstance(request["target_new"], str) or not request["target_new"].strip():
            raise DataError(f"{source}: record {index}: missing or empty field 'requested_rewrite.target_new.str'")
        locality = [(p, target_true) for p in record.get("neighborhood_prompts", [])] if target_true else []
        edit = EditRecord(request["case_id"], request, list(record.get("paraphrase_prompts", [])), locality, [],
                          "counterfact")
    else:
        raise DataError(f"{source}: record {index}: {fmt} records are probe facts, not edits")
    try:
        normalize_request(edit.request, index)
    except RequestError as error:
        raise DataError(f"{source}: record {index}: {str(error).split(': ', 1)[1]}") from None
    return edit


def load_records(path, num_edits: int | None = None, start: int = 0, shuffle: bool = False, seed: int = 0) -> list[EditRecord]:
    """Read and validate the selected records; any malformed one fails the whole load, naming its index."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON list of records")
    indices = list(range(len(raw)))
    if shuffle:
        random.Random(seed).shuffle(indices)
    indices = indices[start:]
    if num_edits is not None:
        if num_edits > len(indices):
            raise DataError(f"{path}: --num-edits {num_edits} asks for more records than the {len(indices)} available from --start {start}")
        indices = indices[:num_edits]
    fmt = detect_format(raw[indices[0]])
    records = [_to_record(raw[i], fmt, i, str(path)) for i in indices]  # validation, before anything is edited
    items = easyedit_compat.dataset_items(path, fmt)
    if items is not None:
        by_index = {item.get("case_id", i): item for i, item in enumerate(items)}
        records = [_with_easyedit_fields(record, by_index.get(i), fmt, str(path)) for i, record in zip(indices, records)]
    return records


def _with_easyedit_fields(record: EditRecord, item: dict | None, fmt: str, source: str) -> EditRecord:
    """Take the request fields from EasyEdit's dataset class, which is the authority where it is installed.

    ZsreDataset skips records with an empty ``alt`` (so its items are matched by ``case_id``, the raw
    index) and drops ``subject``, which comes from the raw record.
    """
    if fmt == "zsre":
        if item is None:
            raise DataError(f"{source}: record {record.case_id}: EasyEdit's ZsreDataset does not yield it")
        request = dict(record.request, prompt=item["prompt"], target_new=item["target_new"],
                       ground_truth=item["ground_truth"])
        rephrase = [item["rephrase_prompt"]] if item.get("rephrase_prompt") else []
        locality = ([(item["locality_prompt"], item["locality_ground_truth"])]
                    if item.get("locality_prompt") and item.get("locality_ground_truth") else [])
        return EditRecord(record.case_id, request, rephrase, locality, record.portability, record.kind)
    return record  # CounterFactDataset yields the file's own dicts: nothing to translate


class ProbeFact(NamedTuple):
    prompt: str
    answer: str
    subject: str | None


def load_probe_facts(path, count: int, seed: int = 0) -> list[ProbeFact]:
    """Never-edited facts for locality, e.g. ROME's known_1000.json (``prompt, attribute, subject``)."""
    raw = json.loads(Path(path).read_text())
    facts = [ProbeFact(r["prompt"], r["attribute"], r.get("subject")) for r in raw
             if r.get("prompt") and r.get("attribute")]
    random.Random(seed).shuffle(facts)
    return facts[:count]


def file_hash(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
