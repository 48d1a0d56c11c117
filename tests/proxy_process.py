"""`thanosql-proxy` from this checkout as a process of its own, in front of a server: for tests
that watch the proxy from outside (its memory, its workers, its exit)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from psycopg.conninfo import make_conninfo

from thanosql_pg.proxy import protocol as proto

ROOT = Path(__file__).resolve().parent.parent


class ProxyProcess:
    """`thanosql-proxy` from this checkout as its own process, in front of `upstream_port`."""

    def __init__(self, upstream_port: int, *extra: str, env: dict[str, str] | None = None) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "thanosql_pg.proxy.server", "--listen-port", "0",
                "--upstream-host", "127.0.0.1", "--upstream-port", str(upstream_port),
                "--log-level", "WARNING", *extra,
            ],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.match(r"thanosql-proxy ready: listening on \S+:(\d+),", line)
        if match is None:
            self.stop()
            self.stderr.seek(0)
            raise AssertionError(f"no ready line: {line!r}\n{self.stderr.read().decode(errors='replace')}")
        self.port = int(match.group(1))
        self.pid = self.proc.pid

    def dsn(self, server_dsn: str, user: str | None = None) -> str:
        extra = {"user": user} if user else {}
        return make_conninfo(server_dsn, host="127.0.0.1", port=self.port, **extra)

    def workers(self) -> set[int]:
        """The pids of its worker processes (--workers), zombies left out."""
        text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return {pid for pid in map(int, text.split()) if alive(pid)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def connect(self, user: str) -> socket.socket:
        """A raw socket that has sent its startup packet."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(proto.startup_packet({"user": user, "database": "x"}))
        return sock


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Heartbeat:
    """A healthy client on a thread doing `round_trip` over and over; records the slowest."""

    def __init__(self, round_trip: Callable[[], None], pause: float = 0.005) -> None:
        self.round_trip = round_trip
        self.pause = pause
        self.worst = 0.0
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.round_trip()
                self.worst = max(self.worst, time.monotonic() - started)
                self.count += 1
                time.sleep(self.pause)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert self.error is None, self.error
        assert self.count > 0


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
