"""Run folders that cannot be hijacked, stranded or mixed, and bad input stopped before the first edit.

The kill tests kill for real (SIGKILL): at a polled moment, or at an exact rename inside a save.
"""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import HPARAMS, ROOT, SHARED_DATA, changed_parameters, run_command_here, snapshot
from edit_plugins.cli import main
from edit_plugins.hparams import HparamsError
from edit_plugins.hparams import load as load_hparams
from edit_plugins.lifelong.data import DataError
from edit_plugins.lifelong.run_folder import RunFolder, RunFolderError
from edit_plugins.lifelong import RunOptions, run_lifelong
from edit_plugins.lifelong.state import StateError

ZSRE = SHARED_DATA / "zsre_mend_eval.json"
CF_EASYEDIT = SHARED_DATA / "counterfact_easyedit.json"


def tiny_hparams(stats_dir, tmp_path, **changes):
    text = (HPARAMS / "WilKE" / "tiny-gpt2.yaml").read_text().replace("./data/stats", stats_dir)
    text = text.replace("layers: [0, 1, 2, 3]", "layers: [1, 2]")
    for key, value in changes.items():
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def cli(*args):
    return [sys.executable, "-m", "edit_plugins.cli", *map(str, args)]


def run_cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def summary(folder: Path) -> str:
    return (folder / "summary.json").read_text()


def wait_for(predicate, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, stats_dir):
    """An uninterrupted six-edit CLI run: the reference every interrupted one must match."""
    folder = tmp_path_factory.mktemp("straight")
    hp = tiny_hparams(stats_dir, folder)
    common = ["lifelong", "--hparams", hp, "--data", ZSRE, "--num-edits", 6, "--save-every", 2, "--quiet"]
    run_command_here(*common, "--out", folder / "run")
    return common, folder / "run"


