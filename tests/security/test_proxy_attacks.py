"""Attacks on thanosql-proxy: buffering and rewriting, forged session state, the late cancel.

Each test asserts the clean outcome: nothing rewritten before the server authenticated the
client, memory bounded whatever a message header claims, other clients unaffected, session
state (client_encoding, standard_conforming_strings) learnt only from real server messages,
and cancel requests answered only once the server has handled them.

Proxies run as their own processes (`thanosql-proxy` from this checkout), so that their
memory can be read from /proc and their event loop is not the test's. Where the attack
happens before authentication, the upstream is `FakeServer`, a stand-in PostgreSQL that asks
for a password and records the exact bytes it receives (the embedded cluster trusts
loopback, so it would never ask).
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import wire_samples
from proxy_process import Heartbeat, recv_exactly
from proxy_process import ProxyProcess as CliProxy
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from thanosql_pg.preprocessor import rewrite_for_wire
from thanosql_pg.preprocessor.literals import dollar_quote
from thanosql_pg.proxy import protocol as proto
from thanosql_pg.proxy.server import BackgroundProxy, ProxyConfig, ProxyServer, _parse_args, accepts_keyword
from thanosql_pg.proxy.session import UpstreamSide

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PASSWORD_USER = "needs_password"
PASSWORD = b"secret"
# A ThanoSQL statement whose query text is full of dollar-quote tags: the rewrite must pick a
# free tag for it. Choosing one by trying $q$, $q1$, $q2$, ... against the whole text was
# quadratic: 309 KB of this stalled every client of the proxy for 9 s.
DOLLAR_TAGS = " ".join(["$q$", *(f"$q{i}$" for i in range(1, 40000))])
DOLLAR_BOMB = f"EVALUATE USING m OPTIONS (image_col='p') AS SELECT '{DOLLAR_TAGS}'"


# --- helpers -------------------------------------------------------------------------------------


def vm_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM) in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1))


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole server message (type byte, body)."""
    head = recv_exactly(sock, 5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], recv_exactly(sock, length - 4)


