"""The family registry: algorithm names → families, and the options of every statement.

Pure Python (no torch import) so that the preprocessor validates options without
a database or an ML stack. A family is a package (``thanosql_pg/algorithms/<family>/``,
or a plug-in: see ``thanosql_pg.algorithms``) whose ``__init__`` builds a ``Family``
spec and calls ``register``; the server imports the spec's ``model`` module, which
implements ``contract.FamilyModule``, only when it runs a model.

Options come in two layers. ``STATEMENT_OPTIONS`` belong to a statement's shape
(where PREDICT writes its result, what SEARCH IMAGE searches with): the same for
every family, and the preprocessor and server may name them. Everything else is
the family's (``Family.options``), with its own defaults; the server learns what
they mean from the spec: which name the input and target columns
(``Family.columns``), what FIT keeps from the base model (``Family.carry_over``),
what the family can embed and search by (``Family.modalities``). Every family's
option sets also follow a few conventions the server relies on: ``device``
everywhere, ``overwrite`` and ``epochs`` in BUILD/FIT, ``batch_size`` (rows per
model call) in PREDICT/EVALUATE/CONVERT, optionally ``on_error`` (the helpers below
make them).

Options reach the server and the families typed: ``normalize_options`` returns a
frozen ``Options`` object (the conventions above as typed attributes) of the
family's own subclass, which declares the family's extras as typed fields
(``Family.typed``). Registration checks the two against each other: an option
without a field, or a field without an option, is refused there; reading an
attribute that no field declares is refused by the type checker (mypy).

Adding an algorithm to a family is one line of its spec; adding a family is one
package and one registration.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from thanosql_pg.errors import (
    ConfigurationError,
    DataCorrupted,
    FeatureNotAvailable,
    InvalidOption,
    ThanoSQLError,
    UndefinedAlgorithm,
    WrongModelType,
)

# Option value kinds: real types (``object``: any value). An option that takes None too
# says ``nullable``.
KINDS: tuple[type, ...] = (str, int, float, bool, object)

# Upper bounds of the options that size what a statement allocates. Every model
# runs inside a database backend, where running out of memory restarts every
# session of the cluster, so a value that can only exhaust the server is refused
# up front (22023) instead. The bounds stop absurd values, not every heavy one.
MAX_EPOCHS = 10_000  # the longest recipes train for a few thousand; beyond is a typo or a denial of service
MAX_TOP_K = 1_000_000  # rows SEARCH IMAGE returns; more is a full sort of the table (top_k=None says so)


@dataclass(frozen=True)
class Option:
    name: str
    kind: type  # one of KINDS
    default: Any = None
    required: bool = False
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    maximum: float | None = None  # largest accepted value (int and float options)
    positive: bool = False  # numbers must be > 0
    doc: str = ""
    minimum: float | None = None  # smallest accepted value (int and float options)
    # the hint of an out-of-range error; the default one is for bounds on what a statement allocates
    range_hint: str = "The bound keeps one statement from exhausting the database server's memory or time."
    nullable: bool = False  # None is a value too

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigurationError(f'option "{self.name}" has kind {self.kind!r}, not one of'
                                     f" {', '.join(k.__name__ for k in KINDS)}")

    def coerce(self, value: Any) -> Any:
        """Check ``value`` against this option's kind; return it normalized."""
        k = self.kind
        name = k.__name__
        if value is None:
            if self.nullable or k is object or (not self.required and self.default is None):
                return None
            raise InvalidOption(
                f'option "{self.name}" cannot be None',
                hint=f"Give {self.name} {_article(name)} {name} value, or leave it out.",
            )
        ok: bool
        if k is str:
            ok = isinstance(value, str)
        elif k is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if isinstance(value, float) and value.is_integer():
                value, ok = int(value), True
        elif k is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif k is bool:
            ok = isinstance(value, bool)
        else:
            ok = True
        if not ok:
            raise InvalidOption(
                f'option "{self.name}" expects {_article(name)} {name} value, got {_describe(value)}',
                hint=f"Write {self.name}={_example(name)}.",
            )
        if self.choices and value.lower() not in self.choices:
            raise InvalidOption(
                f'option "{self.name}" must be one of {", ".join(self.choices)}; got {value!r}',
            )
        if self.choices:
            value = value.lower()
        if k in (int, float) and self.positive and value <= 0:
            raise InvalidOption(f'option "{self.name}" must be positive, got {value}')
        if k in (int, float) and self.minimum is not None and value < self.minimum:
            raise InvalidOption(f'option "{self.name}" must be at least {self.minimum}, got {value}',
                                hint=self.range_hint)
        if k in (int, float) and self.maximum is not None and value > self.maximum:
            raise InvalidOption(f'option "{self.name}" must be at most {self.maximum}, got {value}',
                                hint=self.range_hint)
        return value


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


