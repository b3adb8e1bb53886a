"""Reading EasyEdit's dataset files into validated edit records, before anything is edited.

Formats (detected per file):
- ZsRE, MEND/EasyEdit: ``src, alt, answers, rephrase, loc, loc_ans`` (+ ``subject``, ``portability``)
- CounterFact, EasyEdit: ``prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``
- KnowEdit, EasyEdit: ``prompt, subject, target_new, ground_truth[], rephrase_prompt, locality{kind: [{prompt,
  ground_truth}]}, portability{kind: [{prompt, ground_truth}]}``
- CounterFact, ROME: ``requested_rewrite{prompt "{}", subject, target_new{str}, target_true{str}}, paraphrase_prompts, neighborhood_prompts``
- ROME known facts (``known_1000.json``): ``subject, prompt, attribute`` (probe facts, never edited)
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError
from ..files import FileContentError, read_json
from .. import easyedit_compat
from ..editing.requests import RequestError, fill, normalize_request


class DataError(UserError, ValueError):
    pass


@dataclass
class EditRecord:
    case_id: object
    request: dict  # EasyEdit request: prompt (subject filled in), subject, target_new, ground_truth
    rephrase_prompts: list = field(default_factory=list)
    locality: list = field(default_factory=list)  # [(prompt, answer)] that must not change
    portability: list = field(default_factory=list)  # [(prompt, answer)]
    kind: str = "zsre"  # zsre | counterfact
    # Which question each locality / portability pair answers, where a question has several accepted answers
    # (KnowEdit's alias lists: one pair per alias, and any alias counts); None: one pair per question.
    locality_questions: list | None = None
    portability_questions: list | None = None
    unanswered_questions: int = 0  # KnowEdit locality / portability questions with no answer: counted, not read

    def missing_parts(self) -> list[str]:
        """The optional parts this record has none of (counted in a run's summary, never dropped in silence)."""
        parts = {"rephrase": self.rephrase_prompts, "locality": self.locality, "portability": self.portability,
                 "ground_truth": self.request.get("ground_truth")}
        return [name for name, value in parts.items() if not value]


def detect_format(record: dict, source: str = "data") -> str:
    """One record's format, from its own shape."""
    if "requested_rewrite" in record:
        return "counterfact_rome"
    if {"src", "alt"} <= set(record):
        return "zsre"
    if {"prompt", "target_new"} <= set(record) and (
            any(isinstance(record.get(k), dict) for k in ("locality", "portability"))
            or not isinstance(record.get("ground_truth"), str)):  # KnowEdit: a list of answers, or none (recent)
        return "knowedit"
    if {"prompt", "target_new"} <= set(record):
        return "counterfact_easyedit"
    if {"subject", "attribute", "prompt"} <= set(record):
        return "known_facts"
    raise DataError(f"{source}: unrecognised record format with fields {sorted(record)} (expected ZsRE's src/alt, "
                    "CounterFact's or KnowEdit's prompt/target_new, CounterFact's requested_rewrite, or known facts' "
                    "subject/attribute/prompt)")


class _Fields:
    """Typed reads of one record's fields; every error names the file, record index, field and type."""

    def __init__(self, record, index: int, source: str, prefix: str = ""):
        self.record, self.index, self.source, self.prefix = record, index, source, prefix

    def fail(self, name: str, expected: str, value=None):
        where = f"{self.source}: record {self.index}"
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: missing or empty field {self.prefix + name!r} (expected {expected})")
        raise DataError(f"{where}: field {self.prefix + name!r} must be {expected}, "
                        f"got {type(value).__name__} {_short(value)}")

    def text(self, name: str, required: bool = True) -> str | None:
        value = self.record.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            if value == "" and not required:
                return None
            self.fail(name, "a non-empty string", value)
        return value

    def texts(self, name: str) -> list[str]:
        """A list of strings (absent: empty); a lone string counts as a list of one."""
        value = self.record.get(name)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(name, "a string or a list of strings", value)
        return [v for v in value if v.strip()]

    def mapping(self, name: str, required: bool = True) -> "_Fields":
        value = self.record.get(name)
        if value is None and not required:
            value = {}
        if not isinstance(value, dict):
            self.fail(name, "a JSON object", value)
        return _Fields(value, self.index, self.source, f"{self.prefix}{name}.")

    def case_id(self):
        value = self.record.get("case_id", self.index)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.fail("case_id", "an integer or a string", value)
        return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_text(fields: _Fields, name: str) -> str | None:
    """A field EasyEdit gives either as a string or as a list whose first string counts."""
    values = fields.texts(name)
    return values[0] if values else None


def file_format(raw: list, source: str) -> str:
    """The format of a whole file, from every record: a KnowEdit record without locality or portability reads
    like EasyEdit's CounterFact, so a file with both is KnowEdit; any other mixture is refused."""
    first_of: dict[str, int] = {}
    unrecognised = None
    for index, record in enumerate(raw):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {index}: expected a JSON object, got {type(record).__name__} "
                            f"{_short(record)}")
        try:
            first_of.setdefault(detect_format(record, f"{source}: record {index}"), index)
        except DataError as error:  # a record missing a field: reading it names the field, in the file's format
            unrecognised = unrecognised or error
    if not first_of:
        raise unrecognised
    if set(first_of) == {"knowedit", "counterfact_easyedit"}:
        return "knowedit"
    if len(first_of) > 1:
        (a, i), (b, j) = sorted(first_of.items(), key=lambda kv: kv[1])[:2]
        raise DataError(f"{source}: records in two formats: record {i} reads as {a}, record {j} as {b}; a file "
                        "holds one format")
    return next(iter(first_of))


