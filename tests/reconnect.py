"""Connecting to a server that a test restarts or crashes on purpose."""

from __future__ import annotations

import time

import psycopg


def connect(dsn: str, attempts: int = 120) -> psycopg.Connection:
    """An autocommit connection, waiting for the server to come back (a crash restart, a
    restart): ``attempts`` tries half a second apart."""
    for _ in range(attempts):
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise AssertionError("the server did not come back")