# --- options every family spells the same way (the conventions above) ------------------------
def option(name: str, kind: type, default: Any = None, **kw: Any) -> Option:
    return Option(name, kind, default, **kw)


def epochs(default: int | None) -> Option:
    return option("epochs", int, default, aliases=("max_epochs",), maximum=MAX_EPOCHS, positive=True,
                  nullable=default is None)


def batch_size(default: int, maximum: int) -> Option:
    return option("batch_size", int, default, maximum=maximum, positive=True)


def learning_rate(default: float | None) -> Option:
    return option("learning_rate", float, default, positive=True, nullable=default is None)


DEVICE = option("device", str, "auto", choices=("auto", "cpu", "cuda"))
OVERWRITE = option("overwrite", bool, False)
# BUILD/FIT of a name another session is changing: wait for it instead of failing at once (55P03)
WAIT = option("wait", bool, False)
ON_ERROR = option("on_error", str, "fail", choices=("fail", "skip"))
PRETRAINED = option("pretrained", bool, True)
BASE_MODEL = option("base_model", str, None, nullable=True)
# CONVERT of an embedding family: an HNSW index on the result column
CREATE_INDEX = option("create_index", bool, True)

STATEMENTS = ("build", "fit", "predict", "evaluate", "convert", "search")

# What the shared training loop (shared/training.py) implements for every family that trains
# with it: a held-out validation part of the query's rows, scored every epoch, and early
# stopping on that score. Families add them to BUILD/FIT with ``training_options``.
MAX_VALIDATION_SPLIT = 0.5  # more held out than trained on is a mistake, not a recipe
_SPLIT_HINT = (f"validation_split is the share of the query's rows held out to validate each epoch:"
               f" 0 (none, the default) to {MAX_VALIDATION_SPLIT}.")
VALIDATION_SPLIT = option("validation_split", float, 0.0, minimum=0.0, maximum=MAX_VALIDATION_SPLIT,
                          range_hint=_SPLIT_HINT)
EARLY_STOPPING = option("early_stopping", bool, False)
PATIENCE = option("patience", int, 3, positive=True, maximum=MAX_EPOCHS)
VALIDATION = (VALIDATION_SPLIT, EARLY_STOPPING, PATIENCE)


# Data-parallel training (shared/distributed.py, server/distributed.py): the processes one
# BUILD/FIT trains with (thanosql.max_workers bounds it further), and how many of them join
# from other machines (thanosql worker --join).
MAX_WORKERS = 1024
WORKERS = option("workers", int, 1, positive=True, maximum=MAX_WORKERS)
REMOTE_WORKERS = option("remote_workers", int, 0, minimum=0, maximum=MAX_WORKERS - 1)


def training_options(*own: Option) -> tuple[Option, ...]:
    """BUILD/FIT's option set: the family's ``own`` plus ``VALIDATION`` and ``WORKERS``, which
    the shared training loop implements, and ``WAIT`` (one place declares them for every family)."""
    return (*own, *VALIDATION, WORKERS, REMOTE_WORKERS, WAIT)


def check_training(opts: Options) -> None:
    """The training options together (BUILD/FIT, all filled in): early stopping watches
    the validation score, so it needs a validation part."""
    if opts.early_stopping and not opts.validation_split:
        raise InvalidOption('option "early_stopping" needs option "validation_split" > 0',
                            hint="Early stopping watches the score on held-out rows: add validation_split=0.1"
                            " (say) to OPTIONS, or leave early_stopping out.")



@dataclass(frozen=True)
class Modality:
    """What SEARCH IMAGE's search_by names, and CONVERT may embed."""

    plural: str  # for messages: "SimCLR models embed images only"
    search_input: str  # what search_input holds to search by it


