"""hparams files: loading every shipped file, and errors that name the file, the field and the expectation."""
import pytest

from conftest import HPARAMS
from edit_plugins import hparams
from edit_plugins.hparams import HparamsError
from edit_plugins.methods.wilke import WilKEHyperParams


@pytest.mark.oldest_transformers
@pytest.mark.parametrize("path", sorted(HPARAMS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_file_loads_into_its_registered_class(path):
    hp = hparams.load(path)
    assert hp.alg_name == path.parent.name
    assert type(hp).__name__ == f"{path.parent.name}HyperParams"


def test_paper_values_in_the_gpt2_xl_file():
    hp = hparams.load(HPARAMS / "WilKE" / "gpt2-xl.yaml")
    assert hp.layers == list(range(24)) and hp.rewrite_module_tmp == "transformer.h.{}.mlp.c_proj"
    assert (hp.v_num_grad_steps, hp.v_lr, hp.v_weight_decay, hp.clamp_norm_factor, hp.kl_factor) == (20, 0.5, 0.5, 4, 0.0625)
    assert hp.fact_token == "subject_last" and hp.mom2_adjustment is True


def write(tmp_path, text):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    return path


GOOD = "alg_name: WilKE\nmodel_name: tiny-gpt2\nlayers: [0, 1]\nrewrite_module_tmp: transformer.h.{}.mlp.c_proj\n"


@pytest.mark.oldest_transformers
@pytest.mark.parametrize("text, expected", [
    ("alg_name: Nonesuch\nmodel_name: x\n", "field 'alg_name': unknown method 'Nonesuch'"),
    ("model_name: x\n", "missing required field 'alg_name'"),
    ("alg_name: WilKE\nmodel_name: tiny-gpt2\nlayers: [0]\n", "missing required field 'rewrite_module_tmp'"),
    (GOOD + "v_lr: fast\n", "field 'v_lr' must be a number, got 'fast'"),
    (GOOD.replace("[0, 1]", "three"), "field 'layers' must be a list of an integer, got 'three'"),
    (GOOD + "v_lrr: 0.5\n", "unknown field(s) ['v_lrr']"),
    (GOOD + "device: gpu\n", "field 'device' must be cpu, cuda, cuda:N, a GPU index N"),
    (GOOD + "device: -1\n", "field 'device' must be cpu, cuda, cuda:N, a GPU index N"),
    (GOOD + "device: true\n", "field 'device' must be an integer or a string, got True"),
    (GOOD.replace(".{}.", ".0."), "field 'rewrite_module_tmp' must contain '{}'"),
])
def test_errors_name_the_file_and_the_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(HparamsError) as error:
        hparams.load(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(HparamsError, match="nope.yaml: hparams file not found"):
        hparams.load(tmp_path / "nope.yaml")
    with pytest.raises(HparamsError, match="not valid YAML"):
        hparams.load(write(tmp_path, "alg_name: [WilKE\n"))


def test_scientific_notation_strings_become_numbers(tmp_path):
    hp = hparams.load(write(tmp_path, GOOD + "v_lr: 5e-1\n"))
    assert hp.v_lr == 0.5


def test_from_hparams_is_easyedits_constructor(tmp_path):
    hp = WilKEHyperParams.from_hparams(str(write(tmp_path, GOOD))[:-5])  # EasyEdit allows leaving off .yaml
    assert hp.layers == [0, 1]
    with pytest.raises(HparamsError, match="field 'alg_name' must be 'WilKE'"):
        WilKEHyperParams.from_dict({"alg_name": "ROME", "model_name": "x", "layers": [1], "rewrite_module_tmp": "{}"})


@pytest.mark.oldest_transformers
def test_embedded_alias_becomes_a_directory_that_easyedit_can_load(tmp_path):
    """EasyEdit's BaseEditor loads model_name itself with from_pretrained, which knows no aliases."""
    from pathlib import Path

    from edit_plugins.editing.covariance import stats_model_key
    from edit_plugins.models import embedded_alias

    hp = hparams.load(write(tmp_path, GOOD))
    folder = Path(hp.model_name)
    assert (folder / "config.json").is_file()
    assert "gpt" in folder.name  # BaseEditor picks the model class by a substring of model_name
    assert embedded_alias(hp.model_name) == "tiny-gpt2"
    assert stats_model_key(hp.model_name, None) == "tiny-gpt2"  # statistics cached under the alias are reused
    assert hparams.load(write(tmp_path, GOOD.replace("tiny-gpt2", "./hugging_cache/gpt2-xl"))).model_name == \
        "./hugging_cache/gpt2-xl"  # anything but an alias is kept as written


@pytest.mark.oldest_transformers
def test_device_takes_easyedits_gpu_index(tmp_path):
    assert hparams.load(write(tmp_path, GOOD + "device: 0\n")).device == 0
    assert hparams.load(write(tmp_path, GOOD + "device: cuda:1\n")).device == "cuda:1"
