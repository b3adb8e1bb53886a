"""The resumable run state, with no pickle anywhere: JSON for the stream position, options, logs and
RNG states, safetensors for tensors (edited parameters, the method's own state, diagnostics' tensors).

A state is a folder, ``state/``. Saving writes a complete new one (``progress.json`` last, so a folder
that has it is complete) and swaps it in with two renames; ``recover_state`` finds the newest complete
state after a kill at any moment of that swap.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..editing.layers import restore_weights
from ..errors import UserError
from ..files import TMP_SUFFIX, atomic_write_json, load_tensors, save_tensors

STATE = "state"
OLD_STATE = ".state.old"
PROGRESS = "progress.json"
METHOD_STATE = "method_state.safetensors"  # a method's own state, where it registers save_state
LEGACY_METHOD_STATE = "adaptor.safetensors"  # its name in folders written before it held more than adaptors
FORMAT = 2  # 1: progress.pkl (refused: it would have to be unpickled)


class StateError(UserError, ValueError):
    pass


# -- RNG states as JSON and a tensor ------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """The random state a run starts from (torch, Python, NumPy), so that a replay starts from it too."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# -- nested values <-> JSON + tensors --------------------------------------------------------------------
_MARKERS = ("__tensor__", "__tuple__", "__items__")


def encode(value, tensors: dict):
    """``value`` as JSON, its tensors moved into ``tensors`` (referenced by key)."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return encode(torch.from_numpy(np.ascontiguousarray(value)), tensors)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _MARKERS for k in value):
            return {k: encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[encode(k, tensors), encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [encode(v, tensors) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise StateError(f"cannot save a {type(value).__name__} in a run's state (tensors, numbers, strings, "
                     "lists, tuples and dicts only)")


def decode(value, tensors: dict):
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(decode(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value["__items__"]}
        return {k: decode(v, tensors) for k, v in value.items()}
    return value


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


# -- saving and loading -----------------------------------------------------------------------------------
def save_state(run_dir: Path, model, changed_params, progress: dict, method_state=None) -> None:
    """Everything needed to resume, written to a fresh folder that replaces the old one whole."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".state.", suffix=TMP_SUFFIX, dir=run_dir))
    try:
        tensors = {name: model.get_parameter(name).detach().cpu().contiguous() for name in sorted(changed_params)}
        save_tensors(tmp / "edited_parameters.safetensors", tensors)
        if method_state is not None:  # (tensors, metadata): an adaptor, guarded keys, ...
            save_tensors(tmp / METHOD_STATE, method_state[0], method_state[1])
        progress_tensors: dict = {}
        encoded = encode({**progress, "rng": rng_state()}, progress_tensors)
        save_tensors(tmp / "progress.safetensors", progress_tensors)
        # Each file above is fsynced as it is written (files.atomic_write_bytes); progress.json comes last.
        atomic_write_json(tmp / PROGRESS, {"format": FORMAT, "position": progress["position"], "progress": encoded})
        current, old = run_dir / STATE, run_dir / OLD_STATE
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            current.rename(old)
        tmp.rename(current)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _position(folder: Path) -> int | None:
    """The stream position of a complete state folder; None where it has no ``progress.json`` (a save a kill
    interrupted). A ``progress.json`` that is there but unreadable cannot come from a kill (it is written
    whole, last): it is refused, naming the file, and nothing is changed."""
    path = folder / PROGRESS
    if not path.is_file():
        return None
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise StateError(f"{path}: not readable JSON ({error}); the saved state was not written by a finished "
                         "save: nothing was changed, start the run again in a new folder") from None
    position = header.get("position") if isinstance(header, dict) else None
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise StateError(f"{path}: 'position' must be a whole number of edits, 0 or more, got {position!r}; "
                         "nothing was changed")
    if header.get("format") != FORMAT:
        raise StateError(f"{path}: unknown state format {header.get('format')!r} (expected {FORMAT}); "
                         "nothing was changed")
    return position


