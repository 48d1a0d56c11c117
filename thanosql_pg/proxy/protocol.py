"""PostgreSQL v3 wire-protocol pieces the proxy needs: constants, framing, builders.

Only what the proxy touches is modelled. Everything else is relayed as opaque bytes, so
this module deliberately knows nothing about most message types.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable

from thanosql_pg.preprocessor.rewriter import DEFAULT_MAX_TOKENS

# Special request codes that stand where a protocol version would in a startup packet.
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
PROTOCOL_V3 = 196608  # 3 << 16

# The server refuses startup packets longer than this (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_LENGTH = 10000
# Anything claiming to be longer is garbage: PostgreSQL's own limit is 1 GiB - 1 (MaxAllocSize).
MAX_MESSAGE_LENGTH = (1 << 30) - 1

QUERY = 0x51  # 'Q'
PARSE = 0x50  # 'P'
# Server -> client message types the proxy looks inside; every other one it only frames.
AUTHENTICATION = 0x52  # 'R'
PARAMETER_STATUS = 0x53  # 'S'
AUTH_OK_BODY = b"\x00\x00\x00\x00"

# Before AuthenticationOk the only legal client messages are password/SASL/GSS responses,
# which the server reads with a limit of PG_MAX_AUTH_TOKEN_LENGTH (65535) bytes of body.
# Anything longer is refused at once, so an unauthenticated client cannot make the proxy
# relay (or hold) more than that per message.
MAX_PRE_AUTH_MESSAGE_LENGTH = 65535 + 4
# Query/Parse messages up to this length (the int32 length field) are buffered whole and
# rewritten; longer ones are streamed to the server untouched. THANOSQL_PROXY_MAX_REWRITE_BYTES
# or --max-rewrite-bytes change it.
DEFAULT_MAX_REWRITE_BYTES = 4 << 20
# The most tokens the rewriter reads of one Query/Parse: a text holding a ThanoSQL statement
# and more tokens gets SQLSTATE 54000, plain SQL is relayed untouched (the preprocessor's
# bound, which the backend applies too). THANOSQL_PROXY_MAX_REWRITE_TOKENS or
# --max-rewrite-tokens change it.
DEFAULT_MAX_REWRITE_TOKENS = DEFAULT_MAX_TOKENS

HEADER = struct.Struct("!I")
INT16 = struct.Struct("!h")

# The only two message types whose SQL text may be rewritten. `bytes.__contains__` on a
# 2-byte constant is cheaper than a set lookup on the hot path.
REWRITTEN_TYPES = b"QP"

# Rewriter signature: (sql, n_params) -> new sql, or None to keep the message as it is. A
# rewriter may also take a keyword `standard_conforming_strings: bool`; the proxy passes the
# session's current value when it does (see ProxyServer).
Rewriter = Callable[..., "str | None"]


class ProtocolViolation(Exception):
    """The client sent bytes that cannot be a valid protocol stream."""


# --- encodings -----------------------------------------------------------------------------------

# PostgreSQL encoding names (normalised: upper case, alphanumerics only) -> Python codecs.
# SQL_ASCII means "bytes, uninterpreted": latin-1 round-trips every byte unchanged.
_PG_TO_PY = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQLASCII": "latin-1",
    "LATIN1": "iso8859-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO88595": "iso8859-5",
    "ISO88596": "iso8859-6",
    "ISO88597": "iso8859-7",
    "ISO88598": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUCJP": "euc-jp",
    "EUCJIS2004": "euc-jis-2004",
    "SJIS": "shift-jis",
    "SHIFTJIS2004": "shift-jis-2004",
    "EUCKR": "euc-kr",
    "UHC": "cp949",
    "JOHAB": "johab",
    "EUCCN": "gb2312",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "BIG5": "big5",
}


def python_encoding(pg_name: str) -> str | None:
    """Python codec for a PostgreSQL client_encoding name, or None when there is none.

    PostgreSQL compares encoding names ignoring case and non-alphanumerics ('utf-8' ==
    'UTF8'), so do the same. With no codec (e.g. EUC_TW, MULE_INTERNAL) the proxy stops
    rewriting rather than risk corrupting text.
    """
    key = "".join(ch for ch in pg_name.upper() if ch.isalnum())
    name = _PG_TO_PY.get(key)
    if name is None:
        return None
    return codecs.lookup(name).name


# --- startup phase -------------------------------------------------------------------------------


def parse_startup_params(body: bytes) -> dict[str, str]:
    """Key/value pairs of a v3 StartupMessage, `body` being everything after the version.

    Parameters are NUL-terminated strings ending with an empty name. Values are decoded as
    latin-1 so that odd bytes never raise; only ASCII names/values matter to the proxy.
    """
    parts = body.split(b"\x00")
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        if not parts[i]:
            break
        params[parts[i].decode("latin-1")] = parts[i + 1].decode("latin-1")
    return params


# --- messages the proxy builds itself ------------------------------------------------------------


def message(type_byte: bytes, body: bytes) -> bytes:
    return type_byte + HEADER.pack(len(body) + 4) + body


def error_response(message_text: str, sqlstate: str = "08006", severity: str = "FATAL") -> bytes:
    """An ErrorResponse for failures the proxy itself reports (e.g. upstream unreachable)."""
    fields = b"".join(
        code + value.encode("utf-8") + b"\x00"
        for code, value in (
            (b"S", severity),
            (b"V", severity),
            (b"C", sqlstate),
            (b"M", message_text),
        )
    )
    return message(b"E", fields + b"\x00")


def startup_packet(params: dict[str, str], version: int = PROTOCOL_V3) -> bytes:
    body = struct.pack("!I", version)
    for key, value in params.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return HEADER.pack(len(body) + 4) + body


# --- rewriting -----------------------------------------------------------------------------------


def rewrite_message(
    type_byte: int, body: bytes | memoryview, encoding: str, rewriter: Rewriter
) -> bytes | None:
    """The whole re-encoded message (type byte included) for a Query/Parse, or None.

    None means "forward the original bytes": no rewrite needed, a malformed message (the
    server will report it), or text that does not decode in the client encoding.
    """
    if type_byte == QUERY:
        # Query: String query  (NUL-terminated)
        end = len(body) - 1
        if end < 0 or body[end] != 0:
            return None
        try:
            sql = bytes(body[:end]).decode(encoding)
        except UnicodeDecodeError:
            return None
        new_sql = rewriter(sql, 0)
        if new_sql is None:
            return None
        return message(b"Q", new_sql.encode(encoding) + b"\x00")

    # Parse: String name, String query, Int16 nparams, Int32[nparams] type OIDs
    raw = bytes(body)
    name_end = raw.find(b"\x00")
    if name_end < 0:
        return None
    query_end = raw.find(b"\x00", name_end + 1)
    if query_end < 0 or query_end + 3 > len(raw):
        return None
    (n_params,) = INT16.unpack_from(raw, query_end + 1)
    try:
        sql = raw[name_end + 1 : query_end].decode(encoding)
    except UnicodeDecodeError:
        return None
    new_sql = rewriter(sql, max(n_params, 0))
    if new_sql is None:
        return None
    return message(b"P", raw[: name_end + 1] + new_sql.encode(encoding) + raw[query_end:])


def parse_parameter_status(body: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    """(name, value) of a ParameterStatus body: two NUL-terminated strings; None if malformed.

    Called only on messages the proxy framed itself from the server's stream, never on
    bytes found by searching: a stored value shaped like this message must not count.
    """
    raw = bytes(body)
    name_end = raw.find(b"\x00")
    if name_end < 0 or not raw.endswith(b"\x00") or len(raw) <= name_end + 1:
        return None
    return raw[:name_end], raw[name_end + 1 : -1]


def is_authentication_ok(body: bytes | bytearray | memoryview) -> bool:
    """True for the body of AuthenticationOk ('R' with int32 0): the session is authenticated."""
    return len(body) == 4 and bytes(body) == AUTH_OK_BODY
