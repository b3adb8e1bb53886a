"""The analysis of the interference-guard runs (bench/interference_guard.py): each run folder's result file,
why edits were lost, which took hold, the predicted interference, and the retention plots."""
import collections
import json
import statistics

from bench.common import ROOT, device_suffix, write_result
from bench.interference_guard import experiments, folder_for, is_easyedit, method_hparams
from edit_plugins.lifelong.run_log import read_checkpoints, read_edits, read_summary
from edit_plugins.lifelong.summary import edits_not_applied


def report_one(stream, method, edits):
    folder = folder_for(stream, method, edits)
    if not (folder / "edits.jsonl").is_file():
        return
    rows, checkpoints, summary = read_edits(folder), read_checkpoints(folder), read_summary(folder)
    per_edit = [edit_guards(r) for r in rows]
    guards = [g for gs in per_edit for g in gs]  # one per layer update: a spread edit has several
    memory = folder / "guard_memory.json"
    file, fields = experiments()[method]
    out = {"stream": stream, "method": method, "fields": fields, "hparams": file,
           "edits_planned": edits, "edits_done": len(rows),
           "complete": summary is not None and summary.get("complete", True),
           "stopped_by": (summary or {}).get("stopped_by"),  # the method could take no more edits
           "checkpoints": checkpoints, "summary": summary,
           "seconds_per_edit": sum(r["seconds"] for r in rows) / max(len(rows), 1),
           "peak_rss_mb": max((r["hooks"].get("peak_rss_mb", 0) for r in rows), default=None),
           "layer_histogram": dict(collections.Counter(str(r["layer"]) for r in rows).most_common()),
           "edits_not_applied": edits_not_applied(rows),
           "guard_paths": dict(collections.Counter(g["path"] for g in guards)),
           "keys_refreshed_edits": sum(any("keys_refreshed" in g for g in gs) for gs in per_edit),
           "repaired_keys": sum(g.get("repair_slipped", 0) for g in guards),
           "guard_memory_mb": json.loads(memory.read_text()) if memory.is_file() else None,
           "guard_layer_mb_max": max((r["hooks"].get("guard_layer_mb_max") or 0 for r in rows), default=None) or None,
           "lost_edits": lost_edits(rows, checkpoints),
           "holding": holding(rows),
           "predicted_interference": predicted_interference(rows),
           "immediate": [{"step": r["step"], "case_id": r["case_id"], **r["metrics"]} for r in rows]}
    write_result(f"guard_{stream}_{method}_{edits}", out, echo=False)


def edit_guards(row):
    """The guard's report of each layer update an edit made (one, or one per layer of a spread edit)."""
    if row["info"].get("guard"):
        return [row["info"]["guard"]]
    return [p["guard"] for p in row["info"].get("spread", []) if p.get("guard")]


def lost_edits(rows, checkpoints):
    """Why the edits lost at the last checkpoint were lost, from the run's own log: never held (not exact right
    after their own edit), or held and then forgotten; for both kinds, how many later edits changed a layer
    below theirs (stale keys), and how many later edits at their own layer took a path that does not hold
    every earlier key (`bounded`, `unguarded`: capacity at one layer). An older edit has more later edits of
    every kind, so the medians of all later edits are given beside them."""
    if not checkpoints:
        return None
    last = checkpoints[-1]
    rows = [r for r in rows if r["step"] <= last["step"]]
    lost = set(last.get("lost_case_ids", []))

    def later(i, test):
        return sum(test(r) for r in rows[i + 1:])

    def layers(r):  # every layer the edit changed: one, or a spread edit's; None where not logged (AlphaEdit)
        spread = r["info"].get("spread")
        return [p["layer"] for p in spread] if spread else (None if r["layer"] is None else [r["layer"]])

    def describe(i, r):
        own = layers(r)
        loose = later(i, lambda o: bool(own and set(layers(o) or ()) & set(own))
                      and any(g.get("path") in ("bounded", "unguarded") for g in edit_guards(o)))
        return {"case_id": r["case_id"], "step": r["step"], "layer": r["layer"],
                "held_after_own_edit": r["metrics"].get("rewrite_acc") == 1.0,
                "path": (r["info"].get("guard") or {}).get("path"),
                "later_edits": len(rows) - 1 - i,
                "later_edits_below": None if own is None  # it moved a layer under one this edit changed
                else later(i, lambda o: layers(o) is not None and min(layers(o)) < max(own)),
                "later_unguarding_edits_at_layer": loose}

    described = [describe(i, r) for i, r in enumerate(rows)]
    lost_rows = [d for d in described if d["case_id"] in lost]
    kept_rows = [d for d in described if d["case_id"] not in lost]

    def median(values):
        values = [v for v in values if v is not None]
        return float(statistics.median(values)) if values else None

    forgotten = [d for d in lost_rows if d["held_after_own_edit"]]
    return {"step": last["step"], "lost": len(lost_rows), "never_held": len(lost_rows) - len(forgotten),
            "forgotten": len(forgotten),
            "median_later_edits": {"forgotten": median([d["later_edits"] for d in forgotten]),
                                   "kept": median([d["later_edits"] for d in kept_rows])},
            "median_later_edits_below": {"forgotten": median([d["later_edits_below"] for d in forgotten]),
                                         "kept": median([d["later_edits_below"] for d in kept_rows])},
            "median_later_unguarding_edits_at_layer": {
                "forgotten": median([d["later_unguarding_edits_at_layer"] for d in forgotten]),
                "kept": median([d["later_unguarding_edits_at_layer"] for d in kept_rows])},
            "edits": lost_rows}


