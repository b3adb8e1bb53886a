"""Our calls into transformers work under the installed version's names and trigger none of its
deprecation messages (5.24 renamed the KV-cache keyword; the old name goes at 5.40)."""
import os
import subprocess
import sys

import pytest
import torch

from edit_plugins import transformers_compat as tc

SCRIPT = r"""
import warnings
warnings.simplefilter("always")
import torch
from edit_plugins import easyedit_compat, hparams
from edit_plugins.lifelong.scoring import generated_answers, score_answers
from edit_plugins.models import load_model
from edit_plugins.plugins import get_method

model, tok = load_model("tiny-gpt2", "cpu")
# A multi-token subject mid-prompt: WilKE's value optimisation runs the suffix after a cached prefix.
wilke = hparams.load("hparams/WilKE/tiny-gpt2.yaml")
wilke.stats_dir = STATS_DIR
request = {"prompt": "The Eiffel Tower is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome"}
get_method("WilKE").apply(model, tok, [request], wilke, **easyedit_compat.sequential_apply_kwargs())
lemoe = hparams.load("hparams/LEMoE/tiny-gpt2.yaml")
_, restore = get_method("LEMoE").apply(model, tok, [dict(request, case_id=0)], lemoe,
                                       **easyedit_compat.sequential_apply_kwargs())
ids = tok(request["prompt"], return_tensors="pt")
model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
generated_answers(model, tok, [(request["prompt"], "Rome")])
score_answers(model, tok, [(request["prompt"], "Rome")])
print("ran")
"""


@pytest.mark.process
@pytest.mark.oldest_transformers
def test_our_calls_trigger_no_transformers_deprecation_message(stats_dir):
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "info", "PYTHONWARNINGS": "always"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace("STATS_DIR", repr(stats_dir))], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ran" in out.stdout, out.stderr[-3000:]
    # transformers' messages: its logger's lines, and warnings raised in its files (not the source line a
    # warning echoes, nor other packages' warnings, such as torch.jit's or timm's under easyeditor 0.0.1.dev0)
    lines = [line for line in out.stderr.splitlines() if "deprecat" in line.lower() and not line[:1].isspace()
             and ("site-packages/" not in line or "/transformers/" in line)]
    assert lines == [], "\n".join(lines)


@pytest.mark.oldest_transformers
def test_the_cache_is_found_under_either_keyword_and_its_length_read():
    from transformers import DynamicCache

    cache = DynamicCache()
    assert tc.cached_length(tc.cache_in_call({"cache": cache})) == 0
    legacy = ((torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4)),)
    assert tc.cached_length(tc.cache_in_call({"past_key_values": legacy})) == 5
    assert tc.cached_length(tc.cache_in_call({"layer_past": legacy, "attention_mask": None})) == 5
    assert tc.cache_in_call({"attention_mask": torch.ones(1, 3)}) is None
    assert tc.cached_length(None) == 0
