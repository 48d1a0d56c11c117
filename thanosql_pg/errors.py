"""Errors raised by thanosql_pg, each carrying a PostgreSQL SQLSTATE.

The hierarchy mirrors psycopg's: catch ``ThanoSQLError`` for everything, or a
subclass for one condition. Every error says what to do in ``hint`` where
there is something the user can do. ``position`` is a 1-based character offset
into the user's original statement text (PostgreSQL's convention), or None.
"""

from __future__ import annotations


class ThanoSQLError(Exception):
    sqlstate: str = "XX000"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        detail: str | None = None,
        position: int | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        self.position = position
        if sqlstate is not None:
            self.sqlstate = sqlstate

    def __str__(self) -> str:
        return self.message


class SyntaxError(ThanoSQLError):
    sqlstate = "42601"


class InvalidOption(ThanoSQLError):
    """Unknown option, or an option value of the wrong type or range."""

    sqlstate = "22023"  # invalid_parameter_value


class UndefinedModel(ThanoSQLError):
    sqlstate = "42704"  # undefined_object


class DuplicateModel(ThanoSQLError):
    sqlstate = "42710"  # duplicate_object


class UndefinedColumn(ThanoSQLError):
    sqlstate = "42703"


class WrongModelType(ThanoSQLError):
    """A model of one algorithm family used where another is needed."""

    sqlstate = "42809"  # wrong_object_type


class FeatureNotAvailable(ThanoSQLError):
    """An algorithm or statement that this version does not implement yet."""

    sqlstate = "0A000"  # feature_not_supported


class InsufficientPrivilege(ThanoSQLError):
    sqlstate = "42501"


class DataError(ThanoSQLError):
    """Bad input data: a NULL where a value is needed, a corrupt file, ..."""

    sqlstate = "22000"


class LimitExceeded(DataError):
    """An input over a resource limit (a thanosql.max_* setting, or a fixed bound
    of the model family), found from its header before it is decoded. A DataError,
    so on_error='skip' skips such rows like unreadable ones."""

    sqlstate = "54000"  # program_limit_exceeded


class NullValue(DataError):
    sqlstate = "22004"  # null_value_not_allowed


class FileError(DataError):
    sqlstate = "58P01"  # undefined_file


class DataCorrupted(ThanoSQLError):
    """A stored model that this version cannot or will not load: an unknown
    format, or catalog options that are not what BUILD writes (the owner can
    edit them, so they are checked like input)."""

    sqlstate = "XX001"  # data_corrupted


class WeightsUnavailable(ThanoSQLError):
    """Pretrained weights are neither cached nor downloadable."""

    sqlstate = "58000"  # system_error


class ConfigurationError(ThanoSQLError):
    sqlstate = "F0000"  # config_file_error
