"""The lock files in locks/: what they pin, and whether an environment holds exactly that.

  python scripts/locks.py check LOCK   (run by the environment's own python) exits non-zero, naming each
                                       package whose installed version differs from LOCK's; a stale venv
                                       can hide version drift.
Standard library only.
"""
import importlib.metadata as md
import re
import sys


def pinned(lock):
    """(name, version) for each ``name==version`` line of the lock, as written."""
    out = []
    for line in open(lock):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out.append((m[1], m[2]))
    return out


def differences(lock):
    wrong = []
    for name, version in pinned(lock):
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != version.split("+")[0]:
            wrong.append(f"{name}: lock {version}, installed {have}")
    return wrong


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "check":
        sys.exit(__doc__)
    wrong = differences(sys.argv[2])
    if wrong:
        sys.exit("setup.sh: environment differs from " + sys.argv[2] + ":\n  " + "\n  ".join(wrong))
