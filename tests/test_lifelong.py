"""Lifelong mode end to end: outputs, checkpoints, hooks, bad data, and resume after a real SIGKILL."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HPARAMS, ROOT, SHARED_DATA, changed_parameters, kill_at_position, run_command_here, snapshot
from edit_plugins.hookspecs import hookimpl
from edit_plugins.lifelong import metrics, scoring
from edit_plugins.lifelong.data import DataError, EditRecord, load_records
from edit_plugins.lifelong import RunOptions, run_lifelong
from edit_plugins.lifelong.options import checkpoint_steps
from edit_plugins.lifelong.run_log import read_checkpoints
from edit_plugins.plugins import pm

ZSRE = SHARED_DATA / "zsre_mend_eval.json"
CF_ROME = SHARED_DATA / "counterfact_known.json"
CF_EASYEDIT = SHARED_DATA / "counterfact_easyedit.json"
KNOWN = SHARED_DATA / "known_1000.json"


def tiny_hparams(stats_dir, tmp_path, extra=""):
    text = (HPARAMS / "WilKE" / "tiny-gpt2.yaml").read_text().replace("./data/stats", stats_dir)
    path = tmp_path / "tiny.yaml"
    path.write_text(text.replace("layers: [0, 1, 2, 3]", "layers: [1, 2]") + extra)
    return path


def test_checkpoint_schedule():
    assert checkpoint_steps(10) == [1, 2, 4, 8, 10]
    assert checkpoint_steps(8) == [1, 2, 4, 8]
    assert checkpoint_steps(10, [3, 50]) == [3, 10]


@pytest.mark.parametrize("path, fmt_fields", [(ZSRE, "src"), (CF_ROME, "requested_rewrite"), (CF_EASYEDIT, "prompt")])
def test_all_three_dataset_formats_load(path, fmt_fields):
    records = load_records(path, num_edits=5)
    assert len(records) == 5
    for r in records:
        assert r.request["subject"] in r.request["prompt"] and r.request["target_new"].strip()
    if path is CF_ROME:
        assert records[0].locality and records[0].rephrase_prompts and records[0].request["ground_truth"]


def test_knowedit_format_loads_with_its_locality_and_portability_prompts():
    records = load_records(SHARED_DATA / "knowedit_zsre.json", num_edits=20)
    first = records[0]
    assert first.request == {"prompt": "What species is ZIC3 specific to?", "subject": "ZIC3", "target_new": "male",
                             "ground_truth": "human", "case_id": 0}
    assert first.rephrase_prompts == ["In which living being can you find ZIC3?"]
    assert first.locality == [("The strand orientation of ZIC3 is", "forward strand"),
                              ("ZIC3 strand orientation", "forward strand")]
    assert first.portability == [("What is the function of Zic family member 3?", "male")]
    assert all(r.locality and r.request["subject"] in r.request["prompt"] for r in records)


def test_a_malformed_knowedit_entry_is_named(tmp_path):
    raw = json.loads((SHARED_DATA / "knowedit_zsre.json").read_text())[:3]
    raw[1]["locality"]["Relation_Specificity"][0] = {"prompt": "x is"}
    path = tmp_path / "knowedit.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"record 1: missing or empty field 'locality.Relation_Specificity\[0\].ground_truth'"):
        load_records(path)


def test_shuffle_is_seeded():
    a = [r.case_id for r in load_records(ZSRE, num_edits=10, shuffle=True, seed=3)]
    b = [r.case_id for r in load_records(ZSRE, num_edits=10, shuffle=True, seed=3)]
    c = [r.case_id for r in load_records(ZSRE, num_edits=10, shuffle=True, seed=4)]
    assert a == b != c


@pytest.mark.parametrize("break_record, message", [
    (lambda r: r.pop("alt"), "record 2: missing or empty field 'alt'"),
    (lambda r: r.update(subject="Nobody Anywhere"), "record 2: field 'subject' 'Nobody Anywhere' does not occur"),
    (lambda r: r.update(alt="  "), "record 2: missing or empty field 'alt'"),
])
def test_malformed_data_is_rejected_before_anything_is_edited(tmp_path, tiny_gpt2, stats_dir, break_record, message):
    records = json.loads(ZSRE.read_text())[:4]
    break_record(records[2])
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(records))
    model, tok = tiny_gpt2
    before = snapshot(model)
    with pytest.raises(DataError, match=message):
        run_lifelong(tiny_hparams(stats_dir, tmp_path), data, tmp_path / "run", model=model, tok=tok, progress_bar=False)
    assert changed_parameters(model, before) == []
    assert not (tmp_path / "run").exists()


class StepCounter:
    @hookimpl
    def after_edit(self, event):
        return {"seen_subject": event.request["subject"]}


def test_seconds_per_edit_leave_out_what_the_hooks_cost(tmp_path, tiny_gpt2, stats_dir, monkeypatch):
    """Ours run the hooks inside apply, EasyEdit's after it: s/edit must be the method's own time in both."""
    import time

    from edit_plugins.lifelong.run_log import read_edits

    real, hook_time = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + hook_time[0])

    class SlowDiagnostic:
        @hookimpl
        def after_edit(self, event):
            hook_time[0] += 100.0  # the clock moves 100 s while the hook runs
            return {"slow": True}

    model, tok = tiny_gpt2
    slow = SlowDiagnostic()
    pm.register(slow)
    try:
        run_lifelong(tiny_hparams(stats_dir, tmp_path), CF_ROME, tmp_path / "run", model=model, tok=tok,
                     options=RunOptions(num_edits=2, diagnostics=[], checkpoints=[2]), progress_bar=False)
    finally:
        pm.unregister(slow)
    edits = read_edits(tmp_path / "run")
    assert all(e["hooks"]["after_edit_seconds"] >= 100.0 for e in edits)
    assert all(0 < e["seconds"] < 50.0 for e in edits), [e["seconds"] for e in edits]


def test_short_run_on_tiny_gpt2_writes_every_output(tmp_path, tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    records = load_records(CF_ROME, num_edits=5)
    rephrases = [(p, r.request["ground_truth"]) for r in records for p in r.rephrase_prompts]
    unedited = [scoring.generated_answers(model, tok, rephrases),
                [s.accuracy for s in scoring.score_answers(model, tok, rephrases)]]
    counter = StepCounter()
    pm.register(counter)
    try:
        summary = run_lifelong(tiny_hparams(stats_dir, tmp_path), CF_ROME, tmp_path / "run", model=model, tok=tok,
                               options=RunOptions(num_edits=5, probe_data=str(KNOWN), num_probes=10, save_every=2),
                               progress_bar=False)
    finally:
        pm.unregister(counter)
    run = tmp_path / "run"
    for name in ("config.yaml", "edits.jsonl", "checkpoints.jsonl", "summary.json", "retention.png",
                 "locality.png", "seconds_per_edit.png"):
        assert (run / name).is_file(), name
    edits = [json.loads(line) for line in (run / "edits.jsonl").read_text().splitlines()]
    assert [e["step"] for e in edits] == [1, 2, 3, 4, 5]
    assert all(e["hooks"]["seen_subject"] for e in edits)  # our hook's output lands in the log line
    assert all("interference" in e["hooks"] for e in edits[1:])  # the built-in diagnostic is on by default
    assert all(e["layer"] in (1, 2) and e["seconds"] > 0 for e in edits)
    checkpoints = [json.loads(line) for line in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checkpoints] == [1, 2, 4, 5]
    assert checkpoints[-1]["probe_locality"] is not None
    assert checkpoints[-1]["locality_acc_unedited_subjects"] is not None
    assert summary["edits_done"] == 5 and summary["complete"] and json.loads((run / "summary.json").read_text()) == summary
    # the three protocols, labelled; generation exact match beside teacher-forced accuracy in each
    protocols = summary["protocols"]
    assert [row["step"] for row in protocols["retention_curve"]] == [c["step"] for c in checkpoints]
    end, last = protocols["end_of_sequence"], checkpoints[-1]
    assert (end["step"], end["reliability"], end["reliability_gen_em"], end["generality_gen_em"]) == (
        5, last["retention_acc"], last["retention_gen_em"], last["retention_rephrase_gen_em"])
    assert protocols["immediate"]["reliability_gen_em"] == metrics.mean(e["metrics"]["rewrite_gen_em"] for e in edits)
    assert all(0 <= e["metrics"]["rephrase_gen_em"] <= 1 for e in edits)
    # beside generality: the unedited model on the same rephrases with the true answers
    assert summary["unedited_model"]["true_answer_on_rephrases"] == {
        "gen_em": metrics.mean(map(float, unedited[0])), "acc": metrics.mean(unedited[1]), "prompts": len(rephrases)}


def test_a_method_at_capacity_ends_the_run_with_a_checkpoint_and_says_why(tmp_path, tiny_gpt2, stats_dir):
    # A change budget no edit fits in: each of the two candidate layers takes one edit, then WilKE refuses.
    from copy import deepcopy

    model, tok = tiny_gpt2
    model = deepcopy(model)
    hp = tiny_hparams(stats_dir, tmp_path, "layer_change_budget: 1.0e-9\n")
    summary = run_lifelong(hp, CF_ROME, tmp_path / "run", model=model, tok=tok,
                           options=RunOptions(num_edits=5, checkpoints=[1, 5]), progress_bar=False)
    edits = [json.loads(line) for line in (tmp_path / "run" / "edits.jsonl").read_text().splitlines()]
    assert sorted(e["layer"] for e in edits) == [1, 2]
    assert summary["edits_done"] == 2 and not summary["complete"]
    assert "layer_change_budget 1e-09: every candidate layer" in summary["stopped_by"]
    assert summary["final_checkpoint"]["step"] == 2  # the model as the method left it, measured
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary


def test_generation_exact_match_is_what_greedy_decoding_produces(tiny_gpt2):
    model, tok = tiny_gpt2
    prompt = "The capital city of France"
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.eos_token_id)
    produced = tok.decode(out[0, ids.input_ids.shape[1]:])
    first = tok.decode(out[0, ids.input_ids.shape[1]])
    assert scoring.generated_answers(model, tok, [(prompt, produced), (prompt, first), (prompt, first + " zebra")]) == [
        True, True, False]


def test_a_run_from_in_memory_records_resumes_with_the_same_records(tmp_path, tiny_gpt2, stats_dir):
    from edit_plugins.lifelong import LifelongError, resume_lifelong

    model, tok = tiny_gpt2
    before = snapshot(model)
    records = load_records(ZSRE, num_edits=6)
    options = RunOptions(save_every=2, checkpoints=[3, 6], diagnostics=[])
    straight = run_lifelong(tiny_hparams(stats_dir, tmp_path), records, tmp_path / "straight", model=model, tok=tok,
                            options=options, progress_bar=False)

    class FailAtFifth:
        @hookimpl
        def after_edit(self, event):
            if event.request["case_id"] == records[4].case_id:
                raise RuntimeError("stopped")

    from conftest import restore
    restore(model, before)
    failing = FailAtFifth()
    pm.register(failing)
    try:
        with pytest.raises(RuntimeError, match="stopped"):
            run_lifelong(tiny_hparams(stats_dir, tmp_path), records, tmp_path / "cut", model=model, tok=tok,
                         options=options, progress_bar=False)
    finally:
        pm.unregister(failing)
    with pytest.raises(LifelongError, match="resume it from Python with the same records"):
        resume_lifelong(tmp_path / "cut", model=model, tok=tok, progress_bar=False)
    with pytest.raises(LifelongError, match="different order"):
        resume_lifelong(tmp_path / "cut", model=model, tok=tok, progress_bar=False, records=records[::-1])
    resumed = resume_lifelong(tmp_path / "cut", model=model, tok=tok, progress_bar=False, records=records)
    restore(model, before)
    strip = lambda summary: {k: v for k, v in summary.items() if k != "diagnostics"}
    assert strip(resumed) == strip(straight)


def test_output_folder_is_never_overwritten(tmp_path, tiny_gpt2, stats_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep me")
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="not empty"):
        run_lifelong(tiny_hparams(stats_dir, tmp_path), ZSRE, tmp_path / "run", model=model, tok=tok,
                     options=RunOptions(num_edits=2), progress_bar=False)
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep me"


def cli(*args, env=None):
    return [sys.executable, "-m", "edit_plugins.cli", "lifelong", *map(str, args)]


@pytest.mark.process
@pytest.mark.parametrize("method", ["WilKE", "WilKE-guarded", "LEMoE"])
def test_resume_after_sigkill_gives_the_same_summary(tmp_path, stats_dir, method):
    # WilKE's edits live in the weights; the guard's keys, the layer norms LA divides by and LEMoE's adaptor in
    # the method's state beside them.
    guard = "interference_guard: true\nguard_repair: true\nguard_positions: prompt\nguard_scope: model\nla_norm: original\n"
    hp = {"WilKE": lambda: tiny_hparams(stats_dir, tmp_path),
          "WilKE-guarded": lambda: tiny_hparams(stats_dir, tmp_path, guard),
          "LEMoE": lambda: HPARAMS / "LEMoE" / "tiny-gpt2.yaml"}[method]()
    common = ["--hparams", hp, "--data", ZSRE, "--num-edits", 10, "--save-every", 2, "--probe-data", KNOWN,
              "--num-probes", 10, "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_command_here("lifelong", *common, "--out", tmp_path / "straight")

    victim = subprocess.Popen(cli(*common, "--out", tmp_path / "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    kill_at_position(victim, tmp_path / "killed" / "state" / "progress.json", 4)
    assert not (tmp_path / "killed" / "summary.json").exists()  # it really died mid-run

    run_command_here("lifelong", "--out", tmp_path / "killed", "--resume")
    assert (tmp_path / "killed" / "summary.json").read_text() == (tmp_path / "straight" / "summary.json").read_text()
    edits = [json.loads(e) for e in (tmp_path / "killed" / "edits.jsonl").read_text().splitlines()]
    assert [e["step"] for e in edits] == list(range(1, 11))
    if method == "WilKE-guarded":  # the guard was at work after the resume: exact paths, and refreshed keys
        guards = [e["info"]["guard"] for e in edits[5:]]
        assert "guard" in [g["path"] for g in guards] and any("keys_refreshed" in g for g in guards)


@pytest.mark.slow
def test_short_run_on_smollm2(tmp_path, smollm2, stats_dir):
    model, tok = smollm2
    text = (HPARAMS / "WilKE" / "smollm2-135m-rome.yaml").read_text().replace("./data/stats", stats_dir)
    hp = tmp_path / "h.yaml"
    hp.write_text(text.replace("mom2_n_samples: 400", "mom2_n_samples: 100"))
    before = snapshot(model)
    try:
        summary = run_lifelong(hp, CF_ROME, tmp_path / "run", model=model, tok=tok,
                               options=RunOptions(num_edits=4, checkpoints=[4], probe_data=str(KNOWN), num_probes=20),
                               progress_bar=False)
    finally:
        from conftest import restore

        restore(model, before)
    assert summary["immediate"]["efficacy"] >= 0.75  # the edits take hold on the real model
    assert summary["final_checkpoint"]["retention_exact"] >= 0.5
    assert summary["final_checkpoint"]["probe_locality"] >= 0.8


@pytest.mark.slow
def test_an_edit_the_method_refuses_is_counted_scored_as_lost_and_the_run_goes_on(tmp_path, smollm2, stats_dir):
    """WilKE refuses a spread that diverges (a subject at position 0 spread over SmolLM2's layers 8-11, where
    the first token's outsized activation is built). The run logs it with no layer, counts it, scores it as
    lost, and edits the next record."""
    from edit_plugins import hparams
    from conftest import restore

    model, tok = smollm2
    hp = hparams.load(HPARAMS / "WilKE" / "smollm2-135m-rome.yaml")
    hp.stats_dir, hp.mom2_n_samples, hp.layers, hp.spread_layers = stats_dir, 100, [11], 4
    records = [EditRecord("refused", {"prompt": "Germany is a part of the continent of", "subject": "Germany",
                                      "target_new": "Antarctica", "ground_truth": "Europe"}),
               EditRecord("taken", {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
                                    "target_new": "English", "ground_truth": "French"})]
    before = snapshot(model)
    try:
        summary = run_lifelong(hp, records, tmp_path / "run", model=model, tok=tok,
                               options=RunOptions(checkpoints=[1, 2], diagnostics=[]), progress_bar=False)
        edited = changed_parameters(model, before)
    finally:
        restore(model, before)
    edits = [json.loads(line) for line in (tmp_path / "run" / "edits.jsonl").read_text().splitlines()]
    assert [e["layer"] for e in edits] == [None, 11]
    assert "diverged at layer" in edits[0]["info"]["not_applied"] and "not_applied" not in edits[1]["info"]
    assert edited and all(any(f"layers.{layer}." in name for layer in (8, 9, 10, 11)) for name in edited)
    assert summary["edits_not_applied"] == 1 and summary["complete"]
    assert summary["edits_done"] == 2 and summary["lost_edits_at_end"] == 1
    assert summary["final_checkpoint"]["retention_exact"] == 0.5


def test_retention_re_measures_counterfacts_probability_scores_like_the_immediate_ones(tiny_gpt2):
    from edit_plugins.lifelong.data import load_records

    model, tok = tiny_gpt2
    records = load_records(CF_ROME, num_edits=8)
    immediate = [metrics.edit_metrics(scoring.Scorer(model, tok), r, [[-1]] * len(r.locality)) for r in records]
    row = metrics.retention(scoring.Scorer(model, tok), records)
    per_paraphrase = [m["paraphrase"] for m in immediate]
    counts = [len(r.rephrase_prompts) for r in records]
    assert len(set(m["efficacy"] for m in immediate)) == 2  # a random model: both outcomes occur
    assert row["retention_efficacy"] == pytest.approx(np.mean([m["efficacy"] for m in immediate]))
    assert row["retention_paraphrase"] == pytest.approx(np.average(per_paraphrase, weights=counts))


def test_batched_scoring_equals_scoring_each_answer_alone(tiny_gpt2):
    """Length-sorted batches, a small token budget and shared rows for identical inputs change nothing."""
    from edit_plugins.lifelong.data import load_records

    model, tok = tiny_gpt2
    records = load_records(CF_ROME, num_edits=6)
    pairs = [(p, a) for r in records for p in [r.request["prompt"], *r.rephrase_prompts]
             for a in (r.request["target_new"], r.request["ground_truth"])]
    pairs += [pair for r in records for pair in r.locality]
    alone = [scoring.score_answers(model, tok, [pair])[0] for pair in pairs]
    batched = scoring.score_answers(model, tok, pairs, batch_size=7, max_tokens=120)
    assert [s.predicted for s in batched] == [s.predicted for s in alone]
    assert [s.n_tokens for s in batched] == [s.n_tokens for s in alone]
    assert [s.mean_logprob for s in batched] == pytest.approx([s.mean_logprob for s in alone], abs=1e-4)
    assert len({round(s.mean_logprob, 3) for s in alone}) > len(pairs) // 2  # real, varied scores


def test_length_batches_cover_every_index_once_within_the_token_budget():
    from edit_plugins.lifelong.scoring import _length_batches

    lengths = [5, 40, 3, 3, 17, 60, 8, 8, 8, 1]
    batches = _length_batches(lengths, max_rows=3, max_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64) for b in batches)


def test_locality_prompts_naming_an_edited_subject_are_found_as_whole_phrases():
    prompts = ["Nintendo 3DS is developed by", "The official religion of Hema Malini is",
               "Toyota Corolla Spacio, created by", "Mali's capital is", "Nintendo 3DSi is made by"]
    assert metrics.names_any(prompts, {"Nintendo 3DS", "Mali", "Toyota Corolla", None}) == [
        True, False, True, True, False]
    assert metrics.names_any(prompts[:1], set()) == [False]


@pytest.mark.process
def test_compare_runs_each_method_on_the_same_edits_and_writes_one_table_and_plot(tmp_path, stats_dir):
    wilke = tiny_hparams(stats_dir, tmp_path)
    lemoe = tmp_path / "tiny-gpt2.yaml"
    lemoe.write_text((HPARAMS / "LEMoE" / "tiny-gpt2.yaml").read_text().replace("order_planning: true",
                                                                              "order_planning: false"))
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "edit_plugins.cli", "compare", "--hparams", str(wilke), "--hparams", str(lemoe),
               "--data", str(ZSRE), "--num-edits", "4", "--checkpoints", "2", "--num-probes", "5",
               "--probe-data", str(KNOWN), "--unrelated-data", str(ZSRE), "--num-unrelated", "6", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    orders = [yaml_order(out / name) for name in ("tiny", "tiny-gpt2")]
    assert orders[0] == orders[1]  # same records in the same order (LEMoE's own order planning off)
    from edit_plugins.lifelong.compare import rows
    compared = rows([out / "tiny", out / "tiny-gpt2"])
    assert [r["planned_order"] for r in compared] == [False, False]
    assert [r["family"] for r in compared] == ["weight editor", "memory"]
    table = (out / "comparison.md").read_text().splitlines()
    from edit_plugins.lifelong.compare import headline_score
    ranked = sorted(compared, key=lambda r: headline_score(r["end"]), reverse=True)  # best first, generation-based
    body = [line for line in table[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in body] == [f"{r['label']} ({r['method']})" for r in ranked]
    unedited = compared[0]["unedited_true_rephrase"]  # under the table: the model's own generality on these records
    assert unedited["prompts"] == 4 and f"at {unedited['gen_em']:.3f} gen EM / {unedited['acc']:.3f} acc" in table[-1]
    assert "(gen EM / acc)" in table[0] and (out / "retention.png").stat().st_size > 0
    end = json.loads((out / "tiny" / "summary.json").read_text())["protocols"]["end_of_sequence"]
    row = next(line for line in table[2:] if line.startswith("| tiny (WilKE)"))
    assert f"| {end['reliability_gen_em']:.3f} / {end['reliability']:.3f} |" in row
    assert end["unrelated_locality"] is not None and f" / {end['unrelated_locality']:.3f} / " in row
    assert len(read_checkpoints(out / "tiny")) == 2  # --checkpoints 2, and the last
    written = (out / "tiny" / "edits.jsonl").stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True)  # complete runs are kept, not redone
    assert again.returncode == 0 and (out / "tiny" / "edits.jsonl").stat().st_mtime_ns == written


def yaml_order(folder):
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text())["data"]["order"]


@pytest.mark.process
def test_compare_refuses_an_unknown_method_before_running_any(tmp_path, stats_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alg_name: NoSuchMethod\nmodel_name: tiny-gpt2\n")
    done = subprocess.run([sys.executable, "-m", "edit_plugins.cli", "compare", "--hparams",
                           str(tiny_hparams(stats_dir, tmp_path)), "--hparams", str(bad), "--data", str(ZSRE),
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown method 'NoSuchMethod'" in done.stderr
    assert not (tmp_path / "cmp").exists()


class _CountingEditor:
    """What an EasyEdit memory's apply returns: an object whose __call__ and generate() reach the model."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, **kwargs):
        self.calls += 1
        return self.model(**kwargs)

    def generate(self, **kwargs):
        self.calls += 1
        return self.model.generate(**kwargs)


def test_scoring_one_row_at_a_time_through_the_editor_scores_what_batches_score(tiny_gpt2):
    """A method that must be scored one row per forward, through the object its apply returned, with a hook
    before each forward: the scores are those of batched scoring; only the route differs."""
    from edit_plugins.plugins import Scoring

    model, tok = tiny_gpt2
    records = load_records(CF_ROME, num_edits=4)
    pairs = [(p, a) for r in records for p in [r.request["prompt"], *r.rephrase_prompts]
             for a in (r.request["target_new"], r.request["ground_truth"])]
    lengths = []
    scorer = scoring.Scorer(model, tok, Scoring(rows_alone=True, through_editor=True,
                                                before_forward=lambda m, n: lengths.append(n)))
    scorer.editor = _CountingEditor(model)
    alone, batched = scorer.teacher_forced(pairs), scoring.score_answers(model, tok, pairs)
    assert [s.predicted for s in alone] == [s.predicted for s in batched]
    assert [s.mean_logprob for s in alone] == pytest.approx([s.mean_logprob for s in batched], abs=1e-4)
    rows = len({(tuple(tok(p).input_ids), a) for p, a in pairs})  # identical rows run once
    assert scorer.editor.calls == len(lengths) and 0 < len(lengths) <= rows
    assert sorted(set(lengths)) == sorted({len(tok(p).input_ids) for p, _ in pairs})
    lengths.clear()
    assert scorer.generated(pairs) == scoring.generated_answers(model, tok, pairs)
    assert lengths == [None] * len(pairs)  # one generate() per row, each told it is a generation


def test_a_run_hands_the_method_its_padding_side_and_scores_it_as_it_declares(tmp_path, tiny_gpt2, stats_dir,
                                                                             monkeypatch):
    import copy
    import dataclasses

    from edit_plugins.lifelong import start
    from edit_plugins.lifelong.run_log import read_edits
    from edit_plugins.plugins import Scoring, resolve

    model, tok = tiny_gpt2
    wilke, sides = resolve("WilKE"), []

    def apply(model, tok, requests, hparams, **kwargs):
        sides.append(tok.padding_side)
        return wilke.apply(model, tok, requests, hparams, **kwargs)

    declared = dataclasses.replace(wilke, apply=apply, padding_side="left", scoring=Scoring(rows_alone=True))
    options = dict(num_edits=3, checkpoints=[3], diagnostics=[], probe_data=str(KNOWN), num_probes=4)
    twin = copy.deepcopy(model)
    monkeypatch.setattr(start, "resolve", lambda name: declared)
    tok.padding_side = "right"
    run_lifelong(tiny_hparams(stats_dir, tmp_path), ZSRE, tmp_path / "alone", model=model, tok=tok,
                 options=RunOptions(**options), progress_bar=False)
    assert sides == ["left"] * 3 and tok.padding_side == "right"  # put back after each edit
    monkeypatch.setattr(start, "resolve", lambda name: wilke)
    run_lifelong(tiny_hparams(stats_dir, tmp_path), ZSRE, tmp_path / "batched", model=twin, tok=tok,
                 options=RunOptions(**options), progress_bar=False)
    alone, batched = read_edits(tmp_path / "alone"), read_edits(tmp_path / "batched")
    assert [e["metrics"] for e in alone] == [pytest.approx(e["metrics"], abs=1e-6) for e in batched]
    assert len({e["metrics"]["rewrite_acc"] for e in alone} | {e["metrics"]["locality_acc"] for e in alone}) > 1


def test_unrelated_questions_are_scored_or_pooled_never_both_and_never_the_streams_own(tmp_path):
    from edit_plugins.lifelong.data import load_unrelated_questions

    records = load_records(ZSRE, num_edits=5)
    unrelated = load_unrelated_questions(ZSRE, 20, records)
    own = {p for r in records for p, _ in r.locality}
    assert len(unrelated.scored) == 20 and len(unrelated.pool) > 100
    questions = [q for q, _ in unrelated.scored + unrelated.pool]
    assert len(set(questions)) == len(questions) and not own & set(questions)
    assert all(q.startswith("nq question:") for q in questions)
    not_zsre = tmp_path / "cf.json"
    not_zsre.write_text(json.dumps([{"prompt": "p", "target_new": "t"}]))
    with pytest.raises(DataError, match=r"cf.json: no record has the fields 'loc' and 'loc_ans'"):
        load_unrelated_questions(not_zsre, 20, records)


def test_compare_refuses_hparams_for_different_models_before_running_any(tmp_path, stats_dir):
    from edit_plugins.lifelong.compare import CompareError, check_all

    other = tmp_path / "other" / "tiny.yaml"
    other.parent.mkdir()
    other.write_text((HPARAMS / "WilKE" / "smollm2-135m-fast.yaml").read_text())
    with pytest.raises(CompareError, match=r"edit different models.*smollm2.*other/tiny.yaml"):
        check_all([tiny_hparams(stats_dir, tmp_path), other])


def test_compare_runs_each_method_on_more_orders_and_gives_the_min_max_beside_its_row():
    from edit_plugins.lifelong.compare import order_runs, table

    options = RunOptions(num_edits=4, seed=0)
    runs = order_runs([("a.yaml", "a"), ("b.yaml", "b")], ["--seed", "0", "--num-edits", "4"], options, 3)
    assert [label for _, label, _, _ in runs] == ["a", "b", "a-order1", "b-order1", "a-order2", "b-order2"]
    assert runs[0][2] == ["--seed", "0", "--num-edits", "4"] and runs[0][3] is options
    assert runs[5][2] == ["--num-edits", "4", "--shuffle", "--seed", "2"]
    assert (runs[5][3].shuffle, runs[5][3].seed, runs[5][3].num_edits) == (True, 2, 4)

    def row(label, reliability, locality):
        end = {"reliability_gen_em": reliability, "generality_gen_em": 0.5, "locality": locality,
               "reliability": reliability, "generality": 0.5}
        return {"label": label, "method": "M", "family": "memory", "edits": 4, "order": [label], "complete": True,
                "planned_order": False, "end": end, "seconds_per_edit": 1.0, "peak_rss_mb": 100.0}

    text = table([row("a", 0.9, 1.0), row("a-order1", 0.7, 0.8), row("a-order2", 1.0, 0.9), row("b", 0.2, 0.2)])
    a, b = text.splitlines()[2:]
    assert a.startswith("| a (M) | memory | 4, 3 orders | 0.800 (0.667–0.800) |")
    assert "| 0.900 (0.700–1.000) / 0.900 |" in a and "| 1.000 (0.800–1.000) / — / — |" in a
    assert b.startswith("| b (M) | memory | 4 | 0.300 |")


def test_cost_at_both_ends_of_a_run_reads_whole_calls():
    """A call's seconds are logged on its last record: the first and last tenth take whole calls."""
    from edit_plugins.lifelong.compare import seconds_per_edit_at_ends

    one_at_a_time = [{"seconds": 1.0 + i} for i in range(20)]  # the 2 first cost 1 and 2 s, the 2 last 19 and 20
    assert seconds_per_edit_at_ends(one_at_a_time) == {"seconds_per_edit_first_tenth": 1.5,
                                                       "seconds_per_edit_last_tenth": 19.5}
    calls_of_five = [{"seconds": 10.0} if i % 5 == 4 else {} for i in range(20)]
    calls_of_five[-1]["seconds"] = 30.0
    assert seconds_per_edit_at_ends(calls_of_five) == {"seconds_per_edit_first_tenth": 2.0,
                                                       "seconds_per_edit_last_tenth": 6.0}
    assert seconds_per_edit_at_ends([{"seconds": 1.0}] * 5)["seconds_per_edit_first_tenth"] is None
