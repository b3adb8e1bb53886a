"""Keeps the four test environments from holding torch and the rest four times over on disk.

  seed NEW LOCK [--skip NAME,...] OLD...
                        before pip: each package LOCK pins that an OLD environment has at that version is
                        hard-linked into NEW (its site-packages files; not its scripts in bin/), so pip
                        finds it installed and a CI disk never holds a second copy, even for a moment.
                        --skip: packages installed --no-deps, whose missing dependencies pip would report;
  link NEW OLD...       after pip: every file of NEW with a byte-identical twin at the same path in an OLD
                        environment becomes a hard link to it.

pip never writes into an installed file (it removes and recreates), so the sharing stays safe when one
environment is upgraded later. Standard library only: it runs before any environment exists.
"""
import filecmp
import glob
import importlib.metadata as md
import os
import re
import sys

from locks import pinned  # scripts/, this file's folder


def site_packages(venv):
    found = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    if len(found) != 1:
        sys.exit(f"share_files.py: {venv} has {len(found)} site-packages folders, expected one")
    return found[0]


def normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def seed(new, lock, olds, skip=()):
    wanted = {normal(name): version.split("+")[0] for name, version in pinned(lock)}
    target, linked = site_packages(new), 0
    for name in skip:
        wanted.pop(normal(name), None)
    have = {normal(d.metadata["Name"] or "") for d in md.distributions(path=[target])}
    for old in olds:
        source = site_packages(old)
        for dist in md.distributions(path=[source]):
            name = normal(dist.metadata["Name"] or "")
            if name in have or wanted.get(name) != dist.version.split("+")[0] or not dist.files:
                continue
            for path in dist.files:
                if str(path).startswith(".."):  # scripts and data outside site-packages
                    continue
                src, dst = os.path.join(source, path), os.path.join(target, path)
                if os.path.isfile(src) and not os.path.exists(dst):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    os.link(src, dst)
                    linked += os.path.getsize(src)
            have.add(name)
    return linked


def link(new, olds):
    shared = 0
    for root, _dirs, files in os.walk(new):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            rel = os.path.relpath(path, new)
            size = os.path.getsize(path)
            for old in olds:
                twin = os.path.join(old, rel)
                if (os.path.isfile(twin) and not os.path.islink(twin)
                        and not os.path.samefile(path, twin)
                        and os.path.getsize(twin) == size
                        and filecmp.cmp(path, twin, shallow=False)):
                    tmp = path + ".link-tmp"
                    os.link(twin, tmp)
                    os.replace(tmp, path)
                    shared += size
                    break
    return shared


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2 or args[0] not in ("seed", "link") or (args[0] == "seed" and len(args) < 3):
        sys.exit(__doc__)
    mode, new = args[0], args[1]
    lock, rest = (args[2], args[3:]) if mode == "seed" else (None, args[2:])
    skip = []
    if rest[:1] == ["--skip"]:
        skip, rest = [n.split("==")[0] for n in rest[1].split(",") if n], rest[2:]
    olds = [d for d in rest if os.path.isdir(d) and os.path.abspath(d) != os.path.abspath(new)]
    size = seed(new, lock, olds, skip) if mode == "seed" else link(new, olds)
    what = "linked in before pip" if mode == "seed" else "shared after pip"
    print(f"{new}: {size / 2**30:.1f} GiB {what} from {', '.join(olds) or 'nothing'}")
