"""SQL literals and identifiers: decoding the user's, quoting ours.

Everything the rewrite splices into SQL text goes through one of the
``quote_*`` functions here, so that no model name, option value or table name
can end a literal early. The quoting is safe under any
``standard_conforming_strings`` setting: a string holding a backslash becomes
an ``E''`` literal with the backslashes doubled (what PostgreSQL's own
``quote_literal`` does), any other string a plain ``''`` literal.
"""

from __future__ import annotations

import re

from pglast.keywords import (
    COL_NAME_KEYWORDS,
    RESERVED_KEYWORDS,
    TYPE_FUNC_NAME_KEYWORDS,
    UNRESERVED_KEYWORDS,
)

from thanosql_pg.errors import (
    LexicalCharacterNotInRepertoire,
    LexicalError,
    LexicalInvalidEscape,
    LexicalSyntaxError,
)

ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_SAFE_IDENT = re.compile(r"[a-z_][a-z0-9_]*\Z")
_KEYWORDS = frozenset(RESERVED_KEYWORDS | COL_NAME_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS | UNRESERVED_KEYWORDS)


def fold_identifier(text: str) -> str:
    """Fold an unquoted identifier as PostgreSQL does: ASCII letters only."""
    return text.lower() if text.isascii() else text.translate(ASCII_LOWER)


def quote_literal(value: str) -> str:
    """A SQL string literal for ``value``, safe under any standard_conforming_strings."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def quote_nullable(value: str | None) -> str:
    return "NULL" if value is None else quote_literal(value)


def quote_ident(name: str) -> str:
    """A delimited identifier: always quoted, inner double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def quote_ident_if_needed(name: str) -> str:
    """Quote ``name`` only where PostgreSQL's quote_ident would (readable output)."""
    if _SAFE_IDENT.match(name) and (name not in _KEYWORDS or name in UNRESERVED_KEYWORDS):
        return name
    return quote_ident(name)


def _tag_number(digits: str) -> int:
    """N of a dollar-quote tag $tagN$ that dollar_quote() might choose; -1 for none it would."""
    if digits[:1] == "0" or len(digits) >= 19:
        return -1
    return int(digits) if digits else 0


def dollar_quote(body: str, tag: str = "q") -> str:
    """``$tag$body$tag$`` with a tag chosen so that ``body`` cannot close it early."""
    # The lexer closes at the first occurrence of the delimiter; it must be the one we
    # append. ``$tagN$`` fails when the body holds it, or ends in ``$tagN`` (completed by
    # the appended delimiter's first "$"). Collect every N in use in one linear pass,
    # then take the first free one: trying candidates one by one, each a search of the
    # whole body, was quadratic (a body full of $q1$ $q2$ ... took seconds).
    prefix = re.escape("$" + tag)
    # Candidates are $tag$ (N = 0) and $tag1$, $tag2$, ...: never digits with a leading 0,
    # nor 19 or more of them: N never gets that big, and int() refuses thousands of digits.
    # A set, not a list of every match: memory for the distinct N only.
    used = {_tag_number(m.group(1)) for m in re.finditer(prefix + r"([0-9]*)(?=\$)", body)}
    # A trailing "$tagN" holds no other "$", so it can only start at the last one.
    trailing = re.fullmatch(prefix + r"([0-9]*)", body[body.rfind("$") :]) if "$" in body else None
    if trailing is not None:
        used.add(_tag_number(trailing.group(1)))
    used.discard(-1)
    n = min(set(range(len(used) + 1)) - used)
    delim = f"${tag}{n}$" if n else f"${tag}$"
    return delim + body + delim


# --- reading the user's string constants ------------------------------------------
# PostgreSQL 15's scan.l, states xq (standard strings) and xe (backslash escapes): the
# lexer (lexer.py) finds where a string constant ends with read_string(), which also
# raises every error PostgreSQL's lexer raises inside one; decode_string() gets values.

