"""The interference guard: rank-one updates that leave earlier edits' keys mapped where they were.

For an edit (k, r = v* − Wk) at a layer whose earlier edits had keys k_1..k_n, the minimum-C-norm ΔW
with ΔW k = r and ΔW k_j = 0 is rank one: r uᵀ with u = C⁻¹k_⊥ / (kᵀC⁻¹k_⊥), where k_⊥ is k less its
projection on the k_j in the inner product ⟨a, b⟩ = aᵀC⁻¹b. So p(k, k_j) = uᵀk_j / uᵀk = 0 for every
earlier j. Derivation, thresholds and design: docs/interference_guard.md.

Per guarded layer this keeps a C⁻¹-orthonormal basis of the earlier keys, grown one key at a time (O(n·d)
per edit besides one C⁻¹ product), and their Gram matrix G = Σ k_j k_jᵀ. Where a new key is nearly in the
basis's span, or the keys fill most of the layer's width, it falls back to the regularised direction
u = (C + λG)⁻¹k̄, from a Cholesky factor made again when G has changed (O(d³), once per edit at most).
The keys themselves are kept only where the exact basis can use them (max_keys_fraction > 0): the soft
guard holds G and each key's source, O(d²) memory per layer however many edits it holds (and, to repair,
each key's value).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import weakref

import torch

from ..errors import UserError
from .layers import add_to_weight, get_module, weight_digest, weight_out_in

LOG = logging.getLogger(__name__)
STATE_FORMAT = "edit-plugins interference guard v1"
GUARD_POSITIONS = ("subject_last", "readout", "prompt")  # keys guarded per edit (GuardSettings.positions)
GUARD_SCOPES = ("layer", "model")  # whose keys a layer guards (GuardSettings.scope)

_guards: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> ModelGuard
_pending: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> saved state not yet replayed


class GuardError(UserError, ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    past_edits: bool = False  # ΔW k_j = 0 for earlier edits' keys at the layer
    preserved_knowledge: bool = False  # u restricted to C's low-variance eigenvectors (AlphaEdit's null space)
    null_space_energy: float = 0.05  # ... C's smallest eigen-directions that carry this share of its trace
    min_residual: float = 0.1  # fall back when the guard would make ΔW more than 1/this larger in C-norm
    max_keys_fraction: float = 0.9  # fall back once the exact keys fill this share of the layer's width
    fallback_weight: float = 1.0  # λ in (C + λ Σ k_j k_jᵀ)
    refresh_stale_keys: bool = True  # recompute a layer's keys when a layer below was edited since
    # ... also when the edit in progress has changed a layer below (a spread edit's lower pieces): one pass
    # per piece. Off: one pass before the edit serves all its layers, and its own lower pieces go unseen
    refresh_within_edit: bool = True
    refresh_every: int = 1  # ... at most once per this many edits (stale keys wait in between)
    repair: bool = False  # after a refresh, map slipped earlier keys back to their values
    repair_threshold: float = 0.1  # "slipped": ‖W k_j − v_j‖ / ‖v_j‖ above this
    # keys guarded per edit: the subject's last token; also the positions whose next-token prediction the
    # score reads ("readout": the prompt's last token and the target's); or every "prompt" position scored
    positions: str = "subject_last"
    # whose keys an edited layer guards: the earlier edits made at it ("layer"), or every earlier edit at
    # whatever layer it was made ("model"): then no edit below an earlier one moves that edit's inputs
    scope: str = "layer"

    @property
    def active(self) -> bool:
        return self.past_edits or self.preserved_knowledge


class _Space:
    """Where u lives. Full: all of ℝᵈ with the metric M = C⁻¹. Null space: coordinates z = U₀ᵀx on C's
    smallest eigen-directions U₀ (together a ``null_space_energy`` share of its trace), where C is diagonal
    (Λ₀) and M = Λ₀⁻¹."""

    def __init__(self, c_inv: torch.Tensor | None, width: int, settings: GuardSettings, device):
        self.width = width
        self.basis_vectors = None  # U₀ (d, m), null-space mode only
        if c_inv is None:
            self.metric_matrix, self.metric_diagonal = None, None  # M = I
        elif settings.preserved_knowledge:
            mu, vectors = torch.linalg.eigh(c_inv.to(device).double())  # eigenvalues of C⁻¹ = 1/eigenvalues of C
            mu, vectors = mu.flip(0), vectors.flip(1)  # C's eigenvalues 1/μ, smallest first
            energy = torch.cumsum(1.0 / mu, 0) / (1.0 / mu).sum()
            keep = energy <= settings.null_space_energy
            if not bool(keep.any()):
                raise GuardError(f"guard_null_space_energy {settings.null_space_energy}: C's smallest eigen-direction "
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

    def __init__(self, module: str, layer: int, space: _Space, settings: GuardSettings):
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
        return self.settings.max_keys_fraction > 0

    @property
    def stores_values(self) -> bool:
        """The exact guard's keys come with their values; the soft guard keeps values only to repair."""
        return self.stores_keys or self.settings.repair

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
        return len(self.in_basis) < self.settings.max_keys_fraction * self.space.dim

    def direction(self, key: torch.Tensor, direction_key: torch.Tensor) -> Direction:
        """u for an edit whose own key is ``key`` and whose direction key is ``direction_key`` (k̄)."""
        z = self.space.project(direction_key)
        z_key = self.space.project(key)
        Mz = self.space.metric(z)
        if not self.settings.past_edits or not self.count:
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
        if ratio >= self.settings.min_residual and self._capacity_left():
            return M_perp, "guard", ratio, None, None
        u = torch.cholesky_solve(z.unsqueeze(1), self._fallback_factor(z.device)).squeeze(1)
        plain_cost = norm_z / abs(along) if along else float("inf")
        fallback_ratio = self._fallback_ratio(u, z, z_key, plain_cost)
        if fallback_ratio >= self.settings.min_residual:
            return u, "fallback", fallback_ratio, self.settings.fallback_weight, ratio
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

        floor = self.settings.min_residual
        high = self.settings.fallback_weight
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
        c_norm_sq = max(float(z @ u) - self.settings.fallback_weight * float(u @ self._gram(z.device) @ u), 0.0)
        along = abs(float(z_key @ u))
        return 0.0 if along == 0 else plain_cost / (c_norm_sq ** 0.5 / along)

    def _fallback_factor(self, device) -> torch.Tensor:
        """L_A with L_A L_Aᵀ = M⁻¹ + λG: made from G as it is, so a resumed run has the same numbers."""
        if self.fallback_factor is None:
            A = self.space.metric_inverse().to(device) + self.settings.fallback_weight * self._gram(device)
            self.fallback_factor = torch.linalg.cholesky(A)
        return self.fallback_factor.to(device)

    def _admit(self, rows: torch.Tensor, first: int) -> None:
        """Add keys ``first``, ``first`` + 1, ... (rows of ``rows``, in u's space) to G, and grow the basis
        by the part of each not yet in its span (unless nearly dependent, or the basis is full)."""
        if not self.settings.past_edits or not len(rows):
            return
        self.pencil, self.fallback_factor = None, None
        self._gram(rows.device).addmm_(rows.T, rows)  # one product: a rank-one update per key is memory-bound
        for i, z in enumerate(rows):
            if not self._capacity_left():
                break
            perp, coefficients = self._orthogonal_part(z)
            norm_perp = max(float(perp @ self.space.metric(perp)), 0.0) ** 0.5
            norm_z = float(z @ self.space.metric(z)) ** 0.5
            if norm_z > 0 and norm_perp >= self.settings.min_residual * norm_z:
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
            slipped = torch.nonzero(drift[in_basis] > self.settings.repair_threshold).flatten()
        else:
            slipped = torch.nonzero(drift > self.settings.repair_threshold).flatten()
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
            delta = (self.settings.fallback_weight * self.space.lift(solved)).T.float()
        # what is left: the soft form cannot map more keys than the layer is wide each to its own value
        left = (residuals - keys @ delta.T).norm(dim=1) / values.norm(dim=1).clamp_min(1e-12)
        info.update(drift_median_after=float(left.median()), drift_max_after=float(left.max()))
        return delta, info

    def nbytes(self) -> int:
        tensors = self.keys + self.values + [self._basis, self._metric_basis, self._triangular]
        tensors += [t for t in (self.gram, self.fallback_factor, *(self.pencil or ())) if t is not None]
        return self.space.nbytes() + sum(t.numel() * t.element_size() for t in tensors)


