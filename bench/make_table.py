"""Render bench/results/*.json into docs/benchmarks.md (numbers are never typed by hand).

    python -m bench.make_table
"""
import functools
import json
import re
from pathlib import Path
from statistics import median_high

import yaml

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


@functools.cache
def notes() -> dict:
    """Editorial facts about particular results (bench/templates/notes.yaml)."""
    return yaml.safe_load((TEMPLATES / "notes.yaml").read_text())


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


def fill(template: str, **values) -> list[str]:
    """bench/templates/<template>.md with the numbers in, as lines (the prose lives there, not here)."""
    return (TEMPLATES / f"{template}.md").read_text().format(**values).rstrip("\n").split("\n")


def header(sections: list[str]) -> list[str]:
    return fill("benchmarks_header", contents=contents(sections), summary=summary()) + [""]


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
        targets = {"smollm2-135m-rome": "≤ 3 s", "smollm2-135m": "≤ 5×", "smollm2-135m-fast": "≤ 1.5×"}
        labels = {"smollm2-135m-rome": "single layer (ROME, layer 4)", "smollm2-135m": "WilKE, faithful scan of 30 layers",
                  "smollm2-135m-fast": "WilKE, fast_scan"}
        labels["smollm2-135m-fast"] = fast_scan_label(speed, labels["smollm2-135m-fast"])
        rows = []
        for name, r in speed["configs"].items():
            base, _, candidates = name.partition("-k")  # "smollm2-135m-fast-k3": fast_scan_candidates 3
            label = labels[base] + (f", best {candidates} estimates optimised (`fast_scan_candidates: {candidates}`)"
                                    if candidates else "")
            rows.append(f"| {label} | {f(r['median_seconds'], 2)} | {f(r['ratio_to_single_layer'], 2)} | "
                        f"{targets[base] if not candidates else ''} | {r['layers']} | {r['v_steps']} |")
        stale = "" if "device" in speed else (
            " Measured before two later changes and not re-measured: the key-mapping fix (adds one single-row "
            "forward pass per edit) and sharing the batch and prefix cache across candidate layers (makes the "
            "faithful scan faster).")
        lines += fill("wilke_speed", edits=speed["edits"], stale=stale, rows="\n".join(rows))
        if "peak_rss_mb_after_edits" in speed:
            lines += ["", "Peak RSS (MB) after N sequential fast_scan edits: " +
                      ", ".join(f"{k}: {v:.0f}" for k, v in speed["peak_rss_mb_after_edits"].items())]
        lines.append("")


