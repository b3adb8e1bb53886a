"""Putting the adaptor into a model, training one expert per batch of edits, saving and loading it."""
from __future__ import annotations

import json
import logging
import time
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn.functional as F

from ... import easyedit_compat
from ...errors import UserError
from ...editing.covariance import read_texts
from ...editing.keys import capture_inputs, module_input_sequences, run_until_captured
from ...editing.layers import LayerError, check_layer_index, get_module, input_device
from ...editing.output_head import OutputHead
from ...editing.requests import EditRequest, normalize_requests
from ...editing.templates import context_templates
from ...editing.tokens import encode, pad_batch, subject_last_index, target_ids
from ...editing.values import frozen_parameters, replay_lower_layers
from ...events import EditEvent, OutputEdit, emit_after_edit
from ...files import load_tensors, save_tensors
from .config import LEMoEHyperParams
from .layer import LEMoELayer
from .order_planning import plan_order

LOG = logging.getLogger(__name__)
STATE_FORMAT = "edit-plugins LEMoE adaptor v1"


class AdaptorError(UserError, ValueError):
    pass


# -- finding, inserting and removing the adaptor -----------------------------------------------------------

def find_adaptor(model) -> tuple[str, LEMoELayer] | None:
    for name, module in model.named_modules():
        if isinstance(module, LEMoELayer):
            return name, module
    return None