# -- 1. no code runs on --resume ------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.process
def test_a_pickled_state_is_refused_and_never_unpickled(tmp_path, straight_run):
    common, straight = straight_run
    folder = tmp_path / "shared-run"
    folder.mkdir()
    (folder / "config.yaml").write_text((straight / "config.yaml").read_text())
    (folder / "state").mkdir()
    marker = tmp_path / "pwned"
    (folder / "state" / "progress.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    out = run_cli("lifelong", "--out", folder, "--resume")
    assert out.returncode == 2 and "pickle" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


def test_the_source_has_no_unpickling():
    offenders = []
    for path in (ROOT / "src").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if (re.search(r"^\s*(import|from)\s+(pickle|_pickle|cPickle|dill|joblib)\b|\bpickle\.(load|loads|Unpickler)"
                          r"|\b(dill|joblib)\.load", code) or "allow_pickle=True" in code
                    or ("torch.load(" in code and "weights_only=True" not in code)):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.process
def test_saved_state_is_json_and_safetensors_only(tmp_path, straight_run):
    _, straight = straight_run
    names = {p.name for p in (straight / "state").iterdir()}
    assert names == {"progress.json", "progress.safetensors", "edited_parameters.safetensors"}
    assert json.loads((straight / "state" / "progress.json").read_text())["position"] == 6


# -- 2. a kill or a failure never strands a folder ------------------------------------------------------
@pytest.mark.process
def test_killed_before_the_first_save_resumes_from_step_0(tmp_path, stats_dir, straight_run):
    common, straight = straight_run
    folder = tmp_path / "early"
    args = [a if a != 2 else 100 for a in common]  # no save before the end
    victim = subprocess.Popen(cli(*args, "--out", folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: (folder / "config.yaml").is_file())
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (folder / "state").exists()
    out = run_cli("lifelong", "--out", folder, "--resume")
    assert out.returncode == 0, out.stderr
    # Same edits and checkpoints; the save interval differs only in the stored options.
    ref, got = json.loads(summary(straight)), json.loads(summary(folder))
    assert got == ref


@pytest.mark.parametrize("break_it", ["layers", "long_target"])
def test_a_run_that_fails_before_its_first_edit_leaves_no_folder(tmp_path, tiny_gpt2, stats_dir, break_it):
    model, tok = tiny_gpt2
    before = snapshot(model)
    if break_it == "layers":
        hp, data, error = tiny_hparams(stats_dir, tmp_path, layers="[999]"), ZSRE, "layer 999 does not exist"
    else:
        records = json.loads(ZSRE.read_text())[:3]
        records[1]["alt"] = " ".join(["word"] * 20000)
        data = tmp_path / "long.json"
        data.write_text(json.dumps(records))
        hp, error = tiny_hparams(stats_dir, tmp_path), r"record 1 .* context length of 256 tokens"
    with pytest.raises(ValueError, match=error):
        run_lifelong(hp, data, tmp_path / "run", model=model, tok=tok, options=RunOptions(num_edits=3),
                     progress_bar=False)
    assert not (tmp_path / "run").exists()
    assert changed_parameters(model, before) == []


@pytest.mark.process
@pytest.mark.parametrize("kill_at_rename", [1, 2])
def test_a_kill_between_the_renames_of_a_save_resumes(tmp_path, stats_dir, straight_run, kill_at_rename):
    """SIGKILL at the first or second rename of the second save (state -> .state.old, temp -> state)."""
    common, straight = straight_run
    folder = tmp_path / "swap"
    script = f"""
import os, signal, sys
from pathlib import Path
from edit_plugins.lifelong import state
renames = []
original = Path.rename
def rename(self, target):
    if self.name.startswith(".state.") or self.name == "state":
        renames.append(self.name)
        if len(renames) == 1 + {kill_at_rename}:  # the first save makes one rename
            os.kill(os.getpid(), signal.SIGKILL)
    return original(self, target)
Path.rename = rename
from edit_plugins.cli import main
sys.argv = ["edit-plugins"] + {[str(a) for a in common] + ["--out", str(folder)]!r}
main()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr
    leftovers = {p.name.split(".")[1] for p in folder.iterdir() if p.name.startswith(".state")}
    assert leftovers  # a temporary or old state is what remains to recover from
    (folder / ".edits.jsonl.stale123.tmp").write_text("half")
    (folder / ".checkpoints.jsonl.abc").write_text("half")
    out = run_cli("lifelong", "--out", folder, "--resume")
    assert out.returncode == 0, out.stderr
    assert summary(folder) == summary(straight)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".edit-plugins-run", ".lock"]


# -- 3. one run per folder --------------------------------------------------------------------------------
@pytest.mark.process
def test_a_second_run_or_resume_into_a_busy_folder_is_refused(tmp_path, stats_dir):
    hp = tiny_hparams(stats_dir, tmp_path)
    folder = tmp_path / "busy"
    first = subprocess.Popen(cli("lifelong", "--hparams", hp, "--data", ZSRE, "--num-edits", 200, "--save-every", 1,
                                 "--quiet", "--out", folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: (folder / ".lock").is_file())
        second = run_cli("lifelong", "--hparams", hp, "--data", ZSRE, "--num-edits", 2, "--out", folder)
        assert second.returncode == 2 and "another process" in second.stderr, second.stderr
        assert wait_for(lambda: (folder / "config.yaml").is_file())
        resumed = run_cli("lifelong", "--out", folder, "--resume")
        assert resumed.returncode == 2 and "another process" in resumed.stderr, resumed.stderr
    finally:
        first.kill()
        first.wait()
    config = (folder / "config.yaml").read_text()
    assert "num_edits: 200" in config  # the first run's own settings, not the refused one's


def test_the_lock_is_per_folder_and_released(tmp_path):
    folder = RunFolder.create(tmp_path / "a")
    with pytest.raises(RunFolderError, match="another process"):
        RunFolder.open_existing(tmp_path / "a")
    folder.release()
    RunFolder.open_existing(tmp_path / "a").release()


# -- 4. every field checked, with its type, before anything is edited ------------------------------------
def _changed_copy(source, tmp_path, change):
    records = json.loads(source.read_text())[:3]
    change(records)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def _zsre(tmp_path, change):
    return _changed_copy(ZSRE, tmp_path, change)


def _counterfact(tmp_path, change):
    return _changed_copy(CF_EASYEDIT, tmp_path, change)


BAD_DATA = {
    "numeric ground_truth": (_counterfact, lambda r: r[1].update(ground_truth=7), r"record 1: field 'ground_truth'"),
    "numeric locality_ground_truth": (_counterfact, lambda r: r[1].update(locality_ground_truth=3.5),
                                      r"record 1: field 'locality_ground_truth' must be a non-empty string"),
    "numeric loc_ans": (_zsre, lambda r: r[2].update(loc_ans=12), r"record 2: field 'loc_ans' must be a string or"),
    "list of numbers as rephrase_prompt": (_counterfact, lambda r: r[0].update(rephrase_prompt=[1, 2]),
                                           r"record 0: field 'rephrase_prompt' must be a string or a list of strings"),
    "dict case_id": (_zsre, lambda r: r[1].update(case_id={"a": 1}), r"record 1: field 'case_id' must be an integer"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_a_record_with_a_wrong_field_type_is_refused_before_any_edit(tmp_path, tiny_gpt2, stats_dir, name):
    make, change, message = BAD_DATA[name]
    model, tok = tiny_gpt2
    before = snapshot(model)
    with pytest.raises(DataError, match=message):
        run_lifelong(tiny_hparams(stats_dir, tmp_path), make(tmp_path, change), tmp_path / "run", model=model,
                     tok=tok, progress_bar=False)
    assert changed_parameters(model, before) == [] and not (tmp_path / "run").exists()


def test_a_list_of_rephrase_prompts_is_read_as_such(tmp_path):
    from edit_plugins.lifelong.data import load_records

    path = _counterfact(tmp_path, lambda r: r[0].update(rephrase_prompt=["One way to ask", "Another way"]))
    assert load_records(path)[0].rephrase_prompts == ["One way to ask", "Another way"]


@pytest.mark.parametrize("content, message", [
    (b"[1, 2, 3]", r"record 0: expected a JSON object, got int"),
    ('[{"src": "Caf\u00e9 {x} is in", "alt": "Rome", "subject": "Caf\u00e9"}]'.encode("latin-1"), "not UTF-8 text"),
    (b"{}", "expected a non-empty JSON list of records"),
])
def test_a_malformed_file_is_refused_with_its_reason(tmp_path, content, message):
    from edit_plugins.lifelong.data import load_records

    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_records(path)


def test_braces_in_a_prompt_are_literal_text(tmp_path, tiny_gpt2, stats_dir):
    records = json.loads(ZSRE.read_text())[:2]
    for r in records:
        r["src"] = "{key} and { " + r["src"]
        r["rephrase"] = "{0} " + r["rephrase"]
    data = tmp_path / "braces.json"
    data.write_text(json.dumps(records))
    model, tok = tiny_gpt2
    before = snapshot(model)
    try:
        result = run_lifelong(tiny_hparams(stats_dir, tmp_path), data, tmp_path / "run", model=model, tok=tok,
                              options=RunOptions(save_every=1), progress_bar=False)
    finally:
        from conftest import restore

        restore(model, before)
    assert result["complete"] and result["edits_done"] == 2


# -- 5. no silent wrong results ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan"])
def test_a_non_finite_hparam_is_refused(tmp_path, stats_dir, value):
    with pytest.raises(HparamsError, match="field 'kl_factor' must be a finite number"):
        load_hparams(tiny_hparams(stats_dir, tmp_path, kl_factor=value))


def test_a_non_finite_update_writes_no_weight():
    import torch

    from edit_plugins.editing.rank_one import NonFiniteError, rank_one_update

    W = torch.randn(4, 3)
    with pytest.raises(NonFiniteError, match="v\\*"):
        rank_one_update(W, torch.ones(3), torch.full((4,), float("nan")), None)
    with pytest.raises(NonFiniteError, match="ΔW"):
        rank_one_update(W, torch.zeros(3), torch.ones(4), None)  # kᵀu = 0


CLI_ERRORS = {
    "negative num-edits": (["--num-edits", "-1"], "--num-edits"),
    "zero num-edits": (["--num-edits", "0"], "--num-edits"),
    "negative start": (["--start", "-1"], "--start"),
    "start past the end": (["--start", "100000"], "past the end"),
    "checkpoints abc": (["--checkpoints", "abc"], "--checkpoints"),
    "unknown diagnostic": (["--diagnostics", "bogus"], "known: ['interference']"),
}


@pytest.mark.parametrize("name", sorted(CLI_ERRORS))
def test_bad_lifelong_arguments_are_one_clear_line(tmp_path, stats_dir, name):
    extra, message = CLI_ERRORS[name]
    args = ["lifelong", "--hparams", str(tiny_hparams(stats_dir, tmp_path)), "--data", str(ZSRE),
            "--out", str(tmp_path / "run"), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_resume_refuses_settings_it_would_ignore(tmp_path, stats_dir):
    result = CliRunner().invoke(main, ["lifelong", "--out", str(tmp_path), "--resume", "--num-edits", "5",
                                       "--hparams", str(tiny_hparams(stats_dir, tmp_path))])
    assert result.exit_code == 2 and "drop --hparams, --num-edits" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--damping", "-1"], "--damping"), (["--num-facts", "0"], "--num-facts"),
    (["--mom2-n-samples", "0"], "--mom2-n-samples"), (["--layers", "abc"], "--layers"),
])
def test_bad_superposition_arguments_are_one_clear_line(tmp_path, extra, message):
    result = CliRunner().invoke(main, ["superposition", "--model", "tiny-gpt2", "--data", str(ZSRE),
                                       "--out", str(tmp_path / "sp"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output


def test_superposition_data_that_is_not_a_list_is_a_clear_error(tmp_path):
    data = tmp_path / "empty.json"
    data.write_text("{}")
    result = CliRunner().invoke(main, ["superposition", "--model", "tiny-gpt2", "--data", str(data),
                                       "--out", str(tmp_path / "sp")])
    assert result.exit_code == 2 and "expected a JSON list of facts" in result.output, result.output


@pytest.mark.process
def test_a_run_folder_resumes_from_another_directory(tmp_path, stats_dir, straight_run):
    common, straight = straight_run
    start_dir, other_dir = tmp_path / "here", tmp_path / "elsewhere"
    start_dir.mkdir()
    other_dir.mkdir()
    hp = tiny_hparams(stats_dir, tmp_path)
    (start_dir / "h.yaml").write_text(hp.read_text())
    (start_dir / "d.json").write_text(ZSRE.read_text())
    args = ["lifelong", "--hparams", "h.yaml", "--data", "d.json", "--num-edits", 6, "--save-every", 2, "--quiet"]
    victim = subprocess.Popen(cli(*args, "--out", "run"), cwd=start_dir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert wait_for(lambda: (start_dir / "run" / "state" / "progress.json").is_file())
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (start_dir / "h.yaml").unlink()  # the folder carries its resolved hparams
    out = run_cli("lifelong", "--out", start_dir / "run", "--resume", cwd=other_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(summary(start_dir / "run")) == json.loads(summary(straight))


# -- 6 and 7: one line for a user error; no network unless asked ------------------------------------------
@pytest.mark.process
def test_a_user_error_is_one_line_without_traceback_and_debug_shows_it(tmp_path, stats_dir):
    hp = tiny_hparams(stats_dir, tmp_path, kl_factor=".nan")
    out = run_cli("edit", "--hparams", hp, "--prompt", "The capital of France is", "--subject", "France",
                  "--target", "Rome")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"Error: {hp}: field 'kl_factor' must be a finite number, got nan"]
    debug = run_cli("--debug", "edit", "--hparams", hp, "--prompt", "The capital of France is", "--subject",
                    "France", "--target", "Rome")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.process
def test_a_hub_name_fails_at_once_without_network_unless_allowed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("EDIT_PLUGINS_ALLOW_DOWNLOAD", "HF_HUB_OFFLINE")}
    started = time.time()
    out = subprocess.run(cli("superposition", "--model", "no-such-org/no-such-model", "--data", ZSRE,
                             "--out", tmp_path / "sp"), capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "EDIT_PLUGINS_ALLOW_DOWNLOAD=1" in out.stderr, out.stderr
    assert time.time() - started < 60


def test_an_old_pickled_folder_is_refused_by_the_library_too(tmp_path):
    from edit_plugins.lifelong.state import recover_state

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "progress.pkl").write_bytes(b"not even read")
    with pytest.raises(StateError, match="never loaded"):
        recover_state(tmp_path)


def test_a_method_state_saved_under_its_former_name_still_loads(tmp_path):
    """Run folders written before the method's state file was renamed (adaptor.safetensors) resume."""
    import torch

    from edit_plugins.lifelong.state import LEGACY_METHOD_STATE, METHOD_STATE, STATE, load_state, save_state

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.5)
    expert = torch.arange(6.0).reshape(2, 3)
    save_state(tmp_path, model, ["weight"], {"position": 4}, method_state=({"expert": expert}, {"kind": "test"}))
    (tmp_path / STATE / METHOD_STATE).rename(tmp_path / STATE / LEGACY_METHOD_STATE)
    loaded = []
    fresh = torch.nn.Linear(3, 2)
    progress = load_state(tmp_path, fresh, load_method_state=lambda m, tensors, metadata: loaded.append((tensors, metadata)))
    assert progress["position"] == 4 and torch.equal(fresh.weight, model.weight)
    (tensors, metadata), = loaded
    assert torch.equal(tensors["expert"], expert) and metadata["kind"] == "test"


# -- 8. never delete what we did not write, never discard a saved state in silence ---------------------
def tree(folder: Path) -> dict:
    """Every file under ``folder`` (dotfiles too) with its bytes: what 'left exactly as it was' compares. The
    lock is left out: it holds the pid of the last process that held the folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


class Ran:
    """What ``in_process`` returns, named as subprocess.run's result is."""

    def __init__(self, result):
        self.returncode, self.stderr = result.exit_code, result.output


def in_process(*args) -> Ran:
    """The command line, run in this process: a command refused before any edit needs no process of its own."""
    return Ran(CliRunner().invoke(main, [str(a) for a in args]))


def one_error_line(stderr: str) -> bool:
    """The error is one line, and no traceback (model loading may print its progress bar before it)."""
    return len([line for line in stderr.splitlines() if line.startswith("Error:")]) == 1 and "Traceback" not in stderr


def copied_run(straight: Path, tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(straight, folder)
    return folder


def test_resume_into_a_folder_that_is_not_a_run_leaves_every_file_as_it_was(tmp_path):
    folder = tmp_path / "mine"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".env").write_text("SECRET=1\n")
    (folder / "config.yaml").write_text("model: mine\n")
    before = tree(folder)
    out = in_process("lifelong", "--out", folder, "--resume")
    assert out.returncode == 2 and "not an edit-plugins run folder" in out.stderr, out.stderr
    assert one_error_line(out.stderr)
    assert tree(folder) == before and sorted(p.name for p in folder.iterdir()) == [".env", ".git", "config.yaml"]


def test_a_refused_new_run_into_a_non_empty_folder_leaves_no_lock(tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty"):
        RunFolder.create(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


@pytest.mark.process
@pytest.mark.parametrize("progress, message", [
    ("{not json", "not readable JSON"),
    (lambda header: {**header, "position": "3"}, "'position' must be a whole number"),
    (lambda header: {**header, "position": 999}, "position 999 is past the run's 6 edits"),
])
def test_a_saved_state_that_no_save_could_write_is_refused_and_nothing_changes(tmp_path, straight_run, progress,
                                                                               message):
    _, straight = straight_run
    folder = copied_run(straight, tmp_path)
    path = folder / "state" / "progress.json"
    path.write_text(progress if isinstance(progress, str) else json.dumps(progress(json.loads(path.read_text()))))
    before = tree(folder)
    out = in_process("lifelong", "--out", folder, "--resume")
    assert out.returncode == 2 and message in out.stderr and str(path) in out.stderr, out.stderr
    assert one_error_line(out.stderr)
    assert tree(folder) == before  # nothing redone, summary.json and edits.jsonl as they were


def _retensor(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file(change(tensors), str(path))


@pytest.mark.process
@pytest.mark.parametrize("tamper, message", [
    ("truncated", "not a readable safetensors file"),
    ("wrong shape", "the model's is torch.float32"),
    ("missing layer", "is no parameter of this model"),
])
def test_tampered_saved_tensors_are_refused_naming_the_file(tmp_path, straight_run, tamper, message):
    import torch

    _, straight = straight_run
    folder = copied_run(straight, tmp_path)
    path = folder / "state" / "edited_parameters.safetensors"
    if tamper == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif tamper == "wrong shape":
        _retensor(path, lambda t: {name: torch.zeros(3, 3) for name in t})
    else:
        _retensor(path, lambda t: {**t, "transformer.h.99.mlp.c_proj.weight": next(iter(t.values())).clone()})
    before = tree(folder)
    out = in_process("lifelong", "--out", folder, "--resume")
    assert out.returncode == 2 and message in out.stderr and str(path) in out.stderr, out.stderr
    assert one_error_line(out.stderr)
    assert tree(folder) == before


@pytest.mark.process
def test_compare_keeps_a_folder_only_for_the_same_settings(tmp_path, stats_dir):
    hp = tiny_hparams(stats_dir, tmp_path)
    out = tmp_path / "cmp"
    first = ["compare", "--hparams", hp, "--data", ZSRE, "--num-edits", 2, "--checkpoints", "1,2", "--num-probes", 0,
             "--seed", 0, "--out", out]
    done = run_cli(*first)
    assert done.returncode == 0, done.stderr
    table = (out / "comparison.md").read_text()
    for changed, named in ((["--num-edits", 3], "options.num_edits"), (["--data", CF_EASYEDIT], "data.sha256"),
                           (["--seed", 1], "options.seed")):
        args = [a for a in first]
        at = args.index(changed[0])
        args[at + 1] = changed[1]
        again = in_process(*args)
        assert again.returncode == 2 and named in again.stderr and "--fresh" in again.stderr, again.stderr
        assert (out / "comparison.md").read_text() == table  # nothing ran, nothing was rewritten
    fresh = run_cli(*[a if a != 2 else 3 for a in first], "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads((out / "tiny" / "summary.json").read_text())["edits_done"] == 3


def _questions_read(record) -> int:
    """Every locality and portability question of a record: read (one per question, aliases apart) or counted
    as having no answer."""
    return (len(set(record.locality_questions or [])) + len(set(record.portability_questions or []))
            + record.unanswered_questions)


def _questions_in(raw: dict) -> int:
    return sum(len(v) for part in ("locality", "portability") for v in (raw.get(part) or {}).values()
               if isinstance(v, list))


@pytest.mark.parametrize("name", ["knowedit_zsre.json", "knowedit_wiki_counterfact.json", "knowedit_wiki_recent.json"])
def test_every_knowedit_file_reads_whole(name):
    from edit_plugins.lifelong.data import load_records

    raw = json.loads((SHARED_DATA / name).read_text())
    records = load_records(SHARED_DATA / name)
    assert len(records) == len(raw)
    assert [_questions_read(r) for r in records] == [_questions_in(r) for r in raw]
    if name == "knowedit_wiki_recent.json":  # new facts: no old answer, and alias lists for locality
        assert all(r.request.get("ground_truth") is None for r in records)
        aliased = [r for r in records if r.locality_questions and len(set(r.locality_questions)) < len(r.locality)]
        assert aliased


@pytest.mark.parametrize("name", ["knowedit_wiki_counterfact.json", "knowedit_wiki_recent.json"])
def test_a_knowedit_file_whose_first_record_has_no_locality_keeps_every_records_locality(tmp_path, name):
    from edit_plugins.lifelong.data import load_records

    raw = json.loads((SHARED_DATA / name).read_text())[:20]
    raw[0] = {k: v for k, v in raw[0].items() if k not in ("locality", "portability")}
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    records = load_records(path)
    assert [_questions_read(r) for r in records] == [_questions_in(r) for r in raw]
    assert records[0].locality == [] and any(r.locality for r in records[1:])


def test_a_records_missing_parts_are_counted_in_the_run_summary(tmp_path, tiny_gpt2, stats_dir):
    model, tok = tiny_gpt2
    records_file = tmp_path / "recent.json"
    records_file.write_text(json.dumps(json.loads((SHARED_DATA / "knowedit_wiki_recent.json").read_text())[:3]))
    summary_ = run_lifelong(tiny_hparams(stats_dir, tmp_path), records_file, tmp_path / "run", model=model, tok=tok,
                            options=RunOptions(diagnostics=[]), progress_bar=False)
    assert summary_["records_without"]["ground_truth"] == 3 and summary_["records_without"]["rephrase"] == 3


def test_any_alias_of_an_answer_counts_as_correct(tiny_gpt2):
    from edit_plugins.lifelong.data import EditRecord
    from edit_plugins.lifelong.metrics import edit_metrics, per_question
    from edit_plugins.lifelong.scoring import Scorer, score_answers

    model, tok = tiny_gpt2
    prompt = "The capital city of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    predicted = tok.decode(model(ids).logits[0, -1].argmax()).strip()  # what the unedited model says next
    assert score_answers(model, tok, [(prompt, predicted)])[0].exact
    request = {"prompt": "Alice Walker lives in", "subject": "Alice Walker", "target_new": "Rome", "case_id": 0}
    aliases = EditRecord(0, request, portability=[(prompt, "Zzyzx Qwerty"), (prompt, predicted)],
                         portability_questions=[0, 0])
    first_only = EditRecord(0, request, portability=[(prompt, "Zzyzx Qwerty")])
    assert edit_metrics(Scorer(model, tok), aliases, [])["portability_acc"] == 1.0
    assert edit_metrics(Scorer(model, tok), first_only, [])["portability_acc"] < 1.0
    assert per_question([0.2, 0.9, 0.5], [0, 0, 1]) == [0.9, 0.5]


def test_a_data_file_nested_too_deep_is_one_line(tmp_path, stats_dir):
    data = tmp_path / "deep.json"
    data.write_text("[" * 200_000 + "]" * 200_000)
    out = in_process("lifelong", "--hparams", tiny_hparams(stats_dir, tmp_path), "--data", data, "--out", tmp_path / "run")
    assert out.returncode == 2 and "nested too deeply" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of our own (tests run as root here and in CI), unmounted afterwards."""
    mounted = []

    def mount(name, size="64m", options=""):
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.process
def test_a_read_only_folder_is_one_line(tmp_path, stats_dir, straight_run, tmpfs):
    import shutil

    common, straight = straight_run
    disk = tmpfs("ro")
    shutil.copytree(straight, disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    new = in_process(*common, "--out", disk / "other")
    assert new.returncode == 2 and "Read-only file system" in new.stderr and "Traceback" not in new.stderr, new.stderr
    resumed = in_process("lifelong", "--out", disk / "run", "--resume")
    assert resumed.returncode == 2 and "Read-only file system" in resumed.stderr, resumed.stderr
    assert tree(disk / "run") == tree(straight)


@pytest.mark.process
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_there_is_room(tmp_path, straight_run, tmpfs):
    common, straight = straight_run
    disk = tmpfs("full", size="64m")
    folder = disk / "run"
    args = [a if a != 2 else 1 for a in common]  # --save-every 1: a save after every edit
    victim = subprocess.Popen(cli(*args, "--out", folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    assert wait_for(lambda: (folder / "state" / "progress.json").is_file())
    filler = disk / "filler"
    with open(filler, "wb") as f:  # fill the disk while the run goes on
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    _, stderr = victim.communicate(timeout=300)
    assert victim.returncode == 2 and "No space left on device" in stderr and "Traceback" not in stderr, stderr
    position = json.loads((folder / "state" / "progress.json").read_text())["position"]
    assert 1 <= position < 6 and not (folder / "summary.json").exists()
    filler.unlink()
    resumed = run_cli("lifelong", "--out", folder, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(summary(folder)) == json.loads(summary(straight))


def test_stats_names_an_unknown_method_first(tmp_path):
    hp = tmp_path / "hp.yaml"
    hp.write_text("alg_name: NoSuchMethod\nmodel_name: tiny-gpt2\n")
    out = in_process("stats", "--hparams", hp)
    assert out.returncode == 2 and "field 'alg_name' is 'NoSuchMethod'" in out.stderr, out.stderr


def test_a_step_count_no_run_needs_is_refused_naming_the_field(tmp_path, stats_dir):
    with pytest.raises(HparamsError, match="v_num_grad_steps.*at most 10,000"):
        load_hparams(tiny_hparams(stats_dir, tmp_path, v_num_grad_steps="1000000000000"))
    lemoe = (HPARAMS / "LEMoE" / "tiny-gpt2.yaml").read_text()
    (tmp_path / "lemoe.yaml").write_text(re.sub(r"^steps:.*$", "steps: 1000000000000", lemoe, flags=re.M)
                                         if re.search(r"^steps:", lemoe, flags=re.M) else lemoe + "steps: 1000000000000\n")
    with pytest.raises(HparamsError, match="'steps'.*at most 10,000"):
        load_hparams(tmp_path / "lemoe.yaml")


@pytest.mark.process
def test_run_folder_files_get_the_users_umask(straight_run):
    _, straight = straight_run
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("config.yaml", "edits.jsonl", "summary.json", "state/progress.json"):
        assert (straight / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_two_records_with_one_case_id_are_refused(tmp_path, stats_dir):
    records = json.loads(CF_EASYEDIT.read_text())[:3]
    records[2]["case_id"] = records[0]["case_id"]
    data = tmp_path / "dup.json"
    data.write_text(json.dumps(records))
    result = CliRunner().invoke(main, ["lifelong", "--hparams", str(tiny_hparams(stats_dir, tmp_path)), "--data",
                                       str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "records 0 and 2 of the stream share case_id" in result.output, result.output
    assert not (tmp_path / "run").exists()
