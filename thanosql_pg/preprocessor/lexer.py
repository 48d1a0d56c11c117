"""Tokens of a SQL string, from PostgreSQL's own lexer (pglast's scanner).

Using the real lexer means comments (``--``, nested ``/* */``), string
constants (``''``, ``E''``, dollar quotes) and quoted identifiers are never
mistaken for ThanoSQL keywords.

Offsets: libpg_query works on UTF-8 bytes, and pglast 8.7 maps token offsets
back to characters, but maps *error* positions wrongly for text holding
multi-byte characters (it treats libpg_query's character position as a byte
offset). So the scanner is always fed an ASCII "shadow" of the text: every
non-ASCII character replaced by ``x``. PostgreSQL's lexer treats every
non-ASCII character as an identifier character, exactly like ``x``, so the
shadow has the same tokens at the same character offsets, and every offset,
token or error, is a character offset into the user's text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pglast import parser as pg

from thanosql_pg.errors import SyntaxError as SQLSyntaxError
from thanosql_pg.errors import ThanoSQLError
from thanosql_pg.preprocessor.literals import ASCII_LOWER as _ASCII_LOWER

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})

# Words that can start a ThanoSQL statement ("model" stands for DELETE/DROP MODEL).
ML_WORDS = ("model", "predict", "evaluate", "convert", "search", "build", "fit", "list", "describe")
# Such a word where a statement can start: at the beginning, after ";" or "(", or
# after whitespace and comments (which end in "/" or a newline) following those.
# Only a superset of what the parser detects, so it may say yes wrongly, never no.
_ML_START = re.compile(
    r"(?:^|[;(/\n\r])\s*(?:build|fit|predict|evaluate|convert|search|list|describe|delete|drop)(?![\w$])"
)


def might_contain_ml(sql: str) -> bool:
    """False when ``sql`` surely holds no ThanoSQL statement: a substring test, then
    a regular expression, no scanning (~0.3 µs for pgbench's statements)."""
    low = sql.lower()
    for word in ML_WORDS:
        if word in low:
            return _ML_START.search(low) is not None
    return False


def ascii_shadow(text: str) -> str:
    """``text`` with each non-ASCII character replaced by ``x`` (same length, same tokens)."""
    return text if text.isascii() else _NON_ASCII.sub("x", text)


class Token(NamedTuple):
    start: int  # 0-based character offset of the first character
    end: int  # 0-based character offset just past the last character
    name: str  # the lexer's token name: IDENT, SCONST, ICONST, ASCII_40, USING, ...
    kind: str  # keyword category: NO_KEYWORD, UNRESERVED_KEYWORD, RESERVED_KEYWORD, ...
    text: str  # the token's text as the user wrote it
    word: str | None  # lower-cased text of a bare word (keyword or unquoted identifier)

    @property
    def position(self) -> int:
        """1-based character position (PostgreSQL's error position convention)."""
        return self.start + 1


class LexicalError(SQLSyntaxError):
    """The scanner rejected the text (unterminated string or comment, ...)."""

    def __init__(self, message: str, index: int | None, text_length: int) -> None:
        self.index = index if index is not None else text_length
        if message.startswith("invalid byte sequence"):
            # E'\\x00' and the like: PostgreSQL reports these without a position.
            super().__init__(message, position=None, sqlstate="22021")
        else:
            super().__init__(message, position=self.index + 1)


def check_text(sql: str) -> None:
    """Reject what the wire protocol could never carry."""
    nul = sql.find("\x00")
    if nul >= 0:
        raise ThanoSQLError(
            'invalid byte sequence for encoding "UTF8": 0x00', sqlstate="22021", position=nul + 1
        )


def tokenize(sql: str) -> list[Token]:
    """The tokens of ``sql`` in order, comments left out.

    Raises LexicalError (SQLSTATE 42601) with the position of the offending token.
    """
    shadow = ascii_shadow(sql)
    try:
        raw = pg.scan(shadow)
    except pg.ParseError as exc:
        message = exc.args[0]
        if shadow is not sql:
            try:
                pg.scan(sql)  # for the message, which quotes the original text
            except pg.ParseError as orig:
                message = orig.args[0]
        raise LexicalError(message, exc.args[1], len(sql)) from None
    tokens: list[Token] = []
    append = tokens.append
    new = tuple.__new__  # Token(...) without the NamedTuple constructor's overhead
    for start, last, name, kind in raw:
        if name in _COMMENTS:
            continue
        end = last + 1
        text = sql[start:end]
        if kind != "NO_KEYWORD":
            word: str | None = text.lower()
        elif name == "IDENT" and text[0] != '"':
            word = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
        else:
            word = None
        append(new(Token, (start, end, name, kind, text, word)))
    return tokens
