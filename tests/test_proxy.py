"""thanosql-proxy against a real PostgreSQL, with real clients (psql, psycopg, pgbench).

Most tests run an in-process proxy (`BackgroundProxy`, its own thread and event loop)
pointed at the cluster's server, so they exercise exactly this checkout's proxy code;
a few go through the cluster's own `thanosql-proxy` process (`proxy_dsn`).

Set THANOSQL_PROXY_TEST_CLUSTER to a JSON file shaped like `thanosql status --json` to run
these against another cluster instead of the embedded one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from thanosql_pg.proxy import protocol as proto
from thanosql_pg.proxy.server import BackgroundProxy, ProxyConfig

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _tool(name: str) -> str:
    found = shutil.which(name)
    return found or str(PG_BIN / name)


PSQL = _tool("psql")
PGBENCH = _tool("pgbench")


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg(request: pytest.FixtureRequest) -> dict:
    """The cluster under test: `thanosql status --json` of the embedded one by default."""
    path = os.environ.get("THANOSQL_PROXY_TEST_CLUSTER")
    if path:
        return json.loads(Path(path).read_text())
    return request.getfixturevalue("cluster")


@pytest.fixture(scope="session")
def sdsn(pg: dict) -> str:
    """Straight to the server, over TCP."""
    return pg["server"]


@pytest.fixture(scope="session")
def upstream(sdsn: str) -> tuple[str, int]:
    params = conninfo_to_dict(sdsn)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


def _start_proxy(
    upstream: tuple[str, int],
    rewriter: proto.Rewriter | None = None,
    use_uvloop: bool = True,
    relay: str = "threads",
) -> BackgroundProxy:
    host, port = upstream
    config = ProxyConfig(
        listen_host="127.0.0.1", listen_port=0, upstream_host=host, upstream_port=port, relay=relay
    )
    return BackgroundProxy(config, rewriter=rewriter, use_uvloop=use_uvloop).start()


def _dsn_via(sdsn: str, proxy: BackgroundProxy) -> str:
    return make_conninfo(sdsn, host="127.0.0.1", port=proxy.port)


@pytest.fixture(scope="session")
def proxy(upstream: tuple[str, int]) -> Iterator[BackgroundProxy]:
    """An in-process proxy with the real preprocessor as rewriter."""
    p = _start_proxy(upstream)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def pdsn(sdsn: str, proxy: BackgroundProxy) -> str:
    return _dsn_via(sdsn, proxy)


@pytest.fixture(scope="session")
def loop_pdsn(sdsn: str, upstream: tuple[str, int]) -> Iterator[str]:
    """An in-process proxy relaying sessions on its event loop (`--relay loop`)."""
    p = _start_proxy(upstream, relay="loop")
    yield _dsn_via(sdsn, p)
    p.stop()


@pytest.fixture(scope="session")
def python_threads_pdsn(sdsn: str, upstream: tuple[str, int]) -> Iterator[str]:
    """An in-process proxy relaying on threads in Python (`--relay python-threads`)."""
    p = _start_proxy(upstream, relay="python-threads")
    yield _dsn_via(sdsn, p)
    p.stop()


@pytest.fixture(
    params=[
        ("uvloop", "threads"),
        ("uvloop", "python-threads"),
        ("uvloop", "loop"),
        ("asyncio", "threads"),
        ("asyncio", "loop"),
    ],
    ids="-".join,
)
def any_loop_dsn(request: pytest.FixtureRequest, sdsn: str, upstream: tuple[str, int]) -> Iterator[str]:
    """An in-process proxy on uvloop (what the CLI uses when installed) and on asyncio's loop,
    relaying on threads (the default) and on the loop."""
    loop, relay = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    p = _start_proxy(upstream, use_uvloop=loop == "uvloop", relay=relay)
    yield _dsn_via(sdsn, p)
    p.stop()


def start_cli_proxy(upstream: tuple[str, int], *extra: str) -> tuple[subprocess.Popen, int]:
    """`thanosql-proxy` as its own process on a free port; returns it and the port."""
    stderr = tempfile.TemporaryFile()  # a file, not a pipe nobody drains while tests run
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thanosql_pg.proxy.server",
            "--listen-port",
            "0",
            "--upstream-host",
            upstream[0],
            "--upstream-port",
            str(upstream[1]),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"thanosql-proxy ready: listening on \S+:(\d+),", line)
    if match is None:
        proc.kill()
        proc.wait()
        stderr.seek(0)
        raise AssertionError(f"no ready line: {line!r}\n{stderr.read().decode(errors='replace')}")
    return proc, int(match.group(1))


def stop_cli_proxy(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["uvloop", "asyncio"])
def process_proxy_dsn(request: pytest.FixtureRequest, sdsn: str, upstream: tuple[str, int]) -> Iterator[str]:
    """The proxy in its own process. Needed where the client makes a blocking libpq call
    that holds the GIL (psycopg's cancel()), which would freeze an in-process proxy."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    proc, port = start_cli_proxy(upstream, *(["--no-uvloop"] if request.param == "asyncio" else []))
    yield make_conninfo(sdsn, host="127.0.0.1", port=port)
    assert stop_cli_proxy(proc) == 0


class EchoRewriter:
    """A stand-in preprocessor to test the proxy's rewrite path without the ML dialect:
    `ECHO x` becomes `SELECT x`; `BOOM` raises (a rewriter bug); it records n_params."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, sql: str, n_params: int = 0) -> str | None:
        self.calls.append((sql, n_params))
        stripped = sql.lstrip()
        if stripped.startswith("BOOM"):
            raise RuntimeError("rewriter bug")
        if stripped.startswith("ECHO"):
            return "SELECT" + stripped[4:]
        return None


@pytest.fixture(name="echo")
def _echo(sdsn: str, upstream: tuple[str, int]) -> Iterator[tuple[EchoRewriter, str]]:
    rewriter = EchoRewriter()
    p = _start_proxy(upstream, rewriter=rewriter)
    yield rewriter, _dsn_via(sdsn, p)
    p.stop()


def connect(dsn: str, **kwargs: object) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(dsn, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def table(sdsn: str) -> Iterator[str]:
    name = "px_" + uuid.uuid4().hex[:10]
    yield name
    with connect(sdsn) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def psql(
    dsn: str, *args: str, stdin: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PSQL, "-X", "-d", dsn, *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


# --- a minimal raw client, to send what real clients never would --------------------------------


def startup_message(user: str, database: str) -> bytes:
    return proto.startup_packet({"user": user, "database": database})


def read_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Messages from the server up to and including ReadyForQuery."""
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    while True:
        while len(buf) >= 5:
            (length,) = struct.unpack_from("!I", buf, 1)
            if len(buf) < 1 + length:
                break
            out.append((buf[:1], buf[5 : 1 + length]))
            buf = buf[1 + length :]
            if out[-1][0] == b"Z":
                return out
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {out!r}")
        buf += chunk


def raw_session(port: int, user: str, database: str) -> socket.socket:
    """A raw socket logged in through the proxy (trust auth) and ready for queries."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(startup_message(user, database))
    msgs = read_until_ready(sock)
    assert msgs[0] == (b"R", b"\x00\x00\x00\x00"), msgs[0]  # AuthenticationOk
    return sock


def query(sock: socket.socket, sql: bytes) -> list[tuple[bytes, bytes]]:
    sock.sendall(proto.message(b"Q", sql + b"\x00"))
    return read_until_ready(sock)


def sqlstate_of(error_body: bytes) -> str:
    for field in error_body.split(b"\x00"):
        if field[:1] == b"C":
            return field[1:].decode()
    raise AssertionError(error_body)


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> bool:
    """True when the other end closes the connection (reading whatever comes first)."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="session")
def who(sdsn: str) -> tuple[str, str]:
    params = conninfo_to_dict(sdsn)
    return str(params.get("user") or os.environ.get("USER", "root")), str(params.get("dbname"))


# --- psql (simple query protocol) ---------------------------------------------------------------


def test_psql_multi_statement_matches_direct(sdsn: str, pdsn: str) -> None:
    sql = "SELECT 1 AS a, 'x' AS b; SELECT g FROM generate_series(1, 3) g; SELECT 'héllo ✓' AS u"
    direct = psql(sdsn, "-A", "-c", sql)
    proxied = psql(pdsn, "-A", "-c", sql)
    assert direct.returncode == 0, direct.stderr
    assert (proxied.returncode, proxied.stdout, proxied.stderr) == (0, direct.stdout, direct.stderr)
    assert "héllo ✓" in proxied.stdout


def test_psql_errors_carry_sqlstate(sdsn: str, pdsn: str) -> None:
    script = (
        "SELECT * FROM px_no_such_table;\n"
        "SELECT 1; SELECT 1/0; SELECT 3;\n"
        "SELEC 1;\n"
        "SELECT 'still alive' AS ok;\n"
    )
    args = ("-v", "VERBOSITY=verbose", "-A")
    direct = psql(sdsn, *args, stdin=script)
    proxied = psql(pdsn, *args, stdin=script)
    assert proxied.stdout == direct.stdout
    assert proxied.stderr == direct.stderr
    for code in ("42P01", "22012", "42601"):
        assert f"ERROR:  {code}:" in proxied.stderr
    assert "still alive" in proxied.stdout


def test_psql_copy_in_and_out(sdsn: str, pdsn: str, table: str, tmp_path: Path) -> None:
    rows = [f"{i}\tname {i} é\\t\\\\ ✓\t{'x' * (i % 300)}" for i in range(20000)]
    rows.append("20000\t\\N\tlast")
    src = tmp_path / "in.tsv"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.tsv"
    res = psql(
        pdsn,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text, pad text)",
        "-c",
        f"\\copy {table} FROM '{src}'",
        "-c",
        f"\\copy (SELECT * FROM {table} ORDER BY id) TO '{out}'",
    )
    assert res.returncode == 0, res.stderr
    assert "COPY 20001" in res.stdout
    assert out.read_text() == src.read_text()
    # A failing COPY FROM (bad data) reports the server's error through the proxy.
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tdup\tx\n")
    res = psql(pdsn, "-v", "VERBOSITY=verbose", "-c", f"\\copy {table} FROM '{bad}'")
    assert res.returncode != 0 and "23505" in res.stderr


