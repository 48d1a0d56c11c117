"""The ThanoSQL statements, as the parser finds them (pglast style: plain nodes).

Offsets (``start``/``end``) are 0-based character offsets into the text given
to :func:`thanosql_pg.preprocessor.parse`, ``end`` exclusive; ``position`` is
the 1-based character position PostgreSQL uses in error reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Param:
    """A ``$n`` parameter written as an option value (SEARCH IMAGE's search_input only):
    the value comes from the client's Bind, so the rewrite passes ``$n`` on as SQL."""

    number: int
    position: int


@dataclass(frozen=True, kw_only=True)
class OptionItem:
    """One ``name = value`` of an OPTIONS clause, as written."""

    name: str  # as written (lower-cased unless quoted)
    value: Any  # str, int, float, bool, None or Param
    position: int  # of the name


@dataclass(frozen=True, kw_only=True)
class Query:
    """The query after AS: the user's text, plus the ML statements nested in it."""

    text: str  # from its first token to its last one, comments inside kept
    start: int
    end: int
    nested: tuple[Statement, ...] = ()  # outermost ML statements inside the text, in order
    source_table: str | None = None  # CONVERT: ``t`` of ``SELECT ... FROM t [WHERE ...]``


@dataclass(frozen=True, kw_only=True)
class Statement:
    """A ThanoSQL statement: its extent in the text it came from."""

    start: int  # first character of the statement's first token
    end: int  # just past its last token (a closing parenthesis or ``;`` is not part of it)
    position: int  # start + 1
    nested_in_parens: bool = False  # written as ``( <statement> )`` inside other SQL

    keyword = ""  # the statement's name in messages: "BUILD MODEL", "PREDICT", ...


@dataclass(frozen=True, kw_only=True)
class WithOptions(Statement):
    model: str  # the model's name, an identifier (folded unless quoted)
    options: tuple[OptionItem, ...] = ()  # as written
    normalized: dict[str, Any] = field(default_factory=dict)  # checked, canonical names
    query: Query


@dataclass(frozen=True, kw_only=True)
class BuildModel(WithOptions):
    algorithm: str  # canonical spelling from the registry, e.g. "ConvNeXt_Tiny"
    keyword = "BUILD MODEL"


@dataclass(frozen=True, kw_only=True)
class FitModel(WithOptions):
    base_model: str  # the model retrained (USING ...), ``model`` is the one written
    keyword = "FIT MODEL"


@dataclass(frozen=True, kw_only=True)
class Predict(WithOptions):
    keyword = "PREDICT"


@dataclass(frozen=True, kw_only=True)
class Evaluate(WithOptions):
    keyword = "EVALUATE"


@dataclass(frozen=True, kw_only=True)
class Convert(WithOptions):
    keyword = "CONVERT"


@dataclass(frozen=True, kw_only=True)
class SearchImage(WithOptions):
    keyword = "SEARCH IMAGE"


@dataclass(frozen=True, kw_only=True)
class ListModels(Statement):
    keyword = "LIST MODEL"


@dataclass(frozen=True, kw_only=True)
class DeleteModel(Statement):
    """``DELETE MODEL m`` and ``DROP MODEL [IF EXISTS] m``."""

    model: str
    if_exists: bool = False
    keyword = "DELETE MODEL"


@dataclass(frozen=True, kw_only=True)
class DescribeModel(Statement):
    model: str
    keyword = "DESCRIBE MODEL"


QueryStatement = BuildModel | FitModel | Predict | Evaluate | Convert | SearchImage
