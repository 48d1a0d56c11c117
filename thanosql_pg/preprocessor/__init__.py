"""ThanoSQL → SQL rewriting, in pure Python on PostgreSQL's own lexer (pglast).

- :func:`rewrite` rewrites the ThanoSQL statements in a text, keeping all else.
- :func:`rewrite_for_wire` is the proxy's variant: None for plain SQL, errors
  as a ``SELECT thanosql.raise_error(...)`` statement. It returns None without
  looking further for any text whose ``str.lower()`` holds none of
  :data:`ML_WORDS` (lowercase ASCII), which lets the proxy skip calling it.
- :func:`parse` returns the ThanoSQL statements as ``ast`` nodes.
- :func:`split_statements` splits a text at top-level ``;``.

Each takes ``standard_conforming_strings`` (keyword, default True): the setting of
the session the text is for, which decides where ``'...'`` constants end. Text is
read exactly as PostgreSQL 15 reads it (lexer.py); a parse tree is only built where
its depth is bounded (sqltree.py).

No database and no ML stack are needed here.
"""

from thanosql_pg.preprocessor import ast
from thanosql_pg.preprocessor.lexer import ML_WORDS
from thanosql_pg.preprocessor.parser import parse, split_statements
from thanosql_pg.preprocessor.printer import error_statement, render
from thanosql_pg.preprocessor.rewriter import rewrite, rewrite_for_wire

__all__ = [
    "ML_WORDS",
    "ast",
    "error_statement",
    "parse",
    "render",
    "rewrite",
    "rewrite_for_wire",
    "split_statements",
]