# --- psycopg -------------------------------------------------------------------------------------


def test_psycopg_extended_and_prepared(pdsn: str) -> None:
    with connect(pdsn) as conn:
        row = conn.execute("SELECT %s::int + %s, %s::text, %s", (1, 2, "héllo", None)).fetchone()
        assert row == (3, "héllo", None)
        cur = conn.cursor(binary=True)
        assert cur.execute("SELECT %b::bytea, %s::float8[]", (b"\x00\xff", [1.5, 2.0])).fetchone() == (
            b"\x00\xff",
            [1.5, 2.0],
        )
        for i in range(10):
            got = conn.execute("SELECT %s::int * 2 AS twice", (i,), prepare=True).fetchone()
            assert got == (i * 2,)
        names = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%twice%'"
        ).fetchone()
        assert names == (1,)
        # Named server-side prepared statements via SQL work too.
        conn.execute("PREPARE px_stmt(int) AS SELECT $1 + 100")
        assert conn.execute("EXECUTE px_stmt(5)").fetchone() == (105,)


def test_psycopg_simple_protocol(pdsn: str) -> None:
    with connect(pdsn) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT %s AS a, %s AS b; SELECT 'two'", (42, "it's"))
        assert cur.fetchall() == [(42, "it's")]
        assert cur.nextset()
        assert cur.fetchall() == [("two",)]
        with pytest.raises(pgerr.UndefinedColumn):
            cur.execute("SELECT no_such_column")


