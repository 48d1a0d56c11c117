"""Messages between a BUILD's backend (thanosql_pg.server.distributed) and its workers.

A message is a JSON object and an optional blob of bytes (images, weights), framed by
their lengths: ``>IQ`` (JSON length, blob length), the JSON, the blob. Nothing is
pickled: a worker on another machine is a peer the backend must not trust with code.
Every length is checked against a bound before anything is allocated for it, and a
peer that has not yet proved it was invited (``admit``) may send only a tiny hello.

Joining (a worker from another machine): the backend sends a random challenge; the
worker answers HMAC-SHA256(secret, challenge) (the secret never crosses the wire);
the backend compares in constant time and refuses anyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
from typing import Any

HEADER = struct.Struct(">IQ")
MAX_JSON = 16 << 20  # a batch's row list, the options, a result's metrics and history
MAX_BLOB = 8 << 30  # a model's weights or a checkpoint (bytes), a batch's images
MAX_HELLO = 1024  # what a peer may send before it has proved it was invited
CHALLENGE_BYTES = 32


class WireError(Exception):
    """The peer broke the protocol, or went away."""


def send(sock: socket.socket, message: dict[str, Any], blob: bytes | memoryview = b"") -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(HEADER.pack(len(data), len(blob)) + data)
    if blob:
        sock.sendall(blob)


def _exactly(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if k == 0:
            raise WireError("the connection closed")
        got += k
    return buf


def receive(sock: socket.socket, *, max_json: int = MAX_JSON,
            max_blob: int = MAX_BLOB) -> tuple[dict[str, Any], bytes]:
    """The next message: (JSON object, blob)."""
    n_json, n_blob = HEADER.unpack(_exactly(sock, HEADER.size))
    if n_json > max_json or n_blob > max_blob:
        raise WireError(f"a message of {n_json} + {n_blob} bytes is over the limit")
    try:
        message = json.loads(bytes(_exactly(sock, n_json)))
    except ValueError as e:
        raise WireError(f"a message that is not JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise WireError("a message without a type")
    return message, bytes(_exactly(sock, n_blob)) if n_blob else b""


def challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES)


def answer(secret: str, nonce: bytes) -> str:
    return hmac.new(secret.encode(), nonce, hashlib.sha256).hexdigest()


def admitted(secret: str, nonce: bytes, reply: str) -> bool:
    return hmac.compare_digest(answer(secret, nonce), reply)


# What the rows of a batch travel as: [rn, kind, target, about, length] each, the inputs'
# bytes one after the other in the blob. kind: "b" bytes, "n" NULL, "e" the backend could
# not read it (target is then [sqlstate, message]); about: how messages name the row.
Packed = tuple[int, str, Any, str, bytes]


def pack_rows(rows: list[Packed]) -> tuple[list[list[Any]], bytes]:
    listing = [[rn, kind, target, about, len(data)] for rn, kind, target, about, data in rows]
    return listing, b"".join(row[4] for row in rows)


def unpack_rows(listing: Any, blob: bytes) -> list[Packed]:
    if not isinstance(listing, list):
        raise WireError("a batch without rows")
    out, at = [], 0
    for item in listing:
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], int)
                and item[1] in ("b", "n", "e") and isinstance(item[3], str) and isinstance(item[4], int)
                and item[4] >= 0):
            raise WireError("a malformed row")
        end = at + item[4]
        if end > len(blob):
            raise WireError("a row past its batch's bytes")
        out.append((item[0], item[1], item[2], item[3], blob[at:end]))
        at = end
    return out
