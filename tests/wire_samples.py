"""Sample wire-protocol streams for the proxy's framing tests (the Python relay in
security/test_proxy_attacks.py, the C relay in test_proxy_native.py)."""

from __future__ import annotations

import struct

from thanosql_pg.proxy import protocol as proto


def data_row(value: bytes) -> bytes:
    return proto.message(b"D", struct.pack("!hI", 1, len(value)) + value)


def server_stream() -> tuple[bytes, list[tuple[int, bytes, int]]]:
    """A server stream with real Authentication/ParameterStatus messages among DataRows whose
    values look like them; and the messages a relay must report: (type, body, offset of the
    message's end in the stream). One 'S' message is over the inspection limit: only framed."""
    fake = proto.message(b"S", b"client_encoding\x00EUC_TW\x00") + proto.message(b"R", proto.AUTH_OK_BODY)
    real = [
        (b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\x00\x00"),
        (b"R", struct.pack("!I", 12) + b"v=abc"),
        (b"R", proto.AUTH_OK_BODY),
        (b"S", b"client_encoding\x00UTF8\x00"),
        (b"S", b"standard_conforming_strings\x00on\x00"),
        (b"S", b"x" * 70000 + b"\x00big\x00"),  # over the inspection limit: only framed
        (b"S", b""),  # an empty body
        (b"S", b"client_encoding\x00LATIN1\x00"),
    ]
    stream = bytearray()
    expected = []
    for i, (type_byte, body) in enumerate(real):
        stream += proto.message(type_byte, body)
        if len(body) < 60000:
            expected.append((type_byte[0], body, len(stream)))
        for value in (fake, fake * 3, b"y" * 100_000 + fake, b"S\x00\x00"):
            stream += data_row(value)
        stream += proto.message(b"Z", b"I") if i > 2 else b""
    return bytes(stream), expected
