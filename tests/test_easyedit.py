"""Integration with a real easyeditor package (PyPI 0.0.1.dev0 in CI's second environment; HEAD if on the path)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
import pytest

from conftest import ROOT, SHARED_DATA, changed_parameters, snapshot

easyeditor = pytest.importorskip("easyeditor", reason="needs the real easyeditor package (.venv-easyedit)")
pytestmark = pytest.mark.easyeditor

# Under the transformers each EasyEdit pins (HEAD: 5.5), which builds the embedded model for its users.
from test_models import test_the_smollm2_tokenizer_built_here_reloads_as_smollm2s_own as \
    test_the_smollm2_tokenizer_built_under_easyedits_transformers_reloads_as_smollm2s_own  # noqa: E402,F401


def run_fresh(code, **env):
    """A new interpreter: nothing of ours is imported unless the code does it."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT)


@pytest.mark.process
def test_importing_easyeditor_registers_every_plugin_method_with_no_import_of_ours():
    out = run_fresh('''
        import sys, importlib
        import easyeditor
        ALG_DICT = importlib.import_module("easyeditor.util.alg_dict").ALG_DICT
        from easyeditor.editors import editor
        print("WilKE" in ALG_DICT, editor.ALG_DICT is ALG_DICT, ALG_DICT["WilKE"].__name__)
        print("edit_plugins" in sys.modules)
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True True apply_wilke_to_model", "True"]


def test_every_registered_method_is_in_alg_dict():
    import importlib

    from edit_plugins.plugins import registry

    ALG_DICT = importlib.import_module("easyeditor.util.alg_dict").ALG_DICT
    methods = registry().methods
    assert {"WilKE", "LEMoE"} <= set(methods)
    assert [n for n, m in methods.items() if ALG_DICT.get(n) is not m.apply] == []


@pytest.mark.process
def test_opt_out_env_var_keeps_alg_dict_untouched():
    out = run_fresh('''
        import importlib, easyeditor
        print("WilKE" in importlib.import_module("easyeditor.util.alg_dict").ALG_DICT)
    ''', EDIT_PLUGINS_NO_AUTOINSTALL="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.process
def test_importing_edit_plugins_first_also_registers():
    out = run_fresh('''
        import edit_plugins, importlib
        print("WilKE" in importlib.import_module("easyeditor.util.alg_dict").ALG_DICT)
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_install_is_idempotent():
    import importlib

    import edit_plugins

    table = importlib.import_module("easyeditor.util.alg_dict").ALG_DICT
    identity, size = id(table), len(table)
    assert edit_plugins.install() == []  # already registered on import
    assert edit_plugins.install() == []
    assert id(importlib.import_module("easyeditor.util.alg_dict").ALG_DICT) == identity and len(table) == size


def test_hparams_subclass_easyeditors_hyperparams():
    from easyeditor.util.hparams import HyperParams

    from edit_plugins import hparams

    hp = hparams.load(ROOT / "hparams" / "WilKE" / "tiny-gpt2.yaml")
    assert isinstance(hp, HyperParams)


def test_base_editor_resolves_wilke(tiny_gpt2, stats_dir):
    """BaseEditor looks the method up in ALG_DICT at construction; then we call it as it would."""
    import importlib

    from easyeditor import BaseEditor

    from edit_plugins import easyedit_compat, hparams

    model, tok = tiny_gpt2
    hp = hparams.load(ROOT / "hparams" / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir = stats_dir
    hp.model_name = (model, tok)  # both versions accept a (model, tokenizer) pair
    object.__setattr__(model, "to", lambda *a, **k: model)  # dev0 moves the model to CUDA unconditionally
    editor = BaseEditor.from_hparams(hp)
    assert editor.apply_algo is importlib.import_module("easyeditor.util.alg_dict").ALG_DICT["WilKE"]
    request = {"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"}
    before = snapshot(model)
    if easyedit_compat.is_head():
        kwargs = dict(copy=False, return_orig_weights=True, keep_original_weight=False, train_ds=None)
    else:
        kwargs = dict(copy=False, return_orig_weights=True, keep_original_weight=True, train_ds=None)
    _, weights_copy = editor.apply_algo(editor.model, editor.tok, [request], editor.hparams, **kwargs)
    assert len(changed_parameters(model, before)) == 1 and list(weights_copy) == changed_parameters(model, before)


def test_dev0_convention_keeps_edits_when_keep_original_weight_is_false(tiny_gpt2, stats_dir):
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.methods.wilke import apply_wilke_to_model

    if easyedit_compat.is_head():
        pytest.skip("HEAD always returns the originals and decides restoration itself")
    model, tok = tiny_gpt2
    hp = hparams.load(ROOT / "hparams" / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir = stats_dir
    request = {"prompt": "The capital city of France", "subject": "France", "target_new": "Tokyo"}
    _, weights_copy = apply_wilke_to_model(model, tok, [request], hp, copy=False, return_orig_weights=True,
                                           keep_original_weight=False, train_ds=None)
    assert weights_copy == {}  # dev0's editor restores whatever is returned


def test_lifelong_edit_takes_an_existing_base_editor(tiny_gpt2, stats_dir, tmp_path):
    import json

    from easyeditor import BaseEditor

    from edit_plugins import hparams
    from edit_plugins.lifelong import RunOptions, lifelong_edit

    model, tok = tiny_gpt2
    hp = hparams.load(ROOT / "hparams" / "WilKE" / "tiny-gpt2.yaml")
    hp.stats_dir, hp.layers = stats_dir, [1, 2]
    hp.model_name = (model, tok)
    object.__setattr__(model, "to", lambda *a, **k: model)  # dev0 moves the model to CUDA unconditionally
    editor = BaseEditor.from_hparams(hp)
    requests = [{"prompt": f"The capital city of {c}", "subject": c, "target_new": t, "ground_truth": "Paris",
                 "locality": {"nq": {"prompt": "The sky is", "ground_truth": "blue"}}}
                for c, t in (("France", "Tokyo"), ("Spain", "Oslo"), ("Italy", "Cairo"))]
    summary = lifelong_edit(editor, requests, tmp_path / "run", RunOptions(), progress_bar=False)
    assert summary["edits_done"] == 3 and summary["immediate"]["rewrite_acc"] is not None
    lines = (tmp_path / "run" / "edits.jsonl").read_text().splitlines()
    assert [json.loads(l)["layer"] in (1, 2) for l in lines] == [True] * 3


def test_lemoe_restore_callable_follows_each_versions_convention(tiny_gpt2):
    """HEAD calls the returned callable (CALLABLE_RESTORE_ALGS); dev0 iterates ``weights_copy.items()``."""
    import importlib

    from easyeditor import BaseEditor

    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.methods.lemoe import find_adaptor, remove_adaptor

    model, tok = tiny_gpt2
    hp = hparams.load(ROOT / "hparams" / "LEMoE" / "tiny-gpt2.yaml")
    hp.model_name = (model, tok)
    object.__setattr__(model, "to", lambda *a, **k: model)  # dev0 moves the model to CUDA unconditionally
    editor = BaseEditor.from_hparams(hp)
    assert editor.apply_algo is importlib.import_module("easyeditor.util.alg_dict").ALG_DICT["LEMoE"]
    request = {"prompt": "The capital city of France is", "subject": "France", "target_new": "Tokyo"}
    try:
        if easyedit_compat.is_head():
            utils = importlib.import_module("easyeditor.editors.utils")
            assert "LEMoE" in utils.CALLABLE_RESTORE_ALGS
            _, weights_copy = editor.apply_algo(editor.model, tok, [request], editor.hparams, copy=False,
                                                return_orig_weights=True, keep_original_weight=False)
            assert find_adaptor(model) is not None
            utils.restore_after_edit(editor, model, weights_copy)  # what a non-sequential edit does
            assert find_adaptor(model) is None
        else:
            _, weights_copy = editor.apply_algo(editor.model, tok, [request], editor.hparams, copy=False,
                                                return_orig_weights=True, keep_original_weight=True, train_ds=None)
            assert find_adaptor(model) is not None
            for _ in weights_copy.items():  # dev0's restore loop
                pass
            assert find_adaptor(model) is None
            _, weights_copy = editor.apply_algo(editor.model, tok, [request], editor.hparams, copy=False,
                                                return_orig_weights=True, keep_original_weight=False, train_ds=None)
            assert weights_copy == {} and find_adaptor(model) is not None  # the edit stays
    finally:
        remove_adaptor(model)


def test_lifelong_data_is_read_through_easyeditors_dataset_classes(tmp_path, monkeypatch):
    import json

    from conftest import SHARED_DATA
    from edit_plugins import easyedit_compat
    from edit_plugins.lifelong.data import load_records

    raw = json.loads((SHARED_DATA / "zsre_mend_eval.json").read_text())[:6]
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(raw))
    items = easyedit_compat.dataset_items(path, "zsre")
    assert items is not None and [it["prompt"] for it in items] == [r["src"] for r in raw]
    cf = SHARED_DATA / "counterfact_easyedit.json"
    assert easyedit_compat.dataset_items(cf, "counterfact_easyedit")[:3] == json.loads(cf.read_text())[:3]

    through_easyedit = load_records(path, num_edits=5, start=1)
    monkeypatch.setenv(easyedit_compat.NO_EASYEDIT_ENV, "1")
    assert easyedit_compat.dataset_items(path, "zsre") is None
    own = load_records(path, num_edits=5, start=1)
    assert [vars(r) for r in through_easyedit] == [vars(r) for r in own]  # same field meanings


def test_knowedit_records_read_as_easyeditors_knoweditdataset_reads_them(monkeypatch):
    from conftest import SHARED_DATA
    from edit_plugins import easyedit_compat
    from edit_plugins.lifelong.data import load_records

    path = SHARED_DATA / "knowedit_zsre.json"
    items = easyedit_compat.dataset_items(path, "knowedit")
    if items is None:
        assert not easyedit_compat.is_head()  # 0.0.1.dev0 has no KnowEditDataset
        pytest.skip("this easyeditor has no KnowEditDataset")
    monkeypatch.setenv(easyedit_compat.NO_EASYEDIT_ENV, "1")
    own = load_records(path)  # our reader alone
    assert len(own) == len(items) == 1038

    def pairs(item, *kinds):
        return [(e["prompt"] if isinstance(e["prompt"], str) else e["prompt"][0],
                 e["ground_truth"] if isinstance(e["ground_truth"], str) else
                 (e["ground_truth"][0] if isinstance(e["ground_truth"][0], str) else e["ground_truth"][0][0]))
                for kind in kinds for e in (item[kind] or [])]

    for record, item in zip(own, items):
        request = record.request
        assert (request["prompt"], request["subject"], request["target_new"]) == (
            item["prompt"], item["subject"], item["target_new"])
        assert request["ground_truth"] == item["ground_truth"][0]
        assert record.locality == pairs(item, "locality_rs", "locality_f")
        assert record.portability == pairs(item, "portability_r", "portability_s", "portability_l")
    assert sum(len(r.portability) for r in own) > 1000 and all(r.locality for r in own)


@pytest.mark.slow
def test_token_accuracy_agrees_with_easyeditors_compute_edit_quality(smollm2):
    """Where EasyEdit's own evaluation runs on CPU (HEAD; dev0 hard-codes CUDA), our metrics equal its."""
    import importlib

    from conftest import SHARED_DATA
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.lifelong.data import load_records
    from edit_plugins.lifelong.metrics import edit_metrics
    from edit_plugins.lifelong.scoring import Scorer

    if not easyedit_compat.is_head():
        pytest.skip("easyeditor 0.0.1.dev0 evaluates on cuda:N only")
    compute_edit_quality = importlib.import_module("easyeditor.evaluate").compute_edit_quality
    model, tok = smollm2
    hp = hparams.load(ROOT / "hparams" / "WilKE" / "smollm2-135m-rome.yaml")
    ours, theirs = [], []
    for i, record in enumerate(load_records(SHARED_DATA / "zsre_mend_eval.json", num_edits=12, start=300)):
        if i % 2:  # half with the true answer, which the model often knows: accuracies other than 0
            record.request["target_new"] = record.request["ground_truth"]
        metrics = edit_metrics(Scorer(model, tok), record, [[-1]] * len(record.locality))
        ours += [metrics["rewrite_acc"], metrics["rephrase_acc"]]
        easyedit_record = {"prompt": record.request["prompt"], "target_new": record.request["target_new"],
                           "ground_truth": record.request["ground_truth"],
                           "rephrase_prompt": record.rephrase_prompts[0], "locality": {}, "portability": {}}
        result = compute_edit_quality(model, "smollm2-135m", hp, tok, easyedit_record, "cpu")
        theirs += [float(np.mean(result["rewrite_acc"])), float(np.mean(result["rephrase_acc"]))]
    assert len(set(theirs)) > 2  # the comparison is not between constants
    assert ours == pytest.approx(theirs, abs=1e-6)


EDITS = {  # model: (prompts, subjects, new targets, true targets)
    "tiny-gpt2": (["The capital city of France"], ["France"], ["Tokyo"], ["Paris"]),
    "smollm2-135m": (["The Eiffel Tower is located in the city of", "The mother tongue of Danielle Darrieux is"],
                     ["Eiffel Tower", "Danielle Darrieux"], ["Rome", "English"], ["Paris", "French"]),
}


@pytest.mark.parametrize("method, name, model", [
    ("WilKE", "tiny-gpt2", "tiny-gpt2"), ("LEMoE", "tiny-gpt2", "tiny-gpt2"),
    pytest.param("WilKE", "smollm2-135m-rome", "smollm2-135m", marks=pytest.mark.slow),
    pytest.param("LEMoE", "smollm2-135m", "smollm2-135m", marks=pytest.mark.slow),
])
def test_head_editor_edit_runs_the_shipped_hparams_as_they_are(method, name, model, stats_dir):
    """BaseEditor loads the model from model_name and device itself, and edit() needs batch_size 1."""
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.methods.lemoe import find_adaptor

    if not easyedit_compat.is_head():
        pytest.skip("0.0.1.dev0's BaseEditor cannot load a model on CPU")
    from easyeditor import BaseEditor

    hp = hparams.load(ROOT / "hparams" / method / f"{name}.yaml")
    if hasattr(hp, "stats_dir"):
        hp.stats_dir = stats_dir  # the test run's cache, not ./data/stats
        hp.mom2_n_samples = min(hp.mom2_n_samples, 100)  # the statistics the suite computes once, for every test
    editor = BaseEditor.from_hparams(hp)
    prompts, subjects, new, true = EDITS[model]
    metrics, edited, _ = editor.edit(prompts=prompts, subject=subjects, target_new=new, ground_truth=true,
                                     sequential_edit=True)
    assert [float(np.mean(m["post"]["rewrite_acc"])) for m in metrics] == [1.0] * len(prompts)
    if method == "LEMoE":  # editor.edit hands over one request per call: an expert each
        assert len(find_adaptor(edited)[1].experts) == len(prompts)


@pytest.mark.parametrize("method", ["WilKE", "LEMoE"])
def test_head_editor_edit_without_sequential_edit_leaves_the_model_as_it_was(method, stats_dir):
    """Non-sequential edit() evaluates each edit, then undoes it through what the apply function returned."""
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.methods.lemoe import find_adaptor

    if not easyedit_compat.is_head():
        pytest.skip("0.0.1.dev0's BaseEditor cannot load a model on CPU")
    from easyeditor import BaseEditor

    hp = hparams.load(ROOT / "hparams" / method / "tiny-gpt2.yaml")
    if hasattr(hp, "stats_dir"):
        hp.stats_dir = stats_dir
    editor = BaseEditor.from_hparams(hp)
    before = snapshot(editor.model)
    prompts, subjects, new, true = EDITS["tiny-gpt2"]
    metrics, _, _ = editor.edit(prompts=prompts, subject=subjects, target_new=new, ground_truth=true,
                                sequential_edit=False)
    assert float(np.mean(metrics[0]["post"]["rewrite_acc"])) == 1.0
    assert find_adaptor(editor.model) is None and changed_parameters(editor.model, before) == []


def test_head_batch_edit_gives_lemoe_one_expert_per_batch():
    """BaseEditor.batch_edit accepts only methods EasyEdit lists as batchable; LEMoE registers as one."""
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.methods.lemoe import find_adaptor

    if not easyedit_compat.is_head():
        pytest.skip("0.0.1.dev0's BaseEditor cannot load a model on CPU")
    from easyeditor import BaseEditor

    hp = hparams.load(ROOT / "hparams" / "LEMoE" / "tiny-gpt2.yaml")
    hp.batch_size = hp.edits_per_expert = 2
    editor = BaseEditor.from_hparams(hp)
    prompts = ["The capital city of France is", "The favourite food of Alice Walker is",
               "Mount Everest stands in the country of", "The language spoken by Tom Hanks is"]
    metrics, edited, _ = editor.batch_edit(prompts=prompts, target_new=["Tokyo", "soup", "Chile", "Dutch"],
                                           subject=["France", "Alice Walker", "Mount Everest", "Tom Hanks"],
                                           sequential_edit=True)
    assert len(find_adaptor(edited)[1].experts) == 2  # two calls of two requests
    assert [float(np.mean(m["post"]["rewrite_acc"])) for m in metrics] == [1.0] * 4
    from easyeditor.editors.batch_editor import BatchEditor

    assert BatchEditor.is_batchable_method("MEMIT") and not BatchEditor.is_batchable_method("WilKE")


SMOLLM2_COVARIANCE_HPARAMS = {  # EasyEdit's MEMIT/AlphaEdit fields for SmolLM2, as a user writes them
    "layers": [4, 5], "layer_selection": "all", "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 0.5,
    "v_loss_layer": 29, "v_weight_decay": 0.5, "clamp_norm_factor": 4, "kl_factor": 0.0625, "mom2_adjustment": True,
    "mom2_update_weight": 15000, "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
    "layer_module_tmp": "model.layers.{}", "mlp_module_tmp": "model.layers.{}.mlp",
    "attn_module_tmp": "model.layers.{}.self_attn", "ln_f_module": "model.norm",
    "lm_head_module": "model.embed_tokens",  # SmolLM2 ties its head to the embedding
    "mom2_dataset": "pydoc", "mom2_n_samples": 60, "mom2_dtype": "float32", "device": "cpu",
}


@pytest.mark.slow
@pytest.mark.parametrize("alg_name", ["MEMIT", "AlphaEdit"])
def test_covariance_methods_run_offline_after_stats(alg_name, tmp_path, monkeypatch):
    """`edit-plugins stats` fills the file layer_stats looks for (and AlphaEdit's P); EasyEdit's own MEMIT and
    AlphaEdit then edit SmolLM2 with the network off and no dataset download attempted."""
    import yaml

    from edit_plugins import easyedit_compat
    from edit_plugins.easyedit_stats import fill_stats, plan
    from edit_plugins.models import materialize

    if not easyedit_compat.is_head():
        pytest.skip("AlphaEdit and this layer_stats are EasyEdit HEAD's")
    import datasets
    import easyeditor
    from easyeditor.models.rome import layer_stats as layer_stats_module

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")

    def no_download(*args, **kwargs):
        raise AssertionError(f"a dataset download was attempted: {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_download)
    monkeypatch.setattr(layer_stats_module, "load_dataset", no_download)
    monkeypatch.chdir(tmp_path)  # AlphaEdit would write null_space_project.pt into the working directory
    config = {**SMOLLM2_COVARIANCE_HPARAMS, "alg_name": alg_name, "model_name": str(materialize("smollm2-135m")),
              "stats_dir": str(tmp_path / "stats")}
    if alg_name == "AlphaEdit":
        config.update(nullspace_threshold=2e-2, L2=10, P_loc=str(tmp_path / "P.pt"))
    path = tmp_path / f"{alg_name}.yaml"
    path.write_text(yaml.safe_dump(config))

    written = fill_stats(path)
    expected = [tmp_path / "stats" / "SmolLM2-135M-Instruct-llama-f32" / "pydoc_stats"
                / f"model.layers.{layer}.mlp.down_proj_float32_mom2_60.npz" for layer in (4, 5)]
    assert plan(path).files == expected and all(p.is_file() for p in expected)
    if alg_name == "AlphaEdit":
        P = torch.load(tmp_path / "P.pt", weights_only=True)
        assert P.shape == (2, 1536, 1536) and 0 < torch.linalg.matrix_rank(P[0]) < 1536
    assert fill_stats(path) == []  # present: nothing recomputed

    hparams_class = {"MEMIT": easyeditor.MEMITHyperParams, "AlphaEdit": easyeditor.AlphaEditHyperParams}[alg_name]
    editor = easyeditor.BaseEditor.from_hparams(hparams_class.from_hparams(str(path)))
    prompts, subjects, new, true = EDITS["smollm2-135m"]
    metrics, edited, _ = editor.edit(prompts=prompts[:1], subject=subjects[:1], target_new=new[:1],
                                     ground_truth=true[:1], sequential_edit=True)
    assert float(np.mean(metrics[0]["post"]["rewrite_acc"])) == 1.0


@pytest.mark.process
@pytest.mark.slow
def test_alphaedit_keeps_its_past_edits_term_across_a_kill_and_resume(tmp_path, monkeypatch):
    """AlphaEdit keeps the sum of past edits' key outer products (cache_c) in a module global, not in the
    weights: a killed run must save it and load it back, so that its later edits solve the same system and
    the run ends in the weights and summary of a run never killed."""
    import json

    import yaml

    from conftest import SHARED_DATA, kill_at_position, run_command_here
    from edit_plugins import easyedit_compat
    from edit_plugins.easyedit_stats import fill_stats
    from edit_plugins.files import load_tensors
    from edit_plugins.models import materialize

    if not easyedit_compat.is_head():
        pytest.skip("AlphaEdit is EasyEdit HEAD's")
    config = yaml.safe_load((ROOT / "hparams" / "easyedit" / "AlphaEdit" / "tiny-gpt2.yaml").read_text())
    (tmp_path / "tiny-gpt2-xl").symlink_to(materialize("tiny-gpt2"))  # AlphaEdit knows GPT-2 by "gpt2-xl"
    config.update(model_name=str(tmp_path / "tiny-gpt2-xl"), stats_dir=str(tmp_path / "stats"),
                  P_loc=str(tmp_path / "P.pt"))
    hp = tmp_path / "hp.yaml"
    hp.write_text(yaml.safe_dump(config))
    fill_stats(hp)
    common = ["--hparams", hp, "--data", SHARED_DATA / "zsre_mend_eval.json", "--num-edits", 6, "--save-every", 1,
              "--checkpoints", "1,6", "--quiet"]
    cli = lambda *args: [sys.executable, "-m", "edit_plugins.cli", "lifelong", *map(str, args)]  # noqa: E731
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    monkeypatch.chdir(tmp_path)
    run_command_here("lifelong", *common, "--out", tmp_path / "straight")

    victim = subprocess.Popen(cli(*common, "--out", tmp_path / "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    kill_at_position(victim, tmp_path / "killed" / "state" / "progress.json", 2, timeout=600)
    assert not (tmp_path / "killed" / "summary.json").exists()  # it died mid-run
    saved, _ = load_tensors(tmp_path / "killed" / "state" / "method_state.safetensors")
    assert saved["cache_c"].shape == (2, 256, 256) and float(saved["cache_c"].abs().sum()) > 0

    run_command_here("lifelong", "--out", tmp_path / "killed", "--resume", "--quiet")
    killed, reference = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("killed", "straight"))
    assert killed == reference
    weights = [load_tensors(tmp_path / d / "state" / "edited_parameters.safetensors")[0] for d in ("killed", "straight")]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) == 2
    for name in weights[1]:
        assert torch.equal(weights[0][name], weights[1][name]), name


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("alg_name, fast", [("GRACE", {"n_iter": 20}),
                                            ("WISE", {"n_iter": 5, "save_freq": 2, "merge_freq": 4})])
def test_restore_callable_methods_survive_a_kill_and_resume_by_replay(alg_name, fast, tmp_path):
    """EasyEdit's WISE and GRACE keep their edits in adaptor objects the runner cannot save: a resumed run
    re-applies the logged edits and must end in the summary of a run never killed. WISE runs past its side
    memories (every 2 edits) and their merge (every 4), each edit trained beside an unrelated question."""
    import json

    import yaml

    from conftest import SHARED_DATA, kill_at_position, run_command_here
    from edit_plugins import easyedit_compat

    if not easyedit_compat.is_head():
        pytest.skip("the lifelong runner drives HEAD's WISE and GRACE")
    config = yaml.safe_load((ROOT / "hparams" / "easyedit" / alg_name / "tiny-gpt2.yaml").read_text())
    hp = tmp_path / "hp.yaml"
    hp.write_text(yaml.safe_dump({**config, **fast}))  # fewer steps: the test is about resuming, not quality
    zsre = SHARED_DATA / "zsre_mend_eval.json"
    common = ["--hparams", hp, "--data", zsre, "--num-edits", 6, "--save-every", 1, "--checkpoints", "3,6",
              "--unrelated-data", zsre, "--num-unrelated", 10, "--quiet"]
    cli = lambda *args: [sys.executable, "-m", "edit_plugins.cli", "lifelong", *map(str, args)]  # noqa: E731
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_command_here("lifelong", *common, "--out", tmp_path / "straight")

    victim = subprocess.Popen(cli(*common, "--out", tmp_path / "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    kill_at_position(victim, tmp_path / "killed" / "state" / "progress.json", 3, timeout=600)
    assert not (tmp_path / "killed" / "summary.json").exists()  # it died mid-run

    run_command_here("lifelong", "--out", tmp_path / "killed", "--resume", "--quiet")
    killed, reference = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("killed", "straight"))
    assert killed == reference
    state = json.loads((tmp_path / "killed" / "state" / "progress.json").read_text())
    assert state["progress"]["resume_by_replay"] is True


@pytest.mark.parametrize("alg_name", ["ROME", "MEMIT", "AlphaEdit", "WISE", "GRACE", "ULTRAEDIT", "FT"])
def test_the_shipped_easyedit_hparams_load_into_easyeditors_classes(alg_name):
    """hparams/easyedit/*: EasyEdit's own class (however EasyEdit spells it), the embedded alias replaced by the
    folder EasyEdit can load, whose name its model-family checks read ("llama")."""
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.models import materialize

    if not easyedit_compat.is_head():
        pytest.skip("these are EasyEdit HEAD's hparams classes")
    hp = hparams.load(ROOT / "hparams" / "easyedit" / alg_name / "smollm2-135m.yaml")
    assert type(hp).__module__.startswith("easyeditor.")
    assert hp.model_name == str(materialize("smollm2-135m")) and "llama" in hp.model_name.lower()


@pytest.mark.parametrize("alg_name", ["AlphaEdit", "WISE", "ULTRAEDIT"])
def test_hparams_for_a_method_the_installed_easyedit_lacks_are_refused_by_name(alg_name):
    """0.0.1.dev0 predates these methods: loading their hparams names the field and the methods it does have."""
    from edit_plugins import easyedit_compat, hparams

    if easyedit_compat.is_head():
        pytest.skip("EasyEdit HEAD has these methods")
    with pytest.raises(hparams.HparamsError,
                       match=rf"field 'alg_name': unknown method '{alg_name}'; registered methods: \[.*'ROME'.*\]"):
        hparams.load(ROOT / "hparams" / "easyedit" / alg_name / "smollm2-135m.yaml")


def test_compare_refuses_a_method_that_cannot_run_here_before_running_any(tmp_path):
    """WISE with no unrelated questions to train beside, MEMIT whose layer statistics are missing (EasyEdit would
    download a corpus for them): refused by name, with what to do."""
    import yaml

    from edit_plugins import easyedit_compat
    from edit_plugins.lifelong import RunOptions
    from edit_plugins.lifelong.compare import CompareError, check_all

    if not easyedit_compat.is_head():
        pytest.skip("WISE is EasyEdit HEAD's")
    wise = ROOT / "hparams" / "easyedit" / "WISE" / "tiny-gpt2.yaml"
    with pytest.raises(CompareError, match=r"WISE/tiny-gpt2.yaml: WISE trains on an unrelated question.*--unrelated-data"):
        check_all([wise], RunOptions())
    config = yaml.safe_load((ROOT / "hparams" / "easyedit" / "MEMIT" / "tiny-gpt2.yaml").read_text())
    memit = tmp_path / "memit.yaml"
    memit.write_text(yaml.safe_dump({**config, "stats_dir": str(tmp_path / "no-stats")}))
    with pytest.raises(CompareError, match=r"memit.yaml: EasyEdit's MEMIT would download a corpus.*"
                                           r"edit-plugins stats --hparams .*memit.yaml"):
        check_all([wise, memit], RunOptions(unrelated_data=str(SHARED_DATA / "zsre_mend_eval.json")))


def test_ultraedit_keeps_its_lifelong_normaliser_across_calls(tiny_gpt2, tmp_path):
    """EasyEdit's executor builds a new normaliser at every call; ours keeps one for the run, so its running
    statistics count every edit so far."""
    from edit_plugins import easyedit_compat, hparams
    from edit_plugins.plugins import resolve

    if not easyedit_compat.is_head():
        pytest.skip("UltraEdit is EasyEdit HEAD's")
    model, tok = tiny_gpt2
    method = resolve("ULTRAEDIT")
    hp = hparams.load(ROOT / "hparams" / "easyedit" / "ULTRAEDIT" / "tiny-gpt2.yaml")
    method.prepare(hp)
    counts = []
    for request in ({"prompt": "The capital of France is", "target_new": "Tokyo", "subject": "France"},
                    {"prompt": "The mother tongue of Danielle is", "target_new": "English", "subject": "Danielle"}):
        method.apply(model, tok, [request], hp, **easyedit_compat.sequential_apply_kwargs())
        executor = easyedit_compat.alg_dict()["ULTRAEDIT"].__self__
        counts.append(float(next(iter(executor.alg.lifelong_normalizer.values())).n))
    assert counts[0] > 0 and counts[1] > counts[0]
    tensors, metadata = method.save_state(model)
    fresh = resolve("ULTRAEDIT")  # a resumed run: its normaliser comes back at the next call
    fresh.prepare(hp)
    fresh.load_state(model, tensors, metadata)
    fresh.apply(model, tok, [{"prompt": "Paris is in", "target_new": "Italy", "subject": "Paris"}], hp,
                **easyedit_compat.sequential_apply_kwargs())
    assert float(next(iter(executor.alg.lifelong_normalizer.values())).n) > counts[1]


def test_a_new_run_starts_wise_with_no_earlier_runs_edit_history():
    """WISE replays the inputs of earlier edits from lists in its module; a second run in one process must not
    replay the first run's edits."""
    import importlib

    from edit_plugins import easyedit_compat

    if not easyedit_compat.is_head():
        pytest.skip("WISE is EasyEdit HEAD's")
    wise = importlib.import_module("easyeditor.models.wise.WISE")
    wise.edit_history.append([{"input_ids": torch.tensor([[1, 2]])}, False])
    wise.merge_group_edit_history.append([[{"input_ids": torch.tensor([[3]])}, False]])
    easyedit_compat.clear_module_state("WISE")
    assert wise.edit_history == [] and wise.merge_group_edit_history == []
