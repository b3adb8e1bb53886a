"""Can a route tell what is asked about a subject? Per SmolLM2 layer, how much closer an edit prompt lies to its
own rephrase than to its subject's other-relation prompts (KnowEdit ZsRE's locality).

    .venv/bin/python -m bench.relation_separation

LEMoE routes by the subject's key, so every prompt about an edited subject reaches the edit's expert. A second
gate at the position where the answer is read would need a representation there that is near the edit
prompt's for its rephrases and far for other relations. Read: the residual stream after each layer at the
last prompt token, its mean over the tokens outside the subject and over all tokens, centred by the mean
over all prompts read (raw states share a large common direction). Other-relation prompts as the data gives
them, and asked in the edit prompts' own form.
Reported per layer: median cosine to the rephrase and to the other-relation prompts, and the share of
(rephrase, other-relation prompt) pairs of a record ranked right (rephrase closer: 0.5 is chance).
Records: KnowEdit ZsRE's beyond the first 1,000 (which the tables edit). Writes
bench/results/relation_separation.json.
"""
import json
import re

import torch

from bench.common import SHARED, bench_device, setup, write_result

FIRST_RECORD = 1000  # the tables edit records 0-999
STATEMENT = re.compile(r"^The (.+) of (.+) is$")


def as_question(statement: str) -> str | None:
    """"The R of S is" as "What is the R of S?": the other relation asked in the edit prompts' own form."""
    match = STATEMENT.match(statement)
    return match and f"What is the {match[1]} of {match[2]}?"


READINGS = ("last_token", "mean_outside_subject", "mean_of_all_tokens")


def states(model, tok, prompt: str, subject: str) -> dict[str, torch.Tensor]:
    """Each reading, (layers + 1, hidden), the embeddings (-1) first: the residual stream at the prompt's last
    token, its mean over the tokens outside the subject (all of them where the subject is not named), and its
    mean over every token but the first (what a causal gate could read without knowing the subject's span)."""
    enc = tok(prompt, return_tensors="pt", return_offsets_mapping=True)
    spans = enc.pop("offset_mapping")[0].tolist()
    start = prompt.lower().find(subject.lower())
    outside = [i for i, (a, b) in enumerate(spans) if start < 0 or b <= start or a >= start + len(subject)]
    with torch.no_grad():
        hidden = torch.stack(model(**enc.to(model.device), output_hidden_states=True).hidden_states)[:, 0]
    hidden = hidden.float().cpu()
    return {"last_token": hidden[:, -1], "mean_outside_subject": hidden[:, outside].mean(dim=1),
            "mean_of_all_tokens": hidden[:, 1:].mean(dim=1)}


def measure() -> dict:
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", bench_device())
    records = json.loads((SHARED / "knowedit_zsre.json").read_text())[FIRST_RECORD:]
    out = {"records": len(records), "first_record": FIRST_RECORD}
    for form_name, form in (("as_given", lambda p: p), ("as_questions", as_question)):
        triples = []
        for r in records:
            others = [form(p["prompt"]) for p in r.get("locality", {}).get("Relation_Specificity", [])]
            others = [p for p in others if p]
            if r.get("rephrase_prompt") and others:
                read = lambda p: states(model, tok, p, r["subject"])  # noqa: E731
                triples.append((read(r["prompt"]), read(r["rephrase_prompt"]), [read(p) for p in others]))
        for reading in READINGS:
            out[f"other_relations_{form_name}/{reading}"] = separation(
                [(p[reading], q[reading], [o[reading] for o in others]) for p, q, others in triples])
    return out


def separation(triples) -> list[dict]:
    """Per layer: median cosines (centred by the mean of every state read) and the share of (rephrase,
    other-relation prompt) pairs with the rephrase closer to the edit prompt."""
    every = torch.stack([s for p, q, o in triples for s in (p, q, *o)])
    mean = every.mean(dim=0)
    cos = torch.nn.functional.cosine_similarity
    layers = []
    for layer in range(every.shape[1]):
        to_rephrase, to_others, right = [], [], []
        for p, q, others in triples:
            p, q = p[layer] - mean[layer], q[layer] - mean[layer]
            c_q = float(cos(p, q, dim=0))
            c_o = [float(cos(p, o[layer] - mean[layer], dim=0)) for o in others]
            to_rephrase.append(c_q)
            to_others += c_o
            right += [c_q > c for c in c_o]
        layers.append({"after_layer": layer - 1, "cos_to_rephrase": float(torch.tensor(to_rephrase).median()),
                       "cos_to_other_relations": float(torch.tensor(to_others).median()),
                       "rephrase_ranked_closer": sum(right) / len(right), "pairs": len(right)})
    return layers


if __name__ == "__main__":
    setup(2)
    result = measure()
    write_result("relation_separation", result, echo=False)
    for key, rows in result.items():
        if isinstance(rows, list):
            best = max(rows, key=lambda r: r["rephrase_ranked_closer"])
            routing_layer = next(r for r in rows if r["after_layer"] == 4)  # LEMoE's shipped layer
            print(key, "best:", best, "layer 4:", routing_layer)