def holding(rows, block=50, reached=0.2):
    """Whether each edit took hold right after it was made (exact match on its rewrite prompt), per block of
    edits, beside how well its value optimisation reached the target (`v_nll`, the target's NLL with v* in
    place): separates an update that does not carry its v* from a v* that was never found."""
    def share(rs):
        return sum(r["metrics"].get("rewrite_acc") == 1.0 for r in rs) / len(rs) if rs else None

    def v_nll(r):
        return r["info"].get("v_nll")

    found = [r for r in rows if v_nll(r) is not None and v_nll(r) < reached]
    missed = [r for r in rows if v_nll(r) is not None and v_nll(r) >= reached]
    blocks = [rows[i:i + block] for i in range(0, len(rows), block)]
    return {"block": block, "v_nll_reached": reached,
            "held_per_block": [share(b) for b in blocks],
            "median_v_nll_per_block": [statistics.median(v) if (v := [v_nll(r) for r in b if v_nll(r) is not None])
                                       else None for b in blocks],
            "v_reached": {"edits": len(found), "held": share(found)},
            "v_not_reached": {"edits": len(missed), "held": share(missed)}}


def predicted_interference(rows, block=50):
    """Median per block of edits of the guard's predicted RMS interference on the keys it holds (every layer
    update's, `interference_rms`), beside the unguarded direction's on the same keys; None where the run
    predates the report."""
    def medians(name):
        out = []
        for i in range(0, len(rows), block):
            values = [g[name] for r in rows[i:i + block] for g in edit_guards(r) if g.get(name) is not None]
            out.append(statistics.median(values) if values else None)
        return out

    guarded = medians("interference_rms")
    if not any(v is not None for v in guarded):
        return None
    return {"block": block, "guarded_median": guarded, "unguarded_median": medians("unguarded_interference_rms")}


def held(args):
    """`holding` for any lifelong run folder (this benchmark's or compare_methods'), first `--edits` edits."""
    for folder in args.folders:
        rows = read_edits(folder)[: args.edits]
        print(folder, json.dumps(holding(rows)))


def report(_args):
    for folder in sorted((ROOT / "runs").glob("bench-guard-*")):
        name = folder.name[len("bench-guard-"):]
        if device_suffix() and not name.endswith(device_suffix()):
            continue
        stream, rest = name.split("-", 1)
        method, edits = rest.rsplit("-", 1)
        if method in experiments() and edits.isdigit():
            report_one(stream, method, int(edits))
    for stream in ("counterfact", "zsre"):
        plot_retention(stream)


PLOT_REFERENCES = {"rome-spread", "wilke", "alphaedit"}  # plotted beside the guarded runs that reached 1,000
COMPARED = {"rome": "ROME, layer 4 (unguarded)", "wilke": "WilKE (unguarded)", "lemoe": "LEMoE"}


def plot_retention(stream):
    """docs/img/guard_<stream>_retention.png: retention vs step of every run here that reached step 1,000 and
    of PLOT_REFERENCES, beside the unguarded editors and LEMoE of the stream's largest comparison."""
    from edit_plugins.lifelong.compare import plot

    def load(pattern):
        return [json.loads(p.read_text()) for p in sorted((ROOT / "bench" / "results").glob(pattern))]

    def on(result):
        return "" if result.get("device", "cpu") == "cpu" else f" ({result['device']})"

    def kind(method):
        if is_easyedit(method):
            return "EasyEdit HEAD"
        return "guarded" if method_hparams(method).interference_guard else "unguarded"

    lines = [{"label": f"{r['method']} ({kind(r['method'])}){on(r)}",
              "checkpoints": r["checkpoints"]} for r in load(f"guard_{stream}_*.json")
             if r["method"] in PLOT_REFERENCES or any(c["step"] >= 1000 for c in r["checkpoints"])]
    comparisons = load(f"compare_{stream}_*.json")
    if comparisons:
        largest = max(comparisons, key=lambda c: c["edits"])
        lines += [{"label": f"{COMPARED[r['label']]} (comparison run){on(largest)}", "checkpoints": r["checkpoints"]}
                  for r in largest["rows"] if r["label"] in COMPARED]
    if lines:
        plot(lines, ROOT / "docs" / "img" / f"guard_{stream}_retention.png")