def wilke_independent(lines: list[str]) -> None:
    """WilKE and ROME quality, each edit on the unedited model."""
    ind = load("wilke_independent")
    if ind:
        rows = []
        for name, label in (("smollm2-135m-rome", "ROME (layer 4)"), ("smollm2-135m-fast", fast_scan_label(ind))):
            r = ind[name]
            hist = " ".join(f"{k}:{v}" for k, v in r["layer_histogram"].items())
            rows.append(f"| {label} | {f(r['efficacy'])} | {f(r['paraphrase'])} | {f(r['neighbourhood'])} "
                        f"| {f(r.get('rephrase_acc'))} | {hist} |")
        lines += fill("wilke_independent", edits=ind["edits"], known_records=ind["known_records"],
                      rows="\n".join(rows)) + [""]


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
        with_candidates = "".join(
            f"- with `fast_scan_candidates: {k}` (`--fast-candidates {k}`): same layer **{f(r['same_layer_rate'])}** "
            f"of {r['edits']} edits, efficacy {f(r['fast_efficacy'])}, median "
            f"{f(median_high([x['fast_seconds'] for x in r['rows']]), 1)} s per edit\n"
            for k, r in agreement_by_candidates.items())
        faithful_seconds = (
            f"- faithful scan: median {f(median_high(seconds), 0)} s per edit ({len(seconds)} scans run alone, "
            "one candidate after another, before `scan_layers_per_pass`; current speed: WilKE speed above)"
            if seconds else "- faithful scan time: not given, every scan shared the CPU with another job")
        lines += fill("wilke_agreement", stopped=f", stopped after {n} edits." if n < 50 else ".",
                      same_layer_rate=f(agr["same_layer_rate"]), edits=n, with_candidates=with_candidates,
                      among_best=", ".join(f"K={k}: {f(sum(r < k for r in ranks) / n)}" for k in range(1, 7)),
                      median_rank=median_high(ranks), regret_median=f(median_high(regrets), 2),
                      regret_max=f(max(regrets), 2),
                      rejected=f"; {rejected} edits at a layer the faithful scan rejected" if rejected else "",
                      faithful_efficacy=f(agr["faithful_efficacy"]), fast_efficacy=f(agr["fast_efficacy"]),
                      ratio_low=f(ratios[len(ratios) // 20], 2), ratio_high=f(ratios[-1 - len(ratios) // 20], 2),
                      spread_median=f(median_high(spreads), 2), faithful_seconds=faithful_seconds,
                      layers=", ".join(f"{r['faithful_layer']}→{r['fast_layer']}" for r in agr["rows"])) + [""]


def wilke_agreement_gpu(lines: list[str]) -> None:
    """The agreement run on a lent GPU, against the CPU's."""
    agr, faithful_scans = load("wilke_agreement"), load("wilke_faithful_scans")
    agr_gpu, scans_gpu = load("wilke_agreement_cuda"), load("wilke_faithful_scans_cuda")
    if agr_gpu:
        both = [k for k in scans_gpu if faithful_scans and k in faithful_scans]
        cpu_fast = {r["case_id"]: r["fast_layer"] for r in (agr or {}).get("rows", [])}
        fast_both = [r for r in agr_gpu["rows"] if r["case_id"] in cpu_fast]
        lines += fill("wilke_agreement_gpu", edits=agr_gpu["edits"], same_layer_rate=f(agr_gpu["same_layer_rate"]),
                      faithful_efficacy=f(agr_gpu["faithful_efficacy"]), fast_efficacy=f(agr_gpu["fast_efficacy"]),
                      same_faithful=sum(scans_gpu[k]["layer"] == faithful_scans[k]["layer"] for k in both),
                      both=len(both),
                      same_rejected=sum(sorted(scans_gpu[k]["ineligible"]) == sorted(faithful_scans[k]["ineligible"])
                                        for k in both),
                      same_fast=sum(r["fast_layer"] == cpu_fast[r["case_id"]] for r in fast_both),
                      fast_both=len(fast_both)) + [""]


def wilke_sequential(lines: list[str]) -> None:
    """Sequential WilKE and ROME runs, one table per length and device."""
    runs, corpus_runs = sequential_runs()
    for (edits, gpu), by_method in sorted(runs.items(), reverse=True):
        names = [(n, l) for n, l in (("smollm2-135m-fast", fast_scan_label(by_method.get("smollm2-135m-fast", {}))),
                                     ("smollm2-135m-rome", "ROME (layer 4)"))
                 if n in by_method]
        steps = sorted({c["step"] for r in by_method.values() for c in r["checkpoints"]})
        retention = ["| method | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
        for name, label in names:
            by_step = {c["step"]: c for c in by_method[name]["checkpoints"]}
            retention.append(f"| {label} | " + " | ".join(f(by_step.get(s, {}).get("retention_exact")) for s in steps) + " |")
        rows = []
        for name, label in names:
            r = by_method[name]
            summary, final, rss = r["summary"], r["summary"]["final_checkpoint"], r["peak_rss_mb_at"]
            rows.append(f"| {label} | {f(final.get('retention_exact'))} | {f(final.get('probe_locality'))} | "
                        f"{f(summary['immediate'].get('neighbourhood'))} | {f(summary['S'])} | "
                        f"{f(r['timing']['wall_seconds'], 0)} | {f(overhead(r['timing']), 4)} | "
                        f"{rss.get('1')} / {rss.get('50')} / {rss.get('100')} / {rss.get(str(edits))} | "
                        f"{100 * r['interference_cost']:.2f}% / {100 * r['interference_cost_last_50']:.2f}% |")
        run_notes = notes()["wilke_sequential_run_notes"].get(f"{edits}_cuda" if gpu else str(edits), "")
        lines += fill("wilke_sequential", edits=edits, gpu_mark=" (**GPU**)" if gpu else "",
                      device="BENCH_DEVICE=cuda " if gpu else "", retention="\n".join(retention), rows="\n".join(rows),
                      run_notes=run_notes) + [""]
        for name, label in (("smollm2-135m-fast", "WilKE (fast_scan)"), ("smollm2-135m-rome", "ROME (layer 4)")):
            if name not in by_method and not gpu:
                lines += [notes()["wilke_sequential_not_run"].format(label=label, edits=edits), ""]
        if len(names) == 2:
            score = lambda s: s.get("harmonic_mean_score", s.get("S"))  # noqa: E731  (results before the rename say S)
            w, r = (score(by_method[n]["summary"]) for n in ("smollm2-135m-fast", "smollm2-135m-rome"))
            verdict = "the same ordering as" if w > r else "the **opposite** ordering to"
            lines += [notes()["wilke_sequential_verdict"].format(wilke=f(w), label=names[0][1], rome=f(r), verdict=verdict),
                      ""]
            hist = by_method["smollm2-135m-fast"].get("layer_histogram")
            probe_at_100 = lambda name: {c["step"]: c for c in by_method[name]["checkpoints"]}.get(100, {}).get(  # noqa: E731
                "probe_locality")
            if hist and not by_method["smollm2-135m-fast"].get("fast_scan_estimate"):
                top = sorted(hist.items(), key=lambda kv: -kv[1])[:4]
                lines += [notes()["wilke_sequential_first_order_layers"].format(
                    top=", ".join(f"layer {k}: {v}" for k, v in top), total=sum(hist.values()),
                    wilke_probes=f(probe_at_100("smollm2-135m-fast")), rome_probes=f(probe_at_100("smollm2-135m-rome"))),
                    ""]
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
        rows = []
        for r in sorted(corpus_runs, key=lambda r: (r["method"], r["edits"])):
            base = runs.get((r["edits"], on_gpu(r)), {}).get(r["method"])
            for run, label in ((base, "pydoc, all"), (r, "identity" if not r["mom2"]["adjustment"] else
                                                       f"pydoc, {r['mom2']['n_samples']} documents")):
                if run is None:
                    continue
                summary, final = run["summary"], run["summary"]["final_checkpoint"]
                rows.append(f"| {r['method']} | {label} | {f(final.get('retention_exact'))} | "
                            f"{f(final.get('probe_locality'))} | {f(summary['immediate'].get('neighbourhood'))} | "
                            f"{f(summary['immediate'].get('efficacy'))} | {f(summary['S'])} |")
        lines += fill("sequential_c", rows="\n".join(rows)) + [""]


def wilke_corpus(lines: list[str]) -> None:
    """How much text C needs."""
    corpus = load("wilke_corpus")
    if corpus:
        rows = [f"| {row['corpus']} | {f(row['efficacy'])} | {f(row['paraphrase'])} | "
                f"{f(row['neighbourhood'])} | {f(row['rewrite_acc'])} |" for row in corpus["rows"]]
        lines += fill("wilke_corpus", edits=corpus["edits"], rows="\n".join(rows)) + [""]


def recheck_speed(lines: list[str]) -> None:
    """Re-checking past edits."""
    recheck = load("recheck_speed")
    if recheck:
        rows = []
        for name, label in (("zsre", "ZsRE (`zsre_mend_eval.json`, all of it)"),
                            ("counterfact_easyedit", "CounterFact (`counterfact_easyedit.json`)")):
            if name in recheck:
                row = recheck[name]
                rows.append(f"| {label} | {row['records']} | {row['scored_pairs']} | {row['seconds']} |")
        lines += fill("recheck_speed", rows="\n".join(rows)) + [""]


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
                  "negatives": "LEMoE + negative templates (other relations of each subject left alone)",
                  "layer11": "LEMoE, routed at layer 11",
                  "negatives_layer11": "LEMoE, routed at layer 11 + negative templates",
                  "wilke": "WilKE (fast_scan)", "rome": "ROME (layer 4)"}
        order = list(labels)
        rows = [json.loads(p.read_text()) for p in lemoe_rows]
        rows.sort(key=lambda r: (r["dataset"], -r["edits"], order.index(r["variant"])))
        def unedited_subject_locality(r, final):
            """From the run's own checkpoint, or for older runs from bench/lemoe_routing.py on its saved adaptor."""
            if final.get("locality_acc_unedited_subjects") is not None:
                return f(final["locality_acc_unedited_subjects"])
            routing = load(f"lemoe_routing_{r['dataset']}_{r['variant']}_{r['edits']}")
            return f(routing["locality"]["unedited_subjects"]) + "†" if routing else "n/a"

        def wall_cell(r):
            """Wall seconds, and how they were measured where that differs from alone on both cores."""
            how = [w for w, on in (("1 thread, beside another job", r.get("threads") == 1),
                                   ("this process's share of a resumed run", r.get("resumed"))) if on]
            return f(r["wall_seconds"], 0) + (f" ({'; '.join(how)})" if how else "")

        table_rows = []
        for r in rows:
            final = r["summary"]["final_checkpoint"]
            label = fast_scan_label(r) if r["variant"] == "wilke" else labels[r["variant"]]
            label += " (**GPU**)" if on_gpu(r) else ""
            table_rows.append(f"| {r['dataset']} | {r['edits']} | {label} | {f(final.get('retention_gen_em'))} / "
                         f"{f(final.get('retention_acc'))} | {f(final.get('retention_rephrase_gen_em'))} / "
                         f"{f(final.get('retention_rephrase_acc'))} | {f(final.get('retention_paraphrase'))} | "
                         f"{f(final.get('locality_acc'))} | {unedited_subject_locality(r, final)} | "
                         f"{f(final.get('unrelated_locality'))} | "
                         f"{f(final.get('probe_locality'))} | {wall_cell(r)} | {r['peak_rss_mb']} |")
        for dataset, variant, edits, last in partial:
            table_rows.append(f"| {dataset} | {last['step']} of {edits} (unfinished run: its latest checkpoint) | "
                         f"{labels[variant]} | {f(last.get('retention_gen_em'))} / {f(last.get('retention_acc'))} | "
                         f"{f(last.get('retention_rephrase_gen_em'))} / {f(last.get('retention_rephrase_acc'))} | "
                         f"{f(last.get('retention_paraphrase'))} | "
                         f"{f(last.get('locality_acc'))} | {f(last.get('locality_acc_unedited_subjects'))} | "
                         f"{f(last.get('unrelated_locality'))} | {f(last.get('probe_locality'))} | | |")
        lines += fill("lemoe", rows="\n".join(table_rows)) + [""]
        # The scale for CounterFact generality: the model's own facts on the same paraphrase prompts.
        for path in sorted(RESULTS.glob("known_fact_generality_*.json"), key=lambda p: json.loads(p.read_text())["records"]):
            known = json.loads(path.read_text())
            lines.append(f"- For scale, the unedited model's own knowledge (`python -m bench.known_fact_generality --edits "
                         f"{known['records']}`): for the first {known['records']} CounterFact facts above, the token "
                         f"accuracy of the *true* object is {f(known['rewrite_token_acc'])} on the rewrite prompts and "
                         f"{f(known['paraphrase_token_acc'])} on the {known['paraphrase_prompts']} paraphrase prompts "
                         f"(whole answer right: {f(known['paraphrase_exact'])}).")
        lines.append("")
        contended = {tuple(row) for row in notes()["lemoe_contended_rows"]}
        shown = [f"{d} {v} {n}" for d, v, n in sorted(contended)
                 if any((r["dataset"], r["variant"], r["edits"]) == (d, v, n) for r in rows)
                 or any((d, v, n) == (p[0], p[1], p[2]) for p in partial)]
        if shown:
            lines += [notes()["lemoe_contended"].format(rows=", ".join(shown)), ""]
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
        rows = [f"| {r['dataset']} | {r['edits']} | {r['experts']} | {r['prompts']} ({r['tokens']}) | "
                f"{f(r['forward_seconds_without'])} | {f(r['forward_seconds_with_adaptor'])} | {100 * r['overhead']:+.1f}% |"
                for r in sorted(inference["rows"], key=lambda r: (r["dataset"], r["edits"]))]
        lines += fill("lemoe_inference", repeats=inference["repeats"], rows="\n".join(rows)) + [""]


def lemoe_routing(lines: list[str]) -> None:
    """LEMoE routing on paraphrases and neighbours."""
    for path in sorted(RESULTS.glob("lemoe_routing_*.json")):
        routing = json.loads(path.read_text())
        rows = [f"| {row['threshold']} | {f(row['paraphrase_own_expert'])} | {f(row['paraphrase_any_expert'])} | "
                f"{f(row['neighbour_any_expert'])} |" for row in routing["rows"]]
        loc = routing["locality"]
        neighbourhood = "" if "neighbourhood_success" not in loc else (
            f" CounterFact's own neighbourhood score (P(true) > P(new)) on the same prompts: "
            f"{f(loc['neighbourhood_success']['final'])} at the end, against "
            f"{f(loc['neighbourhood_success']['unedited'])} for the unedited model.")
        lines += fill("lemoe_routing", dataset=routing["dataset"], edits=routing["edits"], variant=routing["variant"],
                      anchors=routing["anchors"], threshold_used=routing["threshold_used"],
                      paraphrases=routing["paraphrases"], neighbours=routing["neighbours"], rows="\n".join(rows),
                      locality_all=f(loc["all"]), locality_unedited=f(loc["unedited_subjects"]),
                      locality_naming=f(loc["naming_edited_subjects"]), naming=loc["prompts_naming_edited_subjects"],
                      neighbourhood=neighbourhood) + [""]


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
    rows = []
    for r in results:
        at = {c["step"]: c for c in r["checkpoints"]}
        last = r["checkpoints"][-1] if r["checkpoints"] else {}
        immediate = [e.get("paraphrase", e.get("rephrase_acc")) for e in r["immediate"]]
        immediate = [x for x in immediate if x is not None]
        memory = r.get("guard_memory_mb") or ({"largest": r["guard_layer_mb_max"]} if r.get("guard_layer_mb_max") else {})
        done = f"{r['edits_done']}" + ("" if r["complete"] else f" of {r['edits_planned']} "
                                       + ("(at capacity)" if r.get("stopped_by") else "(stopped)"))
        paths = ", ".join(f"{k}: {v}" for k, v in sorted(r["guard_paths"].items())) or "—"
        rows.append(
            f"| {r['stream']} | {r['method']}{' (' + r['note'] + ')' if r.get('note') else ''} | {done} | "
            + " | ".join(f(at[s].get("retention_exact")) if s in at else "—" for s in (10, 100, 300, 1000))
            + f" | {forgotten(r, last)} | {f(last.get('retention_gen_em'))} (step {last.get('step', '—')}) "
            f"| {f(last.get('retention_efficacy'))} | {f(last.get('probe_locality'))} "
            f"| {f(sum(immediate) / len(immediate)) if immediate else 'n/a'} | {f(r['seconds_per_edit'], 2)} | {paths} "
            f"| {f(max(memory.values()), 1) if memory else 'n/a'} | {f(r['peak_rss_mb'])} |")
    lines += fill("interference_guard", rows="\n".join(rows)) + [""]
    explained = [r for r in results if r.get("lost_edits")]
    if not explained:
        return
    rows = []
    for r in explained:
        x = r["lost_edits"]
        pair = lambda key: f"{f(x[key]['forgotten'], 1)} / {f(x[key]['kept'], 1)}"  # noqa: E731
        rows.append(f"| {r['stream']} | {r['method']} | {x['step']} | {x['lost']} | {x['never_held']} "
                     f"| {x['forgotten']} | {pair('median_later_edits')} | {pair('median_later_edits_below')} "
                    f"| {pair('median_later_unguarding_edits_at_layer')} |")
    lines += fill("interference_guard_lost", rows="\n".join(rows)) + [""]
    holding = [r for r in results if r.get("holding")]
    if not holding:
        return
    block, reached = holding[0]["holding"]["block"], holding[0]["holding"]["v_nll_reached"]  # holding()'s defaults
    rows = []
    for r in holding:
        h = r["holding"]
        rows.append(f"| {r['stream']} | {r['method']} | {' '.join(f(x, 2) for x in h['held_per_block'])} "
                     f"| {' '.join(f(x, 2) for x in h['median_v_nll_per_block'])} "
                     f"| {f(h['v_reached']['held'], 2)} ({h['v_reached']['edits']}) "
                    f"| {f(h['v_not_reached']['held'], 2)} ({h['v_not_reached']['edits']}) |")
    lines += fill("interference_guard_held", block=block, reached=reached, rows="\n".join(rows)) + [""]


def method_comparison(lines: list[str]) -> None:
    from edit_plugins.lifelong.compare import table

    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("compare_*.json"))]
    if not results:
        return
    lines += fill("method_comparison") + [""]
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


def render() -> str:
    """docs/benchmarks.md as bench/results/ make it."""
    sections = []
    for section in SECTIONS:
        section(sections)
    return "\n".join(header(sections) + sections) + "\n"


def main() -> None:
    text = render()
    (ROOT / "docs" / "benchmarks.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