def test_psycopg_pipeline(pdsn: str) -> None:
    with connect(pdsn) as conn:
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int, repeat('z', %s)", (i, i)) for i in range(200)]
        assert [c.fetchone() for c in curs] == [(i, "z" * i) for i in range(200)]
        with pytest.raises(pgerr.DivisionByZero), conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 1/0")
            conn.execute("SELECT 2")
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


def test_psycopg_copy_both_directions(pdsn: str, table: str) -> None:
    big = "B" * (3 << 20)  # one 3 MiB row: a CopyData message streamed across many reads
    with connect(pdsn) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, t text)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} (id, t) FROM STDIN") as copy:
                for i in range(50000):
                    copy.write_row((i, f"row {i} ✓"))
                copy.write_row((-1, big))
            assert conn.execute(f"SELECT count(*), sum(length(t)) FROM {table}").fetchone() == (
                50001,
                sum(len(f"row {i} ✓") for i in range(50000)) + len(big),
            )
            got: list[tuple] = []
            with cur.copy(f"COPY (SELECT id, t FROM {table} ORDER BY id) TO STDOUT") as copy:
                got.extend(copy.rows())
            assert len(got) == 50001
            assert got[0] == ("-1", big)
            assert got[-1] == ("49999", "row 49999 ✓")
            # Binary COPY out, then a COPY the client aborts (CopyFail).
            with cur.copy(
                f"COPY (SELECT id FROM {table} WHERE id < 3 ORDER BY id) TO STDOUT (FORMAT binary)"
            ) as copy:
                copy.set_types(["int4"])
                assert list(copy.rows()) == [(-1,), (0,), (1,), (2,)]
            # psycopg sends CopyFail and re-raises the client's exception; the session goes on.
            with pytest.raises(RuntimeError), cur.copy(f"COPY {table} FROM STDIN") as copy:
                copy.write_row((1, "never"))
                raise RuntimeError("client gives up")
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE t = 'never'").fetchone() == (0,)


