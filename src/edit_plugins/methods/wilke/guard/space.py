"""Where the guarded direction u lives, and its metric: all of ℝᵈ with M = C⁻¹, or (with
``guard_preserved_knowledge``) C's low-variance eigen-directions, where C is diagonal."""
from __future__ import annotations

import torch

from .settings import GuardError, GuardSettings


class MetricSpace:
    """Where u lives. Full: all of ℝᵈ with the metric M = C⁻¹. Null space: coordinates z = U₀ᵀx on C's
    smallest eigen-directions U₀ (together a ``null_space_energy`` share of its trace), where C is diagonal
    (Λ₀) and M = Λ₀⁻¹."""

    def __init__(self, c_inv: torch.Tensor | None, width: int, settings: GuardSettings, device):
        self.width = width
        self.basis_vectors = None  # U₀ (d, m), null-space mode only
        if c_inv is None:
            self.metric_matrix, self.metric_diagonal = None, None  # M = I
        elif settings.guard_preserved_knowledge:
            mu, vectors = torch.linalg.eigh(c_inv.to(device).double())  # eigenvalues of C⁻¹ = 1/eigenvalues of C
            mu, vectors = mu.flip(0), vectors.flip(1)  # C's eigenvalues 1/μ, smallest first
            energy = torch.cumsum(1.0 / mu, 0) / (1.0 / mu).sum()
            keep = energy <= settings.guard_null_space_energy
            if not bool(keep.any()):
                raise GuardError(f"guard_null_space_energy {settings.guard_null_space_energy}: C's smallest eigen-direction "
                                 f"alone carries {float(energy[0]):.3g} of its trace; raise it to leave the update room")
            self.basis_vectors = vectors[:, keep].contiguous()
            self.metric_matrix, self.metric_diagonal = None, mu[keep].contiguous()
        else:
            self.metric_matrix, self.metric_diagonal = c_inv.to(device).double(), None
        self.dim = width if self.basis_vectors is None else self.basis_vectors.shape[1]
        self._inverse = None  # M⁻¹, built the first time the fallback is needed (it would be again at every edit)
        self._cholesky = None  # of M⁻¹, built the first time the bounded fallback is needed

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x in u's space; x is one vector (d,) or rows (n, d)."""
        x = x.double()
        return x if self.basis_vectors is None else x @ self.basis_vectors

    def lift(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.basis_vectors is None else self.basis_vectors @ z

    def metric(self, z: torch.Tensor) -> torch.Tensor:
        if self.metric_matrix is not None:
            return self.metric_matrix @ z
        return z if self.metric_diagonal is None else self.metric_diagonal * z

    def metric_inverse(self) -> torch.Tensor:
        """M⁻¹ (C as the edit uses it, damped), kept: only for building the fallback's factors."""
        if self._inverse is None:
            if self.metric_matrix is not None:
                self._inverse = torch.linalg.inv(self.metric_matrix)
            else:
                ones = torch.ones(self.dim, dtype=torch.float64)
                self._inverse = torch.diag(ones if self.metric_diagonal is None else 1.0 / self.metric_diagonal)
        return self._inverse

    def metric_inverse_cholesky(self, device) -> torch.Tensor:
        """L with M⁻¹ = LLᵀ, kept: the layer's metric does not change."""
        if self._cholesky is None:
            self._cholesky = torch.linalg.cholesky(self.metric_inverse().to(device))
        return self._cholesky.to(device)

    def nbytes(self) -> int:
        tensors = (self.metric_matrix, self.metric_diagonal, self.basis_vectors, self._inverse, self._cholesky)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)
