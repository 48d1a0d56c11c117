"""Tokens of a SQL string, found exactly where PostgreSQL 15's lexer finds them.

What decides where a statement ends, and whether a word is SQL or the inside of
a literal, must be PostgreSQL's own reading of the text, or a string constant
could smuggle a ThanoSQL statement past the server (issue 9, finding 7:
``SELECT $ä$ $x$; EVALUATE ...; SELECT $x$ $ä$`` is one literal to PostgreSQL).
So tokenizing takes two passes:

1. A structural pass (``_structure``, linear time, regular expressions plus a
   loop over the special characters) that follows scan.l for everything that can
   hide text: whitespace, ``--`` and nested ``/* */`` comments, string constants
   (``''``, ``E''``, ``B''``, ``X''``, ``N''``, ``U&''``, constants continued
   across a newline, and ``''`` with backslash escapes when
   ``standard_conforming_strings`` is off), quoted identifiers (``""``,
   ``U&""``), dollar quotes (tags of identifier characters, non-ASCII included),
   parameters and numbers. It raises the errors scan.l raises there, with the
   same message and position.
2. pglast's scanner (libpg_query: PostgreSQL's lexer) on a same-length ASCII
   *shadow* of the text, in which the content of every literal and comment is
   neutral filler and every non-ASCII identifier is spelled in ASCII that no
   keyword matches. pglast then only classifies what pass 1 left (keywords,
   identifiers, numbers, operators), and every offset is a character offset into
   the user's text. pglast alone cannot be trusted with the boundaries: it works
   on UTF-8 bytes with offsets mapped back imperfectly, does not know
   standard_conforming_strings, and is a later PostgreSQL's lexer; the shadow
   leaves it nothing to decide about literals, and the token boundaries it
   reports are checked against pass 1's.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from pglast import parser as pg

from thanosql_pg.errors import (
    CharacterNotInRepertoire,
    InternalError,
    LexicalCharacterNotInRepertoire,
    LexicalError,
    LexicalFeatureNotAvailable,
    LexicalSyntaxError,
)
from thanosql_pg.preprocessor.literals import ASCII_LOWER as _ASCII_LOWER
from thanosql_pg.preprocessor.literals import (
    CONTINUATION,
    LiteralError,
    lexer_error,
    read_string,
)

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


class Lexed(NamedTuple):
    tokens: list[Token]  # comments left out
    shadow: str  # the ASCII text pglast scanned: same length, literals' content replaced


def check_text(sql: str) -> None:
    """Reject what the wire protocol could never carry."""
    nul = sql.find("\x00")
    if nul >= 0:
        raise CharacterNotInRepertoire('invalid byte sequence for encoding "UTF8": 0x00', position=nul + 1)


# --- pass 1: the structure ------------------------------------------------------------

_NON_ASCII = "\x80-\U0010ffff"
_IDENT_START = f"A-Za-z_{_NON_ASCII}"  # scan.l's ident_start: letters, "_", bytes \200-\377
# What pass 1 can step over without looking: whitespace and operator characters except
# the "-" of "--" and the "/" of "/*"; ASCII identifiers that do not start a literal
# (E'', B'', X'', N'', U&'', U&""); integers and $n not followed by junk; "." not
# starting a number. One C-speed match covers most of a statement. (No possessive
# quantifiers in this module: Python 3.11.2, PL/Python's on Debian 12, gets some wrong.
# Each pattern here is linear as written: alternatives start differently, and a
# lookahead that fails makes a shorter match fail too, so nothing backtracks far.)
_PLAIN = re.compile(
    rf"""(?:
        [^-/'"$.0-9A-Za-z_{_NON_ASCII}\v]
      | -(?!-) | /(?!\*) | \.(?![0-9])
      | (?![eEbBxXnN]'|[uU]&['"])[A-Za-z_][A-Za-z0-9_$]*(?![0-9A-Za-z_${_NON_ASCII}])
      | \$?[0-9]+(?![.0-9{_IDENT_START}])
    )*""",
    re.VERBOSE,
)
_IDENT = re.compile(rf"[{_IDENT_START}][0-9$A-Za-z_{_NON_ASCII}]*")
_DOLLAR_DELIM = re.compile(rf"\$(?:[{_IDENT_START}][0-9A-Za-z_{_NON_ASCII}]*)?\$")
_COMMENT_END = re.compile(r"/\*|\*/")
_LINE_END = re.compile(r"[\n\r]")
# scan.l's numbers: {decimalfail} (1..: an integer, the ".." left for later), else the
# longest of {integer}, {decimal} and {real}.
_NUMBER = re.compile(r"([0-9]+)\.\.|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_IDENT_CHAR = re.compile(rf"[{_IDENT_START}]")


def _filler(text: str, start: int, end: int, head: int, tail: int, fill: str = "x") -> str:
    """``text[start:end]`` keeping ``head`` and ``tail`` characters, the rest ``fill``."""
    return text[start : start + head] + fill * (end - start - head - tail) + text[end - tail : end]


def _ascii_name(text: str, start: int, end: int) -> str:
    """An identifier with non-ASCII characters, spelled in ASCII that keeps it one
    identifier and matches no keyword: "_" first (no keyword starts with it), then
    digits (no keyword holds one) for the non-ASCII characters."""
    out = []
    for k in range(start, end):
        c = text[k]
        out.append(c if c < "\x80" else "_" if k == start else "0")
    return "".join(out)


def _structure(sql: str, scs: bool, subs: list[tuple[int, int, str]], spans: dict[int, int],
               at: list[int]) -> None:
    """Pass 1: fills ``subs`` with the shadow's replacements (start, end, ASCII text) in
    order, and ``spans`` with the literals and comments pglast must report as single
    tokens (start -> end); ``at[0]`` is where the token being read starts. Raises
    LexicalError as PostgreSQL's lexer would."""
    n = len(sql)
    plain = _PLAIN.match
    pos = 0
    while True:
        i = at[0] = plain(sql, pos).end()
        if i >= n:
            return
        c = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if c == "'":
            end = _string(sql, i, i, escapes=not scs)
            subs.append((i, end, _filler(sql, i, end, 1, 1)))
        elif c == '"':
            end = _quoted_ident(sql, i, i)
            subs.append((i, end, _filler(sql, i, end, 1, 1)))
        elif c == "$":
            end = _dollar(sql, i)
            if end < 0:  # $1x or a lone "$" (that starts no dollar quote)
                pos = _param(sql, i)
                continue
            # "$$" + filler + "$$": the shortest dollar quote ($$$$) is 4 characters.
            subs.append((i, end, "$$" + "x" * (end - i - 4) + "$$"))
        elif c == "-":  # "--": a comment to the end of the line
            m = _LINE_END.search(sql, i)
            end = m.start() if m is not None else n
            subs.append((i, end, _filler(sql, i, end, 2, 0)))
        elif c == "/":  # "/*": a comment, nested
            end = _block_comment(sql, i)
            subs.append((i, end, _filler(sql, i, end, 2, 2)))
        elif c == "\v":
            # An {other} character to PostgreSQL 15, whitespace to pglast's lexer (16+);
            # \x01 is {other} to both.
            subs.append((i, i + 1, "\x01"))
            pos = i + 1
            continue
        elif "0" <= c <= "9" or c == ".":
            pos = _number(sql, i, subs)
            continue
        elif nxt == "'" and c in "eEbBxX":
            end = _string(sql, i, i + 1, escapes=c in "eE", kind=c.lower())
            subs.append((i, end, _filler(sql, i, end, 2, 1)))
        elif nxt == "'" and c in "nN":  # N'': the keyword NCHAR, then an ordinary string
            pos = i + 1
            continue
        elif nxt == "&" and c in "uU" and i + 2 < n and sql[i + 2] in "'\"":
            if sql[i + 2] == "'":
                if not scs:
                    raise LexicalFeatureNotAvailable(
                        "unsafe use of string constant with Unicode escapes", i, n,
                        detail="String constants with Unicode escapes cannot be used when "
                        "standard_conforming_strings is off.")
                end = _string(sql, i, i + 2, escapes=False)
            else:
                end = _quoted_ident(sql, i, i + 2)
            # Spaces, not "x": the grammar decodes U&'' with the UESCAPE character,
            # which may be "x" (the filler of the UESCAPE string).
            subs.append((i, end, _filler(sql, i, end, 3, 1, " ")))
        else:  # an identifier _PLAIN left alone: it holds non-ASCII characters
            end = _IDENT.match(sql, i).end()
            if not sql[i:end].isascii():
                subs.append((i, end, _ascii_name(sql, i, end)))
            pos = end
            continue
        spans[i] = end
        pos = end


def _lexical(exc: LiteralError, n: int) -> LexicalError:
    return exc.error(exc.message, exc.index, n, hint=exc.hint, detail=exc.detail,
                     has_position=exc.error is not LexicalCharacterNotInRepertoire)


_UNTERMINATED = {"b": "unterminated bit string literal", "x": "unterminated hexadecimal string literal"}


def _string(sql: str, start: int, quote: int, *, escapes: bool, kind: str = "") -> int:
    if kind in _UNTERMINATED:
        # B'' and X'': no '' doubling, no escapes; only continuation ({xbinside}, {xhinside}).
        j = quote
        while True:
            j = sql.find("'", j + 1)
            if j < 0:
                raise _lexical(lexer_error(_UNTERMINATED[kind], sql, start, len(sql)), len(sql))
            m = CONTINUATION.match(sql, j + 1)
            if m is None:
                return j + 1
            j = m.end() - 1
    if not escapes:
        # The common case at C speed: the next quote ends the string unless a quote
        # ('') or whitespace (maybe a continuation) follows it.
        j = sql.find("'", quote + 1)
        after = sql[j + 1 : j + 2]
        if j > 0 and (not after or after not in "' \t\n\r\f-"):
            return j + 1
    try:
        return read_string(sql, start, quote, escapes=escapes)
    except LiteralError as exc:
        raise _lexical(exc, len(sql)) from None


def _quoted_ident(sql: str, start: int, quote: int) -> int:
    """The end of the quoted identifier whose opening quote is ``sql[quote]`` ("" is a quote)."""
    j = quote
    while True:
        j = sql.find('"', j + 1)
        if j < 0:
            raise _lexical(lexer_error("unterminated quoted identifier", sql, start, len(sql)), len(sql))
        if sql.startswith('"', j + 1):
            j += 1
            continue
        break
    end = j + 1
    if end == quote + 2:
        raise _lexical(lexer_error("zero-length delimited identifier", sql, start, end), len(sql))
    return end


def _dollar(sql: str, i: int) -> int:
    """The end of the dollar quote starting at ``sql[i]``, or -1 if none starts there."""
    m = _DOLLAR_DELIM.match(sql, i)
    if m is None:
        return -1
    delim = m.group()
    # PostgreSQL's lexer closes the quote at the first occurrence of the same delimiter.
    close = sql.find(delim, m.end())
    if close < 0:
        raise _lexical(lexer_error("unterminated dollar-quoted string", sql, i, len(sql)), len(sql))
    return close + len(delim)


def _param(sql: str, i: int) -> int:
    """After a "$" that starts no dollar quote: $n, or a lone "$" ({dolqfailed}, {other}).
    PostgreSQL rejects identifier characters right after $n ({param_junk}); pglast's
    lexer does not, so this pass does."""
    j = i + 1
    while j < len(sql) and "0" <= sql[j] <= "9":
        j += 1
    if j > i + 1 and _IDENT_CHAR.match(sql, j):
        end = _IDENT.match(sql, j).end()
        raise _lexical(lexer_error("trailing junk after parameter", sql, i, end), len(sql))
    return j


def _number(sql: str, i: int, subs: list[tuple[int, int, str]]) -> int:
    """After a number (or a "." that starts none), and the identifier characters glued
    to it. Those are an error to PostgreSQL 15 ({integer_junk}, ...), or PostgreSQL
    16's 0x1F and 1_000, which ThanoSQL's OPTIONS accept (they never reach the
    server); pglast's lexer judges them. What matters here is only that a number
    hides no quote, comment or "$" from this pass: it holds none."""
    m = _NUMBER.match(sql, i)
    if m is None:  # "." not followed by a digit
        return i + 1
    if m.group(1) is not None:  # 1..: the integer; ".." comes next
        return m.end(1)
    end = m.end()
    if _IDENT_CHAR.match(sql, end):
        junk = _IDENT.match(sql, end).end()
        if not sql[end:junk].isascii():
            # "g": junk after any number, to pglast as to PostgreSQL ("0"/"_" could make 1_0).
            subs.append((end, junk, "".join(c if c < "\x80" else "g" for c in sql[end:junk])))
        end = junk
    return end


def _block_comment(sql: str, i: int) -> int:
    depth = 0
    pos = i + 2
    for m in _COMMENT_END.finditer(sql, pos):
        if m.group() == "/*":
            depth += 1
        elif depth == 0:
            return m.end()
        else:
            depth -= 1
    raise _lexical(lexer_error("unterminated /* comment", sql, i, len(sql)), len(sql))


# --- pass 2: pglast classifies the shadow ------------------------------------------------


def lex(sql: str, *, standard_conforming_strings: bool = True) -> Lexed:
    """The tokens of ``sql`` in order (comments left out), and the shadow pglast scanned.

    Raises LexicalError (SQLSTATE 42601 mostly) with PostgreSQL's message and position.
    """
    subs: list[tuple[int, int, str]] = []
    spans: dict[int, int] = {}
    at = [0]
    try:
        _structure(sql, standard_conforming_strings, subs, spans, at)
    except LexicalError as exc:
        # An error pglast finds before the token pass 1 failed in (junk after a number)
        # comes first, as PostgreSQL reads tokens in order.
        _scan(sql[: at[0]], _shadow(sql[: at[0]], subs))
        exc.start = min(exc.index, at[0])
        raise
    shadow = _shadow(sql, subs)
    if not shadow.isascii():  # never expected: every non-ASCII character has a stand-in
        _disagree(next(i for i, c in enumerate(shadow) if c >= "\x80"))
    raw = _scan(sql, shadow)
    if spans:
        # Every literal and comment of pass 1 must be one token of pglast's, start to end:
        # then no token of pglast's can start inside one either.
        ends = {t[0]: t[1] + 1 for t in raw}
        for start, end in spans.items():
            if ends.get(start) != end:
                _disagree(start)
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
    return Lexed(tokens, shadow)


def _shadow(sql: str, subs: list[tuple[int, int, str]]) -> str:
    if not subs:
        return sql
    parts: list[str] = []
    pos = 0
    for start, end, text in subs:
        parts.append(sql[pos:start])
        parts.append(text)
        pos = end
    parts.append(sql[pos:])
    return "".join(parts)


def _scan(sql: str, shadow: str) -> list[Any]:
    try:
        return pg.scan(shadow)
    except pg.ParseError as exc:
        # What pass 1 let through and pglast's lexer does not (junk after a number).
        message = unshadow_message(exc.args[0], exc.args[1], sql)
        raise LexicalSyntaxError(message, exc.args[1], len(sql)) from None


def tokenize(sql: str, *, standard_conforming_strings: bool = True) -> list[Token]:
    """The tokens of ``sql`` in order, comments left out.

    Raises LexicalError (SQLSTATE 42601) with the position of the offending token.
    """
    return lex(sql, standard_conforming_strings=standard_conforming_strings).tokens


def _disagree(index: int) -> None:
    # Never expected: pglast saw a literal end elsewhere than scan.l's rules say. Fail closed.
    raise InternalError(
        "internal error in the ThanoSQL preprocessor: its lexer and pglast's disagree",
        hint="Please report this with the statement that caused it.",
        position=index + 1,
    )


_NEAR = re.compile(r'at or near "(.*)"\Z', re.DOTALL)


def unshadow_message(message: str, index: int | None, sql: str) -> str:
    """A pglast error message about the shadow, quoting the user's text instead: the
    quoted token has the same offset and length in both."""
    m = _NEAR.search(message)
    if m is None or index is None:
        return message
    return message[: m.start(1)] + sql[index : index + len(m.group(1))] + '"'

