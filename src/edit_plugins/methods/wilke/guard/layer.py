"""One layer's guard: its earlier keys, and the direction u of a new rank-one edit that leaves them mapped
where they were (exact, regularised or bounded), with repair of keys that slipped.

For an edit (k, r = v* − Wk) at a layer whose earlier edits had keys k_1..k_n, the minimum-C-norm ΔW
with ΔW k = r and ΔW k_j = 0 is rank one: r uᵀ with u = C⁻¹k_⊥ / (kᵀC⁻¹k_⊥), where k_⊥ is k less its
projection on the k_j in the inner product ⟨a, b⟩ = aᵀC⁻¹b. So p(k, k_j) = uᵀk_j / uᵀk = 0 for every
earlier j. Derivation, thresholds and design: docs/interference_guard.md.

This keeps a C⁻¹-orthonormal basis of the earlier keys, grown one key at a time (O(n·d) per edit besides
one C⁻¹ product), and their Gram matrix G = Σ k_j k_jᵀ. Where a new key is nearly in the basis's span,
or the keys fill most of the layer's width, it falls back to the regularised direction u = (C + λG)⁻¹k̄,
from a Cholesky factor made again when G has changed (O(d³), once per edit at most). The keys themselves
are kept only where the exact basis can use them (guard_max_keys_fraction > 0): the soft guard holds G and
each key's source, O(d²) memory per layer however many edits it holds (and, to repair, each key's value).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from ....editing.layers import weight_digest
from .settings import GuardSettings
from .space import MetricSpace

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Direction:
    u: torch.Tensor  # float32, (d,)
    # "plain" (nothing to guard), "guard" (exact), "fallback" (regularised, weight λ), "bounded" (regularised,
    # the largest weight under the cost bound), "unguarded" (ROME's own: no weight is under the bound)
    path: str
    residual_ratio: float  # ρ of the update taken: it is 1/ρ times the unguarded one in C-norm
    keys_guarded: int
    fallback_weight: float | None = None  # λ, on the regularised paths
    exact_ratio: float | None = None  # the exact guard's ρ, where another path was taken: why it was
    # RMS over the guarded keys k_j of the predicted interference p_j = uᵀk_j / uᵀk, from G alone
    # (uᵀGu = Σ_j (uᵀk_j)²): of the update taken, and of the unguarded C⁻¹k̄ for comparison
    interference_rms: float | None = None
    unguarded_interference_rms: float | None = None

    def report(self) -> dict:
        out = {"path": self.path, "residual_ratio": self.residual_ratio, "keys_guarded": self.keys_guarded}
        for name in ("fallback_weight", "exact_ratio", "interference_rms", "unguarded_interference_rms"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


class LayerGuard:
    """One layer's earlier keys and the factors the guarded direction needs."""

    def __init__(self, module: str, layer: int, space: MetricSpace, settings: GuardSettings):
        self.module, self.layer, self.space, self.settings = module, layer, space, settings
        # k_j as last computed, and v_j = W k_j right after k_j's edit (what k_j should map to); empty for
        # the soft guard, which needs only G
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # to recompute k_j: (prompt with "{}", subject, target, position), position None for the subject's
        # last token, else an index into the prompt-and-target tokens that scoring reads
        self.sources: list[tuple[str, str, str, int | None]] = []
        self.edit_ids: list[int] = []  # the edit (its position in the model's edit log) each key belongs to
        self.fresh_at = 0  # position in the model's edit log at which every key here was current
        self.snapshots: list[tuple[int, str]] = []  # (number of keys, digest of W) after each change
        self.needs_keys = False  # G lost (keys undone without keys kept): recompute from the sources first
        self._reset_factors()

    @property
    def stores_keys(self) -> bool:
        return self.settings.guard_max_keys_fraction > 0

    @property
    def stores_values(self) -> bool:
        """The exact guard's keys come with their values; the soft guard keeps values only to repair."""
        return self.stores_keys or self.settings.guard_repair

    @property
    def count(self) -> int:
        """Keys guarded."""
        return len(self.sources)

    def _reset_factors(self):
        # Buffers with room to grow (doubled when full): appending a row by concatenation would copy the
        # factors at every key, O(n²d) and O(n³) over a rebuild of n keys.
        self._basis = torch.zeros(0, self.space.dim, dtype=torch.float64)
        self._metric_basis = torch.zeros_like(self._basis)
        self._triangular = torch.zeros(0, 0, dtype=torch.float64)
        self.in_basis: list[int] = []  # key index of each basis row
        self.gram = None  # G = Σ z_j z_jᵀ over every key (z: in u's space), once there is one
        self.fallback_factor = None  # Cholesky factor of M⁻¹ + λG; dropped when G changes
        self.pencil = None  # (P, s) of the bounded fallback for G as it is; dropped when G changes

    @property
    def basis(self) -> torch.Tensor:
        """Rows b_i: ⟨b_i, b_j⟩_M = δ_ij."""
        return self._basis[: len(self.in_basis)]

    @property
    def metric_basis(self) -> torch.Tensor:
        """Rows M b_i."""
        return self._metric_basis[: len(self.in_basis)]

    @property
    def triangular(self) -> torch.Tensor:
        """R: basis keys z_j = Σ_i R_ij b_i."""
        n = len(self.in_basis)
        return self._triangular[:n, :n]

    # -- the maths ---------------------------------------------------------------------------------
    def _to_device(self, device):
        if self._basis.device != device:
            self._basis, self._metric_basis = self._basis.to(device), self._metric_basis.to(device)
            self._triangular = self._triangular.to(device)

    def _grow(self, rows: int, device) -> None:
        n = len(self.in_basis)
        basis = torch.zeros(rows, self.space.dim, dtype=torch.float64, device=device)
        metric_basis, triangular = torch.zeros_like(basis), torch.zeros(rows, rows, dtype=torch.float64, device=device)
        basis[:n], metric_basis[:n], triangular[:n, :n] = self.basis, self.metric_basis, self.triangular
        self._basis, self._metric_basis, self._triangular = basis, metric_basis, triangular

    def _orthogonal_part(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z less its M-projection on the basis (classical Gram–Schmidt, twice), and the coefficients."""
        if not len(self.basis):
            return z, z.new_zeros(0)
        self._to_device(z.device)
        c1 = self.metric_basis @ z
        z1 = z - self.basis.T @ c1
        c2 = self.metric_basis @ z1
        return z1 - self.basis.T @ c2, c1 + c2

    def _capacity_left(self) -> bool:
        return len(self.in_basis) < self.settings.guard_max_keys_fraction * self.space.dim

    def direction(self, key: torch.Tensor, direction_key: torch.Tensor) -> Direction:
        """u for an edit whose own key is ``key`` and whose direction key is ``direction_key`` (k̄)."""
        z = self.space.project(direction_key)
        z_key = self.space.project(key)
        Mz = self.space.metric(z)
        if not self.settings.interference_guard or not self.count:
            return Direction(self.space.lift(Mz).float(), "plain", 1.0, 0)
        u, path, ratio, weight, exact_ratio = self._guarded(z, z_key, Mz)
        return Direction(self.space.lift(u).float(), path, ratio, self.count, weight, exact_ratio,
                         self._interference_rms(u, z_key), self._interference_rms(Mz, z_key))

    def _interference_rms(self, u: torch.Tensor, z_key: torch.Tensor) -> float | None:
        along = abs(float(z_key @ u))
        spread = max(float(u @ (self._gram(u.device) @ u)), 0.0) / self.count
        return None if along == 0 else spread ** 0.5 / along

    def _guarded(self, z: torch.Tensor, z_key: torch.Tensor, Mz: torch.Tensor):
        """(u in u's space, path, ρ, λ or None, the exact guard's ρ where another path was taken or None)."""
        perp, _ = self._orthogonal_part(z)
        M_perp = self.space.metric(perp)
        # ρ = (‖u‖_C/|kᵀu|) unguarded ÷ guarded, with ‖Mz‖_C = ‖z‖_M
        norm_z, norm_perp = float(z @ Mz) ** 0.5, max(float(perp @ M_perp), 0.0) ** 0.5
        along, along_perp = float(z_key @ Mz), float(z_key @ M_perp)
        ratio = 0.0 if norm_perp == 0 or along == 0 else abs(along_perp / along) * norm_z / norm_perp
        if ratio >= self.settings.guard_min_residual and self._capacity_left():
            return M_perp, "guard", ratio, None, None
        u = torch.cholesky_solve(z.unsqueeze(1), self._fallback_factor(z.device)).squeeze(1)
        plain_cost = norm_z / abs(along) if along else float("inf")
        fallback_ratio = self._fallback_ratio(u, z, z_key, plain_cost)
        if fallback_ratio >= self.settings.guard_min_residual:
            return u, "fallback", fallback_ratio, self.settings.guard_fallback_weight, ratio
        # The key all but repeats earlier ones (same subject, same words before it, or keys filling the
        # layer): holding them at λ would take an update over 1/min_residual times ROME's. The largest λ
        # within that bound damps the interference as much as an update of that size can.
        u, weight, bounded_ratio = self._bounded_fallback(z, z_key, plain_cost)
        if u is None:
            return Mz, "unguarded", 1.0, None, ratio
        return u, "bounded", bounded_ratio, weight, ratio

    def _bounded_fallback(self, z: torch.Tensor, z_key: torch.Tensor, plain_cost: float):
        """u = (M⁻¹ + λZᵀZ)⁻¹z for the largest λ ≤ fallback_weight whose ρ is at least min_residual, found by
        bisection on log λ. With M⁻¹ = LLᵀ and L⁻¹ZᵀZL⁻ᵀ = Q diag(s) Qᵀ, P = L⁻ᵀQ: u(λ) = P (y / (1 + λs))
        with y = Pᵀz, its C-norm is ‖y / (1 + λs)‖, so each λ costs O(d) once P is built (O(d³), once per
        change of the keys). Returns (u, λ, ρ), or (None, 0, ρ) when no λ > 0 is within the bound."""
        P, s = self._pencil(z.device)
        y, y_key = P.T @ z, P.T @ z_key

        def ratio(lam: float) -> float:
            w = y / (1 + lam * s)
            along = abs(float(y_key @ w))
            return 0.0 if along == 0 else plain_cost * along / float(w.norm())

        floor = self.settings.guard_min_residual
        high = self.settings.guard_fallback_weight
        low = high
        for _ in range(24):  # down by decades until within the bound
            low /= 10
            if ratio(low) >= floor:
                break
        else:
            return None, 0.0, ratio(low)
        for _ in range(40):  # ratio(low) ≥ floor > ratio(high)
            middle = (low * high) ** 0.5
            low, high = (middle, high) if ratio(middle) >= floor else (low, middle)
        return P @ (y / (1 + low * s)), low, ratio(low)

    def _pencil(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pencil is None:
            L = self.space.metric_inverse_cholesky(device)
            left = torch.linalg.solve_triangular(L, self._gram(device), upper=False)  # L⁻¹G
            s, Q = torch.linalg.eigh(torch.linalg.solve_triangular(L, left.T, upper=False))  # L⁻¹GL⁻ᵀ
            self.pencil = (torch.linalg.solve_triangular(L.T, Q, upper=True), s.clamp_min(0))
        P, s = self.pencil
        return P.to(device), s.to(device)

    def _gram(self, device) -> torch.Tensor:
        if self.gram is None:
            self.gram = torch.zeros(self.space.dim, self.space.dim, dtype=torch.float64, device=device)
        self.gram = self.gram.to(device)
        return self.gram

    def _fallback_ratio(self, u: torch.Tensor, z: torch.Tensor, z_key: torch.Tensor, plain_cost: float) -> float:
        """ρ of the fallback's u = A⁻¹z: ROME's cost ‖u‖_C/|kᵀu| over the fallback's. With A = M⁻¹ + λG,
        ‖u‖²_C = uᵀAu − λuᵀGu = zᵀu − λuᵀGu, so no inverse of M is needed."""
        c_norm_sq = max(float(z @ u) - self.settings.guard_fallback_weight * float(u @ self._gram(z.device) @ u), 0.0)
        along = abs(float(z_key @ u))
        return 0.0 if along == 0 else plain_cost / (c_norm_sq ** 0.5 / along)

    def _fallback_factor(self, device) -> torch.Tensor:
        """L_A with L_A L_Aᵀ = M⁻¹ + λG: made from G as it is, so a resumed run has the same numbers."""
        if self.fallback_factor is None:
            A = self.space.metric_inverse().to(device) + self.settings.guard_fallback_weight * self._gram(device)
            self.fallback_factor = torch.linalg.cholesky(A)
        return self.fallback_factor.to(device)

    def _admit(self, rows: torch.Tensor, first: int) -> None:
        """Add keys ``first``, ``first`` + 1, ... (rows of ``rows``, in u's space) to G, and grow the basis
        by the part of each not yet in its span (unless nearly dependent, or the basis is full)."""
        if not self.settings.interference_guard or not len(rows):
            return
        self.pencil, self.fallback_factor = None, None
        self._gram(rows.device).addmm_(rows.T, rows)  # one product: a rank-one update per key is memory-bound
        for i, z in enumerate(rows):
            if not self._capacity_left():
                break
            perp, coefficients = self._orthogonal_part(z)
            norm_perp = max(float(perp @ self.space.metric(perp)), 0.0) ** 0.5
            norm_z = float(z @ self.space.metric(z)) ** 0.5
            if norm_z > 0 and norm_perp >= self.settings.guard_min_residual * norm_z:
                n = len(self.in_basis)
                self._to_device(z.device)
                if n == len(self._basis):
                    self._grow(max(n + 1, min(2 * n, self.space.dim), 16), z.device)
                self._triangular[:n, n], self._triangular[n, n] = coefficients, norm_perp
                self._basis[n] = perp / norm_perp
                self._metric_basis[n] = self.space.metric(perp) / norm_perp
                self.in_basis.append(first + i)

    def _rebuild(self, keys: list[torch.Tensor], device) -> None:
        """The factors from the keys (one per source); the keys are kept only where the exact basis uses
        them."""
        self._reset_factors()
        self.needs_keys = False
        if keys:
            self._admit(self.space.project(torch.stack(keys).to(device)), 0)
        self.keys = list(keys) if self.stores_keys else []
        if not self.stores_values:
            self.values = []

    def _remake(self, device) -> None:
        """The factors after keys were dropped: from the keys left, or (soft guard) from their sources later."""
        if self.stores_keys:
            self._rebuild(self.keys, device)
        else:
            self._lose_keys()

    def _lose_keys(self) -> None:
        """Soft guard, keys undone: G cannot be taken apart, so it is made again from the sources, on the
        model as it is, before the next use (ModelGuard.prepare)."""
        self._reset_factors()
        self.needs_keys = bool(self.sources)

    # -- the edit's life ---------------------------------------------------------------------------
    def record(self, keys, values, sources: list[tuple], edit_ids: list[int], weight: torch.Tensor,
               log_position: int) -> None:
        """Guard these keys from now on (an edit's own, once applied, or earlier edits' in scope "model")."""
        if not self.count:
            self.fresh_at = log_position
        first = self.count
        keys = [key.detach().float().clone() for key in keys]
        for key, value, source, edit_id in zip(keys, values, sources, edit_ids, strict=True):
            if self.stores_keys:
                self.keys.append(key)
            if self.stores_values:
                self.values.append(value.detach().float().clone())
            self.sources.append(source)
            self.edit_ids.append(edit_id)
        if keys:
            self._admit(self.space.project(torch.stack(keys).to(weight.device)), first)
        self.snapshots.append((self.count, weight_digest(weight)))

    def sync(self, weight: torch.Tensor) -> list[int]:
        """Follow the weights back if the caller restored them (EasyEdit's weights_copy): keep only the
        keys of edits still in them. Returns the edit ids whose keys were dropped."""
        if not self.snapshots:
            return []
        digest = weight_digest(weight)
        if digest == self.snapshots[-1][1]:
            return []
        for i in range(len(self.snapshots) - 1, -1, -1):
            if self.snapshots[i][1] == digest:
                n = self.snapshots[i][0]
                del self.snapshots[i + 1:]
                break
        else:
            LOG.warning("%s changed outside the interference guard; its %d earlier keys stay guarded",
                        self.module, self.count)
            self.snapshots.append((self.count, digest))
            return []
        dropped = self.edit_ids[n:]
        if n < self.count:
            self.keep(n, weight.device)
        return dropped

    def keep(self, n: int, device) -> None:
        """Only the first n keys."""
        self.keys, self.values, self.sources, self.edit_ids = (self.keys[:n], self.values[:n], self.sources[:n],
                                                                self.edit_ids[:n])
        self._remake(device)

    def forget(self, edit_ids: set, device) -> None:
        """Drop the keys of these edits (undone at another layer), wherever they are in the list."""
        kept = [i for i, e in enumerate(self.edit_ids) if e not in edit_ids]
        if len(kept) == self.count:
            return
        self.snapshots = [(sum(1 for i in kept if i < n), digest) for n, digest in self.snapshots]
        if self.keys:
            self.keys = [self.keys[i] for i in kept]
        if self.values:
            self.values = [self.values[i] for i in kept]
        self.sources, self.edit_ids = [self.sources[i] for i in kept], [self.edit_ids[i] for i in kept]
        self._remake(device)

    def replace_keys(self, keys: torch.Tensor, log_position: int, device) -> None:
        """The keys recomputed on the model as it is now (one per source)."""
        self.fresh_at = log_position
        self._rebuild([k.float().clone() for k in keys], device)

    def repair_update(self, weight_out_in: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """ΔW that maps the slipped keys (``keys``: all of them as they are now, one per source) back to their
        values, and holds the rest where they are. Exact guard: ΔW = Σ_j (v_j − W k_j) u_jᵀ over the slipped
        basis keys, with u_jᵀk_i = δ_ij from the dual basis u_j = Σ_l (R⁻¹)_jl M b_l, so the other basis keys
        do not move. Soft guard: the least-squares form, ΔW = λ TᵀZ(M⁻¹ + λG)⁻¹, with T the residuals of the
        slipped keys (0 for the others), which minimises ‖ΔW‖²_C + λ Σ_j ‖ΔW k_j − t_j‖² over all held keys."""
        W = weight_out_in.detach().float()
        if not self.values:
            return None, {"slipped": 0}
        if len(self.values) != self.count:  # a state saved without repair, resumed with it
            LOG.warning("%s: %d values for %d keys; no repair", self.module, len(self.values), self.count)
            return None, {"slipped": 0}
        keys, values = keys.float().to(W.device), torch.stack(self.values).to(W.device)
        residuals = values - keys @ W.T
        drift = residuals.norm(dim=1) / values.norm(dim=1).clamp_min(1e-12)
        info = {"drift_median": float(drift.median()), "drift_max": float(drift.max())}
        if self.stores_keys:  # only basis keys can be moved without moving the others
            in_basis = torch.tensor(self.in_basis, dtype=torch.long, device=W.device)
            slipped = torch.nonzero(drift[in_basis] > self.settings.guard_repair_threshold).flatten()
        else:
            slipped = torch.nonzero(drift > self.settings.guard_repair_threshold).flatten()
        info["slipped"] = int(len(slipped))
        if not len(slipped):
            return None, info
        if self.stores_keys:
            R = self.triangular.to(W.device)
            selector = torch.zeros(len(R), len(slipped), dtype=torch.float64, device=W.device)
            selector[slipped, torch.arange(len(slipped), device=W.device)] = 1.0
            rows = torch.linalg.solve_triangular(R.T, selector, upper=False).T  # rows of R⁻¹ for the slipped keys
            duals = self.space.lift((rows @ self.metric_basis.to(W.device)).T).T.float()  # (|S|, d)
            delta = residuals[in_basis[slipped]].T @ duals
        else:
            z = self.space.project(keys[slipped])  # (|S|, m)
            solved = torch.cholesky_solve(z.T @ residuals[slipped].double(), self._fallback_factor(W.device))  # (m, out)
            delta = (self.settings.guard_fallback_weight * self.space.lift(solved)).T.float()
        # what is left: the soft form cannot map more keys than the layer is wide each to its own value
        left = (residuals - keys @ delta.T).norm(dim=1) / values.norm(dim=1).clamp_min(1e-12)
        info.update(drift_median_after=float(left.median()), drift_max_after=float(left.max()))
        return delta, info

    def nbytes(self) -> int:
        tensors = self.keys + self.values + [self._basis, self._metric_basis, self._triangular]
        tensors += [t for t in (self.gram, self.fallback_factor, *(self.pencil or ())) if t is not None]
        return self.space.nbytes() + sum(t.numel() * t.element_size() for t in tensors)
