"""Replaces each file in NEW that has a byte-identical twin at the same relative path in one of OLD...
by a hard link to that twin, so that the four test environments hold torch and the rest once on disk.

pip never writes into an installed file (it removes and recreates), so the sharing is safe when any one
environment is upgraded later. Usage: python link_identical_files.py NEW OLD [OLD...]
"""
import filecmp
import os
import sys


def link_identical_files(new, olds):
    saved = 0
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
                    saved += size
                    break
    return saved


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    new, olds = sys.argv[1], [d for d in sys.argv[2:] if os.path.isdir(d) and os.path.abspath(d) != os.path.abspath(sys.argv[1])]
    saved = link_identical_files(new, olds)
    print(f"{new}: {saved / 2**30:.1f} GiB shared with {', '.join(olds) or 'nothing'}")