def read_until(sock: socket.socket, type_byte: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        out.append(read_message(sock))
        if out[-1][0] == type_byte:
            return out


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def send_until_closed(sock: socket.socket, total: int, chunk: int = MiB) -> int:
    """Send up to `total` bytes of filler; how many went out before the peer closed."""
    sent = 0
    block = b"x" * chunk
    sock.settimeout(10)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < total:
            sock.sendall(block)
            sent += chunk
    return sent


def query_message(sql: str | bytes) -> bytes:
    raw = sql.encode() if isinstance(sql, str) else sql
    return proto.message(b"Q", raw + b"\x00")


def sqlstate_of(error_body: bytes) -> str:
    for field in error_body.split(b"\x00"):
        if field[:1] == b"C":
            return field[1:].decode()
    raise AssertionError(error_body)


class FakeServer:
    """A stand-in PostgreSQL on a thread.

    User `needs_password` must send PasswordMessage 'secret' first (AuthenticationCleartext-
    Password); any other user is authenticated at once. Anything but the password before
    authentication gets FATAL 08P01, as from PostgreSQL. After authentication every Query is
    answered with CommandComplete + ReadyForQuery. `received[i]` holds the bytes connection i
    sent after its startup packet (the first MiB; `counted[i]` counts them all), `queries[i]`
    the SQL of its Queries after authentication.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytearray] = []
        self.counted: list[int] = []
        self.queries: list[list[bytes]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def accept_loop(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            (length,) = struct.unpack("!I", recv_exactly(conn, 4))
            params = proto.parse_startup_params(recv_exactly(conn, length - 4)[4:])
            with self.lock:
                index = len(self.received)
                self.received.append(bytearray())
                self.counted.append(0)
                self.queries.append([])
            authenticated = params.get("user") != PASSWORD_USER
            conn.sendall(self.auth_ok() if authenticated else proto.message(b"R", struct.pack("!I", 3)))
            while True:
                type_byte, body = self.read_client_message(conn, index)
                if type_byte == b"X":
                    return
                if not authenticated:
                    if type_byte != b"p" or body != PASSWORD + b"\x00":
                        conn.sendall(proto.error_response("expected password response", "08P01"))
                        return
                    authenticated = True
                    conn.sendall(self.auth_ok())
                elif type_byte == b"Q":
                    self.queries[index].append(body.removesuffix(b"\x00"))
                    conn.sendall(proto.message(b"C", b"SELECT 0\x00") + proto.message(b"Z", b"I"))

    def read_client_message(self, conn: socket.socket, index: int) -> tuple[bytes, bytes]:
        """One message; bodies past 1 MiB are counted and dropped, not kept."""
        head = recv_exactly(conn, 5)
        (length,) = struct.unpack("!I", head[1:])
        body = bytearray()
        left = length - 4
        self.record(index, head)
        while left:
            chunk = conn.recv(min(left, MiB))
            if not chunk:
                raise ConnectionError
            left -= len(chunk)
            self.record(index, chunk)
            body += chunk[: MiB - len(body)]
        return head[:1], bytes(body)

    def record(self, index: int, data: bytes) -> None:
        self.counted[index] += len(data)
        if len(self.received[index]) < MiB:
            self.received[index] += data

    @staticmethod
    def auth_ok() -> bytes:
        return b"".join(
            (
                proto.message(b"R", proto.AUTH_OK_BODY),
                proto.message(b"S", b"client_encoding\x00UTF8\x00"),
                proto.message(b"S", b"standard_conforming_strings\x00on\x00"),
                proto.message(b"K", struct.pack("!II", 4242, 99)),
                proto.message(b"Z", b"I"),
            )
        )


def login(proxy: CliProxy, user: str = "ok") -> socket.socket:
    sock = proxy.connect(user)
    read_until(sock, b"Z")
    return sock


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(params=["threads", "loop"])
def fake_proxy(request: pytest.FixtureRequest, fake_server: FakeServer) -> Iterator[CliProxy]:
    """A proxy in front of FakeServer; max_rewrite_bytes 1 MiB, set through the environment;
    relaying on threads (the default) and on the event loop."""
    proxy = CliProxy(
        fake_server.port, "--relay", request.param, env={"THANOSQL_PROXY_MAX_REWRITE_BYTES": str(MiB)}
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def real_proxy_dsn(server_dsn: str) -> Iterator[str]:
    """A proxy from this checkout in front of the embedded cluster's server."""
    proxy = CliProxy(int(conninfo_to_dict(server_dsn)["port"]))
    yield make_conninfo(server_dsn, host="127.0.0.1", port=proxy.port)
    proxy.stop()


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def as_role(dsn: str, role: str) -> str:
    """`dsn` for an ordinary role (the embedded cluster trusts loopback)."""
    return make_conninfo(dsn, user=role)


# --- nothing rewritten, nothing buffered, before AuthenticationOk -------------------------------


def test_nothing_is_rewritten_before_authentication(fake_server: FakeServer, fake_proxy: CliProxy) -> None:
    early = query_message("LIST MODEL")
    parse = proto.message(b"P", b"\x00LIST MODEL\x00\x00\x00")
    with fake_proxy.connect(PASSWORD_USER) as sock:
        assert read_message(sock) == (b"R", struct.pack("!I", 3))  # the server wants a password
        sock.sendall(early + parse)
        type_byte, body = read_message(sock)
        assert (type_byte, sqlstate_of(body)) == (b"E", "08P01")  # the server's own refusal
    # The server got the client's bytes as sent: the proxy did not rewrite them.
    assert bytes(fake_server.received[0]).startswith(early)

    # Control: once authenticated, the same statement is rewritten.
    with fake_proxy.connect(PASSWORD_USER) as sock:
        read_message(sock)
        sock.sendall(proto.message(b"p", PASSWORD + b"\x00"))
        assert read_until(sock, b"Z")[0] == (b"R", proto.AUTH_OK_BODY)
        sock.sendall(early)
        read_until(sock, b"Z")
    assert fake_server.queries[1] == [rewrite_for_wire("LIST MODEL").encode()]


def test_huge_message_before_authentication_is_refused_unbuffered(
    fake_server: FakeServer, fake_proxy: CliProxy
) -> None:
    peak_before = vm_kib(fake_proxy.pid, "VmHWM")
    for type_byte in (b"Q", b"P", b"p"):
        with fake_proxy.connect(PASSWORD_USER) as sock:
            read_message(sock)
            sock.sendall(type_byte + struct.pack("!I", (1 << 30) - 1) + b"SELECT '")  # claims 1 GiB
            sent = send_until_closed(sock, 48 * MiB)
            assert closed_by_peer(sock)
        assert sent < 48 * MiB, "the proxy kept reading a 1 GiB message from an unauthenticated client"
    # Nothing of those messages reached the server, and the proxy's peak memory hardly moved
    # (it grew by 400 MB when it buffered the message to rewrite it).
    assert fake_server.counted == [0, 0, 0]
    assert vm_kib(fake_proxy.pid, "VmHWM") - peak_before < 16 * 1024


def test_unauthenticated_clients_do_not_stall_others(fake_server: FakeServer, fake_proxy: CliProxy) -> None:
    healthy = login(fake_proxy)
    beat = Heartbeat(lambda: (healthy.sendall(query_message("SELECT 1")), read_until(healthy, b"Z")))
    try:
        for size in (60_000, len(DOLLAR_BOMB)):  # under and over the pre-authentication limit
            with fake_proxy.connect(PASSWORD_USER) as sock:
                read_message(sock)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(query_message(DOLLAR_BOMB[:size]))
                assert closed_by_peer(sock)
        time.sleep(0.2)
    finally:
        beat.stop()
        healthy.close()
    assert beat.worst < 0.5, f"a healthy client waited {beat.worst:.2f} s"


# --- after authentication: bounded buffering, linear work ----------------------------------------


def test_query_over_max_rewrite_bytes_is_relayed_untouched(
    fake_server: FakeServer, fake_proxy: CliProxy
) -> None:
    small = "LIST MODEL /*" + "x" * (MiB // 2) + "*/"
    big = "LIST MODEL /*" + "x" * (2 * MiB) + "*/"
    with login(fake_proxy) as sock:
        for sql in (small, big):
            sock.sendall(query_message(sql))
            read_until(sock, b"Z")
    assert fake_server.queries[0][0] == rewrite_for_wire(small).encode()  # type: ignore[union-attr]
    assert fake_server.queries[0][1] == big.encode()[:MiB]  # FakeServer keeps the first MiB


def test_big_query_after_authentication_streams_unbuffered(
    fake_server: FakeServer, fake_proxy: CliProxy
) -> None:
    peak_before = vm_kib(fake_proxy.pid, "VmHWM")
    size = 64 * MiB
    with login(fake_proxy) as sock:
        sock.sendall(b"Q" + struct.pack("!I", size + 4))
        for _ in range(size // MiB - 1):
            sock.sendall(b"-" * MiB)
        sock.sendall(b"-" * (MiB - 1) + b"\x00")
        read_until(sock, b"Z")  # the server got all of it and answered
    assert fake_server.counted[0] >= size
    assert vm_kib(fake_proxy.pid, "VmHWM") - peak_before < 16 * 1024


def test_max_rewrite_bytes_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THANOSQL_PROXY_MAX_REWRITE_BYTES", raising=False)
    assert _parse_args([]).max_rewrite_bytes == proto.DEFAULT_MAX_REWRITE_BYTES == 4 * MiB
    assert _parse_args(["--max-rewrite-bytes", "1000"]).max_rewrite_bytes == 1000
    with pytest.raises(SystemExit):
        _parse_args(["--max-rewrite-bytes", "0"])
    with pytest.raises(ValueError):
        ProxyServer(ProxyConfig(max_rewrite_bytes=0), rewriter=lambda sql, n: None)


def _old_dollar_quote(body: str, tag: str = "q") -> str:
    """The quadratic original, as the reference for the output."""
    candidate, n = tag, 0
    while True:
        delim = f"${candidate}$"
        if (body + delim).find(delim) == len(body):
            return delim + body + delim
        n += 1
        candidate = f"{tag}{n}"


def test_dollar_quote_output_unchanged() -> None:
    rnd = random.Random(9)
    for _ in range(20000):
        body = "".join(rnd.choice("$q10x") for _ in range(rnd.randint(0, 14)))
        tag = rnd.choice(["q", "q1", "x"])
        assert dollar_quote(body, tag) == _old_dollar_quote(body, tag), (body, tag)
    assert dollar_quote("a $q$ b $q1$ c $q") == "$q2$a $q$ b $q1$ c $q$q2$"
    assert dollar_quote("$q" + "1" * 5000 + "$") == "$q$$q" + "1" * 5000 + "$$q$"


def test_rewrite_is_linear_in_dollar_tags() -> None:
    """A 1 MB statement full of $q1$ $q2$ ... rewrites in well under a second. Run in a child
    process with a timeout, so that a quadratic regression fails instead of hanging for minutes."""
    code = (
        "import time\n"
        "from thanosql_pg.preprocessor import rewrite_for_wire\n"
        "tags = ' '.join(['$q$'] + [f'$q{i}$' for i in range(1, 130000)])\n"
        "sql = f\"EVALUATE USING m OPTIONS (image_col='p') AS SELECT '{tags}'\"\n"
        "assert len(sql) > 1_000_000\n"
        "started = time.perf_counter()\n"
        "out = rewrite_for_wire(sql)\n"
        "assert out is not None and len(out) > len(sql), out\n"
        "print(time.perf_counter() - started)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout) < 2.0


def test_authenticated_dollar_bomb_does_not_stall_others(real_proxy_dsn: str, mallory: str) -> None:
    with connect(real_proxy_dsn) as healthy, connect(as_role(real_proxy_dsn, mallory)) as attacker:
        beat = Heartbeat(lambda: healthy.execute("SELECT 1").fetchone())
        try:
            with pytest.raises(psycopg.Error):  # no model m: any error, after the rewrite
                psycopg.ClientCursor(attacker).execute(DOLLAR_BOMB)
        finally:
            beat.stop()
    assert beat.worst < 1.0, f"a healthy client waited {beat.worst:.2f} s"


# --- session state only from the server's real ParameterStatus messages -------------------------

FAKE_STATUS = [
    proto.message(b"S", b"client_encoding\x00EUC_TW\x00"),
    proto.message(b"S", b"client_encoding\x00EUC_TW\x00") + proto.message(b"Z", b"I"),
    b"x" * 70000 + proto.message(b"S", b"client_encoding\x00EUC_TW\x00"),
    proto.message(b"S", b"standard_conforming_strings\x00off\x00"),
]


def test_fake_parameter_status_in_bytea_does_not_switch_off_rewriting(
    real_proxy_dsn: str, mallory: str
) -> None:
    with connect(as_role(real_proxy_dsn, mallory)) as conn:
        for payload in FAKE_STATUS:
            got = conn.cursor(binary=True).execute("SELECT %b::bytea", (payload,)).fetchone()
            assert got == (payload,)
            with conn.cursor(binary=True).copy("COPY (SELECT %b::bytea) TO STDOUT (FORMAT binary)",
                                               (payload,)) as copy:
                assert b"".join(copy) != b""
        # Still rewritten, by both protocols: LIST MODELS is not SQL.
        for cur in (conn.cursor(), psycopg.ClientCursor(conn)):
            cur.execute("LIST MODELS")
            assert [c.name for c in cur.description or []] == ["name", "class_name", "last_updated_utc"]
        # And real changes are still followed.
        conn.execute("SET client_encoding = 'LATIN1'")
        assert conn.execute("LIST MODELS").description is not None


class ScsRewriter:
    """Records the standard_conforming_strings each call got; rewrites ECHO to SELECT."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def __call__(
        self, sql: str, n_params: int = 0, *, standard_conforming_strings: bool = True
    ) -> str | None:
        self.calls.append((sql, standard_conforming_strings))
        return "SELECT" + sql[4:] if sql.startswith("ECHO") else None


def test_standard_conforming_strings_is_tracked_from_the_server(server_dsn: str) -> None:
    rewriter = ScsRewriter()
    config = ProxyConfig(upstream_port=int(conninfo_to_dict(server_dsn)["port"]))
    with BackgroundProxy(config, rewriter=rewriter) as proxy, connect(
        make_conninfo(server_dsn, host="127.0.0.1", port=proxy.port)
    ) as conn:
        assert conn.execute("ECHO 1").fetchone() == (1,)
        conn.execute("SET standard_conforming_strings = off")
        assert conn.execute("ECHO 2").fetchone() == (2,)
        # A stored value shaped like ParameterStatus does not turn it back on.
        conn.cursor(binary=True).execute("SELECT %b::bytea",
                                         (proto.message(b"S", b"standard_conforming_strings\x00on\x00"),))
        assert conn.execute("ECHO 3").fetchone() == (3,)
        conn.execute("RESET standard_conforming_strings")
        assert conn.execute("ECHO 4").fetchone() == (4,)
    echoes = [(sql, scs) for sql, scs in rewriter.calls if sql.startswith("ECHO")]
    assert echoes == [("ECHO 1", True), ("ECHO 2", False), ("ECHO 3", False), ("ECHO 4", True)]


def test_rewriter_keyword_detection() -> None:
    def old(sql: str, n_params: int = 0) -> None:
        return None

    def new(sql: str, n_params: int = 0, standard_conforming_strings: bool = True) -> None:
        return None

    assert not accepts_keyword(old, "standard_conforming_strings")
    assert accepts_keyword(new, "standard_conforming_strings")
    assert accepts_keyword(ScsRewriter(), "standard_conforming_strings")
    assert accepts_keyword(lambda sql, n=0, **kw: None, "standard_conforming_strings")


# --- framing of the server's stream (no server needed) ------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


class _StubSession:
    def __init__(self) -> None:
        self.transport = _Sink()
        self.seen: list[tuple[int, bytes]] = []

    def server_message(self, type_byte: int, body: bytes) -> None:
        self.seen.append((type_byte, bytes(body)))

    def upstream_lost(self) -> None:
        pass


def test_server_stream_framing_finds_only_real_messages() -> None:
    stream, real = wire_samples.server_stream()
    expected = [(t, b) for t, b, _ in real]
    rnd = random.Random(11)
    for attempt in range(60):
        session = _StubSession()
        side = UpstreamSide(session)  # type: ignore[arg-type]
        pos = 0
        while pos < len(stream):
            # Mostly tiny pieces (headers split every way), sometimes big ones.
            step = rnd.choice([1, 2, 3, 4, 5, 6, 7, 17, 4096, 70000]) if attempt else len(stream)
            side.data_received(bytes(stream[pos : pos + step]))
            pos += step
        assert session.transport.data == stream  # relayed unchanged
        seen = [(t, b) for t, b in session.seen if len(b) < 60000]
        assert seen == expected, attempt


class _OrderedSink(_Sink):
    def __init__(self, events: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.events = events

    def write(self, data: bytes) -> None:
        super().write(data)
        self.events.append(("forwarded", bytes(data)))


class _OrderedSession(_StubSession):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bytes]] = []
        self.transport = _OrderedSink(self.events)

    def server_message(self, type_byte: int, body: bytes) -> None:
        super().server_message(type_byte, body)
        self.events.append(("learnt", bytes([type_byte]) + bytes(body)))


def test_session_learns_server_messages_before_the_client_sees_them() -> None:
    """Relaying on threads, the client's answer to AuthenticationOk may be read on the other
    thread the moment the client has it: the session must already know it is authenticated
    (else a big first Query counted as pre-authentication was refused)."""
    auth_ok = FakeServer.auth_ok()
    for step in (len(auth_ok), 7, 3, 1):
        session = _OrderedSession()
        side = UpstreamSide(session)  # type: ignore[arg-type]
        for pos in range(0, len(auth_ok), step):
            side.data_received(memoryview(auth_ok)[pos : pos + step])  # the relay threads pass views
        forwarded = b""
        for event, data in session.events:
            if event == "forwarded":
                forwarded += data
            else:  # learnt while the message's last byte was still held back
                message = proto.message(data[:1], data[1:])
                assert len(forwarded) < auth_ok.index(message) + len(message), (step, data)
        assert forwarded == auth_ok
        assert [data[:1] for event, data in session.events if event == "learnt"] == [b"R", b"S", b"S"]


# --- the late cancel ------------------------------------------------------------------------------


def test_cancel_while_idle_does_not_hit_the_next_statement(real_proxy_dsn: str, mallory: str) -> None:
    """libpq sends its next statement once the cancel connection closes; the proxy must not
    close it before the server has handled the cancel (it did: 47 of 50 psycopg runs hit)."""
    with connect(as_role(real_proxy_dsn, mallory)) as conn:
        for i in range(30):
            (conn.cancel_safe if i % 2 else conn.cancel)()
            try:
                conn.execute("SELECT pg_sleep(0.05)")
            except pgerr.QueryCanceled:
                pytest.fail(f"a cancel sent while idle cancelled the next statement (try {i})")
        # A cancel of a running statement still works.
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        with pytest.raises(pgerr.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        timer.join()
