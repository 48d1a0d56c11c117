"""Waiting for a hot standby (``thanosql start --replica``, the ``replica`` fixture of
conftest.py) to replay what the primary wrote."""

from __future__ import annotations

import time

import psycopg


def caught_up(primary: psycopg.Connection, standby: psycopg.Connection, timeout: float = 60) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
            return
        time.sleep(0.1)
    raise AssertionError("the standby did not catch up")