class ModelGuard:
    """Every guarded layer of one model, and the log of which layers were edited (for stale keys)."""

    def __init__(self, settings: GuardSettings):
        self.settings = settings
        self.layers: dict[str, LayerGuard] = {}
        self.edit_log: list[int] = []
        self.sources: list[tuple[int, tuple]] = []  # scope "model": every edit's (edit id, key source), in order

    def layer(self, model, module: str, layer: int, c_inv: torch.Tensor | None) -> LayerGuard:
        weight = weight_out_in(get_module(model, module))
        guard = self.layers.get(module)
        if guard is None:
            guard = self.layers[module] = LayerGuard(module, layer, _Space(c_inv, weight.shape[1], self.settings,
                                                                            weight.device), self.settings)
            saved = _pending.get(model, {}).pop(module, None)
            if saved is not None:
                guard.sources, guard.edit_ids, guard.fresh_at = saved["sources"], saved["edit_ids"], saved["fresh_at"]
                keys, gram = saved["keys"], saved.get("gram")
                if guard.stores_values:
                    guard.values = saved["values"]
                if keys:  # the exact guard's, or a state saved before the soft guard kept only G
                    guard._rebuild(keys, weight.device)
                if gram is not None and (keys or not guard.stores_keys):
                    guard.gram = gram.to(weight.device)  # as the saving run summed it, to the last bit
                elif not keys:
                    guard._lose_keys()
            guard.snapshots = [(guard.count, weight_digest(weight))]  # the weights these keys belong to
        else:
            self._sync(model, [module])
        return guard

    def sync(self, model) -> None:
        """Follow every guarded layer back to the weights the caller left (before a call's first edit: in
        scope "model" an edit undone at one layer must leave every layer's guard)."""
        self._sync(model, list(self.layers))

    def _sync(self, model, modules: list[str]) -> None:
        undone = set()
        for module in modules:
            guard = self.layers[module]
            dropped = guard.sync(weight_out_in(get_module(model, module)))
            undone |= {e for e in dropped if 0 <= e < len(self.edit_log) and self.edit_log[e] == guard.layer}
        if undone and self.settings.scope == "model":
            self.sources = [(e, s) for e, s in self.sources if e not in undone]
            for guard in self.layers.values():
                guard.forget(undone, guard.basis.device)

    def is_stale(self, guard: LayerGuard, edited_now: tuple = ()) -> bool:
        """Has a layer below been edited since the keys were computed (``edited_now``: layers the edit in
        progress has already changed, counted with ``refresh_within_edit``), and is a refresh due
        (``refresh_every``)? With ``repair``, an edit at the layer itself counts too: the soft guard's own
        updates move the outputs of the keys it holds, though not the keys."""
        if guard.needs_keys:
            return True
        since = self.edit_log[guard.fresh_at:]
        periodic = self.settings.refresh_every > 1
        if periodic and len(since) < self.settings.refresh_every:
            return False
        if periodic or not self.settings.refresh_within_edit:
            edited_now = ()
        top = guard.layer + 1 if self.settings.repair else guard.layer
        below = any(l < top for l in (*since, *edited_now))
        return self.settings.refresh_stale_keys and bool(guard.count) and below

    def refresh_stale(self, model, tok, guards: list[LayerGuard]) -> dict[str, dict]:
        """Before an edit over several layers: recompute every stale one of ``guards`` in one pass (the pieces'
        ``prepare`` then finds them current). Returns each refreshed layer's report."""
        stale = [g for g in guards if self.is_stale(g)]
        return self.refresh(model, tok, stale) if stale else {}

    def prepare(self, model, tok, guard: LayerGuard, edited_now: tuple = ()) -> dict:
        """Before an edit at ``guard``'s layer: recompute its keys if a layer below was edited since (or by
        the edit in progress, ``edited_now``); in scope "model", add the keys of earlier edits made at other
        layers (their outputs here are kept as they are now). Returns what was done, for the edit's report
        (empty: nothing)."""
        report = self.refresh(model, tok, [guard])[guard.module] if self.is_stale(guard, edited_now) else {}
        if self.settings.scope == "model":
            have = set(guard.edit_ids)
            missing = [(e, s) for e, s in self.sources if e not in have]
            if missing:
                weight = weight_out_in(get_module(model, guard.module))
                keys = current_keys(model, tok, [guard.module], [s for _, s in missing])[guard.module]
                keys = keys.to(weight.device)
                guard.record(list(keys), list(keys @ weight.detach().float().T), [s for _, s in missing],
                             [e for e, _ in missing], weight, len(self.edit_log))
                report["keys_added"] = len(missing)
        return report

    def record_edit(self, model, tok, request, pieces: list[tuple]) -> None:
        """After an edit is applied, at one layer or spread over several (``pieces``: (module name, layer,
        key, value) each): guard each piece's key at its layer (mapped to its value) and the layer's input
        at the edit's other scored positions (mapped where the edited layer now maps them): with ``positions:
        readout`` those whose next token the score reads, with ``prompt`` every one; log the edit's lowest
        layer, the one that makes the keys above it stale."""
        from .keys import scored_position_keys
        from .tokens import encode, subject_last_index

        edit_id = len(self.edit_log)
        fact = (request.prompt, request.subject, request.target_new)
        sources, others = [(*fact, None)], []
        if self.settings.positions != "subject_last":  # every piece's layer from one pass over the edited model
            sequences = scored_position_keys(model, tok, [request], [name for name, *_ in pieces])
            own = subject_last_index(tok, "{}", request)  # already guarded, with its value v*
            first = len(encode(tok, request.text)) - 1 if self.settings.positions == "readout" else 0
            others = [i for i in range(first, len(sequences[pieces[0][0]][0])) if i != own]
            sources += [(*fact, i) for i in others]
        for module_name, _, key, value in pieces:
            weight = weight_out_in(get_module(model, module_name))
            W = weight.detach().float()
            keys, values = [key.to(W.device)], [value.to(W.device)]
            if others:
                at_others = sequences[module_name][0].float().to(W.device)[others]
                keys += list(at_others)
                values += list(at_others @ W.T)
            self.layers[module_name].record(keys, values, sources, [edit_id] * len(keys), weight, edit_id)
        if self.settings.scope == "model":
            self.sources += [(edit_id, s) for s in sources]
        self.log_edit(min(layer for _, layer, _, _ in pieces))

    def refresh(self, model, tok, guards: list[LayerGuard]) -> dict[str, dict]:
        """Recompute these layers' keys (one batched forward pass, cut off at the highest); with ``repair``,
        map the ones that slipped back to their values, lowest layer first: a repair moves the keys of the
        layers above, so they are read again before theirs. Returns what was done per layer, for the edit's
        report."""
        reports = {}
        left = sorted(guards, key=lambda g: g.layer)
        while left:
            sources = list(dict.fromkeys(s for g in left for s in g.sources))
            fresh = current_keys(model, tok, [g.module for g in left], sources)
            row = {s: i for i, s in enumerate(sources)}
            for done, guard in enumerate(left, start=1):
                module = get_module(model, guard.module)
                keys = fresh[guard.module][[row[s] for s in guard.sources]]
                report = reports[guard.module] = {"keys_refreshed": guard.count}
                if guard.keys:  # the soft guard keeps no keys to compare
                    old = torch.stack(guard.keys).to(keys.device)
                    report["key_change_max"] = float(((keys - old).norm(dim=1) / old.norm(dim=1).clamp_min(1e-12)).max())
                old_gram = None if guard.gram is None or guard.needs_keys else guard.gram.clone()
                guard.replace_keys(keys, len(self.edit_log), weight_out_in(module).device)
                if old_gram is not None and guard.gram is not None:  # how stale the keys had gone, all at once
                    report["gram_change"] = float((guard.gram - old_gram.to(guard.gram.device)).norm() / old_gram.norm())
                delta = None
                if self.settings.repair:
                    delta, info = guard.repair_update(weight_out_in(module), keys)
                    report.update({f"repair_{k}": v for k, v in info.items()})
                    if delta is not None:
                        add_to_weight(module, delta)
                        report["repair_delta"] = delta
                guard.snapshots.append((guard.count, weight_digest(weight_out_in(module))))
                if delta is not None:
                    break
            left = left[done:]
        return reports

    def log_edit(self, layer: int) -> None:
        self.edit_log.append(layer)

    def memory(self) -> dict:
        return {name: g.nbytes() for name, g in self.layers.items()}


