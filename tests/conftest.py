"""Tests come in three groups, by what they need: pure unit tests; ``model`` tests, which load a model in
this process (marked here from the fixtures they take); and ``process`` tests, which start edit-plugins in
other processes (the command line, kill-and-resume; marked where they are written). ``slow`` ones edit
SmolLM2. ``bash scripts/test.sh --quick`` runs all but process and slow ones, in the main environment."""
import json
import os
from pathlib import Path

import pytest

# Under pytest-xdist each worker has a core of its own: one thread in it, and in the processes its tests start
# (they read this when they import torch). Two threads per worker on two cores would oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HPARAMS = ROOT / "hparams"

# Keep model/template/stat caches inside the checkout unless the caller chose a place.
os.environ.setdefault("EDIT_PLUGINS_CACHE", str(ROOT / ".cache" / "edit_plugins"))
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

MODEL_FIXTURES = {"smollm2", "tiny_gpt2", "_tiny_gpt2_as_loaded"}


# The SmolLM2 statistics the slow tests read (C of down_proj at layers 3-14 over 100 texts). With
# --smollm2-stats they are computed in one pass, on every core, before the workers start: tests computing
# them one layer set at a time, on one core each, cost about twice as long.
SMOLLM2_STATS_LAYERS = range(3, 15)
SMOLLM2_STATS_SAMPLES = 100


def pytest_addoption(parser):
    parser.addoption("--smollm2-stats", action="store_true",
                     help="compute the SmolLM2 statistics the slow tests read in one pass before they start")


def pytest_sessionstart(session):
    if not session.config.getoption("--smollm2-stats") or hasattr(session.config, "workerinput"):
        return
    from edit_plugins.editing.covariance import second_moments
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", "cpu")
    second_moments(model, tok, [f"model.layers.{i}.mlp.down_proj" for i in SMOLLM2_STATS_LAYERS],
                   n_samples=SMOLLM2_STATS_SAMPLES, stats_dir=Path(os.environ["EDIT_PLUGINS_CACHE"]) / "stats",
                   model_key="smollm2-135m")


def pytest_collection_modifyitems(items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)

EIFFEL = {"prompt": "The Eiffel Tower is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
          "ground_truth": "Paris"}


def shared_json(name):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests read ../shared/data beside the checkout")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def stats_dir():
    path = Path(os.environ["EDIT_PLUGINS_CACHE"]) / "stats"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@pytest.fixture(scope="session")
def smollm2():
    from edit_plugins.models import load_model

    return load_model("smollm2-135m", "cpu")


@pytest.fixture(scope="session")
def _tiny_gpt2_as_loaded():
    from edit_plugins.models import load_model

    model, tok = load_model("tiny-gpt2", "cpu")
    return model, tok, {"padding_side": tok.padding_side, "truncation_side": tok.truncation_side}


@pytest.fixture
def tiny_gpt2(_tiny_gpt2_as_loaded):
    """A model of its own for each test (tests edit it); the tokenizer, slow to load and only read, is shared,
    with the sides a test may set put back."""
    from copy import deepcopy

    model, tok, sides = _tiny_gpt2_as_loaded
    for name, value in sides.items():
        setattr(tok, name, value)
    return deepcopy(model), tok


def next_token(model, tok, prompt):
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        return tok.decode(model(**ids).logits[0, -1].argmax())


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_parameters(model, before):
    return sorted(n for n, p in model.named_parameters() if not torch.equal(p, before[n]))


def restore(model, weights):
    from edit_plugins.editing.layers import restore_weights

    restore_weights(model, weights)


def run_command_here(*args) -> None:
    """Run ``edit-plugins ARGS`` in this process and require success. A test's runs that are not killed go
    here: a second process would import torch, transformers and EasyEdit again (about 20 s for HEAD's)."""
    from click.testing import CliRunner

    from edit_plugins.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        import traceback

        raised = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"edit-plugins {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output[-3000:]}"
                    f"{raised[-3000:]}")


def kill_at_position(victim, progress, position: int, timeout: float = 300) -> None:
    """SIGKILL a running lifelong process once its saved state (``progress``) reaches ``position``."""
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and victim.poll() is None:
        try:
            if json.loads(progress.read_text())["position"] >= position:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
