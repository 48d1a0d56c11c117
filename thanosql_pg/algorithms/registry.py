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

Adding an algorithm to a family is one line of its spec; adding a family is one
package and one registration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from thanosql_pg.errors import (
    ConfigurationError,
    DataCorrupted,
    FeatureNotAvailable,
    InvalidOption,
    ThanoSQLError,
    UndefinedAlgorithm,
    WrongModelType,
)

# Option value kinds. "str?" / "int?" accept None too.
KINDS = ("str", "str?", "int", "int?", "float", "bool", "any")

# Upper bounds of the options that size what a statement allocates. Every model
# runs inside a database backend, where running out of memory restarts every
# session of the cluster, so a value that can only exhaust the server is refused
# up front (22023) instead. The bounds stop absurd values, not every heavy one.
MAX_EPOCHS = 10_000  # the longest recipes train for a few thousand; beyond is a typo or a denial of service
MAX_TOP_K = 1_000_000  # rows SEARCH IMAGE returns; more is a full sort of the table (top_k=None says so)


@dataclass(frozen=True)
class Option:
    name: str
    kind: str
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
        if base in ("int", "float") and self.positive and value <= 0:
            raise InvalidOption(f'option "{self.name}" must be positive, got {value}')
        if base in ("int", "float") and self.minimum is not None and value < self.minimum:
            raise InvalidOption(f'option "{self.name}" must be at least {self.minimum}, got {value}',
                                hint=self.range_hint)
        if base in ("int", "float") and self.maximum is not None and value > self.maximum:
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
def option(name: str, kind: str, default: Any = None, **kw: Any) -> Option:
    return Option(name, kind, default, **kw)


def epochs(default: int) -> Option:
    return option("epochs", "int", default, aliases=("max_epochs",), maximum=MAX_EPOCHS, positive=True)


def batch_size(default: int, maximum: int) -> Option:
    return option("batch_size", "int", default, maximum=maximum, positive=True)


def learning_rate(default: float) -> Option:
    return option("learning_rate", "float", default, positive=True)


DEVICE = option("device", "str", "auto", choices=("auto", "cpu", "cuda"))
OVERWRITE = option("overwrite", "bool", False)
ON_ERROR = option("on_error", "str", "fail", choices=("fail", "skip"))
PRETRAINED = option("pretrained", "bool", True)
BASE_MODEL = option("base_model", "str?", None)

STATEMENTS = ("build", "fit", "predict", "evaluate", "convert", "search")

# What the shared training loop (shared/training.py) implements for every family that trains
# with it: a held-out validation part of the query's rows, scored every epoch, and early
# stopping on that score. Families add them to BUILD/FIT with ``training_options``.
MAX_VALIDATION_SPLIT = 0.5  # more held out than trained on is a mistake, not a recipe
_SPLIT_HINT = (f"validation_split is the share of the query's rows held out to validate each epoch:"
               f" 0 (none, the default) to {MAX_VALIDATION_SPLIT}.")
VALIDATION_SPLIT = option("validation_split", "float", 0.0, minimum=0.0, maximum=MAX_VALIDATION_SPLIT,
                          range_hint=_SPLIT_HINT)
EARLY_STOPPING = option("early_stopping", "bool", False)
PATIENCE = option("patience", "int", 3, positive=True, maximum=MAX_EPOCHS)
VALIDATION = (VALIDATION_SPLIT, EARLY_STOPPING, PATIENCE)


def training_options(*own: Option) -> tuple[Option, ...]:
    """BUILD/FIT's option set: the family's ``own`` plus ``VALIDATION``, which the shared
    training loop implements (one place declares them for every family)."""
    return (*own, *VALIDATION)


def check_training(opts: Mapping[str, Any]) -> None:
    """The training options together (BUILD/FIT, all filled in): early stopping watches
    the validation score, so it needs a validation part."""
    if opts.get("early_stopping") and not opts.get("validation_split"):
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