def current_keys(model, tok, module_names: list[str], sources: list[tuple]) -> dict[str, torch.Tensor]:
    """The keys ``sources`` name at each module, recomputed on the model as it is now: {module: (len(sources),
    d)}. Where a prompt's other positions are guarded too, its subject key is read from the same pass (a
    causal model's input at the subject's last token does not depend on what follows it)."""
    from .keys import compute_keys, scored_position_keys
    from .requests import EditRequest
    from .tokens import subject_last_index

    def request(source):
        return EditRequest(prompt=source[0], subject=source[1], target_new=source[2])

    texts = list(dict.fromkeys(s[:3] for s in sources if s[3] is not None))  # each prompt once, in order
    sequences = scored_position_keys(model, tok, [request(t) for t in texts], module_names)
    text_row = {t: n for n, t in enumerate(texts)}
    bare = [i for i, s in enumerate(sources) if s[3] is None and s[:3] not in text_row]
    found = compute_keys(model, tok, [request(sources[i]) for i in bare], module_names) if bare else {}
    out = {}
    for name in module_names:
        parts = dict(zip(bare, found[name])) if bare else {}
        for i, source in enumerate(sources):
            if i not in parts:
                position = subject_last_index(tok, "{}", request(source)) if source[3] is None else source[3]
                parts[i] = sequences[name][text_row[source[:3]]][position].float()
        out[name] = torch.stack([parts[i] for i in range(len(sources))])
    return out


