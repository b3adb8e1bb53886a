"""Operating points of a relation gate for LEMoE: how many rephrases a gate lets through when it shuts out the
edited subject's other relations.

    .venv/bin/python -m bench.relation_gate

bench.relation_separation ranks pairs; a gate needs a threshold. Here each edit prompt's reading (see
READINGS) is compared (cosine, centred by the mean reading of its stream's calibration questions) with its
rephrase and with other-relation questions about its subject. Two thresholds:
- per edit: the highest cosine of the edit prompt to CALIBRATION questions about its own subject (generic
  Wikidata relations asked in a template, never the test records; a question within SAME_RELATION of the
  edit prompt is taken as its own relation and left out), plus a margin;
- global: one cosine for every edit.
Scored on what the gate did not see: the rephrase (accepted?), the records' own other-relation prompts asked
in the edit's form (rejected?, KnowEdit ZsRE) and HELD_OUT template questions (rejected?, both streams).
Streams: KnowEdit ZsRE's records beyond the first 1,000 and the tuning sweep's 50 CounterFact dev facts (no
table edits either). Writes bench/results/relation_gate.json.
"""
import json

import torch

from bench.common import SHARED, bench_device, dev_counterfact, setup, write_result
from bench.relation_separation import FIRST_RECORD, as_question, states

# Generic Wikidata relations, asked in the edit prompt's form: "What is the R of S?" or "The R of S is"
CALIBRATION = ["country of citizenship", "place of birth", "occupation", "employer", "spouse", "father",
               "native language", "religion", "award received", "genre", "country", "headquarters location",
               "manufacturer", "part of", "date of birth", "educated at"]
HELD_OUT = ["mother", "place of death", "record label", "position held", "member of political party",
            "field of work", "official language", "capital", "founded by", "instrument", "sport", "continent"]
SAME_RELATION = 0.9  # a calibration question this close to the edit prompt asks the edit's own relation
READINGS = {"mean outside subject, after layer 0": ("mean_outside_subject", 1),
            "mean outside subject, after layer 2": ("mean_outside_subject", 3),
            "last token, after layer 4": ("last_token", 5),
            "last token, after layer 11": ("last_token", 12)}
MARGINS = (0.0, 0.05, 0.1)
GLOBAL = (0.1, 0.2, 0.3, 0.4, 0.5)


def asked_like(prompt: str, relation: str, subject: str) -> str:
    """The relation asked in the edit prompt's own form (a question or a statement to complete): a gate must not
    separate by form alone."""
    if prompt.rstrip().endswith("?"):
        return f"What is the {relation} of {subject}?"
    return f"The {relation} of {subject} is"


def items(model, tok):
    """(stream, edit prompt, subject, rephrases, the record's other-relation questions) per record."""
    zsre = json.loads((SHARED / "knowedit_zsre.json").read_text())[FIRST_RECORD:]
    for r in zsre:
        others = [as_question(p["prompt"]) for p in r.get("locality", {}).get("Relation_Specificity", [])]
        if r.get("rephrase_prompt"):
            yield "knowedit_zsre", r["prompt"], r["subject"], [r["rephrase_prompt"]], [o for o in others if o]
    for r in dev_counterfact(model, tok, 50):
        yield "counterfact", r["prompt"], r["subject"], [r["rephrase_prompt"]], []


def measure() -> dict:
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", bench_device())
    read = {}

    def reading(prompt, subject):
        if (prompt, subject) not in read:
            read[prompt, subject] = states(model, tok, prompt, subject)
        return read[prompt, subject]

    rows = []
    for stream, prompt, subject, rephrases, others in items(model, tok):
        rows.append({"stream": stream, "edit": reading(prompt, subject),
                     "rephrases": [reading(p, subject) for p in rephrases],
                     "others": [reading(p, subject) for p in others],
                     "calibration": [reading(asked_like(prompt, c, subject), subject) for c in CALIBRATION],
                     "held_out": [reading(asked_like(prompt, h, subject), subject) for h in HELD_OUT]})
    out = {"records": {s: sum(r["stream"] == s for r in rows) for s in ("knowedit_zsre", "counterfact")},
           "readings": {}}
    opened, streams = {}, [r["stream"] for r in rows]  # each record's stream
    cos = torch.nn.functional.cosine_similarity
    for name, (kind, layer) in READINGS.items():
        # centred per stream: its prompts share a form (questions, statements), as a deployed gate's reference
        # text would be of the form it edits
        centre = {stream: torch.stack([c[kind][layer] for r in rows if r["stream"] == stream
                                       for c in r["calibration"]]).mean(dim=0) for stream in out["records"]}

        def cosines(row, key):
            edit = row["edit"][kind][layer] - centre[row["stream"]]
            return [float(cos(edit, s[kind][layer] - centre[row["stream"]], dim=0)) for s in row[key]]

        scored = [{"stream": r["stream"], **{k: cosines(r, k) for k in ("rephrases", "others", "calibration",
                                                                         "held_out")}} for r in rows]
        points, opened[name] = [], {}
        for margin in MARGINS:
            policy = f"per edit, margin {margin}"
            opened[name][policy] = gate_open(scored, lambda s, m=margin: max(
                [c for c in s["calibration"] if c < SAME_RELATION], default=-1.0) + m)
            points.append(operating_point(streams, policy, opened[name][policy]))
        for value in GLOBAL:
            points.append(operating_point(streams, f"global {value}", gate_open(scored, lambda s, v=value: v)))
        out["readings"][name] = points
    # both gates at once: a question passes only where each reading's per-edit gate lets it
    first, second = "mean outside subject, after layer 0", "last token, after layer 4"
    for margin in MARGINS:
        policy = f"per edit, margin {margin}"
        a, b = opened[first][policy], opened[second][policy]
        both = [{k: [x and y for x, y in zip(a[i][k], b[i][k])] for k in a[i]} for i in range(len(a))]
        out["readings"].setdefault(f"{first} and {second}", []).append(operating_point(streams, policy, both))
    return out


def gate_open(scored, threshold) -> list[dict]:
    """Per record, whether the gate opens for each of its rephrases, other-relation and held-out questions."""
    return [{k: [c > threshold(s) for c in s[k]] for k in ("rephrases", "others", "held_out")} for s in scored]


def operating_point(streams: list[str], policy: str, opened) -> dict:
    """Per stream: the share of rephrases accepted and of other-relation questions rejected."""
    point = {"threshold": policy}
    for stream in ("knowedit_zsre", "counterfact"):
        group = [o for s, o in zip(streams, opened) if s == stream]
        point[stream] = {"rephrases_accepted": share([x for o in group for x in o["rephrases"]]),
                         "held_out_rejected": share([not x for o in group for x in o["held_out"]]),
                         "record_others_rejected": share([not x for o in group for x in o["others"]])}
    return point


def share(flags):
    return round(sum(flags) / len(flags), 3) if flags else None


if __name__ == "__main__":
    setup(2)
    result = measure()
    write_result("relation_gate", result, echo=False)
    print(json.dumps(result["records"]))
    for name, points in result["readings"].items():
        print(name)
        for p in points:
            print(f"  {p['threshold']:>22}  zsre {p['knowedit_zsre']}  cf {p['counterfact']}")
