"""EasyEdit-style hparams: YAML files with an ``alg_name``, validated into dataclasses."""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import yaml

from .easyedit_compat import hyperparams_base
from .errors import UserError


class HparamsError(UserError, ValueError):
    """A hparams file or dict is invalid; the message names the file and the field."""


# The most optimisation steps one edit may take. ROME's v* takes 20-25, LEMoE's expert up to 100; 10,000 is
# hours per edit on a 7B model, so more is a typo (1e12), and an edit that never ends would hold Ctrl-C too.
MAX_OPTIMISATION_STEPS = 10_000


def check_steps(value: int, field: str, source: str) -> None:
    if value > MAX_OPTIMISATION_STEPS:
        raise HparamsError(f"{source}: field {field!r} is {value} optimisation steps per edit; at most "
                           f"{MAX_OPTIMISATION_STEPS:,} (no edit needs more; ROME takes 20-25)")


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        return " or ".join(_type_name(a) for a in args) + (" (or null)" if nullable else "")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(annotation) or (typing.Any,)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


class _NotFinite(TypeError):
    pass


def _coerce(value, annotation):
    """Return value converted to annotation, or raise TypeError. Accepts YAML's '1e-3' strings."""
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (inner, *_) = typing.get_args(annotation) or (typing.Any,)
        return [_coerce(v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads 1e-3 as a string
            except ValueError:
                pass
        if number is None:
            raise TypeError
        if not math.isfinite(number):  # NaN or inf would end up in the weights
            raise _NotFinite
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError
    return value


@dataclasses.dataclass(kw_only=True)
class EditHyperParams(hyperparams_base()):
    """Fields every edit-plugins method has. Subclasses add their own."""

    alg_name: str
    # A local directory, a hub name, or an embedded alias (``smollm2-135m``, ``tiny-gpt2``). An alias is
    # replaced by the local directory it is built into, so that EasyEdit's BaseEditor can load it too.
    model_name: str
    device: typing.Union[int, str] = "auto"  # cpu | cuda | cuda:N | N (EasyEdit's GPU index) | auto
    model_parallel: bool = False
    max_length: int = 40  # EasyEdit's evaluation reads it (HEAD's compute_edit_quality)
    # Diagnostics to run after each edit in EasyEdit runs (lifelong mode turns interference on).
    diagnostics: typing.List[str] = dataclasses.field(default_factory=list)
    diagnostics_log: typing.Optional[str] = None

    # Subclasses set this to the alg_name they accept.
    ALG_NAME: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(cls, config: dict, source: str = "<dict>"):
        if not isinstance(config, dict):
            raise HparamsError(f"{source}: expected a mapping of hparams fields, got {type(config).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise HparamsError(
                f"{source}: unknown field(s) {unknown} for alg_name {cls.ALG_NAME!r}; "
                f"expected fields are {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        values = {}
        for name, field in fields.items():
            if name not in config:
                if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                    raise HparamsError(
                        f"{source}: missing required field {name!r} (expected {_type_name(hints[name])})"
                    )
                continue
            try:
                values[name] = _coerce(config[name], hints[name])
            except _NotFinite:
                raise HparamsError(f"{source}: field {name!r} must be a finite number, got {config[name]!r}") from None
            except TypeError:
                raise HparamsError(
                    f"{source}: field {name!r} must be {_type_name(hints[name])}, got {config[name]!r}"
                ) from None
        if cls.ALG_NAME and values.get("alg_name") != cls.ALG_NAME:
            raise HparamsError(
                f"{source}: field 'alg_name' must be {cls.ALG_NAME!r} for {cls.__name__}, "
                f"got {values.get('alg_name')!r}"
            )
        hparams = cls(**values)
        hparams.validate(source)
        hparams.model_name = loadable_model_name(hparams.model_name)
        return hparams

    @classmethod
    def from_hparams(cls, path):
        """EasyEdit's constructor name: read a YAML file (``.yaml`` may be left off)."""
        config, source = read_yaml(path)
        return cls.from_dict(config, source)

    def validate(self, source: str) -> None:
        """Cross-field checks; subclasses extend. Raise HparamsError naming source and field."""
        device = self.device
        if isinstance(device, bool) or not (
                (isinstance(device, int) and device >= 0) or device in ("cpu", "cuda", "auto")
                or (isinstance(device, str) and device.startswith("cuda:"))):
            raise HparamsError(f"{source}: field 'device' must be cpu, cuda, cuda:N, a GPU index N (as in "
                               f"EasyEdit's files) or auto, got {device!r}")

    def check_model(self, model) -> None:
        """Checks against the loaded model, before any edit (layers exist, ...); subclasses extend."""

    def edits_per_call(self) -> int:
        """How many requests a lifelong run hands the apply function at once (EasyEdit's batch_size)."""
        return getattr(self, "batch_size", None) or 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def loadable_model_name(name: str) -> str:
    """An embedded alias becomes the directory it is built into (once, then cached); anything else is kept.

    EasyEdit's BaseEditor loads ``model_name`` itself with ``from_pretrained``, which knows no aliases.
    Without the embedded model's wheel the alias stays, and loading the model names what to install.
    """
    from .models import ModelLoadError, is_embedded, materialize

    if not is_embedded(name):
        return name
    try:
        return str(materialize(name))
    except ModelLoadError:
        return name


def read_yaml(path) -> tuple[dict, str]:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".yaml")
    if not path.is_file():
        raise HparamsError(f"{path}: hparams file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise HparamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise HparamsError(f"{path}: expected a mapping of hparams fields")
    return config, str(path)


def from_dict(config: dict, source: str = "<dict>"):
    """An hparams mapping (as a run folder stores it) into the class registered for its ``alg_name``."""
    if not isinstance(config, dict) or not isinstance(config.get("alg_name"), str):
        raise HparamsError(f"{source}: expected a mapping with the field 'alg_name' (a method name)")
    method = _resolve(config["alg_name"], source)
    if not method.from_easyedit:
        return method.hparams_class.from_dict(config, source)
    return _with_loadable_model(method.hparams_class(**config))


def _resolve(alg_name: str, source: str):
    from .plugins import UnknownMethodError, resolve

    try:
        return resolve(alg_name)
    except UnknownMethodError as error:
        raise HparamsError(f"{source}: field 'alg_name': {error}") from None


def load(path):
    """Read an EasyEdit-style YAML file into the hparams class registered for its ``alg_name``.

    Works for edit-plugins methods and, where easyeditor is importable, for EasyEdit's own.
    """
    config, source = read_yaml(path)
    alg_name = config.get("alg_name")
    if not isinstance(alg_name, str):
        raise HparamsError(f"{source}: missing required field 'alg_name' (expected a method name)")
    method = _resolve(alg_name, source)
    if not method.from_easyedit:
        return method.hparams_class.from_dict(config, source)
    return _with_loadable_model(method.hparams_class.from_hparams(source))


def _with_loadable_model(hparams):
    """EasyEdit's own hparams: an embedded alias in model_name (and tokenizer_name) becomes its local directory,
    which EasyEdit can load, and whose name tells its model-family checks ("llama" in model_name) the family."""
    for field in ("model_name", "tokenizer_name"):
        if isinstance(getattr(hparams, field, None), str):
            setattr(hparams, field, loadable_model_name(getattr(hparams, field)))
    return hparams
