"""The interference guard in long lifelong runs on SmolLM2-135M: guarded vs unguarded WilKE and ROME, and
EasyEdit's AlphaEdit on the same stream.

    python -m bench.interference_guard run --stream counterfact --edits 1000 --method wilke-guard
    python -m bench.interference_guard run --stream zsre --edits 1000 --method rome-guard
    PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.interference_guard run \
        --stream counterfact --edits 300 --method alphaedit    # EasyEdit's methods need EasyEdit HEAD
    python -m bench.interference_guard report        # results of every run folder, finished or not, and the
                                                     # retention plots docs/img/guard_<stream>_retention.png

One method per process (its peak RSS is its own). A run folder that exists is resumed, so a run stopped by
the end of a session continues where it was saved. Streams: ``counterfact``, the 300 CounterFact facts
SmolLM2 knows (as in ``bench.wilke_quality sequential``) and then ``counterfact_easyedit.json`` in file order;
``zsre``, ``knowedit_zsre.json`` in file order. Writes bench/results/guard_<stream>_<method>_<edits>.json.
"""
import argparse
import collections
import dataclasses
import json
import resource
import statistics

from bench.common import (ROOT, SHARED, bench_device, device_suffix, fill_covariance_stats, known_counterfact, setup,
                          write_result)
from edit_plugins.hookspecs import hookimpl
from edit_plugins.lifelong.run_log import read_checkpoints, read_edits, read_summary
from edit_plugins.lifelong.summary import edits_not_applied
from edit_plugins.methods.wilke.config import WilKEHyperParams

ROME, WILKE = "WilKE/smollm2-135m-rome.yaml", "WilKE/smollm2-135m-fast.yaml"  # under hparams/
LIFELONG = "WilKE/smollm2-135m-lifelong.yaml"  # the shipped lifelong hparams
# C from ~100k tokens the model samples itself instead of CPython's docs (the same count of tokens)
SELF_C = {"mom2_dataset": "self", "mom2_n_samples": 1600}
# each edit spread over layers 3-7, the soft guard over every scored position of every earlier edit, and one
# pass before each edit recomputing every stale layer's keys
SPREAD_SOFT_GUARD = {"layers": [7], "spread_layers": 5, "interference_guard": True, "guard_scope": "model",
                     "guard_positions": "prompt", "guard_max_keys_fraction": 0.0, "guard_fallback_weight": 1e-3,
                     "guard_layer_choice": "plain", "guard_refresh_within_edit": False}
# ... refreshing stale keys at most once per 10 edits
SPREAD_SOFT_GUARD_EVERY_10 = {**SPREAD_SOFT_GUARD, "guard_refresh_every": 10}
# the past-edit guard off, and its choices back at their defaults (which need no guard)
NO_GUARD = {"interference_guard": False, **{f.name: f.default for f in dataclasses.fields(WilKEHyperParams)
                                            if f.name in ("guard_scope", "guard_positions", "guard_layer_choice")}}
