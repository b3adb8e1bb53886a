"""Token log-probabilities and KL terms under the LM head, with the head's weight read once per step.

Every loss that reads the head here is built from log Z(h) = log Σ_v exp(w_v·h + b_v), a few logits
and fixed expectations, and ∂ log Z/∂h = E_p[w]. One pass over the vocabulary rows with a running
maximum (an online softmax) gives log Z and E_p[w] together, so the backward pass has nothing left to
read. On SmolLM2 the head (49,152 × 576) is the largest matrix in the model; logits from
``head(h)`` and their gradient read it twice and cost about a fifth of each v* optimisation step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Vocabulary rows per chunk on the CPU: 2048 × d floats stay in cache between the chunk's two products.
CPU_CHUNK_ROWS = 2048
GPU_HALF_CHUNK_ROWS = 8192


class _LogPartition(torch.autograd.Function):
    """log Z per row of ``hidden`` (M, d); the gradient E_p[w] is computed in the same pass.

    ``chunks`` yields the head in float32 pieces: (weight rows, their bias or None).
    """

    @staticmethod
    def forward(ctx, hidden, chunks):
        m = hidden.new_full((hidden.shape[0],), float("-inf"))
        total = hidden.new_zeros(hidden.shape[0])
        expected_w = hidden.new_zeros(hidden.shape) if ctx.needs_input_grad[0] else None
        for w, b in chunks:
            logits = hidden @ w.t() if b is None else hidden @ w.t() + b
            m_new = torch.maximum(m, logits.amax(dim=1))
            rescale = torch.exp(m - m_new)
            e = torch.exp(logits - m_new[:, None])
            total = total * rescale + e.sum(dim=1)
            if expected_w is not None:
                expected_w = expected_w * rescale[:, None] + e @ w
            m = m_new
        if expected_w is not None:
            ctx.save_for_backward(expected_w / total[:, None])
        return m + total.log()

    @staticmethod
    def backward(ctx, grad):
        (expected_w,) = ctx.saved_tensors
        return grad[:, None] * expected_w, None


@dataclass
class Reference:
    """A fixed distribution r per row, for KL(r ‖ p(h)) = Σ r log r − (h·E_r[w] + E_r[b]) + log Z(h)."""
    log_probs: torch.Tensor  # (M, V)
    neg_entropy: torch.Tensor  # (M,)  Σ r log r
    expected_w: torch.Tensor  # (M, d) E_r[w]
    expected_b: torch.Tensor  # (M,)   E_r[b]


class OutputHead:
    """The LM head of ``model`` as the losses see it. Falls back to plain logits for heads that are not
    one linear map (a logit soft-cap, say); every caller gets the same quantities either way."""

    def __init__(self, model, streamed: bool | None = None):
        head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        linear = isinstance(head, torch.nn.Linear) and not self.softcap
        self.module = head
        self.streamed = linear if streamed is None else streamed and linear
        self.weight = head.weight if linear else None
        self.bias = head.bias if linear else None

    def _plain_logits(self, hidden):
        logits = self.module(hidden.to(self.module.weight.dtype)).float()
        if self.softcap:  # Gemma-2 style: the model's forward caps the head's logits
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _device(self):
        return self.module.weight.device

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """The full log-softmax (M, V): for a reference distribution, not for a loss (it reads the head
        without the one-pass gradient)."""
        hidden = hidden.to(self._device())
        if not self.streamed:
            return F.log_softmax(self._plain_logits(hidden), dim=-1)
        hidden = hidden.float()
        logits = torch.cat([hidden @ w.t() if b is None else hidden @ w.t() + b
                            for w, b in self._float_chunks(hidden)], dim=1)
        return F.log_softmax(logits, dim=-1)

    def log_partition(self, hidden: torch.Tensor) -> torch.Tensor:
        """log Z(h) per row, (M,). Compute it once per step for all rows and pass it on: each call reads
        the whole head."""
        hidden = hidden.to(self._device())
        if not self.streamed:
            return torch.logsumexp(self._plain_logits(hidden), dim=-1)
        return _LogPartition.apply(hidden.float(), self._float_chunks(hidden))

    def _float_chunks(self, like: torch.Tensor):
        """The head as (weight rows, bias or None) in float32, one chunk of the vocabulary at a time.

        On the CPU chunks small enough to stay in cache; on a GPU the whole head at once, unless it is
        half precision: then float32 copies of chunks rather than of the whole head.
        """
        if like.device.type == "cpu":
            step = CPU_CHUNK_ROWS
        else:
            step = self.weight.shape[0] if self.weight.dtype == torch.float32 else GPU_HALF_CHUNK_ROWS
        for start in range(0, self.weight.shape[0], step):
            rows = slice(start, start + step)
            yield self.weight[rows].float(), None if self.bias is None else self.bias[rows].float()

    def _expected_rows(self, probs: torch.Tensor) -> torch.Tensor:
        """E_p[w] = probs @ W in float32, (M, d)."""
        out = probs.new_zeros(len(probs), self.weight.shape[1])
        start = 0
        for w, _ in self._float_chunks(probs):
            out += probs[:, start : start + len(w)] @ w
            start += len(w)
        return out

    def token_log_probs(self, hidden: torch.Tensor, labels: torch.Tensor, log_z=None) -> torch.Tensor:
        """log p(label_i | hidden_i), (M,), differentiable in ``hidden``."""
        hidden, labels = hidden.to(self._device()), labels.to(self._device())
        log_z = self.log_partition(hidden) if log_z is None else log_z
        if not self.streamed:
            return self._plain_logits(hidden).gather(1, labels[:, None])[:, 0] - log_z
        logits = (hidden.float() * self.weight[labels].float()).sum(dim=-1)
        return (logits if self.bias is None else logits + self.bias[labels].float()) - log_z

    def reference(self, hidden: torch.Tensor) -> Reference:
        """Freeze p(hidden) as the reference distribution of later KL terms."""
        with torch.no_grad():
            log_probs = self.log_probs(hidden)
            probs = log_probs.exp()
            neg_entropy = (probs * log_probs).sum(dim=-1)
            if not self.streamed:
                return Reference(log_probs, neg_entropy, None, None)
            expected_b = probs @ self.bias.float() if self.bias is not None else probs.new_zeros(len(probs))
            return Reference(log_probs, neg_entropy, self._expected_rows(probs), expected_b)

    def kl_from(self, reference: Reference, hidden: torch.Tensor, log_z=None) -> torch.Tensor:
        """KL(reference ‖ p(hidden)), averaged over rows (``F.kl_div``'s batchmean)."""
        hidden = hidden.to(self._device())
        log_z = self.log_partition(hidden) if log_z is None else log_z
        if not self.streamed:
            cross = (reference.log_probs.exp() * self._plain_logits(hidden)).sum(dim=-1)
        else:
            cross = (hidden.float() * reference.expected_w).sum(dim=-1) + reference.expected_b
        per_row = reference.neg_entropy - cross + log_z  # Σ r log r − Σ r log p, as Σ r = 1
        return per_row.sum() / len(per_row)
