"""Shared helpers for the benchmarks: the model, CounterFact facts the model knows, timing, tables."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; EDIT_PLUGINS_SHARED names another copy (on a lent GPU machine, say)
SHARED = Path(os.environ.get("EDIT_PLUGINS_SHARED", ROOT.parent / "shared")) / "data"


def setup(threads: int = 2):
    """Call first: 2 threads, as the targets specify (BENCH_THREADS=1 when two quality-only runs share the
    machine), and the checkout's model cache unless EDIT_PLUGINS_CACHE names another."""
    os.environ.setdefault("EDIT_PLUGINS_CACHE", str(ROOT / ".cache" / "edit_plugins"))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", threads)))


def bench_device() -> str:
    """BENCH_DEVICE=cuda runs a quality benchmark on a GPU (when one is lent); the default is the CPU."""
    return os.environ.get("BENCH_DEVICE", "cpu")


def device_suffix() -> str:
    """'' on the CPU, '_cuda' on a GPU: GPU results get their own files, beside the CPU ones."""
    return "" if bench_device() == "cpu" else "_" + bench_device().split(":")[0]


def known_counterfact(model, tok, limit=None):
    """CounterFact records whose target_true's first token the model predicts (≈ half).

    First the ROME-format file (139 known); beyond that, as far as ``limit`` asks, EasyEdit's
    CounterFact file in its own order (its facts are less well known: a few percent of its records).
    """
    from edit_plugins.lifelong.data import load_records

    # Finding 300 takes ~10 min of forward passes; remember which ones (the case ids, in order).
    cache = ROOT / ".cache" / "edit_plugins" / f"known_counterfact_{Path(model.config._name_or_path).name}.json"
    remembered = json.loads(cache.read_text()) if cache.is_file() else None
    records = load_records(SHARED / "counterfact_known.json")
    if limit and limit > 139:
        # only a few percent of it is known: scan far, but not into the tuning sweep's dev records at its end
        extra = load_records(SHARED / "counterfact_easyedit.json")[:-DEV_TAIL]
        for r in extra:  # the two files' case ids overlap
            r.case_id = r.request["case_id"] = 100000 + r.case_id
        records += extra
    if remembered and limit and remembered["limit"] >= limit:
        by_id = {r.case_id: r for r in records}
        return [by_id[i] for i in remembered["case_ids"][:limit]]
    known = []
    for r in records:
        ids = tok(r.request["prompt"], return_tensors="pt").to(model.device)
        true_first = tok(" " + r.request["ground_truth"].strip(), add_special_tokens=False).input_ids[0]
        with torch.no_grad():
            if int(model(**ids).logits[0, -1].argmax()) == true_first:
                known.append(r)
        if limit and len(known) >= limit:
            break
    if limit and limit > 139:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"limit": len(known), "case_ids": [r.case_id for r in known]}))
    return known


DEV_TAIL = 2000  # the last records of counterfact_easyedit.json: the tuning sweep's, never a table's


def dev_counterfact(model, tok, count: int) -> list[dict]:
    """The tuning sweep's dev stream: ``count`` facts the model knows (as ``known_counterfact``), read backwards
    from the last ``DEV_TAIL`` records of counterfact_easyedit.json, none about a subject of
    counterfact_known.json; raw records, in EasyEdit's format."""
    taken = {r["requested_rewrite"]["subject"] for r in json.loads((SHARED / "counterfact_known.json").read_text())}
    dev = []
    for r in reversed(json.loads((SHARED / "counterfact_easyedit.json").read_text())[-DEV_TAIL:]):
        if r["subject"] in taken:
            continue
        ids = tok(r["prompt"], return_tensors="pt").to(model.device)
        true_first = tok(" " + r["ground_truth"].strip(), add_special_tokens=False).input_ids[0]
        with torch.no_grad():
            if int(model(**ids).logits[0, -1].argmax()) == true_first:
                dev.append(r)
                taken.add(r["subject"])
        if len(dev) == count:
            return dev
    raise SystemExit(f"only {len(dev)} known facts in the last {DEV_TAIL} records of counterfact_easyedit.json")


def fill_covariance_stats(hparams_file) -> None:
    """EasyEdit's covariance methods (its ROME, MEMIT, AlphaEdit) read C, and AlphaEdit its null space, through
    layer_stats, which would download Wikipedia: fill them first from the hparams' own corpus, offline
    (`edit-plugins stats`; files already there are kept). In the checkout root, where their stats_dir points."""
    subprocess.run([sys.executable, "-m", "edit_plugins.cli", "stats", "--hparams", str(hparams_file)], check=True,
                   cwd=ROOT)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Stamped into WilKE results: the docs table labels results by the fast_scan estimate that made them.
FAST_SCAN_ESTIMATE = "v0-norm"


def write_result(name: str, data: dict, echo: bool = True, stamp: bool = True):
    """Atomically write bench/results/<name><device suffix>.json, stamped with the device it ran on."""
    name += device_suffix()
    if stamp:
        data = {"device": torch.cuda.get_device_name() if bench_device() != "cpu" else "cpu", **data}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    from edit_plugins.files import atomic_write_text

    atomic_write_text(out / f"{name}.json", json.dumps(data, indent=2) + "\n")  # a kill never leaves half a file
    if echo:
        print(json.dumps(data, indent=2))