METHODS = {  # name: (hparams file under hparams/, fields set on it)
    "rome": (ROME, {}),
    "rome-guard": (ROME, {"interference_guard": True}),
    "rome-preserved": (ROME, {"guard_preserved_knowledge": True}),
    "rome-guard-preserved": (ROME, {"interference_guard": True, "guard_preserved_knowledge": True}),
    "wilke": (WILKE, {}),
    "wilke-guard": (WILKE, {"interference_guard": True}),
    "wilke-preserved": (WILKE, {"guard_preserved_knowledge": True}),
    "wilke-guard-preserved": (WILKE, {"interference_guard": True, "guard_preserved_knowledge": True}),
    "wilke-guard-preserved-repair": (WILKE, {"interference_guard": True, "guard_preserved_knowledge": True,
                                             "guard_repair": True}),
    "wilke-guard-repair": (WILKE, {"interference_guard": True, "guard_repair": True}),
    # every position the rewrite prompt's score reads, not only the subject's last token
    "rome-guard-positions": (ROME, {"interference_guard": True, "guard_positions": "prompt"}),
    "wilke-guard-positions": (WILKE, {"interference_guard": True, "guard_positions": "prompt"}),
    # every earlier edit held at every layer edited after it (guard_scope: model)
    "wilke-guard-positions-model": (WILKE, {"interference_guard": True, "guard_positions": "prompt",
                                            "guard_scope": "model"}),
    "wilke-guard-model": (WILKE, {"interference_guard": True, "guard_scope": "model"}),
    # ablations of wilke-guard-model: layers ranked by ROME's u, the preserved-knowledge projection, repair
    "wilke-guard-model-plain-ranking": (WILKE, {"interference_guard": True, "guard_scope": "model",
                                                "guard_layer_choice": "plain"}),
    "wilke-guard-model-preserved": (WILKE, {"interference_guard": True, "guard_scope": "model",
                                            "guard_preserved_knowledge": True}),
    "wilke-guard-model-preserved-repair": (WILKE, {"interference_guard": True, "guard_scope": "model",
                                                   "guard_preserved_knowledge": True, "guard_repair": True}),
    "wilke-self-c": (WILKE, SELF_C),
    "wilke-guard-model-plain-ranking-self-c": (WILKE, {"interference_guard": True, "guard_scope": "model",
                                                       "guard_layer_choice": "plain", **SELF_C}),
    "wilke-guard-model-plain-ranking-preserved-self-c": (WILKE, {
        "interference_guard": True, "guard_scope": "model", "guard_layer_choice": "plain",
        "guard_preserved_knowledge": True, **SELF_C}),
    # LA divided by each layer's norm before the first edit (la_norm: original), not its grown norm now
    "wilke-original-norm": (WILKE, {"la_norm": "original"}),
    "wilke-guard-model-plain-ranking-original-norm": (WILKE, {"interference_guard": True, "guard_scope": "model",
                                                              "guard_layer_choice": "plain", "la_norm": "original"}),
    # a layer whose output on C's text has moved by 10% (‖W − W₀‖_C/‖W₀‖_C) takes no more edits; C self-sampled
    "wilke-self-c-budget": (WILKE, {**SELF_C, "layer_change_budget": 0.1}),
    "wilke-guard-model-plain-ranking-self-c-budget": (WILKE, {
        "interference_guard": True, "guard_scope": "model", "guard_layer_choice": "plain",
        **SELF_C, "layer_change_budget": 0.1}),
    "wilke-guard-positions-repair": (WILKE, {"interference_guard": True, "guard_positions": "prompt",
                                             "guard_repair": True}),
    # soft: no exact keys (max_keys_fraction 0), every earlier key held by the regularised form at a small λ,
    # which divides an isolated earlier key's interference by about 1 + λ·kᵀC⁻¹k ≈ 4 on SmolLM2
    "wilke-soft-guard-model-plain-ranking": (WILKE, {"interference_guard": True, "guard_scope": "model",
                                                      "guard_layer_choice": "plain", "guard_max_keys_fraction": 0.0,
                                                      "guard_fallback_weight": 1e-3}),
    "wilke-soft-guard-model-plain-ranking-weight-0.01": (WILKE, {
        "interference_guard": True, "guard_scope": "model", "guard_layer_choice": "plain",
        "guard_max_keys_fraction": 0.0, "guard_fallback_weight": 1e-2}),
    # soft, every prompt position: the positions other than the subject's are what upstream edits move
    "wilke-soft-guard-positions-model-plain-ranking": (WILKE, {
        "interference_guard": True, "guard_scope": "model", "guard_layer_choice": "plain",
        "guard_positions": "prompt", "guard_max_keys_fraction": 0.0, "guard_fallback_weight": 1e-3}),
    # one edit spread over layers 3-7 (the layers of EasyEdit's AlphaEdit hparams here), MEMIT's schedule
    "rome-spread": (ROME, {"layers": [7], "spread_layers": 5}),
    # with the soft guard over every prompt position, as the best single-layer-per-edit row above
    "rome-soft-guard-spread": (ROME, {"layers": [7], "spread_layers": 5, "interference_guard": True,
                                      "guard_scope": "model", "guard_positions": "prompt",
                                      "guard_max_keys_fraction": 0.0, "guard_fallback_weight": 1e-3,
                                      "guard_layer_choice": "plain"}),  # one candidate: nothing to rank
    # ... with one pass before each edit recomputing every stale layer's keys (not one per piece)
    "rome-soft-guard-spread-one-pass": (ROME, SPREAD_SOFT_GUARD),
    # ... refreshing stale keys at most once per 10 edits (the refresh's cost grows with the edits held)
    "rome-soft-guard-spread-one-pass-every-10": (ROME, SPREAD_SOFT_GUARD_EVERY_10),
    # variants of that one (at 300 edits it kept as much as one refresh per edit, 1.2x the unguarded time):
    # each piece also mapping ROME's template-mean key k̄ (paraphrases; the shipped lifelong hparams, which
    # load as ROME's with SPREAD_SOFT_GUARD_EVERY_10 and spread_direction: own_and_mean_key), and the shipped
    # hparams with earlier keys held ten times harder (λ = 1e-2) or with AlphaEdit's null space (C from pydoc);
    # C sampled from the model itself
    "rome-soft-guard-spread-every-10-mean-key": (LIFELONG, {}),
    "rome-soft-guard-spread-every-10-mean-key-weight-0.01": (LIFELONG, {"guard_fallback_weight": 1e-2}),
    "rome-soft-guard-spread-every-10-mean-key-preserved": (LIFELONG, {"guard_preserved_knowledge": True}),
    "rome-soft-guard-spread-every-10-self-c": (ROME, {**SPREAD_SOFT_GUARD_EVERY_10, **SELF_C}),
    # the shipped lifelong hparams with C sampled from the model (at T = 300 the self-sampled C touched the probes less)
    "rome-soft-guard-spread-every-10-mean-key-self-c": (LIFELONG, SELF_C),
    # the shipped lifelong hparams holding only each earlier edit's subject key (one key per edit instead of
    # about 9): below the layers' width at T = 1,000, where every prompt position fills it 5.7 times over
    "rome-soft-guard-spread-every-10-mean-key-subject-key": (LIFELONG, {"guard_positions": "subject_last"}),
    # ... holding the subject key and the positions whose next token the score reads (the prompt's last token
    # and the target's: 1-4 keys per edit, 2.2 on average): between the subject key alone and every position
    "rome-soft-guard-spread-every-10-mean-key-readout": (LIFELONG, {"guard_positions": "readout"}),
    # the shipped lifelong hparams mapping every earlier key back toward its value at each refresh (least
    # squares, under the soft guard): the held keys' drift adds up as a random walk, and this resets it
    # every 10 edits. Threshold 0: with a threshold (0.05 tried) the slipped keys sit among held ones that
    # drifted alike, and the least squares holds them there
    "rome-soft-guard-spread-every-10-mean-key-repair": (LIFELONG, {"guard_repair": True,
                                                                   "guard_repair_threshold": 0.0}),
    # ... and with AlphaEdit's null space too: the ablation "both with repair"
    "rome-soft-guard-spread-every-10-mean-key-preserved-repair": (LIFELONG, {
        "guard_preserved_knowledge": True, "guard_repair": True, "guard_repair_threshold": 0.0}),
    # the shipped lifelong hparams over ten layers (3-12) instead of five: each layer holds the same keys and
    # carries half the change (does more width in total hold more edits?)
    "rome-soft-guard-spread-every-10-mean-key-ten-layers": (LIFELONG, {"layers": [12], "spread_layers": 10}),
    # the ablations of the shipped lifelong hparams: neither the past-edit guard nor AlphaEdit's null space
    # (C from pydoc), and the null space alone; both is "-mean-key-preserved" above
    "rome-spread-mean-key": (LIFELONG, NO_GUARD),
    "rome-spread-mean-key-preserved": (LIFELONG, {**NO_GUARD, "guard_preserved_knowledge": True}),
    # EasyEdit HEAD's AlphaEdit, unmodified (layers 3-7; C and its null space from pydoc, as for WilKE)
    "alphaedit": ("easyedit/AlphaEdit/smollm2-135m.yaml", {}),
}
COVARIANCE_METHODS = {"alphaedit"}  # EasyEdit's: their statistics are filled offline first
CHECKPOINTS = (1, 10, 100, 300, 1000)