def guard_for(model, settings: GuardSettings) -> ModelGuard | None:
    """The model's guard (made on first use), or None when no part of the guard is on."""
    if not settings.active:
        return None
    guard = _guards.get(model)
    if guard is None or guard.settings != settings:
        guard = _guards[model] = ModelGuard(settings)
        saved_log = _pending.get(model, {}).pop("__edit_log__", None)
        if saved_log is not None:
            guard.edit_log = saved_log
            guard.sources = _pending[model].pop("__sources__", [])
    return guard


# -- saving and loading (a lifelong run's state) ------------------------------------------------------
def guard_state(model) -> tuple[dict, dict] | None:
    """(tensors, metadata): each layer's G, keys, values and their sources (the soft guard keeps no keys or
    values); the basis is rebuilt on load by the same steps and G is loaded as summed, so a resumed run
    continues with the same numbers. None where the model has no guard."""
    guard = _guards.get(model)
    pending = dict(_pending.get(model, {}))  # loaded, and not yet used since: saved as they were loaded
    if guard is None and not pending:
        return None
    edit_log = guard.edit_log if guard is not None else pending.pop("__edit_log__", [])
    pending.pop("__edit_log__", None)
    sources = guard.sources if guard is not None else pending.pop("__sources__", [])
    pending.pop("__sources__", None)
    entries = {name: {"keys": g.keys, "values": g.values, "gram": g.gram,
                      "sources": g.sources, "edit_ids": g.edit_ids, "fresh_at": g.fresh_at}
               for name, g in (guard.layers.items() if guard is not None else ())}
    tensors, layers = {}, {}
    for name, entry in {**pending, **entries}.items():
        if not entry["sources"]:
            continue
        if entry.get("gram") is not None:
            tensors[f"{name}.gram"] = entry["gram"].detach().cpu().clone()  # G grows in place: not a view
        if entry["keys"]:
            tensors[f"{name}.keys"] = torch.stack(entry["keys"]).cpu().contiguous()
        if entry["values"]:
            tensors[f"{name}.values"] = torch.stack(entry["values"]).cpu().contiguous()
        # neither: a soft guard's keys undone and G not yet made again; it is made from the sources on load
        layers[name] = {k: entry[k] for k in ("sources", "edit_ids", "fresh_at")}
    metadata = {"format": STATE_FORMAT, "layers": json.dumps(layers), "edit_log": json.dumps(edit_log),
                "sources": json.dumps(sources)}
    return tensors, metadata


