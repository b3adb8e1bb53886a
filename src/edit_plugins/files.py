"""Files that are either whole or absent: every write goes to a temporary file that is renamed over.

Temporary names are ``.<name>.<random>.tmp`` beside the target, so a folder's owner can recognise and
remove the ones a kill left behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import UserError

TMP_SUFFIX = ".tmp"


class FileContentError(UserError, ValueError):
    pass


def read_json(path, what: str = "data file"):
    """A JSON file's content, or an error saying what is wrong with the file (never a traceback)."""
    path = Path(path)
    if not path.is_file():
        raise FileContentError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise FileContentError(f"{path}: not UTF-8 text (byte {error.start}); save the {what} as UTF-8") from None
    except json.JSONDecodeError as error:
        raise FileContentError(f"{path}: not valid JSON: {error}") from None
    except RecursionError:
        raise FileContentError(f"{path}: nested too deeply to read (more levels than Python's recursion limit); "
                               f"a {what} is a list of flat records") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename: files get the user's umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def save_tensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """safetensors, written whole or not at all (metadata: str -> str)."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file. Never unpickles anything."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, metadata
