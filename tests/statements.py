"""Calling the extension's functions the way the rewrite does, for tests that call them directly."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

Conn = psycopg.Connection


def build(conn: Conn, model: str, algo: str, opts: dict[str, Any], query: str) -> tuple[Any, ...]:
    return conn.execute("SELECT * FROM thanosql.build_model(%s, %s, %s, %s)",
                        [model, algo, json.dumps(opts), query]).fetchone()


def predict(conn: Conn, model: str, opts: dict[str, Any], values: list[bytes]) -> list[Any]:
    """predict_batch on bytea values, as the PREDICT rewrite calls it."""
    return conn.execute(
        "SELECT thanosql.predict_batch(thanosql.prepare('predict', %s, %s::jsonb),"
        " ARRAY(SELECT pg_catalog.to_jsonb(v) FROM unnest(%s::bytea[]) AS v))",
        [model, json.dumps(opts), values]).fetchone()[0]


def media_table(conn: Conn, rows: list[tuple[bytes, str]]) -> str:
    """A temporary table (x bytea, y text) of ``rows``: what an ordinary role can write."""
    table = "media_" + uuid.uuid4().hex[:8]
    conn.execute(f"CREATE TEMP TABLE {table} (x bytea, y text)")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", rows)
    return table
