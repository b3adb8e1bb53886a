"""Render bench/results/*.json into docs/benchmarks.md (numbers are never typed by hand).

    python -m bench.make_table
"""
import json
import re
from pathlib import Path
from statistics import median_high

from edit_plugins.lifelong.run_log import read_checkpoints

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def overhead(timing):
    wall = timing["wall_seconds"]
    return (wall - timing["edit_seconds"] - timing["eval_seconds"]) / wall if wall else None


def fast_scan_label(result, label="WilKE (fast_scan)"):
    """Results from before the ‖v₀‖-scaled estimate carry no ``fast_scan_estimate`` field."""
    if result.get("fast_scan_estimate"):
        return label
    return label[:-1] + ", first-order estimate, since replaced)" if label.endswith(")") else \
        label + " (first-order estimate, since replaced)"


def f(x, digits=3):
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


TEMPLATES = ROOT / "bench" / "templates"


def anchor(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def contents(lines: list[str]) -> str:
    titles = [line[3:] for line in lines if line.startswith("## ")]
    return "\n".join(f"- [{t}](#{anchor(t)})" for t in titles)


# The guard runs the summary shows (the rest are ablations, in their section), by the name it gives them.
SUMMARY_GUARD_RUNS = {"rome-soft-guard-spread-every-10-mean-key": "WilKE, shipped lifelong hparams (guarded spread)",
                      "rome-spread-mean-key": "the same spread without the guard",
                      "alphaedit": "AlphaEdit (EasyEdit HEAD)"}


def summary() -> str:
    """One row per editor and stream: its longest lifelong run in the comparison and the guard's main rows."""
    rows = []
    for path in sorted(RESULTS.glob("compare_*.json")):
        r = json.loads(path.read_text())
        for row in r["rows"]:
            rows.append((row["label"], r["stream"], row["edits"], row.get("retention_last"),
                         row["end"].get("probe_locality"), row.get("seconds_per_edit"), "Lifelong editors side by side",
                         on_gpu(r)))
    for path in sorted(RESULTS.glob("guard_*_*.json")):
        r = json.loads(path.read_text())
        if r.get("method") not in SUMMARY_GUARD_RUNS or not r.get("checkpoints") or not r.get("complete", True):
            continue
        last = r["checkpoints"][-1]
        rows.append((SUMMARY_GUARD_RUNS[r["method"]], r["stream"], r["edits_done"], last.get("retention_exact"), last.get("probe_locality"),
                     r.get("seconds_per_edit"), "Interference guard: lifelong runs", on_gpu(r)))
    longest = {}
    for row in rows:
        key = (row[0], row[1], row[7])
        if key not in longest or row[2] > longest[key][2]:
            longest[key] = row
    out = ["| editor | stream | edits | retention | probe locality | s/edit | section |", "|---|---|---|---|---|---|---|"]
    for name, stream, edits, kept, probes, seconds, section, gpu in sorted(
            longest.values(), key=lambda r: (r[1], -r[2], -(r[3] or 0))):
        out.append(f"| {name}{' (**GPU**)' if gpu else ''} | {stream} | {edits} | {f(kept)} | {f(probes)} | "
                   f"{f(seconds, 2)} | [{section}](#{anchor(section)}) |")
    return "\n".join(out)


def header(sections: list[str]) -> list[str]:
    text = (TEMPLATES / "benchmarks_header.md").read_text()
    return text.format(contents=contents(sections), summary=summary()).split("\n")


def on_gpu(result):
    return result.get("device", "cpu") != "cpu"


def sequential_runs():
    """The sequential runs by (edits, on GPU) and method, and apart from them those made with another C."""
    runs = {}
    corpus_runs = []  # sequential runs with another C than the hparams' (--mom2-samples): their own section
    for path in sorted(RESULTS.glob("wilke_sequential_*_*.json")):
        r = json.loads(path.read_text())
        if re.search(r"_c\d+(_cuda)?\.json$", path.name):
            corpus_runs.append(r)
            continue
        runs.setdefault((r["edits"], on_gpu(r)), {})[r["method"]] = r
    return runs, corpus_runs


def wilke_speed(lines: list[str]) -> None:
    """WilKE speed: single layer, faithful scan, fast_scan."""
    speed = load("wilke_speed")
    if speed:
        lines += ["## WilKE speed", "", f"Command: `python -m bench.wilke_speed --edits {speed['edits']}` "
                  "(each edit from the unedited model; one-time statistics and templates excluded; run alone)."
                  + ("" if "device" in speed else " Measured before two later changes and not re-measured: the "
                     "key-mapping fix (adds one single-row forward pass per edit) and sharing the batch and prefix cache "
                     "across candidate layers (makes the faithful scan faster)."), "",
                  "| configuration | median s/edit | × single layer | target | layers chosen | v steps |", "|---|---|---|---|---|---|"]
        targets = {"smollm2-135m-rome": "≤ 3 s", "smollm2-135m": "≤ 5×", "smollm2-135m-fast": "≤ 1.5×"}
        labels = {"smollm2-135m-rome": "single layer (ROME, layer 4)", "smollm2-135m": "WilKE, faithful scan of 30 layers",
                  "smollm2-135m-fast": "WilKE, fast_scan"}
        labels["smollm2-135m-fast"] = fast_scan_label(speed, labels["smollm2-135m-fast"])
        for name, r in speed["configs"].items():
            base, _, candidates = name.partition("-k")  # "smollm2-135m-fast-k3": fast_scan_candidates 3
            label = labels[base] + (f", best {candidates} estimates optimised (`fast_scan_candidates: {candidates}`)"
                                    if candidates else "")
            lines.append(f"| {label} | {f(r['median_seconds'], 2)} | {f(r['ratio_to_single_layer'], 2)} | "
                         f"{targets[base] if not candidates else ''} | {r['layers']} | {r['v_steps']} |")
        if "peak_rss_mb_after_edits" in speed:
            lines += ["", "Peak RSS (MB) after N sequential fast_scan edits: " +
                      ", ".join(f"{k}: {v:.0f}" for k, v in speed["peak_rss_mb_after_edits"].items())]
        lines.append("")


def wilke_independent(lines: list[str]) -> None:
    """WilKE and ROME quality, each edit on the unedited model."""
    ind = load("wilke_independent")
    if ind:
        lines += ["## WilKE quality, each edit from the unedited model", "",
                  f"Command: `python -m bench.wilke_quality independent --edits {ind['edits']}`. "
                  f"Data: the {ind['known_records']} of 300 `counterfact_known.json` records whose first "
                  "`target_true` token SmolLM2 predicts; the first "
                  f"{ind['edits']} of them.", "",
                  "| method | efficacy (≥ .95) | paraphrase (≥ .6) | neighbourhood (≥ .75) | paraphrase token accuracy "
                  "| layers chosen |", "|---|---|---|---|---|---|"]
        for name, label in (("smollm2-135m-rome", "ROME (layer 4)"), ("smollm2-135m-fast", fast_scan_label(ind))):
            r = ind[name]
            hist = " ".join(f"{k}:{v}" for k, v in r["layer_histogram"].items())
            lines.append(f"| {label} | {f(r['efficacy'])} | {f(r['paraphrase'])} | {f(r['neighbourhood'])} "
                         f"| {f(r.get('rephrase_acc'))} | {hist} |")
        lines += ["", "Paraphrase token accuracy is EasyEdit's generality metric (the LEMoE table's): the share of "
                  "`target_new`'s tokens that are the top prediction on the paraphrase prompts, teacher-forced. It "
                  "shows what a single rank-one edit reaches on these records, with nothing else edited.", ""]


def wilke_agreement(lines: list[str]) -> None:
    """Fast_scan's agreement with the faithful scan."""
    agr, faithful_scans = load("wilke_agreement"), load("wilke_faithful_scans")
    agreement_by_candidates = {k: r for k in range(2, 9) if (r := load(f"wilke_agreement_k{k}"))}
    if agr:
        def eligible_scores(case_id):
            scan = faithful_scans[str(case_id)]
            return {int(l): v for l, v in scan["scores"].items() if int(l) not in scan["ineligible"]}

        ranks, regrets, spreads, ratios = [], [], [], []
        for r in agr["rows"]:
            faithful = eligible_scores(r["case_id"])
            estimated = sorted((int(l) for l in r["fast_scores"]), key=lambda l: r["fast_scores"][str(l)])
            ranks.append(estimated.index(r["faithful_layer"]))
            regrets.append(faithful[r["fast_layer"]] / faithful[r["faithful_layer"]] if r["fast_layer"] in faithful else None)
            # faithful LA / estimate = ‖δ_l‖/‖v₀,l‖ (the two share the factor ‖u‖/|kᵀu|/‖W‖)
            per_layer = [v / r["fast_scores"][str(l)] for l, v in faithful.items() if str(l) in r["fast_scores"]]
            ratios += per_layer
            spreads.append(max(per_layer) / min(per_layer))
        ratios.sort()
        rejected = sum(x is None for x in regrets)
        regrets = [x for x in regrets if x is not None]
        n = agr["edits"]
        # scans flagged "contended" ran beside another job: their seconds are left out
        seconds = [scan["seconds"] for scan in faithful_scans.values() if not scan.get("contended")]
        lines += ["## fast_scan vs the faithful scan", "",
                  "Command: `python -m bench.wilke_quality agreement --edits 50`"
                  + (f", stopped after {n} edits." if n < 50 else ".") + " The faithful scans are kept in "
                  "`bench/results/wilke_faithful_scans.json` and reused, so a changed estimate re-runs only the fast side.",
                  "",
                  f"- same layer chosen: **{f(agr['same_layer_rate'])}** of {n} edits (target ≥ 0.80 on 50)",
                  *[f"- with `fast_scan_candidates: {k}` (`--fast-candidates {k}`): same layer **{f(r['same_layer_rate'])}** "
                    f"of {r['edits']} edits, efficacy {f(r['fast_efficacy'])}, median "
                    f"{f(median_high([x['fast_seconds'] for x in r['rows']]), 1)} s per edit" for k, r in agreement_by_candidates.items()],
                  "- the faithful layer among fast_scan's best K estimates, which is how often `fast_scan_candidates: K` "
                  "agrees with the faithful scan (it optimises those K together and applies the faithful rule among them): "
                  + ", ".join(f"K={k}: {f(sum(r < k for r in ranks) / n)}" for k in range(1, 7))
                  + f"; median rank {median_high(ranks)} of 30",
                  f"- LA of fast_scan's layer / LA of the faithful layer (both from the faithful scan): median "
                  f"{f(median_high(regrets), 2)}, max {f(max(regrets), 2)}"
                  + (f"; {rejected} edits at a layer the faithful scan rejected" if rejected else ""),
                  f"- efficacy: faithful {f(agr['faithful_efficacy'])}, fast_scan {f(agr['fast_efficacy'])}",
                  f"- what the estimate assumes constant, ‖δ_l‖/‖v₀,l‖ (faithful LA / estimate): 5th–95th percentile "
                  f"{f(ratios[len(ratios) // 20], 2)}–{f(ratios[-1 - len(ratios) // 20], 2)} over all eligible layers and "
                  f"edits; within one edit, largest / smallest: median {f(median_high(spreads), 2)}",
                  (f"- faithful scan: median {f(median_high(seconds), 0)} s per edit ({len(seconds)} scans run alone, "
                   "one candidate after another, before `scan_layers_per_pass`; current speed: WilKE speed above)"
                   if seconds else "- faithful scan time: not given, every scan shared the CPU with another job"),
                  "- layers (faithful → fast): " + ", ".join(f"{r['faithful_layer']}→{r['fast_layer']}" for r in agr["rows"]),
                  ""]


def wilke_agreement_gpu(lines: list[str]) -> None:
    """The agreement run on a lent GPU, against the CPU's."""
    agr, faithful_scans = load("wilke_agreement"), load("wilke_faithful_scans")
    agr_gpu, scans_gpu = load("wilke_agreement_cuda"), load("wilke_faithful_scans_cuda")
    if agr_gpu:
        both = [k for k in scans_gpu if faithful_scans and k in faithful_scans]
        same_faithful = sum(scans_gpu[k]["layer"] == faithful_scans[k]["layer"] for k in both)
        same_rejected = sum(sorted(scans_gpu[k]["ineligible"]) == sorted(faithful_scans[k]["ineligible"]) for k in both)
        cpu_fast = {r["case_id"]: r["fast_layer"] for r in (agr or {}).get("rows", [])}
        fast_both = [r for r in agr_gpu["rows"] if r["case_id"] in cpu_fast]
        n = agr_gpu["edits"]
        lines += ["### The same comparison on a lent GPU (**GPU**)", "",
                  f"Command: `BENCH_DEVICE=cuda python -m bench.wilke_quality agreement --edits 50`, stopped after {n} "
                  "edits when the session's GPU time ran out (a faithful scan took about 40 s there: 600 small "
                  "optimisation steps, bound by kernel launches).", "",
                  f"- same layer chosen: **{f(agr_gpu['same_layer_rate'])}** of {n} edits; efficacy: faithful "
                  f"{f(agr_gpu['faithful_efficacy'])}, fast_scan {f(agr_gpu['fast_efficacy'])}",
                  f"- the faithful scan is reproducible: on the GPU it chose the CPU's layer for {same_faithful} of the "
                  f"{len(both)} edits both devices scanned, and rejected the same layers in {same_rejected}. So the "
                  "disagreement with fast_scan is the estimate's, not noise in the faithful choice.",
                  f"- fast_scan chose the same layer on both devices for "
                  f"{sum(r['fast_layer'] == cpu_fast[r['case_id']] for r in fast_both)} of {len(fast_both)} edits", ""]


def wilke_sequential(lines: list[str]) -> None:
    """Sequential WilKE and ROME runs, one table per length and device."""
    runs, corpus_runs = sequential_runs()
    for (edits, gpu), by_method in sorted(runs.items(), reverse=True):
        names = [(n, l) for n, l in (("smollm2-135m-fast", fast_scan_label(by_method.get("smollm2-135m-fast", {}))),
                                     ("smollm2-135m-rome", "ROME (layer 4)"))
                 if n in by_method]
        steps = sorted({c["step"] for r in by_method.values() for c in r["checkpoints"]})
        lines += [f"## Lifelong: {edits} sequential edits, WilKE vs fixed-layer ROME" + (" (**GPU**)" if gpu else ""), "",
                  f"Command: `{'BENCH_DEVICE=cuda ' if gpu else ''}python -m bench.wilke_quality sequential --edits {edits} --method M` (a fresh process per "
                  "method; lifelong runner, interference logging on). Data: the first 300 CounterFact facts SmolLM2 "
                  "knows (first token of `target_true`): the 139 of `counterfact_known.json`, then "
                  "`counterfact_easyedit.json` in file order; same order for both methods. Locality probes: 100 facts "
                  "from `known_1000.json`.", "",
                  "Retention: exact-match rate of all past edits' rewrite prompts, re-checked at each step:", "",
                  "| method | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
        for name, label in names:
            by_step = {c["step"]: c for c in by_method[name]["checkpoints"]}
            lines.append(f"| {label} | " + " | ".join(f(by_step.get(s, {}).get("retention_exact")) for s in steps) + " |")
        lines += ["", "| method | retention at end | probe locality at end | neighbourhood (immediate) | S | wall s | "
                  "runner overhead | peak RSS MB (after edit 1 / 50 / 100 / last) | interference logging cost (all / last 50 "
                  "edits) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, label in names:
            r = by_method[name]
            summary, final, rss = r["summary"], r["summary"]["final_checkpoint"], r["peak_rss_mb_at"]
            lines.append(f"| {label} | {f(final.get('retention_exact'))} | {f(final.get('probe_locality'))} | "
                         f"{f(summary['immediate'].get('neighbourhood'))} | {f(summary['S'])} | "
                         f"{f(r['timing']['wall_seconds'], 0)} | {f(overhead(r['timing']), 4)} | "
                         f"{rss.get('1')} / {rss.get('50')} / {rss.get('100')} / {rss.get(str(edits))} | "
                         f"{100 * r['interference_cost']:.2f}% / {100 * r['interference_cost_last_50']:.2f}% |")
        lines += ["", "Runner overhead = (wall − edit − evaluation time) / wall (target ≤ 0.05). Interference logging "
                  "cost = the after-edit hooks' time / the rest of the edit's time (target ≤ 5% at 300 edits)."]
        if edits == 300:
            lines[-1] += (" The ROME run predates checkpoint evaluation in length-sorted batches under a token budget: "
                          "its peak RSS rose after the checkpoints that re-check every past edit (100, 200), and its "
                          "evaluation took twice as long. The WilKE run has that change: its peak RSS stays at the value "
                          "after its first edit (it holds the statistics of all 30 candidate layers). The ROME run shared "
                          "the CPU with another job for about edits 25–50, which inflates its wall time a little.")
        if edits == 100 and gpu:
            lines[-1] += " Wall times and peak RSS are the GPU machine's (its CPU side), not comparable with the CPU runs."
        if edits == 100 and not gpu:
            lines[-1] += " Both runs were made with `BENCH_THREADS=1` beside another job, so their wall times are inflated."
        lines.append("")
        for name, label in (("smollm2-135m-fast", "WilKE (fast_scan)"), ("smollm2-135m-rome", "ROME (layer 4)")):
            if name not in by_method and not gpu:
                lines += [f"{label} was not run at {edits} edits (about an hour on this machine); the "
                          "100-edit comparison above is the latest for it.", ""]
        if len(names) == 2:
            score = lambda s: s.get("harmonic_mean_score", s.get("S"))  # noqa: E731  (results before the rename say S)
            w, r = (score(by_method[n]["summary"]) for n in ("smollm2-135m-fast", "smollm2-135m-rome"))
            verdict = "the same ordering as" if w > r else "the **opposite** ordering to"
            lines += [f"The paper (GPT2-XL, 1,024 edits) reports S of .194 for WilKE against .093 for ROME. Here S is "
                      f"{f(w)} for {names[0][1]} against {f(r)} for ROME: {verdict} the paper.", ""]
            hist = by_method["smollm2-135m-fast"].get("layer_histogram")
            probe_at_100 = lambda name: {c["step"]: c for c in by_method[name]["checkpoints"]}.get(100, {}).get(  # noqa: E731
                "probe_locality")
            if hist and not by_method["smollm2-135m-fast"].get("fast_scan_estimate"):
                top = sorted(hist.items(), key=lambda kv: -kv[1])[:4]
                lines += ["Layers WilKE (fast_scan) chose: " + ", ".join(f"layer {k}: {v}" for k, v in top) +
                          f" (of {sum(hist.values())}). fast_scan's first-order estimate favours the earliest layers, "
                          "whose FFN output every later layer reads. Edits piled into layer 0 first cost the "
                          f"never-edited facts (probe locality {f(probe_at_100('smollm2-135m-fast'))} at step 100 against "
                          f"{f(probe_at_100('smollm2-135m-rome'))} for ROME), "
                          "then everything: by step 200 no edit and no probe fact survives. The faithful scan, which "
                          "picks middle layers, was not run for 300 sequential edits (about 10 hours here).", ""]
            elif hist:
                lines += ["Layers WilKE (fast_scan) chose: " + ", ".join(
                    f"layer {k}: {v}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1])) + ".", ""]
        for name, label in names:
            diag = by_method[name]["summary"].get("diagnostics", {}).get("InterferenceLog")
            if diag:
                lines.append(f"- {label}: interference as an early warning of forgetting: ROC AUC "
                             f"{f(diag.get('auc_interference_predicts_loss'))} over {diag['edits_scored']} edits "
                             f"({diag['edits_lost']} lost at the end; {diag['edits_at_risk']} flagged at risk, "
                             f"threshold ‖I‖/‖v‖ > {diag['risk_threshold']})")
        lines.append("")


def sequential_c(lines: list[str]) -> None:
    """Sequential runs with another C than the hparams'."""
    runs, corpus_runs = sequential_runs()
    if corpus_runs:
        lines += ["## Sequential editing: what C does over 100 edits", "",
                  "Command: `python -m bench.wilke_quality sequential --edits 100 --method smollm2-135m-rome "
                  "--mom2-samples 0` (no C: the identity), against the same run with the hparams' C (all 395 pydoc "
                  "documents). Same facts, order and probes as above; ROME at layer 4, so only C differs.", "",
                  "| method | C | retention at end | probe locality at end | neighbourhood (immediate) | efficacy (immediate) "
                  "| S |", "|---|---|---|---|---|---|---|"]
        for r in sorted(corpus_runs, key=lambda r: (r["method"], r["edits"])):
            base = runs.get((r["edits"], on_gpu(r)), {}).get(r["method"])
            for run, label in ((base, "pydoc, all"), (r, "identity" if not r["mom2"]["adjustment"] else
                                                       f"pydoc, {r['mom2']['n_samples']} documents")):
                if run is None:
                    continue
                summary, final = run["summary"], run["summary"]["final_checkpoint"]
                lines.append(f"| {r['method']} | {label} | {f(final.get('retention_exact'))} | "
                             f"{f(final.get('probe_locality'))} | {f(summary['immediate'].get('neighbourhood'))} | "
                             f"{f(summary['immediate'].get('efficacy'))} | {f(summary['S'])} |")
        lines.append("")


def wilke_corpus(lines: list[str]) -> None:
    """How much text C needs."""
    corpus = load("wilke_corpus")
    if corpus:
        lines += ["## WilKE: how much text the covariance needs", "",
                  f"Command: `python -m bench.wilke_corpus --edits {corpus['edits']}`. Single-layer edit (ROME, layer 4) "
                  f"of the first {corpus['edits']} CounterFact facts SmolLM2 knows, each from the unedited model, with "
                  "C = E[kkᵀ] estimated from the first n documents of the offline pydoc corpus (~1,000 characters each), "
                  "or with no C (identity). The corpus has 395 documents, so \"400\" means all of it.", "",
                  "| C from | efficacy | paraphrase | neighbourhood | rewrite token accuracy |", "|---|---|---|---|---|"]
        for row in corpus["rows"]:
            lines.append(f"| {row['corpus']} | {f(row['efficacy'])} | {f(row['paraphrase'])} | "
                         f"{f(row['neighbourhood'])} | {f(row['rewrite_acc'])} |")
        lines.append("")


def recheck_speed(lines: list[str]) -> None:
    """Re-checking past edits."""
    recheck = load("recheck_speed")
    if recheck:
        lines += ["## Lifelong: the cost of one checkpoint", "",
                  "Command: `python -m bench.recheck_speed`. Re-checking 700 (ZsRE, all we have) and 1,000 (CounterFact) past edits on SmolLM2 (CPU, 2 threads): "
                  "every record's prompt and rephrasings against `target_new` (CounterFact: also against `target_true`), "
                  "plus its locality prompts, scored in length-sorted batches by the functions the runner's checkpoints call. Measured "
                  "alone on the machine.", "",
                  "| records | past edits | answers scored | seconds |", "|---|---|---|---|"]
        for name, label in (("zsre", "ZsRE (`zsre_mend_eval.json`, all of it)"),
                            ("counterfact_easyedit", "CounterFact (`counterfact_easyedit.json`)")):
            if name in recheck:
                row = recheck[name]
                lines.append(f"| {label} | {row['records']} | {row['scored_pairs']} | {row['seconds']} |")
        lines.append("")


def lemoe(lines: list[str]) -> None:
    """LEMoE lifelong rows, finished and partial."""
    lemoe_rows = sorted(p for p in RESULTS.glob("lemoe_*.json")
                         if not p.name.startswith(("lemoe_routing_", "lemoe_inference")))
    # Runs not finished when the table was made: their latest checkpoint, marked as such.
    partial = []
    for folder in sorted((ROOT / "runs").glob("bench-lemoe-*")):
        _, _, dataset, variant, edits = folder.name.split("-", 4)
        finished = [RESULTS / f"lemoe_{dataset}_{variant}_{edits}{suffix}.json" for suffix in ("", "_cuda")]
        if any(path.is_file() for path in finished) or not (folder / "checkpoints.jsonl").is_file():
            continue
        rows_done = read_checkpoints(folder)
        if rows_done and int(edits) >= 50:
            partial.append((dataset, variant, int(edits), rows_done[-1]))
    if lemoe_rows or partial:
        labels = {"full": "LEMoE", "softmax_router": "LEMoE, plain softmax router (ablation)",
                  "no_order_planning": "LEMoE, no order planning (ablation)",
                  "unfrozen": "LEMoE, earlier experts not frozen (ablation)", "templates": "LEMoE + prefix augmentation",
                  "token_span": "LEMoE, expert only at matching tokens (`routing_span: token`)",
                  "token_span_templates": "LEMoE, `routing_span: token` + 4 context templates in training",
                  "token_span_templates_longer": "LEMoE, the same trained longer (up to 60 steps, to NLL 0.01)",
                  "wilke": "WilKE (fast_scan)", "rome": "ROME (layer 4)"}
        order = list(labels)
        rows = [json.loads(p.read_text()) for p in lemoe_rows]
        rows.sort(key=lambda r: (r["dataset"], -r["edits"], order.index(r["variant"])))
        lines += ["## LEMoE: lifelong editing, all edits re-checked at the end", "",
                  "Command: `bench/run_lemoe.sh` (each row: `python -m bench.lemoe_lifelong --dataset D --edits N "
                  "--variant V`, a fresh process). ZsRE: the first N records of `zsre_mend_eval.json`; CounterFact: the "
                  "first N CounterFact facts whose first `target_true` token SmolLM2 predicts (the 139 of "
                  "`counterfact_known.json`, then `counterfact_easyedit.json`). At the end every "
                  "past edit is evaluated again on the final model: reliability = token accuracy of `target_new` on the "
                  "edit prompt, generality = the same on its rephrase/paraphrase prompts, locality = agreement with the "
                  "unedited model's predictions on the records' locality prompts (ZsRE `loc`, CounterFact neighbourhood "
                  "prompts) and on 100 never-edited facts from `known_1000.json`. For CounterFact, generality is also "
                  "given as CounterFact's own paraphrase score (P(target_new) > P(target_true), mean token "
                  "log-likelihood, as in ROME). Targets at 300 edits: reliability ≥ .95, generality ≥ .6, locality "
                  "≥ .95.", "",
                  "| dataset | edits | method | reliability | generality | generality, P(new) > P(true) | "
                  "locality (records) | locality (records naming no edited subject) | locality (probes) | wall s | "
                  "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]

        def unedited_subject_locality(r, final):
            """From the run's own checkpoint, or for older runs from bench/lemoe_routing.py on its saved adaptor."""
            if final.get("locality_acc_unedited_subjects") is not None:
                return f(final["locality_acc_unedited_subjects"])
            routing = load(f"lemoe_routing_{r['dataset']}_{r['variant']}_{r['edits']}")
            return f(routing["locality"]["unedited_subjects"]) + "†" if routing else "n/a"

        for r in rows:
            final = r["summary"]["final_checkpoint"]
            label = fast_scan_label(r) if r["variant"] == "wilke" else labels[r["variant"]]
            label += " (**GPU**)" if on_gpu(r) else ""
            lines.append(f"| {r['dataset']} | {r['edits']} | {label} | {f(final.get('retention_acc'))} | "
                         f"{f(final.get('retention_rephrase_acc'))} | {f(final.get('retention_paraphrase'))} | "
                         f"{f(final.get('locality_acc'))} | {unedited_subject_locality(r, final)} | "
                         f"{f(final.get('probe_locality'))} | {f(r['wall_seconds'], 0)} | {r['peak_rss_mb']} |")
        for dataset, variant, edits, last in partial:
            lines.append(f"| {dataset} | {last['step']} of {edits} (unfinished run: its latest checkpoint) | "
                         f"{labels[variant]} | {f(last.get('retention_acc'))} | {f(last.get('retention_rephrase_acc'))} | "
                         f"{f(last.get('retention_paraphrase'))} | "
                         f"{f(last.get('locality_acc'))} | {f(last.get('locality_acc_unedited_subjects'))} | "
                         f"{f(last.get('probe_locality'))} | | |")
        lines += ["", "Locality naming no edited subject leaves out the records' locality prompts that name the subject of "
                  "any edit in the run: in a lifelong CounterFact stream a record's neighbourhood prompt can be another "
                  "record's edit (\"Nintendo 3DS is developed by\" beside the edit \"Nintendo 3DS, developed by → "
                  "Intel\"), where the answer should change. † computed afterwards by `python -m bench.lemoe_routing` "
                  "on the run's saved adaptor (the run predates checkpoints reporting it).", ""]
        # The scale for CounterFact generality: the model's own facts on the same paraphrase prompts.
        for path in sorted(RESULTS.glob("known_fact_generality_*.json"), key=lambda p: json.loads(p.read_text())["records"]):
            known = json.loads(path.read_text())
            lines.append(f"- For scale, the unedited model's own knowledge (`python -m bench.known_fact_generality --edits "
                         f"{known['records']}`): for the first {known['records']} CounterFact facts above, the token "
                         f"accuracy of the *true* object is {f(known['rewrite_token_acc'])} on the rewrite prompts and "
                         f"{f(known['paraphrase_token_acc'])} on the {known['paraphrase_prompts']} paraphrase prompts "
                         f"(whole answer right: {f(known['paraphrase_exact'])}).")
        lines.append("")
        # Rows run while other jobs shared the 2 cores: their seconds (and overhead ratios) are inflated.
        contended = {("counterfact", "full", 50), ("counterfact", "full", 300), ("zsre", "unfrozen", 300),
                     ("zsre", "no_order_planning", 300), ("zsre", "rome", 300), ("zsre", "wilke", 300),
                     ("counterfact", "rome", 50), ("counterfact", "wilke", 50),
                     ("counterfact", "token_span_templates_longer", 50)}
        shown = [f"{d} {v} {n}" for d, v, n in sorted(contended)
                 if any((r["dataset"], r["variant"], r["edits"]) == (d, v, n) for r in rows)
                 or any((d, v, n) == (p[0], p[1], p[2]) for p in partial)]
        if shown:
            lines += ["Timing figures of these rows were taken while other jobs shared the machine and are inflated: "
                      + ", ".join(shown) + ".", ""]
        for r in rows:
            if "adaptor" in r and r["variant"] == "full" and not on_gpu(r):
                lines.append(f"- {r['dataset']}, {r['edits']} edits: {r['experts']} experts, "
                             f"{r['adaptor']['parameters']:,} adaptor parameters ({r['adaptor']['bytes'] / 2**20:.1f} MiB "
                             f"saved), training {f(r['train_seconds_per_expert_median'], 1)} s per expert (median).")
        lines.append("")


def lemoe_inference(lines: list[str]) -> None:
    """LEMoE's inference overhead."""
    inference = load("lemoe_inference")
    if inference:
        lines += ["## LEMoE inference overhead", "",
                  f"Command: `python -m bench.lemoe_inference`, on the adaptors that the lifelong runs above saved. One "
                  f"forward pass on the run's first edit prompts (one padded batch), with and without the adaptor, timed "
                  f"alternately; median of {inference['repeats']} passes each. Target: ≤ 10% with 30 experts.", "",
                  "| dataset | edits | experts | prompts (tokens) | s without | s with | overhead |", "|---|---|---|---|---|---|---|"]
        for r in sorted(inference["rows"], key=lambda r: (r["dataset"], r["edits"])):
            lines.append(f"| {r['dataset']} | {r['edits']} | {r['experts']} | {r['prompts']} ({r['tokens']}) | "
                         f"{f(r['forward_seconds_without'])} | {f(r['forward_seconds_with_adaptor'])} | "
                         f"{100 * r['overhead']:+.1f}% |")
        lines.append("")


def lemoe_routing(lines: list[str]) -> None:
    """LEMoE routing on paraphrases and neighbours."""
    for path in sorted(RESULTS.glob("lemoe_routing_*.json")):
        routing = json.loads(path.read_text())
        lines += [f"## LEMoE routing threshold: what it trades ({routing['dataset']}, {routing['edits']} edits)", "",
                  f"Command: `python -m bench.lemoe_routing --dataset {routing['dataset']} --edits {routing['edits']} "
                  f"--variant {routing['variant']}`, on the adaptor the lifelong run above saved ({routing['anchors']} "
                  f"anchors; the run used {routing['threshold_used']}). No retraining: each threshold is applied to the "
                  f"same anchors. {routing['paraphrases']} paraphrase and {routing['neighbours']} neighbourhood prompts.", "",
                  "| threshold | paraphrases routed to their own edit's expert | paraphrases routed to any expert | "
                  "neighbourhood prompts routed to any expert |", "|---|---|---|---|"]
        for row in routing["rows"]:
            lines.append(f"| {row['threshold']} | {f(row['paraphrase_own_expert'])} | {f(row['paraphrase_any_expert'])} | "
                         f"{f(row['neighbour_any_expert'])} |")
        loc = routing["locality"]
        lines += ["", f"Final locality on the records' locality prompts: {f(loc['all'])} over all; "
                  f"{f(loc['unedited_subjects'])} over those naming no edited subject; {f(loc['naming_edited_subjects'])} "
                  f"over the {loc['prompts_naming_edited_subjects']} that name one."]
        if "neighbourhood_success" in loc:
            lines[-1] += (f" CounterFact's own neighbourhood score (P(true) > P(new)) on the same prompts: "
                          f"{f(loc['neighbourhood_success']['final'])} at the end, against "
                          f"{f(loc['neighbourhood_success']['unedited'])} for the unedited model.")
        lines.append("")


def forgotten(result, last) -> str:
    """'forgotten / lost' at the last checkpoint: lost edits that were exact right after their own edit."""
    lost = set(last.get("lost_case_ids", []))
    held = {e["case_id"] for e in result["immediate"] if "case_id" in e and e.get("rewrite_acc") == 1.0}
    if not lost:
        return "0 / 0"
    return f"{len(lost & held)} / {len(lost)}" if any("case_id" in e for e in result["immediate"]) else f"? / {len(lost)}"


def interference_guard(lines: list[str]) -> None:
    results = [json.loads(p.read_text()) for stream in ("counterfact", "zsre")  # not guard_spectrum_*
               for p in sorted(RESULTS.glob(f"guard_{stream}_*.json"))]
    if not results:
        return
    lines += ["## Interference guard: lifelong runs", "",
              "Command: `python -m bench.interference_guard run --stream S --edits T --method M` (one method per "
              "process; a run folder that exists is resumed; EasyEdit's `alphaedit` under EasyEdit HEAD: "
              "`PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.interference_guard run ...`), "
              "then `python -m bench.interference_guard report`. "
              "Streams: `counterfact`, the 300 CounterFact facts SmolLM2 knows (as in the sequential WilKE runs "
              "above), then `counterfact_easyedit.json` in file order; `zsre`, `knowedit_zsre.json` in file order. "
              "Probes: 100 facts of `known_1000.json`. Derivation and design: [interference_guard.md](interference_guard.md). "
              "Retention plots: [CounterFact](img/guard_counterfact_retention.png), [ZsRE](img/guard_zsre_retention.png).",
              "", "Retention: exact match (teacher-forced) of all past edits' rewrite prompts; gen EM: the same by "
              "greedy generation. A run not finished is marked with how far it got: \"at capacity\" where the method "
              "refused the next edit (a spent `layer_change_budget`), \"stopped\" where the run was stopped. The runs planned for 1,000 edits "
              "and stopped at 100 shared the CPU with test runs (the WilKE run with one thread), so their s/edit are "
              "not the guard's cost; the 100-edit runs ran alone.", "",
              "Efficacy: the share of all past edits whose new answer is more probable than the true one on the "
              "rewrite prompt (CounterFact only), the end-of-sequence metric AlphaEdit's paper reports.", "",
              "Forgotten: edits lost at the last checkpoint that were exact right after their own edit (the others "
              "never took hold), where the result records it. Guard paths count layer updates: a spread edit "
              "makes one per layer.", "",
              "| stream | method | edits | retention @10 | @100 | @300 | @1000 | forgotten / lost at last "
              "| gen EM at last checkpoint | efficacy at last | probe locality at last | immediate paraphrase | s/edit "
              "| guard paths | guard memory, largest layer MB | peak RSS MB |", "|" + "---|" * 16]
    for r in results:
        at = {c["step"]: c for c in r["checkpoints"]}
        last = r["checkpoints"][-1] if r["checkpoints"] else {}
        immediate = [e.get("paraphrase", e.get("rephrase_acc")) for e in r["immediate"]]
        immediate = [x for x in immediate if x is not None]
        memory = r.get("guard_memory_mb") or ({"largest": r["guard_layer_mb_max"]} if r.get("guard_layer_mb_max") else {})
        done = f"{r['edits_done']}" + ("" if r["complete"] else f" of {r['edits_planned']} "
                                       + ("(at capacity)" if r.get("stopped_by") else "(stopped)"))
        paths = ", ".join(f"{k}: {v}" for k, v in sorted(r["guard_paths"].items())) or "—"
        lines.append(
            f"| {r['stream']} | {r['method']}{' (' + r['note'] + ')' if r.get('note') else ''} | {done} | "
            + " | ".join(f(at[s].get("retention_exact")) if s in at else "—" for s in (10, 100, 300, 1000))
            + f" | {forgotten(r, last)} | {f(last.get('retention_gen_em'))} (step {last.get('step', '—')}) "
            f"| {f(last.get('retention_efficacy'))} | {f(last.get('probe_locality'))} "
            f"| {f(sum(immediate) / len(immediate)) if immediate else 'n/a'} | {f(r['seconds_per_edit'], 2)} | {paths} "
            f"| {f(max(memory.values()), 1) if memory else 'n/a'} | {f(r['peak_rss_mb'])} |")
    lines.append("")
    explained = [r for r in results if r.get("lost_edits")]
    if not explained:
        return
    lines += ["Why edits were lost, at the last checkpoint (from each run's log; medians, forgotten edits / kept "
              "edits). Later edits: all edits after it (older edits have more of every kind). Below: later edits "
              "at a layer under its own, which move its keys (stale keys). Unguarding: later edits at its own "
              "layer that took the `bounded` or `unguarded` path (capacity at one layer).", "",
              "| stream | method | step | lost | never held | forgotten | later edits | later edits below "
              "| later unguarding edits at its layer |", "|" + "---|" * 9]
    for r in explained:
        x = r["lost_edits"]
        pair = lambda key: f"{f(x[key]['forgotten'], 1)} / {f(x[key]['kept'], 1)}"
        lines.append(f"| {r['stream']} | {r['method']} | {x['step']} | {x['lost']} | {x['never_held']} "
                     f"| {x['forgotten']} | {pair('median_later_edits')} | {pair('median_later_edits_below')} "
                     f"| {pair('median_later_unguarding_edits_at_layer')} |")
    lines.append("")
    holding = [r for r in results if r.get("holding")]
    if not holding:
        return
    block, reached = holding[0]["holding"]["block"], holding[0]["holding"]["v_nll_reached"]  # holding()'s defaults
    lines += [f"Edits that took hold right after their own edit (exact match on the rewrite prompt), per block of {block} "
              "edits, beside the final NLL of the target with the edit's value v* in place (`v_nll`, from its "
              f"optimisation): an edit whose v* reached the target (NLL < {reached}) and did not hold points at the "
              "update; one whose v* was not found points at the value search. "
              "`python -m bench.interference_guard held FOLDER --edits T` gives the same for any run folder.", "",
              f"| stream | method | held, per block of {block} | median v_nll, per block | held with v* reached (edits) "
              "| held with v* not reached (edits) |", "|" + "---|" * 6]
    for r in holding:
        h = r["holding"]
        lines.append(f"| {r['stream']} | {r['method']} | {' '.join(f(x, 2) for x in h['held_per_block'])} "
                     f"| {' '.join(f(x, 2) for x in h['median_v_nll_per_block'])} "
                     f"| {f(h['v_reached']['held'], 2)} ({h['v_reached']['edits']}) "
                     f"| {f(h['v_not_reached']['held'], 2)} ({h['v_not_reached']['edits']}) |")
    lines.append("")


def method_comparison(lines: list[str]) -> None:
    from edit_plugins.lifelong.compare import table

    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("compare_*.json"))]
    if not results:
        return
    lines += ["## Lifelong editors side by side", "",
              "Command: `PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.compare_methods run "
              "--stream S --edits T --methods ...` (one `edit-plugins compare`: every method in its own process, on the "
              "same records in the same order, with the same checkpoints and probes; EasyEdit HEAD's methods under its "
              "own pins, transformers 5.5.4). `counterfact`: the CounterFact facts SmolLM2 knows, in file order; "
              "`zsre`: `knowedit_zsre.json` in file order. Probes: 100 facts of `known_1000.json`. "
              "Scores: end of sequence (every edit on the final model: token accuracy / generation exact match); "
              "retention is the exact match (teacher-forced) of all past edits at each checkpoint. The tutorial: "
              "[lifelong.md](lifelong.md#5-comparing-methods).", ""]
    for r in results:
        name = f"{r['stream']}_{r['edits']}" + ("_cuda" if on_gpu(r) else "")
        lines += [f"**{r['stream']}, {r['edits']} edits{' (GPU)' if on_gpu(r) else ''}** "
                  f"(retention plot: [comparison/{name}_retention.png](comparison/{name}_retention.png))", "",
                  table(r["rows"]), ""]
        if r.get("notes"):
            lines += ["Notes: " + "; ".join(f"**{k}**: {v}" for k, v in r["notes"].items()) + ".", ""]
        if r.get("not_run"):
            lines += ["Not in this table: " + "; ".join(f"**{k}**: {v}" for k, v in r["not_run"].items()) + ".", ""]


SECTIONS = (wilke_speed, wilke_independent, wilke_agreement, wilke_agreement_gpu, wilke_sequential, sequential_c, wilke_corpus, recheck_speed, lemoe, lemoe_inference, lemoe_routing,
            interference_guard, method_comparison)


def main() -> None:
    sections = []
    for section in SECTIONS:
        section(sections)
    lines = header(sections) + sections
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