def test_listen_notify(pdsn: str) -> None:
    channel = "px_" + uuid.uuid4().hex[:8]
    with connect(pdsn) as listener, connect(pdsn) as sender:
        listener.execute(f"LISTEN {channel}")
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "payload ✓"))
        sender.execute(f"NOTIFY {channel}, 'second'")
        got = [n for n in listener.notifies(timeout=10, stop_after=2)]
        assert [(n.channel, n.payload) for n in got] == [(channel, "payload ✓"), (channel, "second")]
        assert got[0].pid == sender.info.backend_pid


def test_notices_are_relayed(pdsn: str) -> None:
    with connect(pdsn) as conn:
        notices: list[tuple[str | None, str | None]] = []
        # A Diagnostic is only valid inside the handler: copy what we check.
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        assert notices == [
            ("NOTICE", "hello 42"),
            ("WARNING", "careful"),
        ]


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_cancel_request(process_proxy_dsn: str, sdsn: str, how: str) -> None:
    dsn = process_proxy_dsn
    with connect(dsn) as victim, connect(dsn) as bystander, connect(sdsn) as monitor:
        outcome: dict[str, object] = {}

        def bystander_work() -> None:
            try:
                outcome["sleep"] = bystander.execute("SELECT pg_sleep(1.5), 'done'").fetchone()
            except Exception as exc:  # reported by the assert below
                outcome["sleep"] = exc

        def cancel_when_running() -> None:
            # A cancel that arrives before the query starts is ignored by the server.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = monitor.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                    "AND query LIKE '%%pg_sleep(30)%%'",
                    (victim.info.backend_pid,),
                ).fetchone()
                if row:
                    break
                time.sleep(0.05)
            getattr(victim, how)()

        worker = threading.Thread(target=bystander_work)
        worker.start()
        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        started = time.monotonic()
        with pytest.raises(pgerr.QueryCanceled):
            victim.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 15
        canceller.join(20)
        worker.join(20)
        assert outcome["sleep"] == ("", "done")  # the other session was not cancelled
        assert victim.execute("SELECT 'victim ok'").fetchone() == ("victim ok",)


def test_sslmode_prefer_and_require(pdsn: str) -> None:
    with connect(pdsn, sslmode="prefer") as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (False,)
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        connect(pdsn, sslmode="require")


def test_gssencmode_prefer(pdsn: str) -> None:
    with connect(pdsn, gssencmode="prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_raw_ssl_and_gss_requests_then_startup(proxy: BackgroundProxy, who: tuple[str, str]) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, proto.SSL_REQUEST_CODE))
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!II", 8, proto.GSSENC_REQUEST_CODE))
        assert sock.recv(1) == b"N"
        sock.sendall(startup_message(*who))
        msgs = read_until_ready(sock)
        assert msgs[0] == (b"R", b"\x00\x00\x00\x00")
        assert any(t == b"K" for t, _ in msgs)  # BackendKeyData, relayed
        rows = [body for t, body in query(sock, b"SELECT 'raw'") if t == b"D"]
        assert rows == [b"\x00\x01\x00\x00\x00\x03raw"]


# --- authentication ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_roles(pg: dict, sdsn: str) -> Iterator[dict[str, tuple[str, str]]]:
    """Two roles that must authenticate with md5 and SCRAM, via prepended pg_hba.conf lines."""
    suffix = uuid.uuid4().hex[:6]
    roles = {"md5": (f"px_md5_{suffix}", "md5 pa$$ ✓"), "scram-sha-256": (f"px_scram_{suffix}", "scr'am")}
    hba = Path(pg["data_dir"]) / "pg_hba.conf"
    original = hba.read_text()
    with connect(sdsn) as conn:
        for method, (role, password) in roles.items():
            conn.execute(f"SET password_encryption = '{method}'")
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD {psycopg.sql.quote(password)}")
        lines = "".join(
            f"local all {role} {method}\nhost all {role} 127.0.0.1/32 {method}\n"
            for method, (role, _) in roles.items()
        )
        hba.write_text(lines + original)
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)  # the postmaster reloads asynchronously
    try:
        yield roles
    finally:
        hba.write_text(original)
        with connect(sdsn) as conn:
            conn.execute("SELECT pg_reload_conf()")
            for role, _ in roles.values():
                conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_password_auth(pdsn: str, sdsn: str, password_roles: dict, method: str) -> None:
    role, password = password_roles[method]
    with connect(pdsn, user=role, password=password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pdsn, user=role, password="wrong")
    # psql as another client of the same exchange.
    res = psql(make_conninfo(pdsn, user=role), "-Atc", "SELECT 'psql ok'", env={"PGPASSWORD": password})
    assert (res.returncode, res.stdout.strip()) == (0, "psql ok"), res.stderr


