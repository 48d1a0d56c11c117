"""The proxy's relay loops in C (thanosql_pg/proxy/relay.c), driven over socket pairs.

The proxy tests (test_proxy.py, security/test_proxy_attacks.py) run whole sessions through
them; these feed each direction streams cut at every kind of place (a header split byte by
byte, a Query/Parse gathered across reads, a COPY message bigger than a read) and compare
what comes out, and what the callbacks saw, with what the Python relay does.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import wire_samples
from hypothesis import given, settings
from hypothesis import strategies as st

from thanosql_pg.proxy import protocol as proto
from thanosql_pg.proxy import session

relay = session.native_relay


def test_the_c_relay_is_built_and_is_the_default() -> None:
    # The install builds it (setup.py); without a C compiler the proxy falls back to Python,
    # which works but does not reach pgbouncer's speed at one client (bench/proxy_overhead.py).
    assert relay is not None, "thanosql_pg/proxy/relay.c was not built: install gcc and python3-dev"
    from thanosql_pg.proxy.server import ProxyConfig

    assert ProxyConfig().relay == "threads"


class _Relay:
    """Runs one relay function on a thread between two socket pairs: the test writes into
    `feed` and reads what was relayed from `out`."""

    def __init__(self, run: Callable[[int, int], Any]) -> None:
        self.feed, inner_in = socket.socketpair()
        inner_out, self.out = socket.socketpair()
        self.socks = (inner_in, inner_out)
        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = run(inner_in.fileno(), inner_out.fileno())
            except BaseException as exc:  # handed to the test
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def read_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.out.recv(n - len(data))
            assert chunk, f"relay closed after {len(data)} of {n} bytes"
            data += chunk
        return bytes(data)

    def finish(self) -> bytes:
        """Close the input; the relay ends; returns whatever it still relayed."""
        self.feed.shutdown(socket.SHUT_WR)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.socks[1].shutdown(socket.SHUT_WR)
        rest = bytearray()
        while chunk := self.out.recv(1 << 16):
            rest += chunk
        for s in (self.feed, self.out, *self.socks):
            s.close()
        return bytes(rest)


@pytest.mark.parametrize("seed", range(6))
def test_relay_server_reports_only_real_messages_and_before_forwarding_them(seed: int) -> None:
    stream, expected = wire_samples.server_stream()
    seen: list[tuple[int, bytes, int]] = []
    forwarded = [0]  # bytes the test has read back so far

    def on_message(type_byte: int, body: bytes) -> None:
        seen.append((type_byte, body, forwarded[0]))

    r = _Relay(lambda fd_in, fd_out: relay.relay_server(fd_in, fd_out, on_message))
    rnd = random.Random(seed)
    pos = 0
    while pos < len(stream):
        # Lockstep: each piece is read back before the next is sent, so the relay gets the
        # stream in exactly these pieces (mostly tiny: headers split every way).
        # (Never more than the socket buffers hold: the piece is read back only once sent.)
        step = rnd.choice([1, 2, 3, 4, 5, 6, 7, 17, 4096, 70000]) if seed else 70000
        piece = stream[pos : pos + step]
        r.feed.sendall(piece)
        assert r.read_exactly(len(piece)) == piece
        pos += len(piece)
        forwarded[0] = pos
    assert r.finish() == b""
    assert r.error is None and r.result is None
    assert [(t, b) for t, b, _ in seen] == [(t, b) for t, b, _ in expected]
    for (_, _, learnt_at), (_, _, end) in zip(seen, expected, strict=True):
        assert learnt_at < end  # learnt while the message's last byte was still held back


def _client_stream(rnd: random.Random) -> tuple[list[bytes], Callable[[int, bytes], bytes | None]]:
    """Client messages: Query/Parse (some to rewrite, one bigger than a read), Bind/Execute/
    Sync, and CopyData bigger than a read; and the rewriter: 'ECHO x' becomes 'SELECT x'."""
    messages = []
    for i in range(40):
        kind = rnd.choice(["q", "qecho", "p", "pecho", "bes", "copy"])
        if kind == "q":
            messages.append(proto.message(b"Q", f"SELECT {i}".encode() + b"\x00"))
        elif kind == "qecho":
            text = f"ECHO {i}, '{'z' * rnd.choice([1, 70000])}'"  # sometimes longer than a read
            messages.append(proto.message(b"Q", text.encode() + b"\x00"))
        elif kind in ("p", "pecho"):
            word = b"ECHO" if kind == "pecho" else b"SELECT"
            messages.append(proto.message(b"P", b"s1\x00" + word + b" $1\x00" + struct.pack("!hI", 1, 23)))
        elif kind == "bes":
            messages += [
                proto.message(b"B", b"\x00s1\x00" + struct.pack("!hhIh", 0, 1, 1, 0) + b"7"),
                proto.message(b"E", b"\x00" + struct.pack("!I", 0)),
                proto.message(b"S", b""),
            ]
        else:
            messages.append(proto.message(b"d", bytes(rnd.randrange(256) for _ in range(10)) * 9000))
    return messages, _echo_rewrite


def _echo_rewrite(type_byte: int, body: bytes) -> bytes | None:
    if type_byte == ord("Q") and body.startswith(b"ECHO"):
        return proto.message(b"Q", b"SELECT" + body[4:])
    if type_byte == ord("P") and b"\x00ECHO" in body:
        return proto.message(b"P", body.replace(b"\x00ECHO", b"\x00SELECT", 1))
    return None


def _expected(messages: list[bytes], max_rewrite: int) -> bytes:
    out = bytearray()
    for m in messages:
        length = struct.unpack_from("!I", m, 1)[0]
        new = _echo_rewrite(m[0], m[5:]) if m[:1] in (b"Q", b"P") and length <= max_rewrite else None
        out += new if new is not None else m
    return bytes(out)


@pytest.mark.parametrize("max_rewrite", [proto.DEFAULT_MAX_REWRITE_BYTES, 1000])
@pytest.mark.parametrize("seed", range(4))
def test_relay_client_rewrites_query_and_parse_and_streams_the_rest(seed: int, max_rewrite: int) -> None:
    rnd = random.Random(seed)
    messages, rewrite = _client_stream(rnd)
    calls: list[tuple[int, int]] = []

    def counting_rewrite(type_byte: int, body: bytes) -> bytes | None:
        calls.append((type_byte, len(body)))
        return rewrite(type_byte, body)

    r = _Relay(lambda fd_in, fd_out: relay.relay_client(fd_in, fd_out, proto.MAX_MESSAGE_LENGTH, max_rewrite,
                                                         counting_rewrite))
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(_read_all(r.out)), daemon=True)
    reader.start()
    stream = b"".join(messages)
    pos = 0
    while pos < len(stream):
        step = rnd.choice([1, 2, 3, 4, 5, 6, 9, 300, 70000]) if seed else len(stream)
        r.feed.sendall(stream[pos : pos + step])
        pos += step
        if step < 10:
            time.sleep(0.0005)  # mostly one recv per piece: headers and bodies cut every way
    r.feed.shutdown(socket.SHUT_WR)
    r.thread.join(10)
    r.socks[1].shutdown(socket.SHUT_WR)
    reader.join(10)
    assert r.error is None and r.result is None
    assert bytes(got) == _expected(messages, max_rewrite)
    # The rewriter saw exactly the Query/Parse messages within the limit, each once and whole.
    want = [(m[0], len(m) - 5) for m in messages
            if m[:1] in (b"Q", b"P") and struct.unpack_from("!I", m, 1)[0] <= max_rewrite]
    assert calls == want
    for s in (r.feed, r.out, *r.socks):
        s.close()


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("length", [3, 0, 2000])
def test_relay_client_reports_a_length_out_of_bounds(length: int) -> None:
    r = _Relay(lambda fd_in, fd_out: relay.relay_client(fd_in, fd_out, 1000, 500, _echo_rewrite))
    r.feed.sendall(proto.message(b"Q", b"SELECT 1\x00") + b"B" + struct.pack("!I", length) + b"xx")
    r.thread.join(10)
    assert r.error is None
    assert r.result == f"invalid message length {length} (type 0x42)"
    # What preceded the bad message was relayed; nothing of it or after it.
    assert r.finish() == proto.message(b"Q", b"SELECT 1\x00")


def test_a_callback_error_ends_the_relay_with_that_error() -> None:
    def broken(type_byte: int, body: bytes) -> bytes | None:
        raise KeyError("boom")

    r = _Relay(lambda fd_in, fd_out: relay.relay_client(fd_in, fd_out, 1 << 20, 1 << 20, broken))
    r.feed.sendall(proto.message(b"Q", b"SELECT 1\x00"))
    r.thread.join(10)
    assert isinstance(r.error, KeyError)
    r.finish()

    r = _Relay(lambda fd_in, fd_out: relay.relay_client(fd_in, fd_out, 1 << 20, 1 << 20, lambda t, b: 42))
    r.feed.sendall(proto.message(b"Q", b"SELECT 1\x00"))
    r.thread.join(10)
    assert isinstance(r.error, TypeError)  # a rewrite must return bytes or None
    r.finish()


def test_a_peer_gone_is_an_oserror() -> None:
    r = _Relay(lambda fd_in, fd_out: relay.relay_server(fd_in, fd_out, lambda t, b: None))
    r.out.close()  # the client is gone: the relay's send fails
    r.feed.sendall(proto.message(b"Z", b"I"))
    r.thread.join(10)
    assert isinstance(r.error, OSError)
    for s in (r.feed, *r.socks):
        s.close()


# --- trigger words: plain SQL never reaches Python ----------------------------------------------


def test_only_messages_with_a_trigger_word_reach_the_rewriter() -> None:
    words = (b"model", b"predict")
    calls: list[bytes] = []

    def rewrite(type_byte: int, body: bytes) -> bytes | None:
        calls.append(body)
        return None

    r = _Relay(lambda fd_in, fd_out: relay.relay_client(fd_in, fd_out, 1 << 20, 1 << 20, rewrite, words))
    texts = [b"SELECT 1", b"LIST MODEL", b"select 'PrEdIcT'", b"SELECT mode, l", b"predic", b"MODELS"]
    stream = b"".join(proto.message(b"Q", t + b"\x00") for t in texts)
    stream += proto.message(b"P", b"\x00SELECT $1 AS Model\x00\x00\x00")
    r.feed.sendall(stream)
    assert r.finish() == stream
    parse = b"\x00SELECT $1 AS Model\x00\x00\x00"
    assert calls == [b"LIST MODEL\x00", b"select 'PrEdIcT'\x00", b"MODELS\x00", parse]
    for bad in ((b"Model",), (b"",), ("model",), [b"model"]):
        with pytest.raises(TypeError):
            relay.relay_client(0, 0, 1, 1, rewrite, bad)


def test_the_proxy_gives_the_preprocessors_words() -> None:
    from thanosql_pg.preprocessor import ML_WORDS
    from thanosql_pg.proxy.server import ProxyConfig, ProxyServer

    assert ProxyServer(ProxyConfig()).trigger_words == tuple(w.encode() for w in ML_WORDS)
    assert ProxyServer(ProxyConfig(), rewriter=lambda sql, n: None).trigger_words is None  # sees everything


ENCODINGS = ["utf-8", "latin-1", "cp1252", "shift_jis", "gbk", "big5", "euc_kr", "koi8_r", "gb18030"]


# Letters of the words, and characters whose lowercase is (or holds) an ASCII letter.
_TRICKY = list("modelpredictLISTBUILD fit;(\n/é日本K\u0130\u212a\u0307ßﬁ")


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(), max_size=40),
    encoding=st.sampled_from(ENCODINGS),
)
def test_the_c_check_never_misses_what_the_preprocessor_would_rewrite(text: str, encoding: str) -> None:
    """In every client encoding, a text the preprocessor might rewrite (might_contain_ml, the
    first thing rewrite_for_wire asks) has bytes that hold a trigger word: the C relay's
    skip is safe. (The converse need not hold: it may call Python for nothing.)"""
    from thanosql_pg.preprocessor import ML_WORDS
    from thanosql_pg.preprocessor.lexer import might_contain_ml

    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        return
    words = tuple(w.encode() for w in ML_WORDS)
    if might_contain_ml(text):
        assert relay.holds_a_word(raw, words), (text, encoding)
    if any(w in text.lower() for w in ML_WORDS):
        assert relay.holds_a_word(raw, words), (text, encoding)
