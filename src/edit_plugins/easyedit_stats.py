"""EasyEdit's covariance statistics, filled offline from our statistics engine.

MEMIT, AlphaEdit, EMMET and PMET read C through ``layer_stats``, which downloads Wikipedia unless its cache
file exists. ``fill_stats`` writes that exact file, from the corpus the hparams name (never another
corpus under that name), and AlphaEdit's null-space projection P where the hparams have ``P_loc``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from . import easyedit_compat
from .editing.corpora import PYDOC_SOURCE, SELF_SOURCE
from .editing.covariance import moment_sums, write_moments
from .editing.layers import check_layer_index
from .errors import UserError
from .files import atomic_write_bytes
from .hparams import read_yaml


class StatsError(UserError, ValueError):
    pass


@dataclass
class StatsPlan:
    model_name: str
    modules: list[str]  # layer_stats' layer_name for each file
    corpus: str  # what our engine reads: pydoc, self, a local file, or "hub-name:config"
    dataset_name: str  # hparams mom2_dataset, verbatim: part of the file name
    n_samples: int
    precision: str
    files: list[Path]
    projection: Path | None  # AlphaEdit's P_loc
    nullspace_threshold: float | None
    projection_modules: list[str]  # P's layers, in hparams order
    layers: list[int]


def _field(config: dict, name: str, kind, source: str):
    if name not in config:
        raise StatsError(f"{source}: missing field {name!r}, which EasyEdit's layer_stats needs")
    value = config[name]
    if kind is float and isinstance(value, str):  # YAML reads 1e-2 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StatsError(f"{source}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def plan(hparams_path) -> StatsPlan:
    """Which files ``layer_stats`` will look for under these hparams, and from which corpus to fill them."""
    config, source = read_yaml(hparams_path)
    from .hparams import loadable_model_name

    alg_name = config.get("alg_name")
    if alg_name not in easyedit_compat.LAYER_STATS_METHODS:
        raise StatsError(f"{source}: field 'alg_name' is {alg_name!r}: this command fills the statistics EasyEdit's "
                         f"layer_stats reads, for {list(easyedit_compat.LAYER_STATS_METHODS)}")
    model_name = loadable_model_name(_field(config, "model_name", str, source))  # an embedded alias: its folder
    stats_dir = Path(_field(config, "stats_dir", str, source))
    dataset = _field(config, "mom2_dataset", str, source)
    n_samples = _field(config, "mom2_n_samples", int, source)
    precision = _field(config, "mom2_dtype", str, source)
    if precision not in ("float32", "float64"):
        raise StatsError(f"{source}: field 'mom2_dtype' must be float32 or float64, got {precision!r}")
    layers = _field(config, "layers", list, source)
    templates = config.get("rewrite_module_tmps") or [_field(config, "rewrite_module_tmp", str, source)]
    modules = [t.format(layer) for layer in layers for t in templates]
    corpus = _corpus(dataset, source)
    files = [easyedit_compat.layer_stats_path(stats_dir, model_name, dataset, m, precision, n_samples) for m in modules]
    projection = Path(config["P_loc"]) if config.get("P_loc") else None
    threshold = _field(config, "nullspace_threshold", float, source) if projection else None
    projection_modules = [_field(config, "rewrite_module_tmp", str, source).format(l) for l in layers] if projection else []
    return StatsPlan(model_name, modules, corpus, dataset, n_samples, precision, files, projection, threshold,
                     projection_modules, layers)


def _corpus(dataset: str, source: str) -> str:
    """The text our engine reads for ``mom2_dataset``: the same corpus, or an error."""
    if dataset in (PYDOC_SOURCE, SELF_SOURCE):
        return dataset
    hub = easyedit_compat.LAYER_STATS_DATASETS.get(dataset)
    if hub is not None:
        from .models import ALLOW_DOWNLOAD_ENV, downloads_allowed

        if not downloads_allowed():
            raise StatsError(
                f"{source}: mom2_dataset {dataset!r} is the Hugging Face dataset {hub[0]} ({hub[1]}), and downloads "
                f"are off. Set {ALLOW_DOWNLOAD_ENV}=1 on a machine with network access, or name a corpus that is "
                "here: 'pydoc' (CPython's bundled docs) or a local .txt/.jsonl/.json file. Statistics of one corpus "
                "are never written under another corpus's name")
        return f"{hub[0]}:{hub[1]}"
    path = Path(dataset)
    if path.suffix in (".txt", ".jsonl", ".json"):
        if not path.is_file():
            raise StatsError(f"{source}: mom2_dataset {dataset!r}: no such file")
        return dataset
    raise StatsError(f"{source}: mom2_dataset {dataset!r} is not a corpus edit-plugins knows: expected 'pydoc', "
                     f"'self', a local .txt/.jsonl/.json file, or one of EasyEdit's "
                     f"{sorted(easyedit_compat.LAYER_STATS_DATASETS)}")


def fill_stats(hparams_path, *, model=None, tok=None, overwrite: bool = False) -> list[Path]:
    """Write every statistics file (and P) the hparams need that is not there yet. Returns what was written."""
    p = plan(hparams_path)
    if model is None:
        from .models import load_model

        model, tok = load_model(p.model_name, "cpu")
    for layer in p.layers:
        check_layer_index(model, layer)
    todo = [(m, f) for m, f in zip(p.modules, p.files) if overwrite or not f.is_file()]
    written = []
    moments = {}
    if todo:
        sums, count = moment_sums(model, tok, [m for m, _ in todo], source=p.corpus, n_samples=p.n_samples)
        for module, path in todo:
            write_moments(path, sums[module], count, p.n_samples, getattr(torch, p.precision))
            moments[module] = sums[module] / count
            written.append(path)
    if p.projection is not None and (overwrite or not p.projection.is_file()):
        projections = []
        for module in p.projection_modules:
            cov = moments.get(module)
            if cov is None:
                cov = easyedit_compat.read_layer_stats(p.files[p.modules.index(module)])
            projections.append(null_space_projection(cov.float(), p.nullspace_threshold))
        buffer = io.BytesIO()
        torch.save(torch.stack(projections), buffer)  # AlphaEdit reads P_loc with torch.load
        p.projection.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(p.projection, buffer.getvalue())
        written.append(p.projection)
    return written


def null_space_projection(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's P = U₀U₀ᵀ, U₀ the singular vectors of C with singular value below ``threshold``."""
    U, S, _ = torch.linalg.svd(cov, full_matrices=False)
    small = U[:, S < threshold]
    return small @ small.T
