"""The adaptor module: h(x) = FFN(x) + λ Σ_i g(i|x) E_i(x) around one frozen FFN.

Routing (our reading of KV anchor routing, see docs/lemoe.md):
- features: the FFN input, standardised by a mean and std measured on reference text, then
  L2-normalised, so a dot product is a cosine that is not dominated by the common direction;
- anchors: each expert keeps the feature of each of its edits' subjects (subject-last token);
- the route of position t is the expert of the anchor that best matches any position 1..t of the
  input (the first token is the attention sink and looks alike in every text). Once the subject
  has been read the route stays, for the rest of the prompt and the answer. It depends only on
  tokens up to t, so a teacher-forced training pass and token-by-token generation route alike;
- below ``routing_threshold`` no expert is used and the output is the FFN's, bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...transformers_compat import cache_in_call, cached_length


class Expert(nn.Module):
    """E(x) = B·SiLU(A·x). B starts at zero, so a new expert changes nothing until trained."""

    def __init__(self, hidden: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        nn.init.normal_(self.down.weight, std=hidden ** -0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.up(F.silu(self.down(x)))


class AnchorRouter(nn.Module):
    """Hard top-1 routing by the best-matching anchor seen so far in the sequence
    (``span="token"``: by each position's own best match only)."""

    def __init__(self, hidden: int, threshold: float, span: str = "sequence"):
        super().__init__()
        self.threshold, self.span = threshold, span
        self.register_buffer("feature_mean", torch.zeros(hidden))
        self.register_buffer("feature_std", torch.ones(hidden))
        self.register_buffer("anchors", torch.zeros(0, hidden))  # unit-norm features
        self.register_buffer("anchor_expert", torch.zeros(0, dtype=torch.long))
        # Per anchor: the cosine it must beat besides the threshold (its best match in generic text; -1: none).
        self.register_buffer("anchor_floor", torch.zeros(0))
        self._running = None  # (length so far, best margin per row and anchor) for cached decoding

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize((x.float() - self.feature_mean) / self.feature_std, dim=-1)

    def add_anchors(self, features: torch.Tensor, expert: int, floors: torch.Tensor | None = None) -> None:
        device = self.anchors.device
        self.anchors = torch.cat([self.anchors, features.to(self.anchors)])
        self.anchor_expert = torch.cat([self.anchor_expert, torch.full((len(features),), expert,
                                                                       dtype=torch.long, device=device)])
        floors = torch.full((len(features),), -1.0) if floors is None else floors
        self.anchor_floor = torch.cat([self.anchor_floor, floors.to(self.anchor_floor)])

    def drop_expert(self, expert: int) -> None:
        keep = self.anchor_expert != expert
        self.anchors, self.anchor_expert = self.anchors[keep], self.anchor_expert[keep]
        self.anchor_floor = self.anchor_floor[keep]

    def best_match(self, x: torch.Tensor, valid: torch.Tensor, past: int, decoding: bool,
                   threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(best margin, anchor index) per position, over anchors and positions up to it: a position's cosine to an
        anchor less what the anchor requires (the larger of ``threshold``, default the router's, and its floor).
        A margin >= 0 routes."""
        required = self.anchor_floor.clamp_min(self.threshold if threshold is None else threshold)
        sims = self.features(x) @ self.anchors.T - required  # (B, T, A)
        sims = sims.masked_fill(~valid.unsqueeze(-1), -4.0)  # below any margin: cosines and thresholds lie in [-1, 1]
        if self.span == "token":
            return newest_max(sims)
        running = self._running if decoding else None
        if past and running is not None and running[0] == past and running[1].shape == sims[:, 0].shape:
            best = torch.cat([running[1].unsqueeze(1), sims], dim=1).cummax(dim=1).values[:, 1:]
        else:
            best = sims.cummax(dim=1).values
        if decoding:
            self._running = (past + x.shape[1], best[:, -1].detach())
        return newest_max(best)

    def forward(self, x, valid, past=0, decoding=False):
        """Per position: expert index (-1: none) and gate (1 where routed)."""
        if len(self.anchors) == 0:
            route = torch.full(x.shape[:2], -1, dtype=torch.long, device=x.device)
            return route, torch.zeros(x.shape[:2], device=x.device)
        best, index = self.best_match(x, valid, past, decoding)
        route = torch.where(best >= 0, self.anchor_expert[index], torch.full_like(index, -1))
        return route, (route >= 0).to(x.dtype)


def newest_max(sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last (anchor) axis, ties to the newest anchor: editing a fact again supersedes the earlier edit
    (its prompt matches both anchors exactly)."""
    best, flipped = sims.flip(-1).max(dim=-1)
    return best, sims.shape[-1] - 1 - flipped


class SoftmaxRouter(nn.Module):
    """Ablation: a plain learned router, g(·|x) = softmax(W x / T), over every expert, every token."""

    def __init__(self, hidden: int, temperature: float):
        super().__init__()
        self.hidden, self.temperature = hidden, temperature
        self.rows = nn.ParameterList()

    def add_expert(self, device) -> None:
        self.rows.append(nn.Parameter(torch.zeros(self.hidden, device=device)))

    def drop_last(self) -> None:
        del self.rows[len(self.rows) - 1]

    def gates(self, x):
        logits = x @ torch.stack(list(self.rows)).to(x.dtype).T  # (B, T, E)
        return torch.softmax(logits / self.temperature, dim=-1)


class RoutingContext:
    """What the FFN cannot see but routing needs: the attention mask and how many tokens are cached.

    A forward pre-hook on the base model records them for the adaptor (one per model).
    """

    def __init__(self):
        self.attention_mask = None
        self.past = 0

    def __call__(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        self.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self.past = cached_length(cache_in_call(kwargs))

    def valid_and_past(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return valid_positions(x, self.attention_mask, self.past)


def valid_positions(x: torch.Tensor, mask, past: int = 0) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Positions that may match an anchor (real tokens after each row's first), and the cached length."""
    batch, length = x.shape[:2]
    if mask is None or mask.shape[0] != batch or mask.shape[1] < length:
        valid = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        if past == 0:
            valid[:, 0] = False
        return valid, past
    mask = mask.to(x.device).bool()
    past = mask.shape[1] - length
    first_real = mask.long().argmax(dim=1, keepdim=True)  # left padding puts it after the pads
    columns = torch.arange(mask.shape[1], device=x.device).unsqueeze(0)
    valid = mask & (columns > first_real)
    return valid[:, past:], past


class LEMoELayer(nn.Module):
    """Wraps the frozen FFN ``base``; experts are added one per batch of edits."""

    def __init__(self, base: nn.Module, hidden: int, *, rank: int, scale: float, routing: str,
                 threshold: float, temperature: float, span: str = "sequence"):
        super().__init__()
        self.base = base
        self.hidden, self.rank, self.scale, self.routing = hidden, rank, scale, routing
        self.experts = nn.ModuleList()
        self.router = (AnchorRouter(hidden, threshold, span) if routing == "anchor"
                       else SoftmaxRouter(hidden, temperature))
        self.context = RoutingContext()
        self.last_routes = None  # the latest forward's per-position routes, for reports and tests
        # Set by injection.insert_adaptor: where the adaptor sits, and the base model's pre-hook that
        # feeds ``context`` (removed with the adaptor).
        self.module_name: str | None = None
        self.context_hook = None
        self.generic_features = None  # the reference text's routing features (injection.generic_features); not saved

    @property
    def config(self) -> dict:
        router = self.router
        return {"hidden": self.hidden, "rank": self.rank, "scale": self.scale, "routing": self.routing,
                "threshold": getattr(router, "threshold", None), "span": getattr(router, "span", None),
                "temperature": getattr(router, "temperature", None),
                "n_experts": len(self.experts)}

    def add_expert(self) -> int:
        ref = next(self.base.parameters())
        self.experts.append(Expert(self.hidden, self.rank).to(ref.device))
        if self.routing == "softmax":
            self.router.add_expert(ref.device)
        return len(self.experts) - 1

    def drop_last_expert(self) -> None:
        index = len(self.experts) - 1
        del self.experts[index]
        if self.routing == "anchor":
            self.router.drop_expert(index)
        else:
            self.router.drop_last()

    def added_output(self, x: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """λ Σ g(i|x) E_i(x) for (B, T, d) FFN inputs outside a model pass (mask: 2-D, None = no padding)."""
        return self.expert_output(x, valid_positions(x, attention_mask)[0], past=0, decoding=False)

    def expert_output(self, x: torch.Tensor, valid, past: int, decoding: bool) -> torch.Tensor:
        extra = torch.zeros_like(x)
        if not len(self.experts):
            return extra
        if self.routing == "softmax":
            gates = self.router.gates(x)
            for i, expert in enumerate(self.experts):
                extra = extra + gates[..., i : i + 1] * expert(x)
            self.last_routes = gates.argmax(-1)
            return self.scale * extra
        route, gate = self.router(x, valid, past, decoding)
        self.last_routes = route
        for i in route.unique().tolist():
            if i < 0:
                continue
            rows, cols = (route == i).nonzero(as_tuple=True)
            out = self.experts[i](x[rows, cols]) * gate[rows, cols].unsqueeze(-1)
            extra = extra.index_put((rows, cols), out)
        return self.scale * extra

    def forward(self, x, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        if not len(self.experts):
            return out
        valid, past = self.context.valid_and_past(x)
        extra = self.expert_output(x, valid, past, decoding=True)
        if self.routing == "anchor" and bool((self.last_routes < 0).all()):
            return out  # nothing routed: exactly the FFN's output
        return out + extra.to(out.dtype)
