"""LEMoE hparams. Every choice the paper leaves open is a field here, documented in docs/lemoe.md."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, List, Optional

from ...hparams import EditHyperParams, HparamsError, check_steps
from .injection import find_ffn

ROUTINGS = ("anchor", "softmax")
SPANS = ("sequence", "token")


@dataclasses.dataclass(kw_only=True)
class LEMoEHyperParams(EditHyperParams):
    ALG_NAME: ClassVar[str] = "LEMoE"

    layer: int  # the decoder layer whose FFN gets the adaptor
    ffn_module_tmp: str  # the whole FFN block, e.g. "model.layers.{}.mlp" or "transformer.h.{}.mlp"
    expert_rank: int = 32  # each expert is B·SiLU(A·x) with A: rank×d, B: d×rank
    edits_per_expert: int = 10
    expert_scale: float = 1.0  # λ in h(x) = FFN(x) + λ Σ g(i|x) E_i(x)
    lr: float = 3e-2
    steps: int = 30
    early_stop_loss: float = 0.05  # stop once every edit's mean target NLL is below this
    weight_decay: float = 0.0
    # Extra training prompts "{prefix}. {prompt}" with model-generated prefixes ([[length, count]]); none by default.
    context_template_length_params: List[List[int]] = dataclasses.field(default_factory=list)
    routing: str = "anchor"  # "anchor" (KV anchor routing) or "softmax" (plain learned router, for ablation)
    routing_threshold: float = 0.8  # cosine (standardised features) an input must reach to use an expert
    # An anchor also fires only above its best match among the reference text's tokens, by this margin: an anchor
    # that looks like ordinary text (a subject read at the start of its prompt) would otherwise route it. None: off.
    generic_text_margin: Optional[float] = 0.02
    # "sequence": an expert serves every position from its anchor's match on; "token": only matching positions
    routing_span: str = "sequence"
    anchor_templates: bool = False  # also anchor each subject as read behind every context-template prefix
    # Other relations of an edit's subject ("The occupation of {} is"; "{}" is the subject): the expert, which
    # routing sends every prompt about the subject to, learns to leave the model's next token there as it was
    # (KL to the model before the expert, weighted by negative_weight). None by default. Each edit takes
    # negatives_per_edit of them in turn, so an expert's edits together cover the list.
    negative_templates: List[str] = dataclasses.field(default_factory=list)
    negatives_per_edit: int = 4
    negative_weight: float = 1.0
    routing_temperature: float = 1.0  # softmax router only: logits / temperature
    reference_source: str = "pydoc"  # text whose FFN inputs standardise the routing features
    reference_samples: int = 64
    freeze_previous_experts: bool = True
    order_planning: bool = True  # k-means the pool of edits and give each expert one cluster
    order_planning_seed: int = 0
    # Requests per apply call when EasyEdit's BaseEditor drives it: its single-editing edit() requires 1,
    # so there each call (each edit) gets its own expert. See edits_per_call for lifelong runs.
    batch_size: int = 1

    def edits_per_call(self) -> int:
        """A lifelong run hands over a whole expert's edits per call (more if batch_size asks)."""
        return max(self.batch_size, self.edits_per_expert)

    def check_model(self, model) -> None:
        find_ffn(model, self)  # the adaptor's own check of the FFN it wraps

    def validate(self, source: str) -> None:
        super().validate(source)
        if "{}" not in self.ffn_module_tmp:
            raise HparamsError(f"{source}: field 'ffn_module_tmp' must contain '{{}}' for the layer index, "
                               f"got {self.ffn_module_tmp!r}")
        if self.routing not in ROUTINGS:
            raise HparamsError(f"{source}: field 'routing' must be one of {list(ROUTINGS)}, got {self.routing!r}")
        if self.routing_span not in SPANS:
            raise HparamsError(f"{source}: field 'routing_span' must be one of {list(SPANS)}, "
                               f"got {self.routing_span!r}")
        if not -1.0 <= self.routing_threshold <= 1.0:
            raise HparamsError(f"{source}: field 'routing_threshold' is a cosine and must lie in [-1, 1], "
                               f"got {self.routing_threshold!r}")
        for name in ("expert_rank", "edits_per_expert", "steps", "lr", "routing_temperature", "reference_samples",
                     "batch_size", "negatives_per_edit"):
            if getattr(self, name) <= 0:
                raise HparamsError(f"{source}: field {name!r} must be positive, got {getattr(self, name)!r}")
        for i, template in enumerate(self.negative_templates):
            if not isinstance(template, str) or template.count("{}") != 1:
                raise HparamsError(f"{source}: field 'negative_templates' entry {i} must be a string with one '{{}}' "
                                   f"for the subject, got {template!r}")
        if self.generic_text_margin is not None and not 0.0 <= self.generic_text_margin <= 1.0:
            raise HparamsError(f"{source}: field 'generic_text_margin' is a cosine margin and must lie in [0, 1] "
                               f"(or null: off), got {self.generic_text_margin!r}")
        if self.negative_weight < 0:
            raise HparamsError(f"{source}: field 'negative_weight' must be >= 0, got {self.negative_weight!r}")
        check_steps(self.steps, "steps", source)
        if self.layer < 0:
            raise HparamsError(f"{source}: field 'layer' must be a layer index (>= 0), got {self.layer!r}")
