"""Fixtures for the attack regressions: ordinary login roles, and a way to tell
that no backend crashed.

The roles get exactly what the README asks an ordinary user to have: LOGIN and
CREATE on the database, nothing else. A crash of any backend makes PostgreSQL
restart every session but keeps ``pg_postmaster_start_time()``, so crashes are
detected with a sentinel: a connection opened before the attack that must still
answer after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest


def dsn_as(dsn: str, role: str) -> str:
    """``dsn`` with its user replaced by ``role`` (the clusters under test trust loopback)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
def make_role(direct: psycopg.Connection) -> Iterator[Callable[[str], str]]:
    """Creates ordinary login roles (``mallory_<hex>``); drops them and what they own afterwards."""
    made: list[str] = []
    dbname = direct.info.dbname

    def make(prefix: str) -> str:
        role = f"{prefix}_{uuid.uuid4().hex[:8]}"
        direct.execute(f'CREATE ROLE "{role}" LOGIN')
        direct.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO "{role}"')
        made.append(role)
        return role

    yield make
    for role in reversed(made):
        direct.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        # models are rows, not objects DROP OWNED knows: a dropped role would leave them orphaned
        direct.execute("DELETE FROM thanosql.models WHERE owner = %s::regrole", (f'"{role}"',))
        direct.execute(f'DROP OWNED BY "{role}" CASCADE')
        direct.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM "{role}"')
        direct.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def mallory(make_role: Callable[[str], str]) -> str:
    return make_role("mallory")


@pytest.fixture
def alice(make_role: Callable[[str], str]) -> str:
    return make_role("alice")


@pytest.fixture
def connect_as(server_dsn: str, proxy_dsn: str) -> Iterator[Callable[..., psycopg.Connection]]:
    """``connect_as(role, via='direct'|'proxy')``: an autocommit connection as ``role``."""
    conns: list[psycopg.Connection] = []

    def connect(role: str, via: str = "direct") -> psycopg.Connection:
        base = proxy_dsn if via == "proxy" else server_dsn
        conn = psycopg.connect(dsn_as(base, role), autocommit=True)
        conns.append(conn)
        return conn

    yield connect
    for c in conns:
        c.close()


class Sentinel:
    """A connection held open across an attack: if any backend crashed, the
    postmaster terminated it, and ``alive()`` is False."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def alive(self) -> bool:
        try:
            return self.conn.execute("SELECT pg_backend_pid()").fetchone()[0] == self.pid
        except psycopg.Error:
            return False


@pytest.fixture
def sentinel(server_dsn: str) -> Iterator[Sentinel]:
    s = Sentinel(server_dsn)
    yield s
    assert s.alive(), "a backend crashed: PostgreSQL restarted every session"
    s.conn.close()
