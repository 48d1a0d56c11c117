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


def dollar_quote(body: str, tag: str = "q") -> str:
    """``$tag$body$tag$`` with a tag chosen so that ``body`` cannot close it early."""
    candidate = tag
    n = 0
    while True:
        delim = f"${candidate}$"
        # The lexer closes at the first occurrence of the delimiter; it must be
        # the one we append (this also catches a body ending in "$q").
        if (body + delim).find(delim) == len(body):
            return delim + body + delim
        n += 1
        candidate = f"{tag}{n}"


# --- decoding the user's literals -------------------------------------------------

_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_OCTAL = re.compile(r"[0-7]{1,3}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,2}")


class LiteralError(ValueError):
    """A string constant this module cannot decode (the caller adds the position)."""


def decode_string(text: str) -> str:
    """The value of an SCONST token's text.

    Handles ``'...'`` with ``''`` doubling, ``E'...'`` with backslash escapes,
    adjacent literals continued across a newline (``'a'\\n'b'``) and dollar
    quotes. The scanner has already checked the token, so the text is well formed.
    """
    if text.startswith("$"):
        end = text.index("$", 1) + 1
        return text[end : len(text) - end]
    escapes = text[0] in "eE"
    i = 1 if escapes else 0
    out = bytearray()  # bytes: E'\\xc3\\xa9' is two escaped bytes of one character
    n = len(text)
    while i < n:
        c = text[i]
        if c != "'":
            # Between continued segments: whitespace with a newline, maybe a -- comment.
            if text.startswith("--", i):
                nl = text.find("\n", i)
                i = n if nl < 0 else nl + 1
            else:
                i += 1
            continue
        i += 1  # opening quote of a segment
        while i < n:
            c = text[i]
            if c == "'":
                if i + 1 < n and text[i + 1] == "'":
                    out += b"'"
                    i += 2
                    continue
                i += 1
                break
            if c == "\\" and escapes:
                i = _escape(text, i + 1, out)
                continue
            out += c.encode("utf-8", "surrogatepass")
            i += 1
    try:
        value = out.decode("utf-8")
    except UnicodeDecodeError:
        raise LiteralError("invalid byte sequence for encoding UTF8 in string constant") from None
    if "\x00" in value:
        raise LiteralError("invalid null character in string constant")
    return value


def _escape(text: str, i: int, out: bytearray) -> int:
    """Decode the E'' escape starting at ``text[i]`` (after the backslash)."""
    c = text[i]
    if c in _SIMPLE_ESCAPES:
        out += _SIMPLE_ESCAPES[c].encode()
        return i + 1
    m = _OCTAL.match(text, i) if c in "01234567" else _HEX.match(text, i + 1) if c == "x" else None
    if m is not None:
        out.append(int(m.group(), 8 if c != "x" else 16) & 0xFF)
        return m.end()
    if c in "uU":
        width = 4 if c == "u" else 8
        digits = text[i + 1 : i + 1 + width]
        if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
            raise LiteralError("invalid Unicode escape")
        code = int(digits, 16)
        i += 1 + width
        if 0xD800 <= code <= 0xDBFF and text.startswith("\\u", i):
            low = int(text[i + 2 : i + 6], 16)
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            i += 6
        if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            raise LiteralError("invalid Unicode escape value")
        out += chr(code).encode("utf-8")
        return i
    out += c.encode("utf-8", "surrogatepass")
    return i + 1


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
