"""The entry points: text in, text out."""

from __future__ import annotations

from thanosql_pg.errors import InternalError, ThanoSQLError
from thanosql_pg.preprocessor import ast
from thanosql_pg.preprocessor.lexer import might_contain_ml
from thanosql_pg.preprocessor.parser import parse
from thanosql_pg.preprocessor.printer import error_statement, splice
from thanosql_pg.preprocessor.sqltree import StatementTooComplex

# The most tokens (words, numbers, literals, operators, comments) a rewrite reads of one text
# by default, in the proxy (--max-rewrite-tokens) and in the backend (thanosql.execute,
# thanosql.rewrite): what it holds stays proportional to it, about 400 bytes a token, however
# long the text (without a bound, 4 MB of "1,1,1,..." took 2.3 GB and 14 s of CPU).
DEFAULT_MAX_TOKENS = 1 << 17


def rewrite(sql: str, *, standard_conforming_strings: bool = True, max_tokens: int | None = None) -> str:
    """Rewrite every ThanoSQL statement in ``sql``; keep everything else byte for byte.

    ``standard_conforming_strings``: the setting of the session that will run the
    result (off: backslashes escape in ``'...'``, so strings end elsewhere).
    Text holding no ThanoSQL statement is returned unchanged (the same object).
    ``max_tokens``: as for ``rewrite_for_wire``, raising the 54000 error.
    Raises ThanoSQLError (with SQLSTATE and 1-based character ``position``).
    """
    if not might_contain_ml(sql):
        return sql
    statements = _parse(sql, standard_conforming_strings, max_tokens)
    if not statements:
        return sql
    return _splice(sql, statements)


def rewrite_for_wire(sql: str, n_params: int = 0, *, standard_conforming_strings: bool = True,
                     max_tokens: int | None = None) -> str | None:
    """For the proxy: None for plain SQL (cheap), else the rewrite; on error a
    ``SELECT thanosql.raise_error(...)`` that replaces the whole text, taking
    $1..$n as text when ``n_params`` > 0 so the client's Bind still fits.
    ``max_tokens``: the most tokens read (parser.parse); a text holding a ThanoSQL
    statement and more tokens becomes that error (54000), plain SQL stays None."""
    if not might_contain_ml(sql):
        return None
    try:
        statements = _parse(sql, standard_conforming_strings, max_tokens)
        if not statements:
            return None
        return _splice(sql, statements)
    except ThanoSQLError as exc:
        return error_statement(exc, n_params)
    except Exception as exc:  # a bug here must not take the connection down
        error = InternalError(
            f"internal error in the ThanoSQL preprocessor: {type(exc).__name__}: {exc}",
            hint="Please report this with the statement that caused it.",
        )
        return error_statement(error, n_params)


def _parse(sql: str, scs: bool, max_tokens: int | None = None) -> list[ast.Statement]:
    # The parser and printer recurse once per nested ThanoSQL statement (and OPTIONS
    # parenthesis): Python stops them (RecursionError, no C stack at stake) long
    # before anyone nests that deep on purpose.
    try:
        return parse(sql, standard_conforming_strings=scs, max_tokens=max_tokens)
    except RecursionError:
        raise _too_deep() from None


def _splice(sql: str, statements: list[ast.Statement]) -> str:
    try:
        return splice(sql, statements)
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> StatementTooComplex:
    return StatementTooComplex(
        "statement too complex: ThanoSQL statements or OPTIONS nest too deeply",
        hint="Nest fewer ThanoSQL statements in one another (use WITH queries or temporary tables).",
    )
