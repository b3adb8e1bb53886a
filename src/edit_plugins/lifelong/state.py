"""Atomic files and the resumable run state (edited parameters, stream position, RNG, logs)."""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a crash never leaves a truncated file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: Path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_state(run_dir: Path, model, changed_params, progress: dict, adaptor=None) -> None:
    """Everything needed to resume, written to a fresh folder that replaces the old one whole."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".state.", dir=run_dir))
    try:
        tensors = {name: model.get_parameter(name).detach().cpu().contiguous() for name in sorted(changed_params)}
        save_file(tensors, str(tmp / "edited_parameters.safetensors"))
        if adaptor is not None:  # (tensors, metadata) of a method whose edits live outside the parameters
            save_file(adaptor[0], str(tmp / "adaptor.safetensors"), metadata=adaptor[1])
        with open(tmp / "progress.pkl", "wb") as f:
            pickle.dump({**progress, "rng": rng_state()}, f)
        old = run_dir / "state"
        if old.exists():
            trash = run_dir / ".state.old"
            shutil.rmtree(trash, ignore_errors=True)
            old.rename(trash)
            tmp.rename(old)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(run_dir: Path, model, load_adaptor=None) -> dict:
    state_dir = Path(run_dir) / "state"
    if not (state_dir / "progress.pkl").is_file():
        raise FileNotFoundError(f"{run_dir}: no saved state to resume from (expected {state_dir}/progress.pkl)")
    with torch.no_grad():
        for name, value in load_file(str(state_dir / "edited_parameters.safetensors")).items():
            model.get_parameter(name).copy_(value)
    adaptor_file = state_dir / "adaptor.safetensors"
    if adaptor_file.is_file():
        if load_adaptor is None:
            raise ValueError(f"{adaptor_file}: the run saved an adaptor, but its method registers no load_state")
        with safe_open(str(adaptor_file), framework="pt") as f:
            metadata = f.metadata() or {}
        load_adaptor(model, load_file(str(adaptor_file)), metadata)
    with open(state_dir / "progress.pkl", "rb") as f:
        return pickle.load(f)
