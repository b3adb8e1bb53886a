"""Training one expert on its batch of edits, every earlier expert frozen."""
from __future__ import annotations

import logging

import torch

from ...editing.layers import input_device
from ...editing.output_head import OutputHead, Reference
from ...editing.requests import EditRequest, fill
from ...editing.runtime import frozen_parameters, replay_lower_layers
from ...editing.templates import context_templates
from ...editing.tokens import encode, pad_batch, target_ids
from .config import LEMoEHyperParams
from .injection import AdaptorError
from .layer import LEMoELayer

LOG = logging.getLogger(__name__)


def _training_batch(tok, requests: list[EditRequest], templates, device, negatives=()):
    """The edits' rows, then the negative prompts' (in the same padded batch: the lower blocks are replayed for
    exactly its inputs)."""
    seqs, rows, pos, labels, owners = [], [], [], [], []
    for i, request in enumerate(requests):
        target = target_ids(tok, request.target_new)
        for template in templates:
            prompt = encode(tok, request.in_template(template))
            for j, label in enumerate(target):
                rows.append(len(seqs))
                pos.append(len(prompt) - 1 + j)
                labels.append(label)
                owners.append(i)
            seqs.append(prompt + target[:-1])
    ids, mask = pad_batch(tok, seqs + list(negatives), device)
    t = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    return ids, mask, t(rows), t(pos), t(labels), t(owners)


def negative_prompts(model, tok, head: OutputHead, requests: list[EditRequest], templates: list[str],
                     per_edit: int) -> tuple[list[list[int]], Reference | None]:
    """Request i's subject in ``per_edit`` negative templates, taken in turn from template i·per_edit on, except
    where the model answers the template with the request's old answer (it then asks the edited relation); and
    the model's next-token distribution at their ends, from one forward (the new expert is still zero, so this
    is the model before it)."""
    if not templates:
        return [], None
    chosen = [[templates[(i * per_edit + j) % len(templates)] for j in range(min(per_edit, len(templates)))]
              for i in range(len(requests))]
    prompts = [encode(tok, fill(t, r.subject)) for r, ts in zip(requests, chosen) for t in ts]
    old_first = [target_ids(tok, r.target_true)[0] if r.target_true else None for r, ts in zip(requests, chosen)
                 for _ in ts]
    ids, mask = pad_batch(tok, prompts, input_device(model))
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        hidden = hidden[torch.arange(len(prompts)), mask.sum(dim=1) - 1]
        answers = head.log_probs(hidden).argmax(dim=-1).tolist()
    keep = [i for i, (a, old) in enumerate(zip(answers, old_first)) if a != old]
    return [prompts[i] for i in keep], (head.reference(hidden[keep]) if keep else None)


def train_expert(model, tok, adaptor: LEMoELayer, requests: list[EditRequest], hp: LEMoEHyperParams) -> dict:
    """Train the newest expert (and, for the softmax router, its row) on the requests' targets, and to keep the
    model's next token on the negative templates."""
    device = input_device(model)
    templates = context_templates(model, tok, hp.context_template_length_params)
    head = OutputHead(model)
    negatives, reference = negative_prompts(model, tok, head, requests, hp.negative_templates, hp.negatives_per_edit)
    ids, mask, rows, pos, labels, owners = _training_batch(tok, requests, templates, device, negatives)
    negative_rows = torch.arange(len(ids) - len(negatives), len(ids), device=device)
    negative_pos = mask[negative_rows].sum(dim=1) - 1
    report = {"steps": 0, "negatives": len(negatives)}
    newest = len(adaptor.experts) - 1
    trainable = list(adaptor.experts[newest].parameters())
    if not hp.freeze_previous_experts:
        trainable = list(adaptor.experts.parameters())
    if hp.routing == "softmax":
        trainable += [adaptor.router.rows[newest]] if hp.freeze_previous_experts else list(adaptor.router.rows)
    counts = torch.bincount(owners, minlength=len(requests)).float()
    with frozen_parameters(model):
        for p in trainable:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(trainable, lr=hp.lr, weight_decay=hp.weight_decay)
        run = lambda: model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)  # noqa: E731
        # Blocks below the adaptor do not change while the expert trains: run them once.
        with replay_lower_layers(model, hp.layer, run):
            for step in range(hp.steps):
                hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                nll = -head.token_log_probs(hidden[rows, pos], labels)
                per_edit = torch.zeros(len(requests), device=device).index_add_(0, owners, nll.detach()) / counts
                if step == 0:
                    report["initial_nll"] = float(per_edit.mean())
                report.update(steps=step, nll=float(per_edit.mean()), max_edit_nll=float(per_edit.max()))
                if float(per_edit.max()) < hp.early_stop_loss:
                    break
                loss = nll.mean()
                if reference is not None:
                    kl = head.kl_from(reference, hidden[negative_rows, negative_pos])
                    report["negative_kl"] = float(kl.detach())
                    loss = loss + hp.negative_weight * kl
                if not loss.requires_grad:  # no row reaches the new expert: an earlier anchor beats every one,
                    # or the new anchors match ordinary text as well as their own prompts (their floors)
                    raise AdaptorError(f"LEMoE: none of this batch's prompts routes to its new expert "
                                       f"({[r.prompt for r in requests]}); routing_threshold is {hp.routing_threshold}, "
                                       f"generic_text_margin {hp.generic_text_margin} (an anchor must also beat its "
                                       f"best match in ordinary text by it)")
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                report["steps"] = step + 1
    if hp.routing == "anchor":
        routed = adaptor.last_routes[rows, pos]
        report["routed_to_new_expert"] = float((routed == newest).float().mean())
    return report
