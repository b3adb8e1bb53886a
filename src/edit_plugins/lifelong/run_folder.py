"""A run folder held by one process at a time, and touched only where we wrote.

- A marker file (``.edit-plugins-run``, with its format version) says a folder is a run folder; it is
  checked before anything in the folder is touched, so a folder that is not a run is refused as it is.
- An exclusive ``fcntl`` lock on ``.lock`` for the run's whole life: a second run, or a ``--resume``
  while another process holds the folder, is refused, naming the holder's pid. The kernel drops the lock
  when its process dies, SIGKILL included.
- A new run creates the folder itself (``mkdir``, atomic) or takes an empty one; whatever the run made is
  removed again if it fails before its first saved state.
- Opening an existing run recovers its state from any moment of an interrupted state swap and removes
  the temporary files a kill left behind: only names a run writes (``OWN_NAMES``, and their temporary
  ``.<name>.<random>`` twins), never anything else in the folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_json
from .state import OLD_STATE, STATE, recover_state

LOCK_NAME = ".lock"
MARKER = ".edit-plugins-run"
MARKER_FORMAT = "edit-plugins run folder"
MARKER_VERSION = 1
# Every name a lifelong run writes in its folder (beside the marker and the lock).
OWN_NAMES = {"config.yaml", "edits.jsonl", "checkpoints.jsonl", "summary.json", "timing.json", "retention.png",
             "locality.png", "seconds_per_edit.png", STATE, OLD_STATE}


class RunFolderError(UserError, ValueError):
    pass


def is_own_temporary(name: str) -> bool:
    """A temporary file or folder that a run's atomic writes make: ``.state.<random>`` for a state being
    saved, ``.<own name>.<random>`` beside each file (files.atomic_write_bytes)."""
    return name.startswith(".state.") or any(name.startswith(f".{own}.") for own in OWN_NAMES | {MARKER})


def check_is_run(path: Path) -> bool:
    """Raise unless ``path`` is a run folder (reading only); True where it is one from before the marker
    (recognised by its ``config.yaml``), which gets the marker once the folder is locked."""
    marker = path / MARKER
    if marker.is_file():
        try:
            content = json.loads(marker.read_text())
        except (OSError, ValueError) as error:
            raise RunFolderError(f"{marker}: not a readable run-folder marker ({error}); nothing was changed") from None
        if not isinstance(content, dict) or content.get("format") != MARKER_FORMAT:
            raise RunFolderError(f"{marker}: not an edit-plugins run-folder marker; nothing was changed")
        if content.get("version") != MARKER_VERSION:
            raise RunFolderError(f"{marker}: run-folder format version {content.get('version')!r}; this edit-plugins "
                                 f"reads version {MARKER_VERSION}; nothing was changed")
        return False
    if _legacy_config(path):
        return True
    raise RunFolderError(f"{path}: not an edit-plugins run folder (no {MARKER}); nothing in it was changed")


def _legacy_config(path: Path) -> bool:
    """A run folder written before the marker: its config.yaml names what edit-plugins wrote it with."""
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (isinstance(config, dict) and {"hparams", "options", "data"} <= set(config)
            and isinstance(config.get("versions"), dict) and "edit-plugins" in config["versions"])


class RunFolder:
    def __init__(self, path: Path, created: bool, lock_fd: int):
        self.path, self.created, self._lock_fd = path, created, lock_fd

    @classmethod
    def create(cls, path) -> "RunFolder":
        """Take a new (missing or empty) folder for a new run."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
            created = True
        except FileExistsError:
            if not path.is_dir():
                raise RunFolderError(f"{path}: exists and is not a folder") from None
            created = False
        if not created and _foreign_entries(path):  # refused before the lock: nothing is written into it
            _check_not_held(path)
            raise RunFolderError(f"{path}: the output folder is not empty; choose a new one, "
                                 "or pass --resume to continue the run in it")
        folder = cls(path, created, _lock(path))
        if _foreign_entries(path):  # something appeared while we took the lock
            folder.release()
            raise RunFolderError(f"{path}: the output folder is not empty; choose a new one")
        atomic_write_json(path / MARKER, {"format": MARKER_FORMAT, "version": MARKER_VERSION})
        return folder

    @classmethod
    def open_existing(cls, path) -> "RunFolder":
        """Take an existing run's folder to resume it: check it is one, recover its state, clean up after a kill."""
        path = Path(path)
        if not path.is_dir():
            raise RunFolderError(f"{path}: no such run folder")
        legacy = check_is_run(path)
        folder = cls(path, False, _lock(path))
        try:
            recover_state(path, is_own_temporary)
            if legacy:
                atomic_write_json(path / MARKER, {"format": MARKER_FORMAT, "version": MARKER_VERSION})
        except BaseException:
            folder.release()
            raise
        return folder

    def discard(self) -> None:
        """Remove what this run wrote (the folder itself if it made it), then let go of it."""
        try:
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for entry in self.path.iterdir():
                    if entry.name in OWN_NAMES | {MARKER} or is_own_temporary(entry.name):
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                (self.path / LOCK_NAME).unlink(missing_ok=True)
        finally:
            self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _foreign_entries(path: Path) -> list[str]:
    """What is in the folder besides a lock a killed run left."""
    return [p.name for p in path.iterdir() if p.name != LOCK_NAME]


def _check_not_held(path: Path) -> None:
    """Refuse, naming the holder, where another process holds the folder's lock (creating no lock file)."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        raise RunFolderError(f"{path}: another process{f' (pid {holder})' if holder else ''} is running in this "
                             "run folder; wait for it to end, or use another --out") from None
    finally:
        os.close(fd)


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise RunFolderError(f"{path}: another process{f' (pid {holder})' if holder else ''} is running in this "
                             "run folder; wait for it to end, or use another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