def folder_for(stream, method, edits):
    return ROOT / "runs" / f"bench-guard-{stream}-{method}-{edits}{device_suffix()}"


def stream_records(model, tok, stream, edits):
    from edit_plugins.lifelong.data import load_records

    if stream == "zsre":
        return load_records(SHARED / "knowedit_zsre.json", num_edits=edits)
    known = known_counterfact(model, tok, limit=min(edits, 300))
    if edits <= len(known):
        return known[:edits]
    used = {r.case_id for r in known}
    rest = load_records(SHARED / "counterfact_easyedit.json")
    for r in rest:  # the two files' case ids overlap; known_counterfact numbers EasyEdit's from 100000
        r.case_id = r.request["case_id"] = 100000 + r.case_id
    return known + [r for r in rest if r.case_id not in used][: edits - len(known)]


def method_hparams(method):
    """The hparams a METHODS entry names, its fields set, the statistics in the checkout's data/stats."""
    from edit_plugins import hparams

    file, fields = METHODS[method]
    hp = hparams.load(ROOT / "hparams" / file)
    hp.stats_dir = str(ROOT / "data" / "stats")
    for name, value in fields.items():
        setattr(hp, name, value)
    if fields:  # checked as the run's config.yaml will be on resume (EasyEdit's hparams set none)
        hp.validate(f"bench method {method!r}")
    return hp


