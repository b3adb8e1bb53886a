"""The forward passes an edit needs: the request's batch (rewrite prompts in context templates, and
essence prompts), a runner that caches the prefix before the subject once and runs only the rest, and
hooks that freeze parameters, replay lower layers or add a vector at chosen positions."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass

import torch

from ..transformers_compat import cache_kwargs, output_cache, repeat_cache
from .layers import decoder_layers, input_device
from .requests import EditRequest, fill
from .tokens import encode, pad_batch, pad_id, subject_last_index, target_ids

ESSENCE_PROMPTS = ("{} is a",)


@dataclass
class EditBatch:
    """Rewrite prompts (+ target) and essence prompts, split at each row's subject-last token.

    Tokens before that split never depend on δ, so they are run once into a KV cache (left-padded
    so that every row's split falls on the same column); each step runs only the suffix.
    """
    seqs: list
    lookup: torch.Tensor  # subject-last index per row, in the full sequence
    loss_rows: torch.Tensor
    loss_pos: torch.Tensor  # in full-sequence coordinates
    labels: torch.Tensor
    n_rewrite: int
    target_len: int
    kl_rows: torch.Tensor
    kl_pos: torch.Tensor

    @property
    def ids(self):  # right-padded full sequences, for passes without a prefix cache
        return self._full[0]

    @property
    def mask(self):
        return self._full[1]


def build_batch(tok, request: EditRequest, templates, device) -> EditBatch:
    target = target_ids(tok, request.target_new)
    seqs, lookup, rows, pos, labels = [], [], [], [], []
    for row, template in enumerate(templates):
        prompt_ids = encode(tok, request.in_template(template))
        seqs.append(prompt_ids + target[:-1])
        lookup.append(subject_last_index(tok, template, request))
        for j, label in enumerate(target):
            rows.append(row)
            pos.append(len(prompt_ids) - 1 + j)
            labels.append(label)
    kl_rows, kl_pos = [], []
    for essence in ESSENCE_PROMPTS:
        essence_request = EditRequest(prompt=essence, subject=request.subject, target_new=request.target_new)
        ids = encode(tok, fill(essence, request.subject))
        kl_rows.append(len(seqs))
        kl_pos.append(len(ids) - 1)
        seqs.append(ids)
        lookup.append(subject_last_index(tok, "{}", essence_request))
    t = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    batch = EditBatch(seqs, t(lookup), t(rows), t(pos), t(labels), len(templates), len(target), t(kl_rows), t(kl_pos))
    batch._full = pad_batch(tok, seqs, device)
    return batch


@dataclass
class _SplitBatch:
    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    prefix_pos: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_pos: torch.Tensor
    full_mask: torch.Tensor
    lookup: torch.Tensor  # always column 0 of the suffix


def split_batch(tok, batch: EditBatch, device) -> _SplitBatch | None:
    """None when some row's subject starts the text (no prefix to cache)."""
    lookups = batch.lookup.tolist()
    if min(lookups) < 1:
        return None
    width_p = max(lookups)
    width_s = max(len(s) - l for s, l in zip(batch.seqs, lookups))
    n = len(batch.seqs)
    prefix_ids = torch.full((n, width_p), pad_id(tok), dtype=torch.long)
    prefix_mask = torch.zeros((n, width_p), dtype=torch.long)
    prefix_pos = torch.zeros((n, width_p), dtype=torch.long)
    suffix_ids = torch.full((n, width_s), pad_id(tok), dtype=torch.long)
    suffix_mask = torch.zeros((n, width_s), dtype=torch.long)
    suffix_pos = torch.zeros((n, width_s), dtype=torch.long)
    for row, (seq, split) in enumerate(zip(batch.seqs, lookups)):
        prefix_ids[row, width_p - split:] = torch.tensor(seq[:split])
        prefix_mask[row, width_p - split:] = 1
        prefix_pos[row, width_p - split:] = torch.arange(split)
        rest = seq[split:]
        suffix_ids[row, : len(rest)] = torch.tensor(rest)
        suffix_mask[row, : len(rest)] = 1
        suffix_pos[row] = torch.arange(split, split + width_s)
    to = lambda x: x.to(device)  # noqa: E731
    return _SplitBatch(to(prefix_ids), to(prefix_mask), to(prefix_pos), to(suffix_ids), to(suffix_pos),
                       to(torch.cat([prefix_mask, suffix_mask], dim=1)), torch.zeros(n, dtype=torch.long, device=device))


@contextlib.contextmanager
def frozen_parameters(model):
    """No parameter gradients while δ is optimised (they would cost a third of the backward pass)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _AllRecorded(Exception):
    pass


@contextlib.contextmanager
def replay_lower_layers(model, layer: int, run):
    """Call ``run()`` once, then make blocks 0..layer-1 return what they returned then."""
    blocks = decoder_layers(model)
    recorded, handles = {}, []
    for j in range(layer):
        def hook(module, args, output, _j=j):
            recorded[_j] = output
            if _j == layer - 1:
                raise _AllRecorded  # the blocks above are not needed for the record
        handles.append(blocks[j].register_forward_hook(hook))
    try:
        with torch.no_grad():
            if layer:
                run()
    except _AllRecorded:
        pass
    finally:
        for h in handles:
            h.remove()
    for j in range(layer):
        blocks[j].forward = (lambda *a, _out=recorded[j], **k: _out)
    try:
        yield
    finally:
        for j in range(layer):
            del blocks[j].forward  # back to the class's forward


class SuffixRunner:
    """Runs the edited part of the batch: the suffix after a cached prefix, or the whole batch.

    Build it once per request (before any hook is registered) and share it across candidate layers:
    the batch and the prefix cache depend only on the request and the unedited model.
    """

    @classmethod
    def for_request(cls, model, tok, request: EditRequest, templates) -> "SuffixRunner":
        device = input_device(model)
        return cls(model, tok, build_batch(tok, request, templates, device), device)

    def __init__(self, model, tok, batch: EditBatch, device):
        self.model, self.batch = model, batch
        self.groups = 1  # copies of the batch; row r of copy g is row r·groups + g
        self.row_lookup = batch.lookup  # subject-last index per row, in the full sequence
        self.ids, self.mask = batch.ids, batch.mask
        self.split = split_batch(tok, batch, device)
        self.cache = None
        if self.split is not None:
            with torch.no_grad():
                self.cache = output_cache(model.base_model(
                    input_ids=self.split.prefix_ids, attention_mask=self.split.prefix_mask,
                    position_ids=self.split.prefix_pos, use_cache=True))

    def repeated(self, groups: int) -> "SuffixRunner":
        """This (single-copy) batch ``groups`` times over, to optimise one δ per copy in a single pass.

        The prefix cache is repeated, not recomputed: the prefix is the unedited model's in every copy.
        """
        if groups == 1:
            return self
        twin = copy.copy(self)
        twin.groups = groups
        tile = lambda x: x.repeat_interleave(groups, dim=0)  # noqa: E731
        twin.row_lookup, twin.ids, twin.mask = tile(self.row_lookup), tile(self.ids), tile(self.mask)
        if self.split is not None:
            twin.split = _SplitBatch(*(tile(getattr(self.split, f.name)) for f in dataclasses.fields(_SplitBatch)))
            twin.cache = repeat_cache(self.cache, groups)
        return twin

    def group_rows(self, rows: torch.Tensor, group: int) -> torch.Tensor:
        """Indices of the batch's ``rows`` in copy ``group``."""
        return rows * self.groups + group

    @property
    def lookup(self):
        """Per row, the column of the subject's last token in what ``hidden`` runs."""
        return self.row_lookup if self.split is None else self.split.lookup

    def hidden(self):
        if self.split is None:
            return self.model.base_model(input_ids=self.ids, attention_mask=self.mask, use_cache=False).last_hidden_state
        return self.model.base_model(input_ids=self.split.suffix_ids, attention_mask=self.split.full_mask,
                                     position_ids=self.split.suffix_pos, use_cache=True,
                                     **cache_kwargs(self.model.base_model, copy.deepcopy(self.cache))).last_hidden_state

    def hidden_at(self, rows, positions):
        """The last hidden state only at the (row, full-sequence position) pairs the loss reads."""
        hidden = self.hidden()
        if self.split is not None:
            positions = positions - self.row_lookup[rows]
        return hidden[rows.to(hidden.device), positions.to(hidden.device)]


@contextlib.contextmanager
def add_at_positions(module, rows: torch.Tensor, positions: torch.Tensor, delta_fn):
    """Add ``delta_fn()`` to ``module``'s output at (rows, positions)."""
    def hook(mod, args, output):
        delta = delta_fn()
        add = torch.zeros_like(output)
        add[rows.to(output.device), positions.to(output.device)] = delta.to(output.dtype).to(output.device)
        return output + add
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
