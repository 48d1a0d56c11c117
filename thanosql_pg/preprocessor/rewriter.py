"""The entry points: text in, text out."""

from __future__ import annotations

from thanosql_pg.errors import ThanoSQLError
from thanosql_pg.preprocessor.lexer import might_contain_ml
from thanosql_pg.preprocessor.parser import parse
from thanosql_pg.preprocessor.printer import error_statement, splice


def rewrite(sql: str) -> str:
    """Rewrite every ThanoSQL statement in ``sql``; keep everything else byte for byte.

    Text holding no ThanoSQL statement is returned unchanged (the same object).
    Raises ThanoSQLError (with SQLSTATE and 1-based character ``position``).
    """
    if not might_contain_ml(sql):
        return sql
    statements = parse(sql)
    if not statements:
        return sql
    return splice(sql, statements)


def rewrite_for_wire(sql: str, n_params: int = 0) -> str | None:
    """For the proxy: None for plain SQL (cheap), else the rewrite; on error a
    ``SELECT thanosql.raise_error(...)`` that replaces the whole text, taking
    $1..$n as text when ``n_params`` > 0 so the client's Bind still fits."""
    if not might_contain_ml(sql):
        return None
    try:
        statements = parse(sql)
        if not statements:
            return None
        return splice(sql, statements)
    except ThanoSQLError as exc:
        return error_statement(exc, n_params)
    except Exception as exc:  # a bug here must not take the connection down
        error = ThanoSQLError(
            f"internal error in the ThanoSQL preprocessor: {type(exc).__name__}: {exc}",
            hint="Please report this with the statement that caused it.",
        )
        return error_statement(error, n_params)
