"""Maps ThanoSQL algorithm names to families, option sets and builders.

This module is pure Python (no torch import) so that the preprocessor can
validate BUILD MODEL options without a database or an ML stack. The family
modules named in ``Family.module`` are imported lazily by the server.

Adding an algorithm to an existing family is one ``_register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thanosql_pg.errors import FeatureNotAvailable, InvalidOption

# Option value kinds. "str?" / "int?" accept None too.
KINDS = ("str", "str?", "int", "int?", "float", "bool", "any")


@dataclass(frozen=True)
class Option:
    name: str
    kind: str
    default: Any = None
    required: bool = False
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    doc: str = ""

    def coerce(self, value: Any) -> Any:
        """Check ``value`` against this option's kind; return it normalized."""
        k = self.kind
        if value is None:
            if k.endswith("?") or k == "any" or (not self.required and self.default is None):
                return None
            raise InvalidOption(
                f'option "{self.name}" cannot be None',
                hint=f"Give {self.name} {_article(k)} {k.rstrip('?')} value, or leave it out.",
            )
        base = k.rstrip("?")
        ok: bool
        if base == "str":
            ok = isinstance(value, str)
        elif base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            if isinstance(value, float) and value.is_integer():
                value, ok = int(value), True
        elif base == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif base == "bool":
            ok = isinstance(value, bool)
        else:
            ok = True
        if not ok:
            raise InvalidOption(
                f'option "{self.name}" expects {_article(base)} {base} value, got {_describe(value)}',
                hint=f"Write {self.name}={_example(base)}.",
            )
        if self.choices and value.lower() not in self.choices:
            raise InvalidOption(
                f'option "{self.name}" must be one of {", ".join(self.choices)}; got {value!r}',
            )
        if self.choices:
            value = value.lower()
        if base in ("int", "float") and self.name in _POSITIVE and value <= 0:
            raise InvalidOption(f'option "{self.name}" must be positive, got {value}')
        return value


