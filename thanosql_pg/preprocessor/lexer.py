"""Tokens of a SQL string, found exactly where PostgreSQL 15's lexer finds them.

What decides where a statement ends, and whether a word is SQL or the inside of
a literal, must be PostgreSQL's own reading of the text, or a string constant
could smuggle a ThanoSQL statement past the server (e.g.
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

import bisect
import re
import sys
from typing import NamedTuple

from pglast import parser as pg

from thanosql_pg.errors import (
    CharacterNotInRepertoire,
    InternalError,
    LexicalCharacterNotInRepertoire,
    LexicalError,
    LexicalFeatureNotAvailable,
    LexicalSyntaxError,
    TokenLimitExceeded,
)
from thanosql_pg.preprocessor.literals import ASCII_LOWER as _ASCII_LOWER
from thanosql_pg.preprocessor.literals import (
    LiteralError,
    continuation_end,
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
# At most _PLAIN_RUN repetitions per match: re keeps a backtracking frame per repetition
# of a group (4 MB of "1,1,1..." took 750 MB, and held the GIL 0.5 s), so _structure
# matches again where a match stopped; each repetition is one whole element, so the
# matches cover what one unbounded match would.
_PLAIN_RUN = 4096
_PLAIN = re.compile(
    rf"""(?:
        [^-/'"$.0-9A-Za-z_{_NON_ASCII}\v]
      | -(?!-) | /(?!\*) | \.(?![0-9])
      | (?![eEbBxXnN]'|[uU]&['"])[A-Za-z_][A-Za-z0-9_$]*(?![0-9A-Za-z_${_NON_ASCII}])
      | \$?[0-9]+(?![.0-9{_IDENT_START}])
    ){{0,{_PLAIN_RUN}}}""",
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


class _TooManySubstitutions(Exception):
    """Pass 1 made more replacements than the token limit: each lies in a token of its own."""


def _structure(sql: str, scs: bool, subs: list[tuple[int, int, str]], spans: dict[int, int],
               at: list[int], max_subs: int = sys.maxsize) -> None:
    """Pass 1: fills ``subs`` with the shadow's replacements (start, end, ASCII text) in
    order, and ``spans`` with the literals and comments pglast must report as single
    tokens (start -> end); ``at[0]`` is where the token being read starts. Raises
    LexicalError as PostgreSQL's lexer would, and _TooManySubstitutions (``at[0]``
    after the last one) once ``subs`` holds more than ``max_subs``."""
    n = len(sql)
    plain = _PLAIN.match
    pos = 0
    while True:
        if len(subs) > max_subs:
            at[0] = pos
            raise _TooManySubstitutions
        i = plain(sql, pos).end()
        while i < n:  # stopped after _PLAIN_RUN elements, or at what it leaves to the code below
            j = plain(sql, i).end()
            if j == i:
                break
            i = j
        at[0] = i
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
            after = continuation_end(sql, j + 1)
            if after < 0:
                return j + 1
            j = after - 1
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


def lex(sql: str, *, standard_conforming_strings: bool = True, max_tokens: int | None = None) -> Lexed:
    """The tokens of ``sql`` in order (comments left out), and the shadow pglast scanned.

    Raises LexicalError (SQLSTATE 42601 mostly) with PostgreSQL's message and position.
    With ``max_tokens``, raises TokenLimitExceeded (54000) for a text of more tokens
    (comments included) having read at most a few thousand more: what the lexer holds
    stays proportional to ``max_tokens``, whatever the length of the text.
    """
    subs: list[tuple[int, int, str]] = []
    spans: dict[int, int] = {}
    at = [0]
    limit = max_tokens if max_tokens is not None else sys.maxsize
    try:
        _structure(sql, standard_conforming_strings, subs, spans, at, limit)
    except LexicalError as exc:
        # An error pglast finds before the token pass 1 failed in (junk after a number)
        # comes first, as PostgreSQL reads tokens in order.
        _scan(sql[: at[0]], _shadow(sql[: at[0]], subs), spans, limit, check=False)
        exc.start = min(exc.index, at[0])
        raise
    except _TooManySubstitutions:
        # More literals (or other replacements) than tokens allowed: the tokens up to
        # there, for the caller to look at, then the limit (or an error pglast finds first).
        prefix = _shadow(sql[: at[0]], subs)
        tokens = _scan(sql, prefix, spans, limit)
        raise TokenLimitExceeded(f"more than {limit} tokens", limit, at[0], tokens, prefix) from None
    shadow = _shadow(sql, subs)
    if not shadow.isascii():  # never expected: every non-ASCII character has a stand-in
        _disagree(next(i for i, c in enumerate(shadow) if c >= "\x80"))
    return Lexed(_scan(sql, shadow, spans, limit), shadow)


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


# pglast scans the shadow in pieces of about _SCAN_CHUNK characters, not all at once: it
# makes a Python object per token, all of a text's at once (and holds the GIL for a pass
# over every character), so a 4 MB text of 4 million tokens cost gigabytes before any
# limit could be checked. A piece ends before a space, "," ";" "(" ")" "[" or "]", or
# at the end of a literal or comment (a span of pass 1): no token of PostgreSQL's
# lexer goes on across one, so the pieces' tokens are the whole text's. Texts shorter
# than a piece are scanned in one. In a piece, the filler of a span longer than
# _LONG_SPAN is left out but for its first and last 8 characters (a shorter literal of
# the same kind to pglast), and the offsets mapped back: a 4 MB literal is no 4 MB
# pass under the GIL.
_SCAN_CHUNK = 1 << 15
_LONG_SPAN = 1 << 12
_SPLIT = re.compile(r"[ \t\n\r\f,;()\[\]]")
_LAST_SPLIT = re.compile(r".*[ \t\n\r\f,;()\[\]]", re.DOTALL)  # to the last place to cut
# PostgreSQL's lexer (so pglast's) takes quadratic time in a long run of operator
# characters made of "+" and "-" (it gives one back and reads the rest again, for each)
# or of empty comments /**/ (each reads on to the end of the run). None is more than a
# few characters long in real SQL: with max_tokens, a run of more than _MAX_OPERATOR_RUN
# is refused. The pattern finds one in linear time: a run is tried only from its start.
_MAX_OPERATOR_RUN = 1024
# Where a run has no place to cut, pglast scans a prefix of it: the tokens that end more than
# _MARGIN characters before the prefix does are the whole text's. To tell where a token ends,
# PostgreSQL's lexer reads on past it at most a run of operator characters (at most
# _MAX_OPERATOR_RUN once checked) or a few characters (1., 1e+, U&, N', $x, ::).
_MARGIN = _MAX_OPERATOR_RUN + 64
_OPERATOR_RUN = re.compile(rf"(?:^|[^-+*/<>=~!@#^&|`?%])([-+*/<>=~!@#^&|`?%]{{{_MAX_OPERATOR_RUN + 1}}})")
_NAMES: dict[str, str] = {}  # one str object per token name and keyword kind, for all tokens


def _scan(sql: str, shadow: str, spans: dict[int, int], limit: int, check: bool = True) -> list[Token]:
    """The tokens (comments left out) of ``shadow``, the shadow of ``sql`` or of a prefix
    of it: pglast's, each checked against pass 1's ``spans`` unless not ``check`` (every
    literal and comment must be one token, start to end: then no token can start inside
    one either). TokenLimitExceeded past ``limit`` tokens (sys.maxsize: no limit)."""
    n = len(shadow)
    starts = list(spans)  # in order: pass 1 found them so
    bad = -1  # the first span pglast disagrees with
    count = 0
    limited = limit != sys.maxsize
    tokens: list[Token] = []
    append = tokens.append
    new = tuple.__new__  # Token(...) without the NamedTuple constructor's overhead
    one = _NAMES.setdefault  # pglast makes two new str objects per token: keep one of each
    intern = sys.intern
    comments = _COMMENTS
    maxsize = sys.maxsize
    pos = 0
    while pos < n:
        stop = _piece_end(shadow, pos, starts, spans)
        partial = False  # scanning a prefix of a run without a place to cut
        if stop - pos > 2 * _SCAN_CHUNK:
            # A long run without a place to cut (a.a.a..., 1+1+1...) lies after pos + _SCAN_CHUNK:
            # read up to it first, then the run.
            cut = _last_cut(shadow, pos, pos + _SCAN_CHUNK, starts, spans)
            if cut > pos:
                stop = cut
            elif limited and _piece_bound(pos, stop, starts, spans) > 2 * _SCAN_CHUNK:
                # pglast would make all the run's tokens at once: scan a prefix of it, and
                # keep the tokens that end well before the prefix does (_MARGIN).
                stop = pos + 2 * _SCAN_CHUNK
                k = bisect.bisect_right(starts, stop) - 1
                if k >= 0 and spans[starts[k]] > stop:
                    stop = starts[k]
                partial = True
        k0 = bisect.bisect_left(starts, pos)
        k1 = bisect.bisect_left(starts, stop, k0)
        piece, shrunk = _piece(shadow, pos, stop, starts, spans, k0, k1)
        if limited and (m := _OPERATOR_RUN.search(piece)) is not None:
            # Read up to the run first, for the tokens before it.
            at = _unshrink(m.start(1), pos, shrunk)
            cut = _last_cut(shadow, pos, at, starts, spans)
            if cut <= pos:
                if bad >= 0:
                    _disagree(bad)
                raise TokenLimitExceeded(f"more than {_MAX_OPERATOR_RUN} operator characters in a row",
                                         limit, at, tokens, shadow[:pos])
            stop = cut
            partial = False
            k1 = bisect.bisect_left(starts, stop, k0)
            piece, shrunk = _piece(shadow, pos, stop, starts, spans, k0, k1)
        while True:
            try:
                raw = pg.scan(piece)
                break
            except pg.ParseError as exc:
                if partial and exc.args[1] is not None and exc.args[1] >= len(piece) - _MARGIN > _MARGIN:
                    piece = piece[: len(piece) - _MARGIN]  # maybe the prefix's end: scan less
                    continue
                # What pass 1 let through and pglast's lexer does not (junk after a number).
                raise _piece_error(exc, sql, shadow, pos, len(piece), shrunk) from None
        if partial:  # no spans in the piece: its offsets are the text's, less pos
            keep = len(piece) - _MARGIN
            kept = 0
            while kept < len(raw) and raw[kept][1] < keep:
                kept += 1
            if not kept:
                if bad >= 0:
                    _disagree(bad)
                raise TokenLimitExceeded(f"a word or number of more than {keep} characters",
                                         limit, pos, tokens, shadow[:pos])
            del raw[kept:]
            stop = pos + raw[-1][1] + 1
            k1 = bisect.bisect_left(starts, stop, k0)
        # Offsets in the piece -> in the text: + pos, + what shrunk spans before lost.
        off = pos
        si = 0
        next_cut = shrunk[0][0] if shrunk else maxsize
        kk = k0 if check else k1  # the next span to check
        next_span = starts[kk] if kk < k1 else maxsize
        for start, last, name, kind in raw:
            if start >= next_cut:
                while si < len(shrunk) and shrunk[si][0] <= start:
                    off += shrunk[si][1]
                    si += 1
                next_cut = shrunk[si][0] if si < len(shrunk) else maxsize
            start += off
            end = last + off + 1 if last < next_cut else last + off + shrunk[si][1] + 1
            if start >= next_span:
                if bad < 0 and (start > next_span or spans[next_span] != end):
                    bad = next_span  # no token starts where it does, or this one ends elsewhere
                kk += 1
                while kk < k1 and starts[kk] <= start:  # more spans passed without a token
                    if bad < 0 and starts[kk] < start:
                        bad = starts[kk]
                    kk += 1
                next_span = starts[kk] if kk < k1 else maxsize
            if name in comments:
                continue
            text = sql[start:end]
            if kind != "NO_KEYWORD":
                word: str | None = intern(text.lower())
            elif name == "IDENT" and text[0] != '"':
                word = intern(text.lower() if text.isascii() else text.translate(_ASCII_LOWER))
            else:
                word = None
            append(new(Token, (start, end, one(name, name), one(kind, kind), text, word)))
        if bad < 0 and kk < k1:  # spans after the last token
            bad = starts[kk]
        count += len(raw)
        if count > limit:
            if bad >= 0:
                _disagree(bad)
            over = _unshrink(raw[len(raw) - (count - limit)][0], pos, shrunk)
            raise TokenLimitExceeded(f"more than {limit} tokens", limit, over, tokens, shadow[:stop])
        pos = stop
    if bad >= 0:
        _disagree(bad)
    return tokens


def _piece(shadow: str, pos: int, stop: int, starts: list[int], spans: dict[int, int], k0: int,
           k1: int) -> tuple[str, list[tuple[int, int]]]:
    """``shadow[pos:stop]`` for pglast, the spans ``starts[k0:k1]`` (those in it) longer than
    _LONG_SPAN shrunk to their first and last 8 characters (filler goes between); and for
    each shrunk one, where in the piece its characters went missing and how many."""
    whole = pos == 0 and stop == len(shadow)
    if whole and k0 == k1:
        return shadow, []
    parts: list[str] = []
    shrunk: list[tuple[int, int]] = []
    at = pos  # what of the shadow is in parts
    lost = 0
    for k in range(k0, k1):
        start = starts[k]
        end = spans[start]
        if end - start > _LONG_SPAN:
            parts.append(shadow[at : start + 8])
            shrunk.append((start + 8 - pos - lost, end - start - 16))
            lost += end - start - 16
            at = end - 8
    if not shrunk:
        return shadow if whole else shadow[pos:stop], []
    parts.append(shadow[at:stop])
    return "".join(parts), shrunk


_IDENT_CONT = re.compile(r"[0-9A-Za-z_$]*")  # in the shadow


def _piece_error(exc: pg.ParseError, sql: str, shadow: str, pos: int, size: int,
                 shrunk: list[tuple[int, int]]) -> LexicalSyntaxError:
    """pglast's error about a piece (of ``size`` characters, from ``pos``), about the text:
    its position, and the token it quotes as the whole text's scan would."""
    message, index = exc.args[0], exc.args[1]
    if index is None:
        return LexicalSyntaxError(message, None, len(sql))
    start = _unshrink(index, pos, shrunk)
    m = _NEAR.search(message)
    if m is not None and m.group(1):
        end = _unshrink(index + len(m.group(1)) - 1, pos, shrunk) + 1  # it may hold shrunk spans
        if index + len(m.group(1)) == size:
            # Up to the piece's end: junk after a number goes on over identifier characters,
            # "$" included (a dollar quote's shadow; pass 1 reads these apart, pglast not).
            end = _IDENT_CONT.match(shadow, end).end()
        message = message[: m.start(1)] + "x" * (end - start) + '"'
    return LexicalSyntaxError(unshadow_message(message, start, sql), start, len(sql))


def _unshrink(index: int, pos: int, shrunk: list[tuple[int, int]]) -> int:
    """The offset in the text of ``index`` in a piece (see _piece)."""
    return index + pos + sum(lost for at, lost in shrunk if at <= index)


def _piece_end(shadow: str, pos: int, starts: list[int], spans: dict[int, int]) -> int:
    """Where the piece of the shadow that starts at ``pos`` ends: the first place to cut
    (see _SPLIT) at least _SCAN_CHUNK characters on, or the end."""
    n = len(shadow)
    at = pos + _SCAN_CHUNK
    if at >= n:
        return n
    while True:
        k = bisect.bisect_right(starts, at) - 1  # the last span starting at or before `at`
        if k >= 0 and spans[starts[k]] > at:
            return spans[starts[k]]  # inside a literal or comment: cut at its end
        m = _SPLIT.search(shadow, at)
        nxt = starts[k + 1] if k + 1 < len(starts) else n
        if m is not None and m.start() < nxt:
            return m.start()
        if nxt >= n:
            return n
        at = nxt  # a literal or comment comes first: cut at its end


def _last_cut(shadow: str, pos: int, at: int, starts: list[int], spans: dict[int, int]) -> int:
    """The last place to cut in ``shadow[pos + 1 : at + 1]`` (see _piece_end), or ``pos``."""
    k = bisect.bisect_right(starts, at) - 1
    upper = at
    if k >= 0 and spans[starts[k]] > at:  # `at` is inside this span: look before it
        upper = starts[k] - 1
        k -= 1
    lower = spans[starts[k]] if k >= 0 else 0  # the end of the last span before: a place to cut
    lower = max(lower, pos)
    m = _LAST_SPLIT.match(shadow, lower + 1, upper + 1) if upper > lower else None
    return m.end() - 1 if m is not None else lower


def _piece_bound(pos: int, stop: int, starts: list[int], spans: dict[int, int]) -> int:
    """At most how many tokens ``shadow[pos:stop]`` holds: a span is one, any other
    character at most one."""
    bound = stop - pos
    k = bisect.bisect_left(starts, pos)
    while k < len(starts) and starts[k] < stop:
        bound -= spans[starts[k]] - starts[k] - 1
        k += 1
    return bound


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