def _hidden_size(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or getattr(config, "n_embd")


def find_ffn(model, hp: LEMoEHyperParams) -> str:
    """The name of the FFN module the adaptor wraps; LayerError if the hparams do not name one."""
    check_layer_index(model, hp.layer)
    name = hp.ffn_module_tmp.format(hp.layer)
    module = get_module(model, name)
    if not isinstance(module, LEMoELayer) and not any(True for _ in module.parameters()):
        raise LayerError(f"module {name!r} (ffn_module_tmp at layer {hp.layer}) has no parameters: "
                         "expected the FFN block")
    return name


def _set_module(model, name: str, module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def reference_statistics(model, tok, module_name: str, source: str, n_samples: int, max_tokens: int = 64):
    """Mean and std of the FFN input over reference text (first token of each text left out)."""
    texts = read_texts(source, n_samples)
    seqs = [s for s in (tok(t, truncation=True, max_length=max_tokens).input_ids for t in texts) if len(s) > 1]
    device = input_device(model)
    rows = []
    for start in range(0, len(seqs), 16):
        ids, mask = pad_batch(tok, seqs[start : start + 16], device)
        with capture_inputs(model, [module_name], stop_early=True) as captured:
            run_until_captured(model, input_ids=ids, attention_mask=mask)
        keep = mask.bool().clone()
        keep[:, 0] = False
        rows.append(captured[module_name][keep.to(captured[module_name].device)].float())
    acts = torch.cat(rows)
    return acts.mean(0), acts.std(0).clamp_min(1e-6)


def _new_adaptor(model, name: str, *, rank: int, scale: float, routing: str, threshold: float,
                 temperature: float, span: str) -> LEMoELayer:
    base = get_module(model, name)
    adaptor = LEMoELayer(base, _hidden_size(model), rank=rank, scale=scale, routing=routing, threshold=threshold,
                         temperature=temperature, span=span)
    adaptor.router.to(next(base.parameters()).device)
    _set_module(model, name, adaptor)
    adaptor._context_hook = model.base_model.register_forward_pre_hook(adaptor.context, with_kwargs=True)
    adaptor._module_name = name
    return adaptor


def insert_adaptor(model, tok, hp: LEMoEHyperParams) -> LEMoELayer:
    """The model's adaptor, created (with its routing statistics) on first use."""
    name = find_ffn(model, hp)
    found = find_adaptor(model)
    if found is not None:
        if found[0] != name:
            raise AdaptorError(f"the model already has a LEMoE adaptor at {found[0]!r}; hparams put it at {name!r} "
                               f"(layer {hp.layer})")
        return found[1]
    adaptor = _new_adaptor(model, name, rank=hp.expert_rank, scale=hp.expert_scale, routing=hp.routing,
                           threshold=hp.routing_threshold, temperature=hp.routing_temperature,
                           span=hp.routing_span)
    if hp.routing == "anchor":
        try:
            mean, std = reference_statistics(model, tok, name, hp.reference_source, hp.reference_samples)
        except BaseException:
            remove_adaptor(model)
            raise
        adaptor.router.feature_mean.copy_(mean)
        adaptor.router.feature_std.copy_(std)
    return adaptor


def remove_adaptor(model) -> None:
    """Put the original FFN back: the model is then exactly what it was before LEMoE."""
    found = find_adaptor(model)
    if found is None:
        return
    name, adaptor = found
    adaptor._context_hook.remove()
    _set_module(model, name, adaptor.base)


# -- anchors ------------------------------------------------------------------------------------------------

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
    inputs = module_input_sequences(model, tok, texts, adaptor._module_name)
    return adaptor.router.features(torch.stack([x[p] for x, p in zip(inputs, positions)]))


# -- training one expert ------------------------------------------------------------------------------------

def _training_batch(tok, requests: list[EditRequest], templates, device):
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
    ids, mask = pad_batch(tok, seqs, device)
    t = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    return ids, mask, t(rows), t(pos), t(labels), t(owners)


def train_expert(model, tok, adaptor: LEMoELayer, requests: list[EditRequest], hp: LEMoEHyperParams) -> dict:
    """Train the newest expert (and, for the softmax router, its row) on the requests' targets."""
    device = input_device(model)
    templates = context_templates(model, tok, hp.context_template_length_params)
    ids, mask, rows, pos, labels, owners = _training_batch(tok, requests, templates, device)
    newest = len(adaptor.experts) - 1
    trainable = list(adaptor.experts[newest].parameters())
    if not hp.freeze_previous_experts:
        trainable = list(adaptor.experts.parameters())
    if hp.routing == "softmax":
        trainable += [adaptor.router.rows[newest]] if hp.freeze_previous_experts else list(adaptor.router.rows)
    head = OutputHead(model)
    counts = torch.bincount(owners, minlength=len(requests)).float()
    report = {"steps": 0}
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
                optimiser.zero_grad()
                nll.mean().backward()
                optimiser.step()
                report["steps"] = step + 1
    if hp.routing == "anchor":
        routed = adaptor.last_routes[rows, pos]
        report["routed_to_new_expert"] = float((routed == newest).float().mean())
    return report


# -- EasyEdit's apply contract ------------------------------------------------------------------------------

class _Restore:
    """Undo one apply call: drop the experts it added, or the whole adaptor if it created it."""

    def __init__(self, model, created: bool, n_before: int):
        self.model, self.created, self.n_before = model, created, n_before

    def __call__(self):
        found = find_adaptor(self.model)
        if found is None:
            return
        if self.created:
            remove_adaptor(self.model)
            return
        adaptor = found[1]
        while len(adaptor.experts) > self.n_before:
            adaptor.drop_last_expert()


def edit_order(model, tok, requests: list[EditRequest], hp: LEMoEHyperParams) -> list[int]:
    """Order planning over a known pool of requests (identity when ``order_planning`` is off)."""
    if not hp.order_planning or len(requests) <= hp.edits_per_expert:
        return list(range(len(requests)))
    name = find_ffn(model, hp)
    found = find_adaptor(model)
    raw = []
    for start in range(0, len(requests), 64):
        chunk = requests[start : start + 64]
        inputs = ffn_inputs(model, tok, chunk, name)
        raw.append(subject_inputs(tok, chunk, inputs))
    raw = torch.cat(raw).float()
    if found is not None and hp.routing == "anchor":
        features = found[1].router.features(raw)
    else:
        features = F.normalize((raw - raw.mean(0)) / raw.std(0).clamp_min(1e-6), dim=-1)
    return plan_order(features.cpu().numpy(), hp.edits_per_expert, hp.order_planning_seed)


def plan_requests(model, tok, requests: list[dict], hparams) -> list[int]:
    """The registered ``plan_order`` hook: a permutation of ``requests`` for lifelong runs."""
    return edit_order(model, tok, normalize_requests(requests), hparams)


def apply_lemoe_to_model(model, tok, requests, hparams: LEMoEHyperParams, copy=False, return_orig_weights=False,
                         keep_original_weight=False, **kwargs):
    """Add one frozen expert per ``edits_per_expert`` requests. Returns a callable that undoes this call."""
    normalized = normalize_requests(requests)  # bad requests fail before anything is changed
    find_ffn(model, hparams)
    if copy:
        model = deepcopy(model)
    found = find_adaptor(model)
    created, n_before = found is None, (len(found[1].experts) if found else 0)
    restore = _Restore(model, created, n_before)
    order = edit_order(model, tok, normalized, hparams)
    try:
        adaptor = insert_adaptor(model, tok, hparams)
        for start in range(0, len(order), hparams.edits_per_expert):
            batch = [normalized[i] for i in order[start : start + hparams.edits_per_expert]]
            started = time.perf_counter()
            expert = adaptor.add_expert()
            # The FFN inputs come from the blocks below the adaptor: the experts never change them.
            inputs = ffn_inputs(model, tok, batch, adaptor._module_name)
            if hparams.routing == "anchor":
                adaptor.router.add_anchors(anchor_features(tok, batch, inputs, adaptor.router), expert)
                if hparams.anchor_templates:
                    adaptor.router.add_anchors(template_anchor_features(model, tok, batch, adaptor, hparams), expert)
            report = train_expert(model, tok, adaptor, batch, hparams)
            report.update(expert=expert, n_experts=len(adaptor.experts),
                          train_seconds=round(time.perf_counter() - started, 3))
            LOG.info("LEMoE expert %d: %s", expert, report)
            for request, x in zip(batch, inputs):
                emit_after_edit(EditEvent(
                    method=hparams.alg_name, request=request.raw, model=model, hparams=hparams,
                    modules=[adaptor._module_name], info=dict(report),
                    output_edits=[OutputEdit(adaptor._module_name, x, adaptor.added_output, adaptor.base)]))
    except BaseException:
        restore()  # never leave a half-trained expert behind
        raise
    return model, easyedit_compat.restore_for_caller(restore, keep_original_weight)


# -- saving and loading -------------------------------------------------------------------------------------

def adaptor_state(model) -> tuple[dict, dict]:
    """(tensors, metadata) of the model's adaptor, without the frozen FFN it wraps."""
    found = find_adaptor(model)
    if found is None:
        raise AdaptorError("the model has no LEMoE adaptor to save")
    name, adaptor = found
    tensors = {k: v.detach().cpu().contiguous() for k, v in adaptor.state_dict().items() if not k.startswith("base.")}
    metadata = {"format": STATE_FORMAT, "module": name, "config": json.dumps(adaptor.config)}
    return tensors, metadata


def load_adaptor_state(model, tensors: dict, metadata: dict, source: str = "adaptor state") -> LEMoELayer:
    if metadata.get("format") != STATE_FORMAT:
        raise AdaptorError(f"{source}: not a LEMoE adaptor (format {metadata.get('format')!r}, "
                           f"expected {STATE_FORMAT!r})")
    remove_adaptor(model)
    config = json.loads(metadata["config"])
    name = metadata["module"]
    try:
        get_module(model, name)
    except LayerError:
        raise AdaptorError(f"{source}: the adaptor sits on module {name!r}, which this model does not have") from None
    if config["hidden"] != _hidden_size(model):
        raise AdaptorError(f"{source}: the adaptor was made for hidden size {config['hidden']}, "
                           f"this model has {_hidden_size(model)}")
    adaptor = _new_adaptor(model, name, rank=config["rank"], scale=config["scale"], routing=config["routing"],
                           threshold=config["threshold"], temperature=config["temperature"],
                           span=config.get("span") or "sequence")
    for _ in range(config["n_experts"]):
        adaptor.add_expert()
    device = next(adaptor.base.parameters()).device
    with torch.no_grad():
        for key in ("feature_mean", "feature_std", "anchors", "anchor_expert"):
            if f"router.{key}" in tensors:
                setattr(adaptor.router, key, tensors[f"router.{key}"].to(device))
        rest = {k: v for k, v in tensors.items() if not k.startswith("router.") or k.startswith("router.rows")}
        missing, unexpected = adaptor.load_state_dict(rest, strict=False)
    missing = [k for k in missing if not k.startswith("base.") and not k.startswith("router.")]
    if missing or unexpected:
        remove_adaptor(model)
        raise AdaptorError(f"{source}: tensors do not match the adaptor (missing {missing}, unexpected {unexpected})")
    return adaptor


def save_adaptor(model, path) -> Path:
    """Write the adaptor to one .safetensors file (atomically). Returns its path."""
    path = Path(path)
    tensors, metadata = adaptor_state(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, tensors, metadata)
    return path


def load_adaptor(model, path) -> LEMoELayer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adaptor file at {path}")
    tensors, metadata = load_tensors(path)
    return load_adaptor_state(model, tensors, metadata, source=str(path))


def adaptor_size(model) -> dict:
    tensors, _ = adaptor_state(model)
    return {"parameters": int(sum(t.numel() for k, t in tensors.items() if "experts" in k or "rows" in k)),
            "bytes": int(sum(t.numel() * t.element_size() for t in tensors.values()))}
