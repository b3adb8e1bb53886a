"""The closed-form rank-one update  ΔW = (v* − W k)(C⁻¹k)ᵀ / (kᵀC⁻¹k)."""
from __future__ import annotations

import torch


class NonFiniteError(ArithmeticError):
    """v* or ΔW holds NaN or inf: the update is refused before any weight is written."""


def require_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"{what} is not finite (NaN or inf); no weight was written")
    return tensor


def update_direction(direction_key: torch.Tensor, c_inv: torch.Tensor | None) -> torch.Tensor:
    """u = C⁻¹k̄, the direction of the update's input side (k̄ itself when C = I)."""
    d = direction_key.float()
    return d if c_inv is None else c_inv.to(d.device).float() @ d


def direction_for_keys(keys: list[torch.Tensor], directions: list[torch.Tensor]) -> torch.Tensor:
    """u = Σ_b c_b u_b with k_aᵀu = 1 for every key k_a: a rank-one ΔW = r uᵀ then adds the same r at every
    one of them. With u_b = A⁻¹k_b (C⁻¹k_b, or the guard's (C + λG)⁻¹k_b) it is the least A-norm such u:
    c = S⁻¹1 with S_ab = k_aᵀu_b. S is solved by least squares, so keys that (nearly) repeat each other
    ask nothing more than one of them."""
    U = torch.stack([u.double() for u in directions], 1)
    K = torch.stack([k.to(U.device).double() for k in keys], 1)
    S = K.T @ U
    c = torch.linalg.lstsq(S, torch.ones(len(keys), 1, dtype=S.dtype, device=S.device), rcond=1e-8).solution
    return require_finite((U @ c).squeeze(1).float(), "the update direction u")


def rank_one_update(weight_out_in: torch.Tensor, key: torch.Tensor, target_value: torch.Tensor,
                    c_inv: torch.Tensor | None, direction_key: torch.Tensor | None = None,
                    direction: torch.Tensor | None = None) -> torch.Tensor:
    """The (out, in) update ΔW = (v* − Wk) uᵀ / (kᵀu) with u = C⁻¹k̄, which maps ``key`` exactly to v*.

    ``direction_key`` k̄ sets the update's direction (ROME: the key averaged over context templates,
    while ``key`` is the plain prompt's own key); it defaults to ``key``, the minimum C-norm update.
    ``c_inv`` None means C = I (no second-moment adjustment). ``direction`` gives u itself (the
    interference guard's), in place of C⁻¹k̄.
    """
    W = weight_out_in.detach().float()
    k = key.to(W.device).float()
    if direction is not None:
        u = direction.to(W.device).float()
    else:
        u = update_direction(k if direction_key is None else direction_key.to(W.device), c_inv)
    residual = require_finite(target_value.to(W.device).float(), "the target value v*") - W @ k
    return require_finite(torch.outer(residual, u) / torch.dot(k, u), "the rank-one update ΔW")