_POSITIVE = {"batch_size", "epochs", "learning_rate", "input_size", "top_k", "embedding_dim", "temperature"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _example(kind: str) -> str:
    return {"str": "'name'", "int": "8", "float": "0.001", "bool": "True"}.get(kind, "...")


STATEMENTS = ("build", "fit", "predict", "evaluate", "convert", "search")


@dataclass(frozen=True)
class Family:
    """An algorithm family: one module, one option set per statement."""

    name: str
    module: str  # imported by the server only
    options: dict[str, tuple[Option, ...]]  # statement -> options
    input_option: str  # the option naming the input column (image_col, ...)

    def option_set(self, statement: str) -> tuple[Option, ...]:
        opts = self.options.get(statement)
        if opts is None:
            raise FeatureNotAvailable(
                f"{statement.upper()} is not supported by {self.name} models",
                hint=f"{self.name} models support: "
                + ", ".join(s.upper() for s in self.options),
            )
        return opts


@dataclass(frozen=True)
class Algorithm:
    name: str  # canonical spelling, e.g. "ConvNeXt_Tiny"
    family: Family
    params: dict[str, Any] = field(default_factory=dict)  # family-specific, e.g. timm name
    available: bool = False  # False until its family module is implemented


def _o(name: str, kind: str, default: Any = None, **kw: Any) -> Option:
    return Option(name, kind, default, **kw)


_EPOCHS_3 = _o("epochs", "int", 3, aliases=("max_epochs",))
_DEVICE = _o("device", "str", "auto", choices=("auto", "cpu", "cuda"))
_OVERWRITE = _o("overwrite", "bool", False)
_RESULT = _o("result_col", "str", "predict_result")
_TABLE = _o("table_name", "str?", None)
_ON_ERROR = _o("on_error", "str", "fail", choices=("fail", "skip"))

_IMG = _o("image_col", "str", "image")
_LABEL = _o("label_col", "str", "label")
_BS16 = _o("batch_size", "int", 16)
_IMG_TRAIN = (
    _IMG, _LABEL, _BS16, _EPOCHS_3, _o("learning_rate", "float", 1e-4), _OVERWRITE,
    _o("input_size", "int", 224), _o("pretrained", "bool", True), _o("base_model", "str?", None),
    _DEVICE, _ON_ERROR,
)
IMAGE_CLASSIFICATION = Family(
    name="image_classification",
    module="thanosql_pg.algorithms.image_classification",
    input_option="image_col",
    options={
        "build": _IMG_TRAIN,
        "fit": _IMG_TRAIN,
        "predict": (_IMG, _BS16, _RESULT, _TABLE, _DEVICE, _ON_ERROR),
        "evaluate": (_IMG, _LABEL, _BS16, _DEVICE, _ON_ERROR),
    },
)

_AUDIO = _o("audio_col", "str", "audio_path")
_TEXT = _o("text_col", "str", "text")
_AUDIO_TRAIN = (
    _AUDIO, _TEXT, _BS16, _o("epochs", "int", 5, aliases=("max_epochs",)),
    _o("learning_rate", "float", 1e-4), _OVERWRITE, _o("pretrained", "bool", True),
    _o("base_model", "str?", None), _DEVICE, _ON_ERROR,
)
SPEECH_RECOGNITION = Family(
    name="speech_recognition",
    module="thanosql_pg.algorithms.speech_recognition",
    input_option="audio_col",
    options={
        "build": _AUDIO_TRAIN,
        "fit": _AUDIO_TRAIN,
        "predict": (_AUDIO, _BS16, _RESULT, _TABLE, _DEVICE, _ON_ERROR),
        "evaluate": (_AUDIO, _TEXT, _BS16, _DEVICE, _ON_ERROR),
    },
)

_IMG_PATH = _o("image_col", "str", "image_path")
_BS256 = _o("batch_size", "int", 256)
_EMB_TRAIN = (
    _IMG_PATH, _BS256, _o("epochs", "int", 5, aliases=("max_epochs",)), _o("pretrained", "bool", False),
    _OVERWRITE, _o("backbone", "str", "resnet18"), _o("embedding_dim", "int", 128),
    _o("input_size", "int", 96), _o("temperature", "float", 0.5), _o("learning_rate", "float", 3e-4),
    _o("base_model", "str?", None), _DEVICE,
)
IMAGE_EMBEDDING = Family(
    name="image_embedding",
    module="thanosql_pg.algorithms.simclr",
    input_option="image_col",
    options={
        "build": _EMB_TRAIN,
        "fit": _EMB_TRAIN,
        "convert": (
            _IMG_PATH, _o("result_col", "str", "convert_result"), _BS256, _TABLE,
            _o("create_index", "bool", True), _DEVICE,
        ),
        "search": (
            _o("search_by", "str", None, required=True, choices=("image", "text", "audio", "video")),
            _o("search_input", "any", None, required=True),
            _o("emb_col", "str", None, required=True),
            _o("result_col", "str", "search_result"),
            _o("top_k", "int?", 1000),
            _DEVICE,
        ),
    },
)

FAMILIES: dict[str, Family] = {
    f.name: f for f in (IMAGE_CLASSIFICATION, SPEECH_RECOGNITION, IMAGE_EMBEDDING)
}

ALGORITHMS: dict[str, Algorithm] = {}


def _register(name: str, family: Family, **params: Any) -> None:
    ALGORITHMS[name.lower()] = Algorithm(name, family, params)


_register("ConvNeXt_Tiny", IMAGE_CLASSIFICATION, timm_name="convnext_tiny")
_register("ConvNeXt_Base", IMAGE_CLASSIFICATION, timm_name="convnext_base")
_register("EfficientNetV2S", IMAGE_CLASSIFICATION, timm_name="tf_efficientnetv2_s")
_register("EfficientNetV2M", IMAGE_CLASSIFICATION, timm_name="tf_efficientnetv2_m")
_register("Wav2Vec2En", SPEECH_RECOGNITION, hub_id="facebook/wav2vec2-base-960h", language="en")
_register("Wav2Vec2Ko", SPEECH_RECOGNITION, hub_id="kresnik/wav2vec2-large-xlsr-korean", language="ko")
_register("SimCLR", IMAGE_EMBEDDING)

# Families whose module is implemented. An algorithm of any other family gets
# FeatureNotAvailable: never a fake result.
IMPLEMENTED_FAMILIES: set[str] = {"image_classification", "speech_recognition", "image_embedding"}


def lookup(name: str) -> Algorithm:
    """Find an algorithm by name, case-insensitively."""
    algo = ALGORITHMS.get(name.lower())
    if algo is None:
        raise InvalidOption(
            f'unknown algorithm "{name}"',
            hint="Available algorithms: " + ", ".join(a.name for a in ALGORITHMS.values()),
            sqlstate="42704",
        )
    return algo


def is_available(algo: Algorithm) -> bool:
    return algo.family.name in IMPLEMENTED_FAMILIES


def require_available(algo: Algorithm) -> None:
    if not is_available(algo):
        raise FeatureNotAvailable(
            f"algorithm {algo.name} is not available in this version of thanosql_pg",
            hint="Available now: "
            + (", ".join(a.name for a in ALGORITHMS.values() if is_available(a)) or "none yet"),
        )


def options_for(statement: str, family: Family | None = None) -> tuple[Option, ...]:
    """The option set of a statement for one family, or the union over families.

    PREDICT/EVALUATE/CONVERT/SEARCH name a model, not an algorithm, so the
    preprocessor checks them against the union and the server re-checks them
    against the model's own family.
    """
    if family is not None:
        return family.option_set(statement)
    seen: dict[str, Option] = {}
    for fam in FAMILIES.values():
        for opt in fam.options.get(statement, ()):
            seen.setdefault(opt.name, opt)
    return tuple(seen.values())


def normalize_options(
    statement: str, given: dict[str, Any], family: Family | None = None, *, fill_defaults: bool = False
) -> dict[str, Any]:
    """Validate option names and types; map aliases to canonical names.

    Raises InvalidOption naming the option, listing the valid ones for an
    unknown name. With ``fill_defaults`` the result holds every option.
    """
    spec = options_for(statement, family)
    by_name: dict[str, Option] = {}
    for opt in spec:
        by_name[opt.name] = opt
        for alias in opt.aliases:
            by_name[alias] = opt
    out: dict[str, Any] = {}
    for key, value in given.items():
        opt = by_name.get(key.lower())
        if opt is None:
            where = f"{family.name} " if family else ""
            raise InvalidOption(
                f'unknown option "{key}" for {where}{statement.upper()}',
                hint="Valid options: " + ", ".join(sorted(by_name)),
            )
        if opt.name in out:
            raise InvalidOption(f'option "{opt.name}" is given more than once')
        out[opt.name] = opt.coerce(value)
    if fill_defaults:
        for opt in spec:
            if opt.name not in out:
                if opt.required:
                    raise InvalidOption(
                        f'option "{opt.name}" is required for {statement.upper()}',
                        hint=f"Add {opt.name}=... to OPTIONS.",
                    )
                out[opt.name] = opt.default
    return out