MODALITIES = {
    "image": Modality("images", "an image (a server path, or the image as bytea)"),
    "text": Modality("texts", "a text"),
    "audio": Modality("audio", "a recording (a server path, or the audio as bytea)"),
    "video": Modality("videos", "a video (a server path, or the video as bytea)"),
}

_TABLE = option("table_name", str, None, nullable=True)
# Run the statement as a background job (server/jobs.py): it returns (job_id, model, status)
# at once; PREDICT and CONVERT then write into table_name.
BACKGROUND = option("background", bool, False)
JOB_STATEMENTS = ("build", "fit", "predict", "evaluate", "convert")
STATEMENT_OPTIONS: dict[str, tuple[Option, ...]] = {
    "build": (BACKGROUND,),
    "fit": (BACKGROUND,),
    "evaluate": (BACKGROUND,),
    "predict": (option("result_col", str, "predict_result"), _TABLE, BACKGROUND),
    "convert": (option("result_col", str, "convert_result"), _TABLE, BACKGROUND),
    "search": (
        option("search_by", str, None, required=True, choices=tuple(MODALITIES)),
        option("search_input", object, None, required=True),
        option("emb_col", str, None, required=True),
        option("result_col", str, "search_result"),
        option("top_k", int, 1000, maximum=MAX_TOP_K, positive=True, nullable=True),
    ),
}


# --- EVALUATE's reports ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    """A form of EVALUATE's result (its option ``report``): the SQL function in schema
    thanosql that returns it, and its columns (name, SQL type), in order."""

    function: str
    columns: tuple[tuple[str, str], ...]
    doc: str = ""


# Every form any family may produce. The shapes are the same for every family (so each
# has one SQL function, which the preprocessor calls); which of them a family's models
# produce is its spec's: the choices of its EVALUATE option ``report`` (``report()``).
REPORTS: dict[str, Report] = {
    "summary": Report("evaluate", (("metric", "text"), ("score", "double precision")),
                      "one row per metric: accuracy and macro averages, WER and CER, precision@k"),
    "per_class": Report("evaluate_per_class", (
        ("class", "text"), ("precision", "double precision"), ("recall", "double precision"),
        ("f1", "double precision"), ("support", "bigint")),
        "precision, recall, F1 and support of each class, then their macro and weighted averages"),
    "confusion_matrix": Report("evaluate_confusion_matrix", (
        ("actual", "text"), ("predicted", "text"), ("count", "bigint")),
        "how many rows of each actual class got each predicted class (pairs that occur)"),
    "per_row": Report("evaluate_per_row", (
        ("row_number", "bigint"), ("input", "text"), ("reference", "text"), ("hypothesis", "text"),
        ("wer", "double precision"), ("cer", "double precision")),
        "each row's reference, hypothesis, WER and CER, the worst first"),
}


def report(*kinds: str) -> Option:
    """EVALUATE's option ``report``: 'summary' (the default: rows (metric, score)) or one
    of ``kinds``, the other forms of ``REPORTS`` the family's models produce."""
    unknown = [k for k in kinds if k not in REPORTS]
    if unknown:
        raise ConfigurationError(f"unknown EVALUATE report {', '.join(unknown)}",
                                 hint="Reports: " + ", ".join(REPORTS))
    return option("report", str, "summary", choices=("summary", *(k for k in kinds if k != "summary")))


def report_of(name: str | None) -> Report:
    """The report that EVALUATE's option ``report`` names ('summary' for None)."""
    return REPORTS[str(name or "summary").lower()]


# Retrieval scores (EVALUATE of an embedding family with a label column): precision@k, each
# row's k nearest other rows, as SEARCH IMAGE would rank them. k is bounded like SEARCH
# IMAGE's top_k, far lower: each row keeps its k best candidates while the rest are ranked.
MAX_RETRIEVAL_K = 1000


def retrieval_k(default: int = 5) -> Option:
    """EVALUATE's ``top_k`` for an embedding family: it reports Precision@1 and Precision@top_k."""
    return option("top_k", int, default, maximum=MAX_RETRIEVAL_K, positive=True)


