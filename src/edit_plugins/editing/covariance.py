"""Second-moment statistics C = E[k kᵀ] of FFN output-projection inputs, with ROME's .npz cache.

Cache layout (shared with ROME/MEMIT/EasyEdit, so stats users already have are reused):
``{stats_dir}/{model_key}/{ds_name}_stats/{module_name}_{precision}_mom2_{n_samples}.npz``
holding ``mom2.count`` and ``mom2.mom2`` (the *sum* of k kᵀ).
"""
from __future__ import annotations

import io
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import atomic_write_bytes
from ..models import embedded_alias
from .corpora import PYDOC_SOURCE, SELF_SOURCE, read_texts, self_generated_texts
from .keys import capture_inputs, run_until_captured
from .layers import get_module, input_device, weight_out_in
from .tokens import pad_id


class StatisticsError(UserError, ValueError):
    pass


def dataset_name(source: str) -> str:
    if source == SELF_SOURCE:
        return "self_generated"
    path = Path(source)
    return path.stem if path.suffix else source


def stats_model_key(model_name, model) -> str:
    """The cache folder name: hparams.model_name, or (EasyEdit passes a (model, tok) pair) the model's own path.
    An embedded model is keyed by its alias, wherever its directory is."""
    name = model_name if isinstance(model_name, str) else getattr(model.config, "_name_or_path", "") or "model"
    return (embedded_alias(name) or name).replace("/", "_")


def cache_path(stats_dir, model_key: str, source: str, module: str, n_samples: int, precision="float32") -> Path:
    return (Path(stats_dir) / model_key.replace("/", "_") / f"{dataset_name(source)}_stats"
            / f"{module}_{precision}_mom2_{n_samples}.npz")


@torch.no_grad()
def second_moments(model, tok, modules: list[str], *, source: str = PYDOC_SOURCE, n_samples: int = 1000,
                   stats_dir="data/stats", model_key: str = "model", max_tokens: int = 256,
                   batch_size: int = 16) -> dict[str, torch.Tensor]:
    """C for each module (float32, on the CPU), computed in one pass over the text for all uncached ones.

    Computing holds a lock per cache file: a second process that needs the same statistics waits and reads
    what the first wrote, instead of computing them again; one that needs other modules' goes on beside it."""
    def path_of(module):
        return cache_path(stats_dir, model_key, source, module, n_samples)

    result = {m: _cached(model, m, path_of(m)) for m in modules}
    missing = [m for m, c in result.items() if c is None]
    if not missing:
        return result
    path_of(missing[0]).parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:
        for m in sorted(missing):  # one order for every process: no two wait on each other
            locks.enter_context(FileLock(f"{path_of(m)}.lock"))
        result.update({m: _cached(model, m, path_of(m)) for m in missing})  # written while we waited?
        missing = [m for m in missing if result[m] is None]
        if missing:
            sums, count = moment_sums(model, tok, missing, source=source, n_samples=n_samples,
                                      max_tokens=max_tokens, batch_size=batch_size)
            for m in missing:
                write_moments(path_of(m), sums[m], count, n_samples)
                result[m] = (sums[m] / count).float().cpu()
    return result


def _cached(model, module: str, path: Path) -> torch.Tensor | None:
    """C from the cache file, or None where there is none."""
    if not path.is_file():
        return None
    data = np.load(path)
    width = weight_out_in(get_module(model, module)).shape[1]
    if data["mom2.mom2"].shape != (width, width):
        # The cache is keyed by model name (ROME/EasyEdit's layout), so a renamed model can hit it.
        raise StatisticsError(f"{path}: cached statistics are {data['mom2.mom2'].shape}, but {module!r} "
                              f"of this model takes inputs of width {width}; the file belongs to another "
                              "model (check hparams model_name and stats_dir)")
    return torch.from_numpy(data["mom2.mom2"] / float(data["mom2.count"])).float()


def write_moments(path: Path, total: torch.Tensor, count: int, n_samples: int, dtype=torch.float32) -> None:
    """ROME's .npz layout, as EasyEdit's ``layer_stats`` reads it too: the sum of k kᵀ, the count, and the
    sample size the file was asked for (its cache check compares it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{"mom2.constructor": np.array("edit_plugins.SecondMoment()"), "mom2.count": np.array(count),
                        "mom2.mom2": total.to(dtype).cpu().numpy(), "sample_size": np.array(n_samples)})
    atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def moment_sums(model, tok, modules: list[str], *, source: str = PYDOC_SOURCE, n_samples: int = 1000,
                max_tokens: int = 256, batch_size: int = 16) -> tuple[dict[str, torch.Tensor], int]:
    """Σ k kᵀ (float64) over every non-padding token of the first ``n_samples`` texts, per module, and the
    token count: one pass over the text for all modules."""
    device = input_device(model)
    if source == SELF_SOURCE:
        sequences = self_generated_texts(model, tok, n_samples)
    else:
        sequences = [tok(t, truncation=True, max_length=max_tokens).input_ids for t in read_texts(source, n_samples)]
    missing = list(modules)
    sums = {m: None for m in missing}
    count = 0
    for first in tqdm(range(0, len(sequences), batch_size), desc=f"second moments ({len(missing)} layers)", leave=False):
        chunk = [s[:max_tokens] for s in sequences[first : first + batch_size] if s]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id(tok), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with capture_inputs(model, missing, stop_early=True) as captured:
            run_until_captured(model, input_ids=ids.to(device), attention_mask=mask.to(device))
        captured = {m: captured[m].detach() for m in missing}
        keep = mask.bool()
        count += int(keep.sum())
        for m in missing:
            acts = captured[m][keep.to(captured[m].device)].double()
            sums[m] = acts.T @ acts if sums[m] is None else sums[m] + acts.T @ acts
    return sums, count


def safe_inverse(C: torch.Tensor, damping: float, what: str = "C") -> torch.Tensor:
    """(C + λ·mean(diag C)·I)⁻¹ in float64. λ = 0 asks for the plain inverse and fails if C is singular."""
    C64 = C.double()
    d = C64.shape[0]
    if damping > 0:
        C64 = C64 + damping * C64.diagonal().mean() * torch.eye(d, dtype=C64.dtype, device=C64.device)
    L, info = torch.linalg.cholesky_ex(C64)
    if int(info) != 0:
        cond = torch.linalg.cond(C64).item()
        raise StatisticsError(
            f"{what} is singular or not positive definite (condition number {cond:.3g}); "
            f"set a positive damping (mom2_damping, e.g. 1e-4) or collect more samples"
        )
    return torch.cholesky_inverse(L).float()
