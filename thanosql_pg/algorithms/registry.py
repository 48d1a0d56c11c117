"""Maps ThanoSQL algorithm names to families, option sets and builders.

This module is pure Python (no torch import) so that the preprocessor can
validate BUILD MODEL options without a database or an ML stack. The family
modules named in ``Family.module`` are imported lazily by the server.

Adding an algorithm to an existing family is one ``_register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thanosql_pg.errors import DataCorrupted, FeatureNotAvailable, InvalidOption

# Option value kinds. "str?" / "int?" accept None too.
KINDS = ("str", "str?", "int", "int?", "float", "bool", "any")

# Upper bounds of the options that size what a statement allocates. Every model
# runs inside a database backend, where running out of memory restarts every
# session of the cluster, so a value that can only exhaust the server is refused
# up front (22023) instead. The bounds stop absurd values, not every heavy one:
# memory still grows with batch_size x input size, within them.
MAX_EPOCHS = 10_000  # the longest recipes train for a few thousand; beyond is a typo or a denial of service
MAX_IMAGE_BATCH = 4096  # SimCLR's own largest batch; one batch of decoded images is already gigabytes there
MAX_INPUT_SIZE = 1024  # pixels per side: 21x the work of 224 for every image, the largest timm models use 800
MAX_EMBEDDING_DIM = 2000  # pgvector's largest dimension for an HNSW index, which CONVERT builds
MAX_TOP_K = 1_000_000  # rows SEARCH IMAGE returns; more is a full sort of the table (top_k=None says so)
# Wav2Vec2 runs a whole batch at once (training: padded to its longest clip, up
# to 60 s; inference: 20 s windows): the first convolution of wav2vec2-base
# alone outputs 130 MB per 20 s window, so far fewer clips than images fit in a
# batch. Fine-tuning recipes use 8-32 per device.
MAX_SPEECH_BATCH = 64
# batch_size x input_size^2 of one image batch: 2^28 pixels is a 3.2 GB float32
# input tensor (4096 images of 256 px, 256 of 1024 px), before any activation.
MAX_BATCH_PIXELS = 1 << 28


@dataclass(frozen=True)
class Option:
    name: str
    kind: str
    default: Any = None
    required: bool = False
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    maximum: int | None = None  # largest accepted value (int and float options)
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
        if base in ("int", "float") and self.maximum is not None and value > self.maximum:
            raise InvalidOption(
                f'option "{self.name}" must be at most {self.maximum}, got {value}',
                hint="The bound keeps one statement from exhausting the database server's memory or time.",
            )
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


def _epochs(default: int) -> Option:
    return _o("epochs", "int", default, aliases=("max_epochs",), maximum=MAX_EPOCHS)


_EPOCHS_3 = _epochs(3)
_DEVICE = _o("device", "str", "auto", choices=("auto", "cpu", "cuda"))
_OVERWRITE = _o("overwrite", "bool", False)
_RESULT = _o("result_col", "str", "predict_result")
_TABLE = _o("table_name", "str?", None)
_ON_ERROR = _o("on_error", "str", "fail", choices=("fail", "skip"))

_IMG = _o("image_col", "str", "image")
_LABEL = _o("label_col", "str", "label")
_BS16 = _o("batch_size", "int", 16, maximum=MAX_IMAGE_BATCH)


def _input_size(default: int) -> Option:
    return _o("input_size", "int", default, maximum=MAX_INPUT_SIZE)


_IMG_TRAIN = (
    _IMG, _LABEL, _BS16, _EPOCHS_3, _o("learning_rate", "float", 1e-4), _OVERWRITE,
    _input_size(224), _o("pretrained", "bool", True), _o("base_model", "str?", None),
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
_SPEECH_BS = _o("batch_size", "int", 16, maximum=MAX_SPEECH_BATCH)
_AUDIO_TRAIN = (
    _AUDIO, _TEXT, _SPEECH_BS, _epochs(5),
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
        "predict": (_AUDIO, _SPEECH_BS, _RESULT, _TABLE, _DEVICE, _ON_ERROR),
        "evaluate": (_AUDIO, _TEXT, _SPEECH_BS, _DEVICE, _ON_ERROR),
    },
)

_IMG_PATH = _o("image_col", "str", "image_path")
_BS256 = _o("batch_size", "int", 256, maximum=MAX_IMAGE_BATCH)
_EMB_TRAIN = (
    _IMG_PATH, _BS256, _epochs(5), _o("pretrained", "bool", False),
    _OVERWRITE, _o("backbone", "str", "resnet18"), _o("embedding_dim", "int", 128, maximum=MAX_EMBEDDING_DIM),
    _input_size(96), _o("temperature", "float", 0.5), _o("learning_rate", "float", 3e-4),
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
            _o("top_k", "int?", 1000, maximum=MAX_TOP_K),
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


def check_batch_pixels(batch_size: int, input_size: int) -> None:
    """Refuse an image batch whose input tensor alone would be over MAX_BATCH_PIXELS
    pixels (22023): checked for BUILD/FIT options, and by the image families for
    PREDICT/EVALUATE/CONVERT, whose input_size is the model's."""
    pixels = batch_size * input_size * input_size
    if pixels > MAX_BATCH_PIXELS:
        raise InvalidOption(
            f"batch_size {batch_size} at input_size {input_size} is {pixels} pixels per batch,"
            f" over the limit of {MAX_BATCH_PIXELS}",
            hint=f"Lower batch_size (at most {max(1, MAX_BATCH_PIXELS // (input_size * input_size))}"
            f" at input_size {input_size}) or input_size.",
        )


def check_stored(family: Family, model: str, options: dict[str, Any], names: tuple[str, ...]) -> None:
    """Check a stored model's options ``names`` against BUILD's bounds before they size
    anything: the catalog row is the owner's to edit, so it is input like any other."""
    spec = {o.name: o for o in family.options.get("build", ())}
    for key in names:
        try:
            spec[key].coerce(options.get(key))
        except InvalidOption as e:
            raise DataCorrupted(f'model "{model}" has an invalid stored option: {e.message}',
                                hint="BUILD the model again.") from None


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
        # a bound on two options together; the server checks it (the preprocessor
        # sees only the options written, and positions errors on one of them)
        if isinstance(out.get("batch_size"), int) and isinstance(out.get("input_size"), int):
            check_batch_pixels(out["batch_size"], out["input_size"])
    return out
