"""Bounds of thanosql-proxy under load, each test written as the attack.

1. One authenticated client sending a 4 MiB simple Query that holds a ThanoSQL statement
   (``PREDICT USING m AS SELECT 1,1,1,...``) made a proxy worker grow from 25 MB to 2.3 GB
   over 14 s of CPU, holding the GIL up to 0.9 s at a time: with three such clients, new
   connections waited 3.4 s. Now the rewriter reads at most ``--max-rewrite-tokens`` tokens
   (in pieces, never all of a text's at once), a larger ThanoSQL statement gets SQLSTATE
   54000 as an ordinary error, and large rewrites run one at a time per process.
2. With ``--workers N`` a worker killed with SIGKILL (the OOM killer) made the parent stop
   all the others: every session ended and nothing restarted the proxy. Now the dead worker
   is started again and the other workers' sessions go on.

Proxies run as their own processes (``thanosql-proxy`` from this checkout) in front of the
embedded cluster's server, so that their memory can be read from /proc and their workers
killed. Loops are bounded; everything listens on loopback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from proxy_process import Heartbeat as Watch
from proxy_process import ProxyProcess as Proxy
from proxy_process import alive, recv_exactly
from psycopg.conninfo import conninfo_to_dict

from thanosql_pg.preprocessor import rewrite_for_wire
from thanosql_pg.proxy import protocol as proto
from thanosql_pg.proxy.server import ProxyConfig, ProxyServer, _backoff, _parse_args

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
MAX_REWRITE = proto.DEFAULT_MAX_REWRITE_BYTES  # 4 MiB: what the attack filled
# The attack: the longest simple Query the proxy rewrites, one token per byte.
HEAD = "PREDICT USING m AS SELECT 1"
ATTACK = HEAD + ",1" * ((MAX_REWRITE - 5 - len(HEAD)) // 2)


# --- helpers -------------------------------------------------------------------------------------


def vm_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM) in KiB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match
    return int(match.group(1))


def upstream_port(server_dsn: str) -> int:
    return int(conninfo_to_dict(server_dsn)["port"])


def until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """The server's messages up to and including ReadyForQuery."""
    out = []
    while True:
        head = recv_exactly(sock, 5)
        out.append((head[:1], recv_exactly(sock, struct.unpack("!I", head[1:])[0] - 4)))
        if out[-1][0] == b"Z":
            return out