class PeakRss:
    """Adds the process's peak RSS so far, and the guard's largest layer state (MB), to every edit's log line."""

    @hookimpl
    def after_edit(self, event):
        from edit_plugins.methods.wilke.model_state import model_guard

        guard = model_guard(event.model)
        memory = max(guard.memory().values(), default=0) / 2**20 if guard is not None else None
        return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "guard_layer_mb_max": memory}


def run(args):
    from edit_plugins.lifelong import RunOptions, resume_lifelong, run_lifelong
    from edit_plugins.methods.wilke.model_state import model_guard
    from edit_plugins.models import load_model
    from edit_plugins.plugins import pm

    pm.register(PeakRss(), name="bench-peak-rss")
    if args.method in COVARIANCE_METHODS:
        fill_covariance_stats(ROOT / "hparams" / METHODS[args.method][0])
    model, tok = load_model("smollm2-135m", bench_device())
    records = stream_records(model, tok, args.stream, args.edits)
    hp = method_hparams(args.method)
    folder = folder_for(args.stream, args.method, args.edits)
    if (folder / "config.yaml").is_file():
        resume_lifelong(folder, model=model, tok=tok, records=records, progress_bar=False)
    else:
        options = RunOptions(probe_data=str(SHARED / "known_1000.json"), num_probes=100, save_every=25,
                             checkpoints=[c for c in CHECKPOINTS if c <= args.edits])
        run_lifelong(hp, records, folder, model=model, tok=tok, options=options, progress_bar=False)
    guard = model_guard(model)
    memory = {m: b / 2**20 for m, b in guard.memory().items()} if guard is not None else {}
    (folder / "guard_memory.json").write_text(json.dumps(memory))
    report_one(args.stream, args.method, args.edits)


def report_one(stream, method, edits):
    folder = folder_for(stream, method, edits)
    if not (folder / "edits.jsonl").is_file():
        return
    rows, checkpoints, summary = read_edits(folder), read_checkpoints(folder), read_summary(folder)
    per_edit = [edit_guards(r) for r in rows]
    guards = [g for gs in per_edit for g in gs]  # one per layer update: a spread edit has several
    memory = folder / "guard_memory.json"
    out = {"stream": stream, "method": method, "fields": METHODS[method][1], "hparams": METHODS[method][0],
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
        if method in METHODS and edits.isdigit():
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
        if method in COVARIANCE_METHODS:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("run")
    p.add_argument("--stream", choices=["counterfact", "zsre"], required=True)
    p.add_argument("--edits", type=int, default=1000)
    p.add_argument("--method", choices=sorted(METHODS), required=True)
    sub.add_parser("report")
    p = sub.add_parser("held", help="per block of edits: held right after their own edit, and v*'s NLL")
    p.add_argument("folders", nargs="+")
    p.add_argument("--edits", type=int)
    args = parser.parse_args()
    setup(2)
    {"run": run, "report": report, "held": held}[args.mode](args)