def test_scram_through_cluster_proxy(pg: dict, password_roles: dict) -> None:
    role, password = password_roles["scram-sha-256"]
    with connect(pg["proxy"], user=role, password=password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg["proxy"], user=role, password="nope")


# --- robustness ----------------------------------------------------------------------------------


class Heartbeat:
    """A healthy session that keeps querying on a thread while others misbehave."""

    def __init__(self, dsn: str) -> None:
        self.conn = connect(dsn)
        self.pid = self.conn.info.backend_pid
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                assert self.conn.execute("SELECT %s::int", (self.count,)).fetchone() == (self.count,)
                self.count += 1
        except BaseException as exc:  # re-raised in stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, self.error
        assert self.conn.info.backend_pid == self.pid
        self.conn.close()


BAD_STARTUPS = {
    "negative length": b"\xff\xff\xff\xfe\x00\x03\x00\x00",
    "huge length": struct.pack("!I", 1 << 31) + b"\x00" * 8,
    "too short": struct.pack("!II", 4, 0),
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls hello": bytes.fromhex("16030100a5010000a10303") + os.urandom(200),
    "data after SSLRequest": struct.pack("!II", 8, proto.SSL_REQUEST_CODE) + b"junk",
}


def test_bad_clients_do_not_disturb_others(proxy: BackgroundProxy, pdsn: str, who: tuple[str, str]) -> None:
    beat = Heartbeat(pdsn)
    try:
        for name, payload in BAD_STARTUPS.items():
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.sendall(payload)
                assert closed_by_peer(sock), name

        bad_messages = {
            "huge length": b"Q" + struct.pack("!I", 1 << 31) + b"SELECT 1",
            "negative length": b"Q\xff\xff\xff\xff",
            "too short": b"X\x00\x00\x00\x02",
            "unknown type": b"!" + struct.pack("!I", 8) + b"abcd",
            # An invalid type byte first, so the server rejects it at once whatever the
            # random length says.
            "random bytes": b"\x01" + os.urandom(1 << 20),
        }
        for name, payload in bad_messages.items():
            sock = raw_session(proxy.port, *who)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)
            assert closed_by_peer(sock), name
            sock.close()

        # Walking away mid-startup, mid-message, and mid-query.
        for payload in (b"\x00\x00", b"Q\x00\x00\x10\x00SELECT", b"Q\x00\x00\x00\x16SELECT pg_sleep(2)\x00"):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            if payload[:1] == b"Q":
                sock.close()
                sock = raw_session(proxy.port, *who)
            sock.sendall(payload)
            sock.close()

        # A session with a 64 MiB half-sent Query, dropped.
        sock = raw_session(proxy.port, *who)
        sock.sendall(b"Q" + struct.pack("!I", 64 << 20) + b"SELECT '" + b"x" * (1 << 20))
        sock.close()

        time.sleep(0.3)
        with connect(pdsn) as fresh:
            assert fresh.execute("SELECT 'fresh'").fetchone() == ("fresh",)
    finally:
        beat.stop()
    assert beat.count > 0


def test_silent_clients_are_dropped(monkeypatch: pytest.MonkeyPatch, upstream: tuple[str, int]) -> None:
    from thanosql_pg.proxy import session

    monkeypatch.setattr(session, "STARTUP_TIMEOUT", 0.5)
    p = _start_proxy(upstream, rewriter=lambda sql, n: None)
    try:
        for payload in (b"", struct.pack("!II", 8, proto.SSL_REQUEST_CODE), b"\x00\x00\x00"):
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
                sock.sendall(payload)
                started = time.monotonic()
                assert closed_by_peer(sock)
                assert time.monotonic() - started < 5
    finally:
        p.stop()


def test_upstream_unreachable_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    p = _start_proxy(("127.0.0.1", dead_port), rewriter=lambda sql, n: None)
    try:
        with pytest.raises(psycopg.OperationalError, match="thanosql-proxy could not connect"):
            connect(f"postgresql://x@127.0.0.1:{p.port}/x")
    finally:
        p.stop()


def test_unix_socket_upstream(pg: dict, sdsn: str) -> None:
    if not pg.get("socket_dir"):
        pytest.skip("cluster reports no socket_dir")
    p = _start_proxy((pg["socket_dir"], int(pg["port"])))
    try:
        with connect(_dsn_via(sdsn, p)) as conn:
            # Over the Unix socket the backend sees no client address.
            assert conn.execute("SELECT inet_client_addr() IS NULL").fetchone() == (True,)
    finally:
        p.stop()