_TABLE = option("table_name", "str?", None)
STATEMENT_OPTIONS: dict[str, tuple[Option, ...]] = {
    "predict": (option("result_col", "str", "predict_result"), _TABLE),
    "convert": (option("result_col", "str", "convert_result"), _TABLE),
    "search": (
        option("search_by", "str", None, required=True, choices=tuple(MODALITIES)),
        option("search_input", "any", None, required=True),
        option("emb_col", "str", None, required=True),
        option("result_col", "str", "search_result"),
        option("top_k", "int?", 1000, maximum=MAX_TOP_K, positive=True),
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
    return option("report", "str", "summary", choices=("summary", *(k for k in kinds if k != "summary")))


def report_of(opts: Mapping[str, Any]) -> Report:
    """The report that EVALUATE's options ask for ('summary' when they name none)."""
    return REPORTS[str(opts.get("report") or "summary").lower()]


# Retrieval scores (EVALUATE of an embedding family with a label column): precision@k, each
# row's k nearest other rows, as SEARCH IMAGE would rank them. k is bounded like SEARCH
# IMAGE's top_k, far lower: each row keeps its k best candidates while the rest are ranked.
MAX_RETRIEVAL_K = 1000


def retrieval_k(default: int = 5) -> Option:
    """EVALUATE's ``top_k`` for an embedding family: it reports Precision@1 and Precision@top_k."""
    return option("top_k", "int", default, maximum=MAX_RETRIEVAL_K, positive=True)


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
ColumnRule = Columns | Callable[[Mapping[str, Any]], Columns]


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
    check: Callable[[str, dict[str, Any]], None] | None = None  # options checked together (all filled in)

    def supports(self, statement: str) -> bool:
        return statement in self.options

    def statement_columns(self, statement: str, opts: Mapping[str, Any]) -> Columns:
        rule = self.columns.get(statement)
        if rule is None:
            raise FeatureNotAvailable(f"{statement.upper()} reads no columns of {self.name} models")
        return rule if isinstance(rule, Columns) else rule(opts)

    def column_options(self, statement: str, opts: Mapping[str, Any]) -> tuple[str, str | None]:
        """The names of the (input, target) column options of ``statement``."""
        cols = self.statement_columns(statement, opts)
        return cols.input, cols.target

    def column_names(self, statement: str, opts: Mapping[str, Any]) -> tuple[str, str | None]:
        """The (input, target) column names that ``opts`` give for ``statement``."""
        inp, target = self.column_options(statement, opts)
        return opts[inp], (opts[target] if target else None)

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
    fit = {o.name for o in family.options.get("fit", ())}
    if not set(family.carry_over) <= fit:
        raise ConfigurationError(f'family "{family.name}" carries over options FIT does not take:'
                                 f' {", ".join(sorted(set(family.carry_over) - fit))}')
    for name in family.algorithms:
        taken = ALGORITHMS.get(name.lower())
        if taken is not None:
            raise ConfigurationError(f'algorithm "{name}" of family "{family.name}" is already one of'
                                     f' "{taken.family.name}"')
    FAMILIES[family.name] = family
    for name, params in family.algorithms.items():
        ALGORITHMS[name.lower()] = Algorithm(name, family, dict(params))
    return family


def lookup(name: str) -> Algorithm:
    """Find an algorithm by name, case-insensitively."""
    algo = ALGORITHMS.get(name.lower())
    if algo is None:
        raise UndefinedAlgorithm(
            f'unknown algorithm "{name}"',
            hint="Available algorithms: " + ", ".join(a.name for a in ALGORITHMS.values()),
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


def is_available(algo: Algorithm) -> bool:
    return algo.available


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


def rows_per_call(statement: str, opts: Mapping[str, Any]) -> int:
    """Rows per call of ``thanosql.<statement>_batch`` in the PREDICT-shaped rewrite:
    the statement's ``batch_size`` (the convention every family follows), or its default
    when no family is known (the first family's)."""
    return int(opts.get("batch_size", statement_default(statement, "batch_size")))


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
            opts = normalize_options(statement, given, fam, fill_defaults=True)
            found.add(str(opts[fam.statement_columns(statement, opts).input]))
        except ThanoSQLError:  # this family does not take these options: not a candidate
            continue
    return found.pop() if len(found) == 1 else None


def check_stored(family: Family, model: str, options: Mapping[str, Any], names: tuple[str, ...]) -> None:
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
    statement: str, given: Mapping[str, Any], family: Family | None = None, *, fill_defaults: bool = False
) -> dict[str, Any]:
    """Validate option names and types; map aliases to canonical names.

    Raises InvalidOption naming the option, listing the valid ones for an
    unknown name. With ``fill_defaults`` the result holds every option, and the
    family's ``check`` has seen them together.
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
        # checks on options together: the server runs them (the preprocessor sees only
        # the options written, and positions errors on one of them)
        if statement in ("build", "fit"):
            check_training(out)
        if family is not None and family.check is not None:
            family.check(statement, out)
    return out