def _answer(value):
    """KnowEdit answers: a string, or a list whose first entry (itself possibly a list of aliases) counts."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) and value.strip() else None


def _aliases(value) -> list[str]:
    """Every accepted answer of a KnowEdit ground truth: a string, a list of them, or lists of aliases
    (WikiData's [[alias, ...], ...], where an inner list may be empty)."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        flat = [v for item in value for v in (item if isinstance(item, list) else [item])]
        return list(dict.fromkeys(v for v in flat if isinstance(v, str) and v.strip()))
    return []


# The kinds EasyEdit's KnowEditDataset reads, in its order; other kinds follow in the file's order.
KNOWEDIT_KINDS = ("Relation_Specificity", "Forgetfulness", "Reasoning", "Subject_Aliasing", "Logical_Generalization")


def _knowedit_pairs(kinds: _Fields) -> tuple[list[tuple[str, str]], list[int], int]:
    """Every (prompt, answer) of a KnowEdit ``locality`` or ``portability`` mapping, kind by kind, one pair per
    accepted answer (alias); the question each pair answers; and how many questions have no answer at all
    (WikiData has some: they cannot be scored, and are counted, not read)."""
    pairs, questions, unanswered = [], [], 0
    order = sorted(kinds.record, key=lambda k: KNOWEDIT_KINDS.index(k) if k in KNOWEDIT_KINDS else len(KNOWEDIT_KINDS))
    for kind in order:
        entries = kinds.record[kind]
        if not isinstance(entries, list):
            kinds.fail(kind, "a list of {prompt, ground_truth} objects", entries)
        for position, entry in enumerate(entries):
            where = f"{kind}[{position}]"
            if not isinstance(entry, dict):
                kinds.fail(where, "a {prompt, ground_truth} object", entry)
            prompt, answers = _answer(entry.get("prompt")), _aliases(entry.get("ground_truth"))
            if prompt is None:
                kinds.fail(where + ".prompt", "a non-empty string (or a list of them)", entry.get("prompt"))
            if not answers:
                if "ground_truth" in entry and _empty_lists(entry["ground_truth"]):  # given, and empty
                    unanswered += 1
                    continue
                kinds.fail(where + ".ground_truth", "a non-empty string (or a list of them)", entry.get("ground_truth"))
            question = len(set(questions))
            pairs += [(prompt, answer) for answer in answers]
            questions += [question] * len(answers)
    return pairs, questions, unanswered


def _empty_lists(value) -> bool:
    """"", [], [[]], [[], ""]...: an answer given as nothing."""
    if isinstance(value, list):
        return all(_empty_lists(v) for v in value)
    return isinstance(value, str) and not value.strip()


def _to_record(record, fmt: str, index: int, source: str) -> EditRecord:
    if not isinstance(record, dict):
        raise DataError(f"{source}: record {index}: expected a JSON object, got {type(record).__name__} {_short(record)}")
    f = _Fields(record, index, source)
    if fmt == "zsre":
        request = {"prompt": f.text("src"), "subject": f.text("subject"), "target_new": f.text("alt"),
                   "ground_truth": _first_text(f, "answers"), "case_id": f.case_id()}
        rephrase = f.texts("rephrase")
        loc, loc_ans = f.text("loc", required=False), _first_text(f, "loc_ans")
        locality = [(loc, loc_ans)] if loc and loc_ans else []
        port = f.mapping("portability", required=False)
        question, answer = port.text("New Question", required=False), port.text("New Answer", required=False)
        portability = [(question, answer)] if question and answer else []
        edit = EditRecord(request["case_id"], request, rephrase, locality, portability, "zsre")
    elif fmt == "counterfact_easyedit":
        request = {"prompt": f.text("prompt"), "subject": f.text("subject"), "target_new": f.text("target_new"),
                   "ground_truth": f.text("ground_truth"), "case_id": f.case_id()}
        rephrase = f.texts("rephrase_prompt")
        loc, loc_ans = f.text("locality_prompt", required=False), f.text("locality_ground_truth", required=False)
        locality = [(loc, loc_ans)] if loc and loc_ans else []
        edit = EditRecord(request["case_id"], request, rephrase, locality, [], "counterfact")
    elif fmt == "knowedit":
        request = {"prompt": f.text("prompt"), "subject": f.text("subject"), "target_new": f.text("target_new"),
                   "ground_truth": _first_text(f, "ground_truth"), "case_id": f.case_id()}
        locality, locality_questions, no_answer = _knowedit_pairs(f.mapping("locality", required=False))
        portability, portability_questions, no_answer_p = _knowedit_pairs(f.mapping("portability", required=False))
        edit = EditRecord(request["case_id"], request, f.texts("rephrase_prompt"), locality, portability, "zsre",
                          locality_questions, portability_questions, no_answer + no_answer_p)
    elif fmt == "counterfact_rome":
        rewrite = f.mapping("requested_rewrite")
        subject, template = rewrite.text("subject"), rewrite.text("prompt")
        target_new = rewrite.mapping("target_new").text("str")
        target_true = rewrite.mapping("target_true", required=False).text("str", required=False)
        request = {"prompt": fill(template, subject), "subject": subject, "target_new": target_new,
                   "ground_truth": target_true, "case_id": f.case_id()}
        locality = [(p, target_true) for p in f.texts("neighborhood_prompts")] if target_true else []
        edit = EditRecord(request["case_id"], request, f.texts("paraphrase_prompts"), locality, [], "counterfact")
    else:
        raise DataError(f"{source}: record {index}: {fmt} records are probe facts, not edits")
    try:
        normalize_request(edit.request, index)
    except RequestError as error:
        raise DataError(f"{source}: record {index}: {str(error).split(': ', 1)[1]}") from None
    return edit


def read_json_file(path, what: str = "data file"):
    try:
        return read_json(path, what)
    except FileContentError as error:
        raise DataError(str(error)) from None


def load_records(path, num_edits: int | None = None, start: int = 0, shuffle: bool = False, seed: int = 0) -> list[EditRecord]:
    """Read and validate the selected records; any malformed one fails the whole load, naming its index."""
    path = Path(path)
    raw = read_json_file(path)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON list of records, got {_short(raw)}")
    if num_edits is not None and num_edits < 1:
        raise DataError(f"--num-edits must be at least 1, got {num_edits}")
    if start < 0:
        raise DataError(f"--start must be 0 or more, got {start}")
    if start >= len(raw):
        raise DataError(f"{path}: --start {start} is past the end of its {len(raw)} records")
    indices = list(range(len(raw)))
    if shuffle:
        random.Random(seed).shuffle(indices)
    indices = indices[start:]
    if num_edits is not None:
        if num_edits > len(indices):
            raise DataError(f"{path}: --num-edits {num_edits} asks for more records than the {len(indices)} available from --start {start}")
        indices = indices[:num_edits]
    fmt = file_format(raw, str(path))
    records = [_to_record(raw[i], fmt, i, str(path)) for i in indices]  # validation, before anything is edited
    items = easyedit_compat.dataset_items(path, fmt)
    if items is not None:
        by_index = {item.get("case_id", i): item for i, item in enumerate(items)}
        records = [_with_easyedit_fields(record, by_index.get(i), fmt, str(path)) for i, record in zip(indices, records)]
    return records


def check_unique_case_ids(records: list[EditRecord], source: str = "data") -> None:
    """Refuse two records with one case_id: events, logs and resumes match records by it."""
    first = {}
    for index, record in enumerate(records):
        key = str(record.case_id)
        if key in first:
            raise DataError(f"{source}: records {first[key]} and {index} of the stream share case_id "
                            f"{record.case_id!r}; give each record its own (events and logs are matched by it)")
        first[key] = index


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
    if fmt == "knowedit":
        if item is None:
            raise DataError(f"{source}: record {record.case_id}: EasyEdit's KnowEditDataset does not yield it")
        request = dict(record.request, prompt=item["prompt"], subject=item["subject"], target_new=item["target_new"],
                       ground_truth=_answer(item["ground_truth"]))
        kinds = lambda *keys: _knowedit_pairs(_Fields({k: item[k] for k in keys if item.get(k)}, record.case_id, source))
        (locality, locality_questions, no_answer), (portability, portability_questions, no_answer_p) = (
            kinds("locality_rs", "locality_f"), kinds("portability_r", "portability_s", "portability_l"))
        return EditRecord(record.case_id, request, record.rephrase_prompts, locality, portability, record.kind,
                          locality_questions, portability_questions, no_answer + no_answer_p)
    return record  # CounterFactDataset yields the file's own dicts: nothing to translate


# Room left for the context templates that editing puts before a prompt.
TEMPLATE_TOKENS = 32


def context_length(model) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_lengths(records: list[EditRecord], probes, tok, model) -> None:
    """Every prompt with its answer must fit the model's context, with room for a context template."""
    limit = context_length(model)
    if not limit:
        return
    for index, record in enumerate(records):
        target = record.request["target_new"]
        texts = [("prompt and target_new", record.request["prompt"], target)]
        texts += [("rephrase prompt and target_new", p, target) for p in record.rephrase_prompts]
        texts += [("locality prompt and answer", p, a) for p, a in record.locality]
        texts += [("portability prompt and answer", p, a) for p, a in record.portability]
        for what, prompt, answer in texts:
            n = len(tok(prompt + " " + answer, add_special_tokens=True).input_ids)
            if n + TEMPLATE_TOKENS > limit:
                raise DataError(f"record {index} (case_id {record.case_id!r}): its {what} are {n} tokens; with "
                                f"{TEMPLATE_TOKENS} for a context template that exceeds the model's context "
                                f"length of {limit} tokens")
    for index, fact in enumerate(probes):
        n = len(tok(fact.prompt + " " + fact.answer).input_ids)
        if n > limit:
            raise DataError(f"probe fact {index}: {n} tokens exceed the model's context length of {limit} tokens")


class ProbeFact(NamedTuple):
    prompt: str
    answer: str
    subject: str | None


def load_probe_facts(path, count: int, seed: int = 0) -> list[ProbeFact]:
    """Never-edited facts for locality, e.g. ROME's known_1000.json (``prompt, attribute, subject``)."""
    raw = read_json_file(path, "probe data file")
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of facts (prompt, attribute, subject)")
    facts = []
    for index, record in enumerate(raw):
        if not isinstance(record, dict):
            raise DataError(f"{path}: fact {index}: expected a JSON object, got {type(record).__name__}")
        f = _Fields(record, index, str(path))
        prompt, answer = f.text("prompt", required=False), f.text("attribute", required=False)
        if prompt and answer:
            facts.append(ProbeFact(prompt, answer, f.text("subject", required=False)))
    random.Random(seed).shuffle(facts)
    return facts[:count]


def file_hash(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class UnrelatedQuestions(NamedTuple):
    scored: list  # [(question, answer)]: locality on questions no edit is about
    pool: list  # [(question, answer)]: never scored; what a method that trains on unrelated prompts (WISE) draws


def load_unrelated_questions(path, count: int, records: list[EditRecord]) -> UnrelatedQuestions:
    """Unrelated questions from a ZsRE file's ``loc``/``loc_ans`` (Natural Questions, as EasyEdit's WISE examples
    use them): the first ``count`` distinct ones are scored, the rest are the pool. A question that is the
    stream's own locality prompt is in neither."""
    raw = read_json_file(path, "unrelated-questions file")
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of ZsRE records (loc, loc_ans)")
    own = {prompt for r in records for prompt, _ in r.locality}
    pairs: dict = {}
    for index, record in enumerate(raw):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {index}: expected a JSON object, got {type(record).__name__}")
        f = _Fields(record, index, str(path))
        question, answer = f.text("loc", required=False), _first_text(f, "loc_ans")
        if question and answer and question not in own:
            pairs.setdefault(question, answer)
    if not pairs:
        raise DataError(f"{path}: no record has the fields 'loc' and 'loc_ans' (expected a ZsRE file such as "
                        "zsre_mend_eval.json)")
    items = list(pairs.items())
    return UnrelatedQuestions(items[:count], items[count:])