# --- pgbench -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_db(sdsn: str) -> Iterator[str]:
    name = "px_bench_" + uuid.uuid4().hex[:6]
    with connect(sdsn) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with connect(sdsn) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_pgbench_through_proxy(pdsn: str, bench_db: str) -> None:
    dsn = make_conninfo(pdsn, dbname=bench_db)
    init = subprocess.run(
        [PGBENCH, "-i", "-s", "1", "-q", dsn], check=False, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr  # the data load is a COPY through the proxy
    for mode, extra in (("prepared", ["-T", "3"]), ("simple", ["-t", "300"]), ("extended", ["-t", "300"])):
        run = subprocess.run(
            [PGBENCH, "-S", "-c", "2", "-j", "2", "-M", mode, *extra, dsn],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert "number of failed transactions: 0 " in run.stdout, run.stdout
    # The read-write script too (BEGIN/UPDATE/INSERT/END), briefly.
    run = subprocess.run(
        [PGBENCH, "-c", "2", "-t", "100", dsn], check=False, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "number of failed transactions: 0 " in run.stdout, run.stderr


# --- equivalence with a direct connection --------------------------------------------------------

EQUIVALENCE_QUERIES = [
    "SELECT 1 AS one, 'two'::text AS two, NULL::int AS nothing",
    "SELECT g, g * 1.5 AS f, md5(g::text) FROM generate_series(1, 5000) g",
    "SELECT 'héllo ✓ 日本'::text, E'tab\\there', $$dollar 'quoted'$$",
    "SELECT ARRAY[1, 2, NULL]::int[], '{\"a\": [1, {\"b\": null}]}'::jsonb, 'ab'::bytea",
    "SELECT 12345678901234567890.123::numeric, '2024-02-29 12:34:56+09'::timestamptz, interval '1 day'",
    "SELECT relname FROM pg_class WHERE relname LIKE 'pg_am%' ORDER BY 1",
    "SELECT -- a comment\n 'after comment' /* block */",
    "WITH t(x) AS (VALUES (1), (2)) SELECT sum(x) FROM t",
    "SELECT 1/0",
    "SELECT * FROM px_no_such_table",
    "SELECT no_such_column FROM pg_class",
    "SELECT 'abc'::int",
    "SELEC 1",
    "SELECT 'unterminated",
    # Plain SQL that merely mentions ThanoSQL words must pass through untouched.
    "SELECT 'LIST MODEL' AS predict, 1 AS model",
    "SELECT 1 AS build /* BUILD MODEL x USING y */",
    "CREATE TABLE pg_catalog.pg_class (x int)",  # always an error (42P07), whatever ran before
]


def _outcome(conn: psycopg.Connection, sql: str, simple: bool) -> tuple:
    cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
    try:
        cur.execute(sql)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate, exc.diag.message_primary, exc.diag.statement_position)
    desc = [(c.name, c.type_code) for c in cur.description or []]
    return ("ok", desc, cur.fetchall())


@pytest.mark.parametrize("relay", ["threads", "python-threads", "loop"])
@pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
def test_results_identical_to_direct(
    request: pytest.FixtureRequest, sdsn: str, simple: bool, relay: str
) -> None:
    fixture = {"threads": "pdsn", "python-threads": "python_threads_pdsn", "loop": "loop_pdsn"}[relay]
    pdsn = request.getfixturevalue(fixture)
    with connect(sdsn) as direct, connect(pdsn) as proxied:
        for sql in EQUIVALENCE_QUERIES:
            assert _outcome(proxied, sql, simple) == _outcome(direct, sql, simple), sql


# --- the rewrite path ----------------------------------------------------------------------------


def test_rewrite_query_and_parse(echo: tuple[EchoRewriter, str]) -> None:
    rewriter, dsn = echo
    with connect(dsn) as conn:
        assert psycopg.ClientCursor(conn).execute("ECHO 'héllo ✓'").fetchone() == ("héllo ✓",)
        assert conn.execute("ECHO %s::int + %s::int", (1, 2)).fetchone() == (3,)
        assert ("ECHO $1::int + $2::int", 2) in rewriter.calls
        assert conn.execute("ECHO %s::text", ("p",), prepare=True).fetchone() == ("p",)
        assert conn.execute("ECHO %s::text", ("q",), prepare=True).fetchone() == ("q",)
        # A rewriter bug must not break the session: the original text goes to the server.
        with pytest.raises(pgerr.SyntaxError):
            conn.execute("BOOM")
        assert conn.execute("SELECT 'still fine'").fetchone() == ("still fine",)


def test_rewrite_uses_client_encoding(echo: tuple[EchoRewriter, str]) -> None:
    rewriter, dsn = echo
    with connect(dsn, client_encoding="LATIN1") as conn:
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute("ECHO 'é' AS e").fetchone() == ("é",)
        assert ("ECHO 'é' AS e", 0) in rewriter.calls
        conn.execute("SET client_encoding TO 'WIN1252'")  # tracked from ParameterStatus
        assert conn.execute("ECHO '€'").fetchone() == ("€",)
        conn.execute("SET client_encoding TO 'UTF8'")
        assert conn.execute("ECHO '日本'").fetchone() == ("日本",)


def test_undecodable_text_passes_through(echo: tuple[EchoRewriter, str], who: tuple[str, str]) -> None:
    _, dsn = echo
    port = int(conninfo_to_dict(dsn)["port"])
    sock = raw_session(port, *who)
    try:
        msgs = query(sock, b"ECHO '\xff\xfe'")  # not UTF-8: forwarded untouched, server rejects it
        errors = [sqlstate_of(body) for t, body in msgs if t == b"E"]
        assert errors == ["22021"]  # character_not_in_repertoire
        assert [b for t, b in query(sock, b"ECHO 'ok'") if t == b"D"] == [b"\x00\x01\x00\x00\x00\x02ok"]
    finally:
        sock.close()


def test_large_statements(echo: tuple[EchoRewriter, str]) -> None:
    _, dsn = echo
    payload = "x" * (proto.DEFAULT_MAX_REWRITE_BYTES - 100)  # the biggest that is rewritten
    with connect(dsn) as conn:
        simple = psycopg.ClientCursor(conn)
        assert simple.execute(f"ECHO length('{payload}')").fetchone() == (len(payload),)
        assert conn.execute(f"ECHO length('{payload}') + %s", (1,)).fetchone() == (len(payload) + 1,)
        assert conn.execute("SELECT length(%s)", (payload,)).fetchone() == (len(payload),)


def test_list_model_is_rewritten(pdsn: str, sdsn: str) -> None:
    """The real preprocessor is in the path: LIST MODEL reaches the server as SQL."""
    with connect(sdsn) as direct, pytest.raises(pgerr.SyntaxError):
        direct.execute("LIST MODEL")
    with connect(pdsn) as conn:
        for cur in (psycopg.ClientCursor(conn), conn.cursor()):
            try:
                cur.execute("LIST MODEL")
            except psycopg.Error as exc:
                # Without the extension in this database the rewritten SQL still names it.
                assert "thanosql" in str(exc), exc
            else:
                assert [c.name for c in cur.description or []][:1] == ["name"]


def test_through_cluster_proxy(pg: dict) -> None:
    with connect(pg["proxy"]) as conn:
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        with conn.pipeline():
            a = conn.execute("SELECT 'a'")
            b = conn.execute("SELECT 'b'")
        assert (a.fetchone(), b.fetchone()) == (("a",), ("b",))
        cur = conn.execute("LIST MODELS")  # the embedded cluster has the extension installed
        assert [c.name for c in cur.description or []] == ["name", "class_name", "last_updated_utc"]
        # A ThanoSQL syntax error comes back as a normal ErrorResponse; the session goes on.
        with pytest.raises(pgerr.SyntaxError):
            conn.execute("LIST OF THINGS")
        assert conn.execute("SELECT 'next'").fetchone() == ("next",)


# --- the command line ----------------------------------------------------------------------------


def test_cli_ready_line_pid_file_and_sigterm(tmp_path: Path, upstream: tuple[str, int], sdsn: str) -> None:
    pid_file, log_file = tmp_path / "proxy.pid", tmp_path / "proxy.log"
    proc, port = start_cli_proxy(upstream, "--log-file", str(log_file), "--pid-file", str(pid_file))
    try:
        assert int(pid_file.read_text()) == proc.pid
        with connect(make_conninfo(sdsn, host="127.0.0.1", port=port)) as conn:
            assert conn.execute("SELECT 'cli'").fetchone() == ("cli",)
            # SIGTERM with a session open: the proxy closes it and exits cleanly.
            assert stop_cli_proxy(proc) == 0
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert not pid_file.exists()
        assert "listening on" in log_file.read_text()
    finally:
        stop_cli_proxy(proc)


def test_workers_share_the_port_and_stop_together(upstream: tuple[str, int], sdsn: str) -> None:
    """`--workers 2`: two processes behind one port; clients get served whichever the kernel
    picks; SIGTERM to the parent stops both, and so does the parent's death (SIGKILL)."""
    for stop in (signal.SIGTERM, signal.SIGKILL):
        proc, port = start_cli_proxy(upstream, "--workers", "2")
        try:
            workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            assert len(workers) == 2
            dsn = make_conninfo(sdsn, host="127.0.0.1", port=port)
            conns = [connect(dsn) for _ in range(6)]
            try:
                for i, conn in enumerate(conns):
                    assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            finally:
                for conn in conns:
                    conn.close()
            proc.send_signal(stop)
            assert proc.wait(15) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(_alive(w) for w in workers):
                assert time.monotonic() < deadline, "a worker outlived the proxy"
                time.sleep(0.05)
        finally:
            stop_cli_proxy(proc)


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (a worker orphaned by SIGKILL waits for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_relay_and_workers_settings() -> None:
    from thanosql_pg.proxy.server import ProxyServer, _parse_args

    assert _parse_args([]).relay == "threads" and _parse_args([]).workers == 1
    assert _parse_args(["--relay", "loop", "--workers", "3"]).relay == "loop"
    assert _parse_args(["--relay", "python-threads"]).relay == "python-threads"
    for bad in (["--relay", "fast"], ["--workers", "0"]):
        with pytest.raises(SystemExit):
            _parse_args(bad)
    with pytest.raises(ValueError, match="relay"):
        ProxyServer(ProxyConfig(relay="fast"), rewriter=lambda sql, n: None)


def test_smoke_on_both_event_loops(any_loop_dsn: str, table: str) -> None:
    channel = "px_" + uuid.uuid4().hex[:8]
    with connect(any_loop_dsn) as conn, connect(any_loop_dsn) as other:
        assert conn.execute("SELECT %s::text || 'b'", ("a",)).fetchone() == ("ab",)
        conn.execute(f"CREATE TABLE {table} (t text)")
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for i in range(20000):
                copy.write_row((f"line {i}",))
        with conn.cursor().copy(f"COPY {table} TO STDOUT") as copy:
            assert sum(1 for _ in copy.rows()) == 20000
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int", (i,)) for i in range(50)]
        assert [c.fetchone() for c in curs] == [(i,) for i in range(50)]
        conn.execute(f"LISTEN {channel}")
        other.execute(f"NOTIFY {channel}, 'hi'")
        assert [n.payload for n in conn.notifies(timeout=10, stop_after=1)] == ["hi"]


# --- protocol helpers (no server) ----------------------------------------------------------------


def _rewrite(
    type_byte: bytes, body: bytes, encoding: str = "utf-8", rw: Callable | None = None
) -> bytes | None:
    return proto.rewrite_message(type_byte[0], body, encoding, rw or EchoRewriter())


def test_protocol_rewrite_message() -> None:
    assert _rewrite(b"Q", b"SELECT 1\x00") is None
    assert _rewrite(b"Q", b"ECHO 1\x00") == proto.message(b"Q", b"SELECT 1\x00")
    assert _rewrite(b"Q", b"ECHO 1") is None  # malformed: no terminator, left to the server
    parse = b"stmt\x00ECHO $1\x00" + struct.pack("!hI", 1, 23)
    assert _rewrite(b"P", parse) == proto.message(b"P", b"stmt\x00SELECT $1\x00" + struct.pack("!hI", 1, 23))
    seen = EchoRewriter()
    _rewrite(b"P", b"\x00ECHO $1, $2\x00" + struct.pack("!h", 0), rw=seen)
    assert seen.calls == [("ECHO $1, $2", 0)]
    assert _rewrite(b"P", b"\x00ECHO\x00") is None  # truncated parameter count
    assert _rewrite(b"Q", "ECHO 'é'\x00".encode("latin-1"), "iso8859-1") == proto.message(
        b"Q", "SELECT 'é'\x00".encode("latin-1")
    )


def test_protocol_helpers() -> None:
    assert proto.python_encoding("UTF8") == proto.python_encoding("utf-8") == "utf-8"
    assert proto.python_encoding("SQL_ASCII") == "iso8859-1"
    assert proto.python_encoding("win1252") == "cp1252"
    assert proto.python_encoding("EUC_TW") is None
    params = proto.parse_startup_params(
        b"user\x00root\x00database\x00db\x00client_encoding\x00LATIN1\x00\x00"
    )
    assert params == {"user": "root", "database": "db", "client_encoding": "LATIN1"}
    assert proto.parse_parameter_status(b"client_encoding\x00WIN1252\x00") == (b"client_encoding", b"WIN1252")
    assert proto.parse_parameter_status(b"client_encoding\x00WIN1252") is None
    assert proto.parse_parameter_status(b"no terminator") is None
    assert proto.is_authentication_ok(b"\x00\x00\x00\x00")
    assert not proto.is_authentication_ok(b"\x00\x00\x00\x0a" + b"SCRAM-SHA-256\x00\x00")
    err = proto.error_response("boom", "08006")
    assert err[:1] == b"E" and sqlstate_of(err[5:]) == "08006"