def load_guard_state(model, tensors: dict, metadata: dict) -> None:
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"not an interference guard state (format {metadata.get('format')!r}, expected {STATE_FORMAT!r})")
    _guards.pop(model, None)
    pending = {"__edit_log__": json.loads(metadata["edit_log"]),
               "__sources__": [(e, tuple(s)) for e, s in json.loads(metadata.get("sources", "[]"))]}
    for name, info in json.loads(metadata["layers"]).items():
        sources = [_source(s) for s in info.get("sources", info.get("prompts", []))]
        gram = tensors.get(f"{name}.gram")
        entry = {"keys": [], "values": [], "gram": None if gram is None else gram.double().clone(), "sources": sources,
                 "edit_ids": info.get("edit_ids", [-1] * len(sources)),  # states saved before edit ids
                 "fresh_at": info["fresh_at"]}
        if f"{name}.keys" in tensors:
            entry["keys"] = list(tensors[f"{name}.keys"].float())
        if f"{name}.values" in tensors:
            entry["values"] = list(tensors[f"{name}.values"].float())
        pending[name] = entry
    _pending[model] = pending


def _source(saved: list) -> tuple:
    """A saved key's source; states saved before positions were guarded hold (prompt, subject) only."""
    return tuple(saved) if len(saved) == 4 else (saved[0], saved[1], " x", None)
