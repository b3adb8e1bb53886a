"""p(k_i, k_j) = k_iᵀC⁻¹k_j / k_iᵀC⁻¹k_i: how much of an edit made at key k_i lands on key k_j
("Knowledge in Superposition", Hu et al. 2024)."""
from __future__ import annotations

import torch


def superposition_degree(c_inv_key_new: torch.Tensor, key_new: torch.Tensor, keys_old: torch.Tensor) -> torch.Tensor:
    """p(k_new, k_j) for every earlier key k_j (rows of ``keys_old``), given C⁻¹k_new."""
    return keys_old @ c_inv_key_new / torch.dot(c_inv_key_new, key_new)


def whitened_gram(keys: torch.Tensor, c_inv: torch.Tensor) -> torch.Tensor:
    """k_iᵀC⁻¹k_j for keys (N, d), in float64."""
    K = keys.double()
    return K @ c_inv.double() @ K.T


def superposition_degrees(gram: torch.Tensor) -> torch.Tensor:
    """The N×N matrix P[i, j] = p(k_i, k_j) from ``whitened_gram``'s matrix (unit diagonal)."""
    return gram / gram.diagonal()[:, None]
