"""Anchor features: the FFN input at each edit's subject, as the router compares them."""
from __future__ import annotations


import torch

from ...editing.keys import module_input_sequences
from ...editing.requests import EditRequest
from ...editing.templates import context_templates
from ...editing.tokens import subject_last_index

def _subject_position(tok, request: EditRequest) -> int:
    # Position 0 is the attention sink, alike in every text: never an anchor.
    return max(1, subject_last_index(tok, "{}", request))


def ffn_inputs(model, tok, requests: list[EditRequest], module_name: str) -> list[torch.Tensor]:
    """Each request's FFN input sequence (T, d) on its plain prompt."""
    return module_input_sequences(model, tok, [r.text for r in requests], module_name)


def subject_inputs(tok, requests: list[EditRequest], inputs: list[torch.Tensor]) -> torch.Tensor:
    """Each request's FFN input at its subject's last token, from its FFN input sequence."""
    return torch.stack([x[_subject_position(tok, r)] for x, r in zip(inputs, requests)])


def anchor_features(tok, requests: list[EditRequest], inputs: list[torch.Tensor], router) -> torch.Tensor:
    """Routing features of each request's subject."""
    return router.features(subject_inputs(tok, requests, inputs))


def template_anchor_features(model, tok, requests, adaptor, hp) -> torch.Tensor:
    """Anchors of each subject read behind every context-template prefix (not the plain "{}")."""
    templates = [t for t in context_templates(model, tok, hp.context_template_length_params) if t != "{}"]
    texts, positions = [], []
    for r in requests:
        for t in templates:
            texts.append(r.in_template(t))
            positions.append(subject_last_index(tok, t, r))
    if not texts:
        return torch.zeros(0, adaptor.hidden)
    inputs = module_input_sequences(model, tok, texts, adaptor.module_name)
    return adaptor.router.features(torch.stack([x[p] for x, p in zip(inputs, positions)]))


def anchor_floors(features: torch.Tensor, generic: torch.Tensor, margin: float) -> torch.Tensor:
    """Each anchor's floor: its best cosine to any generic-text feature, plus ``margin``."""
    return (features.to(generic) @ generic.T).max(dim=1).values + margin
