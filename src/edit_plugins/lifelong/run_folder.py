"""A run folder held by one process at a time.

- An exclusive ``fcntl`` lock on ``.lock`` for the run's whole life: a second run, or a ``--resume``
  while another process holds the folder, is refused.
- A new run creates the folder itself (``mkdir``, atomic) or takes an empty one; whatever the run made
  is removed again if it fails before its first saved state.
- Opening an existing run recovers its state from any moment of an interrupted state swap and removes
  the temporary files a kill left behind.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ..errors import UserError
from .state import recover_state

LOCK_NAME = ".lock"


class RunFolderError(UserError, ValueError):
    pass


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
        folder = cls(path, created, _lock(path))
        if any(p.name != LOCK_NAME for p in path.iterdir()):
            folder.release()
            raise RunFolderError(f"{path}: the output folder is not empty; choose a new one, "
                                 "or pass --resume to continue the run in it")
        return folder

    @classmethod
    def open_existing(cls, path) -> "RunFolder":
        """Take an existing run's folder to resume it: recover its state and clean up after a kill."""
        path = Path(path)
        if not path.is_dir():
            raise RunFolderError(f"{path}: no such run folder")
        folder = cls(path, False, _lock(path))
        try:
            recover_state(path)
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
                    if entry.name != LOCK_NAME:
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


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
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
