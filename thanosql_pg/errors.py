"""Errors raised by thanosql_pg, each carrying a PostgreSQL SQLSTATE.

The hierarchy mirrors psycopg's ``errors`` module: every class states its
SQLSTATE once, in its definition (``class UndefinedTable(ThanoSQLError,
code="42P01")``), and a constructor cannot change it, so a class and its code
cannot disagree: ``except DataError`` catches bad input data, never an
undefined table. A subclass that states no code has its parent's. Catch
``ThanoSQLError`` for everything, or a subclass for one condition;
``lookup(code)`` gives the class of a SQLSTATE.

Every error says what to do in ``hint`` where there is something the user can
do. ``position`` is a 1-based character offset into the user's original
statement text (PostgreSQL's convention), or None.

This is the one module of error classes in thanosql_pg.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_BY_CODE: dict[str, type[ThanoSQLError]] = {}


class ThanoSQLError(Exception):
    sqlstate: ClassVar[str] = "XX000"

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "sqlstate" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: state the SQLSTATE as a class keyword: class {cls.__name__}"
                            f"(..., code='{cls.__dict__['sqlstate']}')")
        if code is not None:
            if not _SQLSTATE.fullmatch(code):
                raise TypeError(f"{cls.__name__}: {code!r} is not a SQLSTATE")
            cls.sqlstate = code
            _BY_CODE.setdefault(code, cls)

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        detail: str | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        self.position = position

    def __str__(self) -> str:
        return self.message


def lookup(code: str) -> type[ThanoSQLError]:
    """The class of SQLSTATE ``code`` (the first one defined with it); KeyError for none."""
    return _BY_CODE[code]


class InternalError(ThanoSQLError, code="XX000"):
    """A bug in thanosql_pg (never the user's doing)."""


# --- class 0A, 42: what the statement asks for ----------------------------------------------
class FeatureNotAvailable(ThanoSQLError, code="0A000"):  # feature_not_supported
    """An algorithm or statement that this version does not implement yet."""


class ReadOnlySqlTransaction(ThanoSQLError, code="25006"):  # psycopg's name too
    """A write on a hot standby (or in a read-only transaction)."""


class SyntaxError(ThanoSQLError, code="42601"):  # psycopg's name too
    pass


class InsufficientPrivilege(ThanoSQLError, code="42501"):
    pass


class UndefinedColumn(ThanoSQLError, code="42703"):
    pass


class UndefinedTable(ThanoSQLError, code="42P01"):
    pass


class UndefinedObject(ThanoSQLError, code="42704"):
    pass


class UndefinedModel(UndefinedObject):
    pass


class UndefinedAlgorithm(UndefinedObject):
    """An algorithm name that no registered family has."""


class DatatypeMismatch(ThanoSQLError, code="42804"):
    pass


class WrongObjectType(ThanoSQLError, code="42809"):
    pass


class WrongModelType(WrongObjectType):
    """A model of one algorithm family used where another is needed."""


# --- class 22: data -------------------------------------------------------------------------
class InvalidParameterValue(ThanoSQLError, code="22023"):
    """A value the statement passes that cannot be used (a label FIT cannot learn, ...)."""


class InvalidOption(InvalidParameterValue):
    """Unknown option, or an option value of the wrong type or range."""


class NumericValueOutOfRange(ThanoSQLError, code="22003"):
    pass


class CharacterNotInRepertoire(ThanoSQLError, code="22021"):  # e.g. invalid UTF-8
    pass


class InvalidEscapeSequence(ThanoSQLError, code="22025"):
    pass


class DataError(ThanoSQLError, code="22000"):
    """Bad input data: a NULL where a value is needed, a corrupt file, ...

    In this hierarchy a DataError is a problem of one input row: on_error='skip'
    skips the rows that raise one (its subclasses included, whatever their code)."""


class NullValue(DataError, code="22004"):  # null_value_not_allowed
    pass


class ValueTypeMismatch(DatatypeMismatch, DataError, code="42804"):
    """An input value of a type the model cannot read (a number where a path or
    bytea is needed): a DatatypeMismatch, and a DataError of its row."""


class LimitExceeded(DataError, code="54000"):  # program_limit_exceeded
    """An input over a resource limit (a thanosql.max_* setting, or a fixed bound
    of the model family), found from its header before it is decoded. A DataError,
    so on_error='skip' skips such rows like unreadable ones."""


class FileError(DataError, code="58P01"):  # undefined_file
    """A file that does not exist (a DataError of its row)."""


class IoError(FileError, code="58030"):  # io_error
    """A file that exists but cannot be read (permission denied, an I/O error)."""


# --- classes 53, 54, 55, 58, F0, XX: the server ---------------------------------------------
class OutOfMemory(ThanoSQLError, code="53200"):  # out_of_memory
    """The model did not fit in the memory of its device (CUDA out of memory, or the
    host's), caught before it could take the backend down."""


class StatementTooComplex(ThanoSQLError, code="54001"):
    """A statement too deep to parse safely (PostgreSQL's answer for one too deep for its stack)."""


class ObjectNotInPrerequisiteState(ThanoSQLError, code="55000"):
    """Something to do first: update the extension, reconnect, ..."""


class WeightsUnavailable(ThanoSQLError, code="58000"):  # system_error
    """Pretrained weights are neither cached nor downloadable."""


class WorkerFailed(ThanoSQLError, code="58000"):  # system_error
    """A training worker process (BUILD/FIT with workers) died or broke the protocol;
    its own errors keep their SQLSTATE."""


class ConfigurationError(ThanoSQLError, code="F0000"):  # config_file_error
    pass


class DataCorrupted(ThanoSQLError, code="XX001"):
    """A stored model that this version cannot or will not load: an unknown
    format, or catalog options that are not what BUILD writes (the owner can
    edit them, so they are checked like input)."""


# --- the preprocessor's lexer ---------------------------------------------------------------
class LexicalError(ThanoSQLError):
    """The text is not lexically valid SQL (unterminated string or comment, ...): the
    base of the lexer's errors, one subclass per SQLSTATE (LexicalSyntaxError 42601
    mostly). Not raised itself.

    ``index`` (0-based) is where PostgreSQL's lexer stops, ``start`` where the token it
    stops in starts (a string constant, for a bad escape in it); ``position`` is None for
    errors PostgreSQL reports without one (an escape spelling invalid UTF-8)."""

    def __init__(self, message: str, index: int | None, text_length: int, *, hint: str | None = None,
                 detail: str | None = None, has_position: bool = True) -> None:
        if type(self) is LexicalError:
            raise TypeError("LexicalError is abstract: raise the subclass of its SQLSTATE")
        self.index = index if index is not None else text_length
        self.start = self.index
        super().__init__(message, position=self.index + 1 if has_position else None, hint=hint,
                         detail=detail)


class LexicalSyntaxError(LexicalError, SyntaxError):
    pass


class LexicalFeatureNotAvailable(LexicalError, FeatureNotAvailable):  # U&'' with escape strings
    pass


class LexicalCharacterNotInRepertoire(LexicalError, CharacterNotInRepertoire):
    pass


class LexicalInvalidEscape(LexicalError, InvalidEscapeSequence):
    pass


class TokenLimitExceeded(LimitExceeded):
    """A text the lexer does not read to the end with ``max_tokens`` given: more tokens
    than that (comments and literals count), or a run of characters pglast could only
    scan all at once or in quadratic time (below). What it read before stopping is
    in ``tokens`` (comments left out), what pglast scanned in ``shadow`` (a prefix of
    the text's shadow). Either way what the lexer holds stays proportional to
    ``max_tokens``, whatever the length of the text."""

    def __init__(self, message: str, max_tokens: int, position: int, tokens: list[Any],
                 shadow: str) -> None:
        super().__init__(
            f"statement too long to rewrite: {message}",
            detail=f"ThanoSQL reads statements of at most {max_tokens} tokens (names, numbers, literals, "
            "operators, comments).",
            hint="Split the statement, or move its data into a table; thanosql-proxy's "
            "--max-rewrite-tokens sets the limit.",
            position=position + 1,
        )
        self.tokens = tokens
        self.shadow = shadow