# --- typed options --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Options:
    """One statement's options, validated and filled in: the conventions every family
    shares (typed attributes; a statement without such an option has its default here),
    and, in a family's subclass (``Family.typed``), the family's own options as typed
    fields. Server code reads the conventions; a family reads its subclass's fields.
    ``names`` are the options the statement declares (``declared`` gives their values:
    what BUILD stores, what an inline rewrite passes on)."""

    statement: str
    names: tuple[str, ...] = ()
    # every statement that runs a model
    device: str = "auto"
    batch_size: int = 1
    on_error: str = "fail"
    # BUILD/FIT
    epochs: int | None = None
    learning_rate: float | None = None
    overwrite: bool = False
    wait: bool = False
    pretrained: bool = False
    base_model: str | None = None
    validation_split: float = 0.0
    early_stopping: bool = False
    patience: int = 3
    workers: int = 1
    remote_workers: int = 0
    # EVALUATE; SEARCH IMAGE (top_k is also EVALUATE's retrieval k)
    report: str = "summary"
    top_k: int | None = None
    # CONVERT of an embedding family
    create_index: bool = False
    # the statements' shapes (STATEMENT_OPTIONS)
    result_col: str = ""
    table_name: str | None = None
    search_by: str | None = None
    search_input: object = None
    emb_col: str | None = None
    background: bool = False

    def declared(self) -> dict[str, Any]:
        """The statement's own options, by name."""
        return {name: getattr(self, name) for name in self.names}

    def value(self, name: str) -> Any:
        """The option ``name`` of this statement, for the option names a spec holds as data
        (which option names the input column, say)."""
        if name not in self.names:
            raise InvalidOption(f'{self.statement.upper()} has no option "{name}"')
        return getattr(self, name)


OptionsT = TypeVar("OptionsT", bound=Options)


def _convention_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(Options))


def _accepts(hint: Any, opt: Option) -> bool:
    """Whether a field annotated ``hint`` holds every value of ``opt``."""
    if hint is Any or hint is object:
        return True
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = typing.get_args(hint) if union else (hint,)
    nullable = opt.nullable or opt.kind is object or (not opt.required and opt.default is None)
    if nullable and type(None) not in members:
        return False
    return opt.kind in members or (opt.kind is int and float in members)


def _check_typed(family: Family) -> None:
    """The family's ``typed`` class and its declared options agree (at registration)."""
    typed = family.typed
    params = getattr(typed, "__dataclass_params__", None)  # dataclasses' record of how it was made
    if not (isinstance(typed, type) and issubclass(typed, Options) and dataclasses.is_dataclass(typed)
            and params is not None and params.frozen):
        raise ConfigurationError(f'family "{family.name}": typed must be a frozen dataclass subclass of'
                                 " registry.Options")
    hints = typing.get_type_hints(typed)
    fields = {f.name for f in dataclasses.fields(typed)}
    declared: dict[str, Option] = {}
    for statement, opts in family.options.items():
        for opt in (*STATEMENT_OPTIONS.get(statement, ()), *opts):
            if opt.name not in fields:
                raise ConfigurationError(
                    f'family "{family.name}" declares option "{opt.name}" ({statement.upper()}), which its'
                    f" options class {typed.__name__} has no field for",
                    hint=f"Add {opt.name}: {opt.kind.__name__} to {typed.__name__}.")
            if not _accepts(hints[opt.name], opt):
                raise ConfigurationError(
                    f'family "{family.name}": option "{opt.name}" ({statement.upper()}) takes'
                    f" {opt.kind.__name__}{' or None' if opt.nullable else ''} values, but"
                    f" {typed.__name__}.{opt.name} is {hints[opt.name]}")
            declared.setdefault(opt.name, opt)
    undeclared = sorted(fields - _convention_fields() - set(declared))
    if undeclared:
        raise ConfigurationError(f'family "{family.name}": {typed.__name__} has fields no option declares:'
                                 f" {', '.join(undeclared)}")