def recover_state(run_dir: Path, removable=lambda name: False) -> None:
    """Make ``state/`` the newest complete state the folder holds, whatever moment a kill interrupted a
    save at, and remove the temporary files and incomplete states a kill left (``removable(name)`` says
    which names are ours to remove). Every saved state is checked before anything is moved or removed.
    The caller holds the folder's lock."""
    run_dir = Path(run_dir)
    if (run_dir / STATE / "progress.pkl").is_file():
        raise StateError(f"{run_dir}: this run folder was saved by an older edit-plugins in pickle format, which "
                         "is never loaded (unpickling a file can run code); start the run again in a new folder")
    state = run_dir / STATE
    if state.exists() and not (state / PROGRESS).is_file():  # state/ only ever appears complete
        raise StateError(f"{state}: a saved state without {PROGRESS}; nothing was changed")
    candidates = [p for p in run_dir.iterdir() if p.is_dir() and (p.name == STATE or p.name.startswith(".state."))]
    complete = [(pos, p) for p in candidates if (pos := _position(p)) is not None]
    if complete:
        newest = max(complete, key=lambda item: (item[0], item[1].name == STATE))[1]
        if newest.name != STATE:
            shutil.rmtree(state, ignore_errors=True)
            newest.rename(state)
    for p in run_dir.iterdir():
        if p.name != STATE and (p.name == OLD_STATE or removable(p.name)):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def has_state(run_dir: Path) -> bool:
    return _position(Path(run_dir) / STATE) is not None


def load_state(run_dir: Path, model, load_method_state=None, positions: int | None = None) -> dict:
    """The saved state, checked whole before the model is touched: the position within ``positions`` (the
    run's edit count), every saved tensor a parameter of this model with its shape and dtype. Anything else
    is refused with one line naming the file; the folder is left as it is."""
    state_dir = Path(run_dir) / STATE
    position = _position(state_dir)
    if position is None:
        raise StateError(f"{state_dir}: no saved state to load")
    if positions is not None and position > positions:
        raise StateError(f"{state_dir / PROGRESS}: position {position} is past the run's {positions} edits; "
                         "nothing was changed")
    header = json.loads((state_dir / PROGRESS).read_text())
    weights_file = state_dir / "edited_parameters.safetensors"
    weights = _tensors(weights_file)
    parameters = dict(model.named_parameters())
    for name, value in weights.items():
        if name not in parameters:
            raise StateError(f"{weights_file}: {name!r} is no parameter of this model; nothing was changed")
        have = parameters[name]
        if value.shape != have.shape or value.dtype != have.dtype:
            raise StateError(f"{weights_file}: {name!r} is {value.dtype} {tuple(value.shape)}, the model's is "
                             f"{have.dtype} {tuple(have.shape)}; nothing was changed")
    try:
        progress = decode(header["progress"], _tensors(state_dir / "progress.safetensors"))
    except (KeyError, TypeError, ValueError) as error:
        raise StateError(f"{state_dir / PROGRESS}: the saved progress does not decode ({error!r}); nothing was "
                         "changed") from None
    if progress.get("position") != position:
        raise StateError(f"{state_dir / PROGRESS}: its position {position} and its progress "
                         f"({progress.get('position')!r}) disagree; nothing was changed")
    method_file = state_dir / METHOD_STATE
    if not method_file.is_file():
        method_file = state_dir / LEGACY_METHOD_STATE
    method_state = None
    if method_file.is_file():
        if load_method_state is None:
            raise StateError(f"{method_file}: the run saved its method's state, but the method registers no load_state")
        method_state = _tensors(method_file, with_metadata=True)
    restore_weights(model, weights)
    if method_state is not None:
        try:
            load_method_state(model, *method_state)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
            raise StateError(f"{method_file}: the method's saved state does not fit this model ({error})") from None
    return progress


def _tensors(path: Path, with_metadata: bool = False):
    """A saved safetensors file, or one line naming it where it does not read (truncated, not safetensors)."""
    if not path.is_file():
        raise StateError(f"{path}: missing from the saved state; nothing was changed")
    try:
        tensors, metadata = load_tensors(path)
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise StateError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error}); "
                         "nothing was changed") from None
    return (tensors, metadata) if with_metadata else tensors