_SIMPLE_ESCAPES = {"b": 8, "f": 12, "n": 10, "r": 13, "t": 9}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_QUOTE_OR_BACKSLASH = re.compile(r"['\\]")
# After a closing quote, the constant goes on at the next quote when only whitespace
# holding a newline lies between, -- comments included ({quotecontinue}; /* */ does not
# count, nor \v before PostgreSQL 16): what
# (?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f]|--[^\n\r]*[\n\r])*' matches, read by
# continuation_end() in constant memory. (Python's re keeps a backtracking frame for
# every repetition of a group: that pattern took 500 MB for 4 MB of spaces after a
# quote. Here only single-character classes repeat, and comment lines at most 1024 at
# a time.)
_CONTINUATION_HEAD = re.compile(r"[ \t\f]*(?:--[^\n\r]*)?[\n\r][ \t\n\r\f]*")
_CONTINUATION_COMMENTS = re.compile(r"(?:--[^\n\r]*[\n\r][ \t\n\r\f]*){1,1024}")
_ESCAPE_HINT = "Unicode escapes must be \\uXXXX or \\UXXXXXXXX."


class LiteralError(ValueError):
    """What PostgreSQL's lexer says about a string constant it rejects: the message as
    the server words it, ``index`` (0-based, None for none), the error class (of its
    SQLSTATE) the lexer raises for it, and the hint."""

    def __init__(self, message: str, index: int | None, *, error: type[LexicalError] = LexicalSyntaxError,
                 hint: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.error = error
        self.hint = hint
        self.detail = detail


def lexer_error(message: str, text: str, index: int, end: int) -> LiteralError:
    """scan.l's yyerror(): ``message at or near "text[index:end]"``, or ``at end of input``."""
    if index >= len(text):
        return LiteralError(f"{message} at end of input", index)
    return LiteralError(f'{message} at or near "{text[index:end]}"', index)


def read_string(text: str, start: int, quote: int, *, escapes: bool, out: bytearray | None = None) -> int:
    """The index just past the string constant whose first quote is ``text[quote]``
    (``start``: where its token starts, prefix included), continuations included, as
    scan.l reads it: ``''`` is a quote; with ``escapes`` (E'', or '' when
    standard_conforming_strings is off) backslash escapes too. Appends the value's
    UTF-8 bytes to ``out`` when given. Raises LiteralError where PostgreSQL does."""
    n = len(text)
    pos = quote + 1
    buf = out if out is not None or not escapes else bytearray()
    check_bytes = False  # PostgreSQL's saw_non_ascii: an escape made a NUL or a high byte
    while True:
        if escapes:
            m = _QUOTE_OR_BACKSLASH.search(text, pos)
            j = m.start() if m is not None else -1
        else:
            j = text.find("'", pos)
        if j < 0:
            raise lexer_error("unterminated quoted string", text, start, n)
        if buf is not None and j > pos:
            buf += text[pos:j].encode("utf-8", "surrogatepass")
        if text[j] == "\\":
            pos, high = _escape(text, j, buf)
            check_bytes = check_bytes or high
            continue
        if j + 1 < n and text[j + 1] == "'":  # {xqdouble}
            if buf is not None:
                buf.append(0x27)
            pos = j + 2
            continue
        after = continuation_end(text, j + 1)
        if after < 0:
            break
        pos = after
    if check_bytes and buf is not None:
        _verify_utf8(bytes(buf), start)
    return j + 1


def continuation_end(text: str, pos: int) -> int:
    """Where the constant that closed just before ``text[pos]`` goes on (the index
    after the quote that continues it), or -1 when it does not go on."""
    m = _CONTINUATION_HEAD.match(text, pos)
    if m is None:
        return -1
    pos = m.end()
    while text.startswith("--", pos):
        m = _CONTINUATION_COMMENTS.match(text, pos)
        if m is None:  # a comment up to the end of the text
            return -1
        pos = m.end()
    return pos + 1 if text.startswith("'", pos) else -1


def _escape(text: str, i: int, out: bytearray | None) -> tuple[int, bool]:
    """The escape whose backslash is ``text[i]``: its value appended to ``out``; returns
    the index after it and whether it made a NUL or non-ASCII byte (to verify later)."""
    n = len(text)
    if i + 1 >= n:  # a backslash just before the end: kept, then "unterminated"
        if out is not None:
            out.append(0x5C)
        return i + 1, False
    c = text[i + 1]
    if c in _SIMPLE_ESCAPES:
        if out is not None:
            out.append(_SIMPLE_ESCAPES[c])
        return i + 2, False
    if "0" <= c <= "7":  # {xeoctesc}: up to three octal digits, the low byte kept
        j = i + 2
        while j < n and j < i + 4 and "0" <= text[j] <= "7":
            j += 1
        value = int(text[i + 1 : j], 8) & 0xFF
        if out is not None:
            out.append(value)
        return j, value == 0 or value >= 0x80
    if c == "x" and i + 2 < n and text[i + 2] in _HEX_DIGITS:  # {xehexesc}
        j = i + 3 if i + 3 < n and text[i + 3] in _HEX_DIGITS else i + 2
        value = int(text[i + 2 : j + 1], 16)
        if out is not None:
            out.append(value)
        return j + 1, value == 0 or value >= 0x80
    if c in "uU":
        code, j = _unicode_escape(text, i)
        if 0xD800 <= code <= 0xDBFF:
            # The first half of a UTF-16 surrogate pair: the second must follow at once.
            if not text.startswith(("\\u", "\\U"), j):
                raise lexer_error("invalid Unicode surrogate pair", text, j, j + 1)
            low, k = _unicode_escape(text, j)
            if not 0xDC00 <= low <= 0xDFFF:
                raise lexer_error("invalid Unicode surrogate pair", text, j, k)
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            j = k
        elif 0xDC00 <= code <= 0xDFFF:
            raise lexer_error("invalid Unicode surrogate pair", text, i, j)
        elif code == 0 or code > 0x10FFFF:
            raise lexer_error("invalid Unicode escape value", text, i, j)
        if out is not None:
            out += chr(code).encode("utf-8")
        return j, False
    # {xeescape}: any other character stands for itself (\' \\ \" ...).
    if out is not None:
        out += c.encode("utf-8", "surrogatepass")
    return i + 2, c >= "\x80"


def _unicode_escape(text: str, i: int) -> tuple[int, int]:
    """``\\uXXXX`` or ``\\UXXXXXXXX`` at ``text[i]``: (code point, index after it)."""
    width = 4 if text[i + 1] == "u" else 8
    digits = text[i + 2 : i + 2 + width]
    if len(digits) != width or not all(d in _HEX_DIGITS for d in digits):  # {xeunicodefail}
        raise LiteralError("invalid Unicode escape", i, error=LexicalInvalidEscape, hint=_ESCAPE_HINT)
    return int(digits, 16), i + 2 + width


def _verify_utf8(value: bytes, start: int) -> None:
    """pg_verifymbstr(): escapes can spell bytes that are no UTF-8 (E'\\xff'), or NUL."""
    try:
        value.decode("utf-8")
        bad = len(value)
    except UnicodeDecodeError as exc:
        bad = exc.start
    nul = value.find(b"\x00", 0, bad)
    if nul >= 0:
        bad = nul
    if bad == len(value):
        return
    lead = value[bad]
    length = 1 if lead < 0x80 else 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else (
        4 if lead & 0xF8 == 0xF0 else 1)
    shown = " ".join(f"0x{b:02x}" for b in value[bad : bad + min(length, 8)])
    # PostgreSQL reports this without a position; the index is where the constant starts.
    raise LiteralError(f'invalid byte sequence for encoding "UTF8": {shown}', start,
                       error=LexicalCharacterNotInRepertoire)


def decode_string(text: str, *, standard_conforming_strings: bool = True) -> str:
    """The value of a string constant token's text (SCONST): ``'...'`` with ``''``
    doubling (and backslash escapes when ``standard_conforming_strings`` is off),
    ``E'...'`` with backslash escapes, adjacent constants continued across a newline
    (``'a'\\n'b'``), and dollar quotes. The lexer has checked the text already."""
    if text.startswith("$"):
        end = text.index("$", 1) + 1
        return text[end : len(text) - end]
    escapes = text[0] in "eE"
    quote = 1 if escapes else 0
    out = bytearray()  # bytes: E'\\xc3\\xa4' is one character in two escaped bytes
    read_string(text, 0, quote, escapes=escapes or not standard_conforming_strings, out=out)
    return out.decode("utf-8")


def parse_integer(text: str) -> int:
    """The value of an ICONST token (decimal, 0x/0o/0b, underscores)."""
    t = text.lower()
    if t.startswith(("0x", "0o", "0b")):
        return int(t, 0)
    return int(t, 10)


def parse_number(text: str) -> int | float:
    """The value of an FCONST token: a float, or an int for integers too big for ICONST."""
    t = text.replace("_", "")
    if not any(c in t for c in ".eE"):
        return parse_integer(t)
    return float(t)
