"""Can a route tell what is asked about a subject? Per SmolLM2 layer, how much closer an edit prompt's last
token lies to its own rephrase's than to its subject's other-relation prompts (KnowEdit ZsRE's locality).

    .venv/bin/python -m bench.relation_separation

LEMoE routes by the subject's key, so every prompt about an edited subject reaches the edit's expert. A second
gate at the position where the answer is read would need a representation there that is near the edit
prompt's for its rephrases and far for other relations. Read: the residual stream after each layer at the
last prompt token, centred by the mean over all prompts read (raw states share a large common direction).
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


def last_token_states(model, tok, prompt: str) -> torch.Tensor:
    """(layers + 1, hidden): the residual stream at the prompt's last token, the embeddings (-1) first."""
    with torch.no_grad():
        out = model(**tok(prompt, return_tensors="pt").to(model.device), output_hidden_states=True)
    return torch.stack([h[0, -1] for h in out.hidden_states]).float().cpu()


def measure() -> dict:
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", bench_device())
    records = json.loads((SHARED / "knowedit_zsre.json").read_text())[FIRST_RECORD:]
    return {"records": len(records), "first_record": FIRST_RECORD, "position": "last prompt token",
            "other_relations_as_given": separation(model, tok, records, lambda p: p),
            "other_relations_as_questions": separation(model, tok, records, as_question)}


def separation(model, tok, records, form) -> list[dict]:
    """Per layer, for the other-relation prompts in the form ``form`` gives them (None: left out)."""
    triples = []
    for r in records:
        others = [form(p["prompt"]) for p in r.get("locality", {}).get("Relation_Specificity", [])]
        others = [p for p in others if p]
        if r.get("rephrase_prompt") and others:
            triples.append((last_token_states(model, tok, r["prompt"]),
                            last_token_states(model, tok, r["rephrase_prompt"]),
                            [last_token_states(model, tok, p) for p in others]))
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
    for form in ("other_relations_as_given", "other_relations_as_questions"):
        for row in result[form]:
            print(form, row)