def _typed(family: Family, statement: str, values: dict[str, Any]) -> Options:
    """``family.typed`` holding ``values``; fields the statement has no option for take their
    class default, else the default of the family's option of that name elsewhere."""
    filled: dict[str, Any] = {"statement": statement, "names": tuple(values)}
    for f in dataclasses.fields(family.typed):
        if f.name in filled:
            continue
        if f.name in values:
            filled[f.name] = values[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            filled[f.name] = next(o.default for opts in family.options.values() for o in opts
                                  if o.name == f.name)
    return family.typed(**filled)


def stored(cls: type[OptionsT], family: Family, record_options: Mapping[str, Any],
           statement: str = "build", *, model: str = "") -> OptionsT:
    """A stored model's options (its catalog row's, which its owner can edit: input like
    any other) as ``cls``, each checked against the statement's option: a value that
    would fail BUILD is XX001 naming ``model``. Options the row lacks take the
    statement's defaults."""
    spec = {o.name: o for o in options_for(statement, family)}
    values: dict[str, Any] = {}
    for name, opt in spec.items():
        try:
            values[name] = opt.coerce(record_options[name]) if name in record_options else opt.default
        except InvalidOption as e:
            whose = f'model "{model}"' if model else "a stored model"
            raise DataCorrupted(f"{whose} has an invalid stored option: {e.message}",
                                hint="BUILD the model again.") from None
    typed = _typed(family, statement, values)
    if not isinstance(typed, cls):
        raise ConfigurationError(f"family {family.name}'s options are {type(typed).__name__},"
                                 f" not {cls.__name__}")
    return typed


# --- the spec of a family -----------------------------------------------------------------------
@dataclass(frozen=True)
class Columns:
    """The options naming a statement's columns: the input (an image, a recording, a
    text) and the target the model learns or is scored against (labels, transcripts),
    None for none; ``modality``: what the input holds, for CONVERT (``MODALITIES``)."""

    input: str
    target: str | None = None
    modality: str | None = None


# Columns per statement: fixed, or chosen from the statement's options (CONVERT of
# images or of texts, say).
ColumnRule = Columns | Callable[[Options], Columns]


@dataclass(frozen=True)
class Family:
    """An algorithm family's spec: everything the preprocessor and the server know of it."""

    name: str  # as stored in the catalog (thanosql.models.family)
    model: str | None  # the module implementing contract.FamilyModule; None: not implemented yet
    algorithms: Mapping[str, Mapping[str, Any]]  # algorithm name -> its parameters (the model reads them)
    options: Mapping[str, tuple[Option, ...]]  # statement -> the family's options (a statement it supports)
    columns: Mapping[str, ColumnRule] = field(default_factory=dict)  # statement -> its columns
    carry_over: tuple[str, ...] = ()  # FIT: options the model keeps from its base model unless given
    modalities: tuple[str, ...] = ()  # what CONVERT embeds and SEARCH IMAGE searches by
    # options checked together, all filled in: the same options (or others, replace()d)
    check: Callable[[Options], Options | None] | None = None
    typed: type[Options] = Options  # the options class: Options plus the family's own options as fields

    def supports(self, statement: str) -> bool:
        return statement in self.options

    def declared(self, statement: str) -> tuple[Option, ...]:
        """The family's own options of ``statement`` (none for a statement it does not support)."""
        return tuple(self.options.get(statement, ()))

    def statement_columns(self, statement: str, opts: Options) -> Columns:
        rule = self.columns.get(statement)
        if rule is None:
            raise FeatureNotAvailable(f"{statement.upper()} reads no columns of {self.name} models")
        return rule if isinstance(rule, Columns) else rule(opts)

    def column_options(self, statement: str, opts: Options) -> tuple[str, str | None]:
        """The names of the (input, target) column options of ``statement``."""
        cols = self.statement_columns(statement, opts)
        return cols.input, cols.target

    def column_names(self, statement: str, opts: Options) -> tuple[str, str | None]:
        """The (input, target) column names that ``opts`` give for ``statement``."""
        inp, target = self.column_options(statement, opts)
        return str(opts.value(inp)), (str(opts.value(target)) if target else None)

    def embeds(self, modality: str) -> bool:
        return modality in self.modalities


def supervised(input: Option, target: Option, batch: Option, training: tuple[Option, ...],
               reports: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` and ``columns`` of a family whose models learn a target column from an
    input column: BUILD/FIT take ``input``, ``target``, ``batch``, ``training`` and the shared
    loop's ``VALIDATION`` options; PREDICT
    gives the target of each input; EVALUATE scores the predictions against the target, as
    a summary or as one of ``reports`` (``REPORTS``)."""
    labelled = Columns(input.name, target.name)
    train = training_options(input, target, batch, *training)
    return {
        "options": {"build": train, "fit": train, "predict": (input, batch, DEVICE, ON_ERROR),
                    "evaluate": (input, target, batch, DEVICE, ON_ERROR, report(*reports))},
        "columns": {"build": labelled, "fit": labelled, "predict": Columns(input.name), "evaluate": labelled},
    }


@dataclass(frozen=True)
class Algorithm:
    name: str  # canonical spelling, e.g. "ConvNeXt_Tiny"
    family: Family
    params: Mapping[str, Any] = field(default_factory=dict)  # the family's, e.g. a timm name

    @property
    def available(self) -> bool:
        return self.family.model is not None


FAMILIES: dict[str, Family] = {}
ALGORITHMS: dict[str, Algorithm] = {}


def register(family: Family) -> Family:
    """Add a family and its algorithms (each spec package calls this once, on import).
    Registering the same spec again does nothing; another family under a taken family
    or algorithm name is refused."""
    known = FAMILIES.get(family.name)
    if known == family:
        return known
    if known is not None:
        raise ConfigurationError(f'two algorithm families are named "{family.name}"',
                                 hint="Give the plug-in family a name of its own.")
    for statement in family.options:
        if statement not in STATEMENTS:
            raise ConfigurationError(f'family "{family.name}" has options for an unknown statement'
                                     f' "{statement}"')
    fit = {o.name for o in family.declared("fit")}
    if not set(family.carry_over) <= fit:
        raise ConfigurationError(f'family "{family.name}" carries over options FIT does not take:'
                                 f' {", ".join(sorted(set(family.carry_over) - fit))}')
    for name in family.algorithms:
        taken = ALGORITHMS.get(name.lower())
        if taken is not None:
            raise ConfigurationError(f'algorithm "{name}" of family "{family.name}" is already one of'
                                     f' "{taken.family.name}"')
    _check_typed(family)
    FAMILIES[family.name] = family
    for name, params in family.algorithms.items():
        ALGORITHMS[name.lower()] = Algorithm(name, family, dict(params))
    return family


# One line on each option, by name, for thanosql.algorithms() (an option's own ``doc`` wins).
OPTION_DOCS = {
    "image_col": "the column holding the images: a server path (text) or the image itself (bytea)",
    "audio_col": "the column holding the recordings: a server path (text) or the audio itself (bytea)",
    "text_col": "the column holding the texts: transcripts (speech) or captions (CLIP)",
    "label_col": "the column holding the labels to learn or score against",
    "batch_size": "rows per step of the model (training) or per model call (PREDICT, EVALUATE, CONVERT)",
    "epochs": "passes over the rows (with early_stopping: at most)",
    "learning_rate": "the optimizer's peak learning rate",
    "overwrite": "replace a model of the same name (its current version is kept for rollback)",
    "wait": "wait for another session changing the same model instead of failing at once",
    "workers": "training processes (torch.distributed: gloo on the CPU, one per GPU with device='cuda');"
               " batch_size stays the global batch",
    "remote_workers": "how many of the workers join from other machines (thanosql worker --join)",
    "background": "run as a background job: returns (job_id, model, status) at once; see thanosql.jobs",
    "input_size": "pixels a side of the images the model sees",
    "pretrained": "start from published weights (else random initialisation)",
    "base_model": "start from another checkpoint: a timm or hub name, or a file or folder on the server",
    "device": "where the model runs: auto (the thanosql.device setting), cpu or cuda",
    "on_error": "fail on an unreadable row, or skip it (its result is NULL)",
    "class_weight": "'balanced' weighs each class's loss by how rare it is",
    "validation_split": "share of the rows held out to score each epoch (0: none)",
    "early_stopping": "stop when the validation score stops improving, keeping the best epoch",
    "patience": "epochs without improvement before early stopping stops",
    "report": "EVALUATE's result: summary, or one of the family's detailed reports",
    "top_k": "rows returned (SEARCH IMAGE), or the k of precision@k (EVALUATE)",
    "create_index": "build an HNSW index on the embedding column",
    "embedding_dim": "dimensions of the embeddings",
    "backbone": "the timm network that embeds the images",
    "temperature": "the contrastive loss's temperature",
    "convert_type": "what CONVERT embeds: images (image_col) or texts (text_col)",
    "result_col": "the name of the result column",
    "table_name": "write the rows and results to this table instead of returning them",
    "search_by": "what search_input is: an image or a text",
    "search_input": "the image or text to search by (or $1)",
    "emb_col": "the column holding the embeddings to search (CONVERT's result)",
}


def describe_option(opt: Option) -> dict[str, Any]:
    """An option as thanosql.algorithms() shows it."""
    out: dict[str, Any] = {"name": opt.name, "type": opt.kind.__name__ if opt.kind is not object else "any",
                           "default": opt.default, "required": opt.required,
                           "nullable": opt.nullable or opt.kind is object,
                           "description": opt.doc or OPTION_DOCS.get(opt.name, "")}
    for key, value in (("minimum", opt.minimum), ("maximum", opt.maximum)):
        if value is not None:
            out[key] = value
    if opt.positive:
        out["positive"] = True
    if opt.choices:
        out["choices"] = list(opt.choices)
    if opt.aliases:
        out["aliases"] = list(opt.aliases)
    return out


def algorithm_rows() -> list[tuple[str, str, dict[str, Any]]]:
    """(algorithm, task, options): every registered algorithm, its family, and for each
    statement it supports the options it takes (thanosql.algorithms())."""
    rows = []
    for algo in ALGORITHMS.values():
        options = {statement: [describe_option(o) for o in options_for(statement, algo.family)]
                   for statement in STATEMENTS if algo.family.supports(statement)}
        rows.append((algo.name, algo.family.name, options))
    return rows


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """'Did you mean "x"? ' for the closest of ``known`` to a misspelled ``word`` (case
    aside), or '' when none is close."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.75)
    return f'Did you mean "{by_lower[close[0]]}"? ' if close else ""


def lookup(name: str) -> Algorithm:
    """Find an algorithm by name, case-insensitively."""
    algo = ALGORITHMS.get(name.lower())
    if algo is None:
        names = [a.name for a in ALGORITHMS.values()]
        raise UndefinedAlgorithm(
            f'unknown algorithm "{name}"',
            hint=did_you_mean(name, names) + "Available algorithms: " + ", ".join(names),
        )
    return algo


def family(name: str) -> Family:
    """The family of a stored model (its catalog name)."""
    fam = FAMILIES.get(name)
    if fam is None:
        raise FeatureNotAvailable(
            f"{name} models are not available in this version of thanosql_pg",
            hint="A plug-in family must be installed where the server finds it (see thanosql_pg.algorithms).")
    return fam


def require_available(algo: Algorithm) -> None:
    if not algo.available:
        raise FeatureNotAvailable(
            f"algorithm {algo.name} is not available in this version of thanosql_pg",
            hint="Available now: "
            + (", ".join(a.name for a in ALGORITHMS.values() if a.available) or "none yet"),
        )


def embedding_algorithms(modality: str) -> list[str]:
    """The available algorithms whose models embed ``modality`` (SEARCH IMAGE's search_by)."""
    return [a.name for a in ALGORITHMS.values() if a.available and a.family.embeds(modality)]


def check_search_by(family: Family, model: str, algorithm: str, by: str) -> None:
    """Whether model ``model`` (of ``algorithm``, in ``family``) can search by ``by``:
    42809 when another algorithm could, 0A000 when none in this version can."""
    if family.embeds(by):
        return
    own = " and ".join(MODALITIES[m].plural for m in family.modalities) or "nothing"
    usable = "".join(f" Use search_by='{m}', with {MODALITIES[m].search_input} as search_input."
                     for m in family.modalities)
    able = embedding_algorithms(by)
    if not able:
        raise FeatureNotAvailable(f"no algorithm in this version searches by {by}",
                                  hint=f"{algorithm} models embed {own} only.{usable}")
    raise WrongModelType(f'model "{model}" ({algorithm}) cannot search by {by}',
                         hint=f"Algorithms that search by {by}: {', '.join(able)}. {algorithm} models"
                         f" embed {own} only.{usable}")


def options_for(statement: str, family: Family | None = None) -> tuple[Option, ...]:
    """The option set of a statement for one family, or the union over families.

    PREDICT/EVALUATE/CONVERT/SEARCH name a model, not an algorithm, so the
    preprocessor checks them against the union and the server re-checks them
    against the model's own family.
    """
    shape = STATEMENT_OPTIONS.get(statement, ())
    if family is not None:
        own = family.options.get(statement)
        if own is None:
            raise FeatureNotAvailable(
                f"{statement.upper()} is not supported by {family.name} models",
                hint=f"{family.name} models support: " + ", ".join(s.upper() for s in family.options),
            )
        return shape + own
    seen: dict[str, Option] = {o.name: o for o in shape}
    for fam in FAMILIES.values():
        for opt in fam.options.get(statement, ()):
            known = seen.setdefault(opt.name, opt)
            if known.choices and opt.choices and set(opt.choices) - set(known.choices):
                # one family's choices or another's (EVALUATE's report, say): the union
                seen[opt.name] = replace(known, choices=(*known.choices, *(c for c in opt.choices
                                                                             if c not in known.choices)))
    return tuple(seen.values())


def statement_default(statement: str, name: str) -> Any:
    """The default of option ``name`` of ``statement`` when no family is known (the
    preprocessor's: a statement-level option's, else the first family's)."""
    for opt in options_for(statement):
        if opt.name == name:
            return opt.default
    raise KeyError(name)


def rows_per_call(statement: str, written: Mapping[str, Any]) -> int:
    """Rows per call of ``thanosql.<statement>_batch`` in the PREDICT-shaped rewrite: the
    ``batch_size`` the statement's text gives (the convention every family follows), or
    its default when no family is known (the first family's)."""
    size = written.get(BATCH_SIZE)
    return int(size if size is not None else statement_default(statement, BATCH_SIZE))


BATCH_SIZE = "batch_size"  # the convention's name, for texts the preprocessor reads


def input_column(statement: str, given: Mapping[str, Any]) -> str | None:
    """The input column of a PREDICT-shaped statement when the written options decide it
    whatever the model's family: every family that supports ``statement`` and accepts
    these options reads the same column. None when they differ (the rewrite then finds
    the column at run time, from the model). Lets the rewrite pass only that column to
    the model instead of serializing whole rows."""
    found: set[str] = set()
    for fam in FAMILIES.values():
        if not fam.supports(statement) or statement not in fam.columns:
            continue
        try:
            opts = normalize_options(statement, given, fam)
            found.add(str(opts.value(fam.statement_columns(statement, opts).input)))
        except ThanoSQLError:  # this family does not take these options: not a candidate
            continue
    return found.pop() if len(found) == 1 else None


def check_options(statement: str, given: Mapping[str, Any], family: Family | None = None) -> dict[str, Any]:
    """The options a statement's text gives, validated: names (aliases mapped to canonical
    names) and types, not defaults. For the preprocessor, which prints what was written.

    Raises InvalidOption naming the option, listing the valid ones for an unknown name.
    """
    spec = options_for(statement, family)
    by_name: dict[str, Option] = {}
    for opt in spec:
        by_name[opt.name] = opt
        for alias in opt.aliases:
            by_name[alias] = opt
    out: dict[str, Any] = {}
    for key, value in given.items():
        found = by_name.get(key.lower())
        if found is None:
            where = f"{family.name} " if family else ""
            raise InvalidOption(
                f'unknown option "{key}" for {where}{statement.upper()}',
                hint=did_you_mean(key, by_name) + "Valid options: " + ", ".join(sorted(by_name)),
            )
        opt = found
        if opt.name in out:
            raise InvalidOption(f'option "{opt.name}" is given more than once')
        out[opt.name] = opt.coerce(value)
    return out


def normalize_options(statement: str, given: Mapping[str, Any], family: Family) -> Options:
    """A statement's options for one family, validated, every one filled in, typed: an
    instance of ``family.typed``, which the family's ``check`` has seen (the options
    together)."""
    values = check_options(statement, given, family)
    for opt in options_for(statement, family):
        if opt.name not in values:
            if opt.required:
                raise InvalidOption(
                    f'option "{opt.name}" is required for {statement.upper()}',
                    hint=f"Add {opt.name}=... to OPTIONS.",
                )
            values[opt.name] = opt.default
    opts = _typed(family, statement, values)
    # checks on options together: the server runs them (the preprocessor sees only
    # the options written, and positions errors on one of them)
    if statement in ("build", "fit"):
        check_training(opts)
    if family.check is not None:
        opts = family.check(opts) or opts
    return opts