def login(port: int, user: str, database: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(proto.startup_packet({"user": user, "database": database}))
    assert until_ready(sock)[0] == (b"R", proto.AUTH_OK_BODY)
    return sock


def simple_query(sock: socket.socket, sql: str) -> list[tuple[bytes, bytes]]:
    sock.sendall(proto.message(b"Q", sql.encode() + b"\x00"))
    return until_ready(sock)


def error_fields(messages: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The fields of the ErrorResponse among `messages` ({} for none)."""
    for type_byte, body in messages:
        if type_byte == b"E":
            return {f[:1].decode(): f[1:].decode() for f in body.split(b"\x00") if f}
    return {}


def client_port(conn: psycopg.Connection) -> int:
    """The local port of a psycopg connection's socket."""
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


def serving_worker(proxy: Proxy, conns: list[psycopg.Connection]) -> list[int]:
    """For each connection, the pid of the worker holding its proxy-side socket."""
    inode_of: dict[int, int] = {}  # client port -> inode of the proxy's socket to it
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == proxy.port and inode:
            inode_of[int(remote.split(":")[1], 16)] = inode
    worker_of: dict[int, int] = {}
    for pid in proxy.workers():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                worker_of[int(target[8:-1])] = pid
    return [worker_of.get(inode_of.get(client_port(c), -1), -1) for c in conns]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(params=["threads", "python-threads", "loop"])
def proxy(request: pytest.FixtureRequest, server_dsn: str) -> Iterator[Proxy]:
    """A proxy with the default limits, relaying in each way (threads in C: the default)."""
    p = Proxy(upstream_port(server_dsn), "--relay", request.param)
    yield p
    p.stop()


# --- what a huge ThanoSQL statement costs the proxy ----------------------------------------------


def test_huge_thanosql_statement_leaves_memory_and_others_alone(
    proxy: Proxy, server_dsn: str, mallory: str
) -> None:
    """Three clients send the 4 MiB PREDICT at once. Each gets 54000 and its session goes on;
    the proxy's peak memory stays a few times 4 MiB (it was 2.3 GB for one); a query on
    another session and new connections keep being answered promptly (3.4 s before)."""
    database = conninfo_to_dict(server_dsn)["dbname"]
    dsn = proxy.dsn(server_dsn)
    with psycopg.connect(dsn, autocommit=True) as warm:
        warm.execute("LIST MODELS")  # the preprocessor has run once
    base = vm_kib(proxy.pid, "VmHWM")
    attackers = [login(proxy.port, mallory, database) for _ in range(3)]
    answers: list[list[tuple[bytes, bytes]]] = []
    after: list[list[tuple[bytes, bytes]]] = []
    lock = threading.Lock()

    def attack(sock: socket.socket) -> None:
        got = simple_query(sock, ATTACK)
        again = simple_query(sock, "SELECT 1")
        with lock:
            answers.append(got)
            after.append(again)

    with psycopg.connect(dsn, autocommit=True) as healthy:
        beat = Watch(lambda: healthy.execute("SELECT 1").fetchone())

        def new_connection() -> None:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
                conn.execute("SELECT 1").fetchone()

        newcomer = Watch(new_connection, pause=0.02)
        threads = [threading.Thread(target=attack, args=(sock,)) for sock in attackers]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
                assert not t.is_alive(), "the proxy never answered the huge statement"
        finally:
            beat.stop()
            newcomer.stop()
            for sock in attackers:
                sock.close()
    grown = vm_kib(proxy.pid, "VmHWM") - base
    assert grown < 64 * MAX_REWRITE // 1024, f"the proxy grew by {grown // 1024} MiB"
    assert beat.worst < 1.0, f"a query on another session waited {beat.worst:.2f} s"
    assert newcomer.worst < 2.0, f"a new connection waited {newcomer.worst:.2f} s"
    assert len(answers) == 3
    for got, again in zip(answers, after, strict=True):
        error = error_fields(got)
        assert error["C"] == "54000", error
        assert "too long to rewrite" in error["M"] and "--max-rewrite-tokens" in error["H"], error
        assert any(t == b"D" for t, _ in again) and not error_fields(again)  # the session goes on


def test_large_rewrite_keeps_pipelined_messages_in_order(proxy: Proxy, server_dsn: str) -> None:
    """A Query/Parse over session.LARGE_REWRITE is rewritten under the process's lock (and,
    relaying on the loop, on another thread, the client's stream held back): what the client
    pipelined after it still reaches the server after it, in order."""
    conninfo = conninfo_to_dict(server_dsn)
    sock = login(proxy.port, conninfo["user"], conninfo["dbname"])
    try:
        big = "LIST MODEL /*" + "x" * (100 << 10) + "*/"
        sock.sendall(b"".join(proto.message(b"Q", sql.encode() + b"\x00")
                              for sql in (big, "SELECT 2", "SELECT 3", big, "SELECT 4")))
        answers = [until_ready(sock) for _ in range(5)]
        for i in (0, 3):
            assert not error_fields(answers[i]), error_fields(answers[i])
            assert b"class_name" in dict(answers[i])[b"T"]  # rewritten: thanosql.list_models()
        for i, value in ((1, b"2"), (2, b"3"), (4, b"4")):
            assert dict(answers[i])[b"D"] == b"\x00\x01\x00\x00\x00\x01" + value
    finally:
        sock.close()


def test_large_statement_under_the_limit_rewrites_as_before(server_dsn: str) -> None:
    """A legitimate ThanoSQL statement of a megabyte and 100 000 tokens: the bounded lexer
    (pieces, a token limit) rewrites it exactly as the unbounded one does, and through the
    proxy it reaches the server rewritten (the model is missing: 42704, not a syntax error)."""
    rows = ", ".join(f"({i}, 'image_{i}.jpg')" for i in range(20000))
    sql = f"PREDICT USING no_such_model OPTIONS (result_col='r') AS SELECT * FROM (VALUES {rows}) AS t(i, p)"
    assert len(sql) > 400_000
    unbounded = rewrite_for_wire(sql)
    assert unbounded is not None and "raise_error" not in unbounded[:40]
    assert rewrite_for_wire(sql, max_tokens=proto.DEFAULT_MAX_REWRITE_TOKENS) == unbounded
    p = Proxy(upstream_port(server_dsn))
    try:
        with psycopg.connect(p.dsn(server_dsn), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.UndefinedObject, match="no_such_model"):
                psycopg.ClientCursor(conn).execute(sql)
            assert conn.execute("SELECT 'next'").fetchone() == ("next",)
    finally:
        p.stop()


def test_token_limit_refuses_thanosql_and_passes_plain_sql(server_dsn: str) -> None:
    """With --max-rewrite-tokens 1000: a ThanoSQL statement of more tokens gets 54000 (54001
    if what was read is too deep already; the session goes on); plain SQL of more tokens,
    even holding a word ThanoSQL starts with, is relayed untouched for the server to run."""
    database = conninfo_to_dict(server_dsn)["dbname"]
    user = conninfo_to_dict(server_dsn)["user"]
    p = Proxy(upstream_port(server_dsn), env={"THANOSQL_PROXY_MAX_REWRITE_TOKENS": "1000"})
    try:
        sock = login(p.port, user, database)
        try:
            small = simple_query(sock, "PREDICT USING no_such_model AS SELECT 1" + ",1" * 400)
            assert error_fields(small)["C"] == "42704"  # rewritten: the model is missing
            big = error_fields(simple_query(sock, "PREDICT USING no_such_model AS SELECT 1" + ",1" * 600))
            assert big["C"] == "54000" and "more than 1000 tokens" in big["M"], big
            # A long run without a space, comma or parenthesis is read in pieces too; what was
            # read is too deep already: 54001, what the statement gets without the limit.
            run = error_fields(simple_query(sock, "PREDICT USING m AS SELECT a" + ".a" * (MiB // 2)))
            assert run["C"] == "54001", run
            ops = error_fields(simple_query(sock, "PREDICT USING m AS SELECT 1" + "+-" * 2000 + "1"))
            assert ops["C"] == "54000" and "operator characters" in ops["M"], ops
            # Plain SQL: "\nlist" makes the proxy look, more than 1000 tokens make it stop.
            values = ", ".join(f"({i})" for i in range(1000))
            plain = simple_query(sock, f"SELECT count(x) AS\nlist FROM (VALUES {values}) AS v(x)")
            assert not error_fields(plain)
            assert [b for t, b in plain if t == b"D"] == [b"\x00\x01\x00\x00\x00\x041000"]
            assert simple_query(sock, "SELECT 1")[-1][0] == b"Z"
        finally:
            sock.close()
    finally:
        p.stop()


def test_max_rewrite_tokens_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THANOSQL_PROXY_MAX_REWRITE_TOKENS", raising=False)
    assert _parse_args([]).max_rewrite_tokens == proto.DEFAULT_MAX_REWRITE_TOKENS == 1 << 17
    assert _parse_args(["--max-rewrite-tokens", "500"]).max_rewrite_tokens == 500
    monkeypatch.setenv("THANOSQL_PROXY_MAX_REWRITE_TOKENS", "700")
    assert _parse_args([]).max_rewrite_tokens == 700
    with pytest.raises(SystemExit):
        _parse_args(["--max-rewrite-tokens", "0"])
    with pytest.raises(ValueError, match="max_rewrite_tokens"):
        ProxyServer(ProxyConfig(max_rewrite_tokens=0), rewriter=lambda sql, n: None)
    # The default rewriter gets the bound; a rewriter without the keyword is called as before.
    server = ProxyServer(ProxyConfig(max_rewrite_tokens=123))
    assert server.session_rewriter(True).keywords == {"standard_conforming_strings": True, "max_tokens": 123}
    calls: list[tuple[str, int]] = []
    plain = ProxyServer(ProxyConfig(), rewriter=lambda sql, n: calls.append((sql, n)))
    plain.session_rewriter(True)("ECHO 1", 0)
    assert calls == [("ECHO 1", 0)]


# --- a dead worker is restarted, the others go on ------------------------------------------------


def test_killed_worker_is_restarted_and_other_sessions_go_on(server_dsn: str, tmp_path: Path) -> None:
    """kill -9 one worker of `--workers 3` with six sessions open: the sessions it served end,
    the others keep their backends and answer; a new worker takes the dead one's place, new
    connections work, a worker that keeps dying is restarted after a growing pause, and
    SIGTERM to the parent still stops every worker."""
    log_file = tmp_path / "proxy.log"
    p = Proxy(upstream_port(server_dsn), "--workers", "3", "--log-file", str(log_file))
    conns: list[psycopg.Connection] = []
    try:
        first = p.workers()
        assert len(first) == 3
        dsn = p.dsn(server_dsn)
        # Six sessions, more (up to 30) until two workers at least serve some.
        while len(conns) < 6 or len(set(serving_worker(p, conns))) < 2:
            assert len(conns) < 30, "the kernel sent every connection to one worker"
            conns.append(psycopg.connect(dsn, autocommit=True))
        owners = serving_worker(p, conns)
        assert -1 not in owners, owners
        backends = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
        for i, c in enumerate(conns):
            c.execute(f"SET application_name = 'bounds_{i}'")
        victim = max(set(owners), key=owners.count)

        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(p.workers() - {victim}) < 3:
            assert time.monotonic() < deadline, "no worker took the killed one's place"
            time.sleep(0.05)
        restarted = p.workers() - first
        assert len(restarted) == 1 and victim not in p.workers()

        for i, (c, owner) in enumerate(zip(conns, owners, strict=True)):
            if owner == victim:
                with pytest.raises(psycopg.OperationalError):
                    c.execute("SELECT 1")
            else:  # the same backend, its session state kept
                state = c.execute("SELECT pg_backend_pid(), current_setting('application_name')").fetchone()
                assert state == (backends[i], f"bounds_{i}")
        for _ in range(9):  # whichever worker the kernel picks
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as fresh:
                assert fresh.execute("SELECT 42").fetchone() == (42,)

        # It dies young again: started again after a pause (0.5 s, then doubling).
        (again,) = restarted
        os.kill(again, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(p.workers() - {again}) < 3:
            assert time.monotonic() < deadline, "the worker was not started again after dying young"
            time.sleep(0.05)
        log = log_file.read_text()
        killed = r"\) was killed by SIGKILL after [\d.]+ s; starting another in"
        assert re.search(rf"worker \d \(pid {victim}{killed} 0\.0 s", log), log
        assert re.search(rf"worker \d \(pid {again}{killed} 0\.5 s", log), log

        last = p.workers()
        assert p.stop() == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in last):
            assert time.monotonic() < deadline, "a worker outlived the proxy"
            time.sleep(0.05)
    finally:
        for c in conns:
            c.close()
        p.stop()


def test_restart_backoff() -> None:
    """At once after a first death (or one after a long life), then 0.5 s, doubling to 30 s."""
    assert [_backoff(n) for n in range(1, 9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert _backoff(100) == 30.0
