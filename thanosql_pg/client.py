"""``thanosql_pg.connect``: a psycopg 3 connection that accepts ThanoSQL.

The connection goes straight to the server (no proxy needed): its cursors run
each query through the same preprocessor the proxy uses, client-side, and
pgvector's types are registered, so ``vector`` columns come back as numpy
arrays::

    with thanosql_pg.connect() as conn:
        conn.execute("LIST MODEL").fetchall()

Query parameters work for plain SQL; ThanoSQL statements should be given as
literal text, since the rewrite moves their query into a dollar-quoted string.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql as pgsql

from thanosql_pg.errors import ConfigurationError
from thanosql_pg.preprocessor import rewrite


def default_dsn() -> str:
    """$THANOSQL_DSN, else the running embedded cluster's server URI."""
    env = os.environ.get("THANOSQL_DSN")
    if env:
        return env
    try:
        from thanosql_pg.cluster import Cluster

        info = Cluster().status()
    except Exception:  # no PostgreSQL installed here, say: fall through to the hint
        info = {}
    if info.get("server_running") and info.get("server"):
        return str(info["server"])
    raise ConfigurationError(
        "no database to connect to",
        hint="Pass a connection string (thanosql_pg.connect('postgresql://...') or %thanosql postgresql://...),"
        " set THANOSQL_DSN, or start the embedded cluster with `thanosql start`.",
    )


def standard_conforming_strings(conn: Any) -> bool:
    """The connection's setting, as the server last reported it: the text is lexed as
    the server will lex it (backslashes in '' strings)."""
    info = getattr(conn, "info", None)
    return info is None or info.parameter_status("standard_conforming_strings") != "off"


def rewrite_query(query: Any, context: Any) -> Any:
    """The query with its ThanoSQL statements rewritten; anything else unchanged."""
    scs = standard_conforming_strings(getattr(context, "connection", context))
    if isinstance(query, bytes):
        text = query.decode()
        out = rewrite(text, standard_conforming_strings=scs)
        return query if out is text else out
    if isinstance(query, pgsql.Composable):
        text = query.as_string(context)
        out = rewrite(text, standard_conforming_strings=scs)
        return query if out is text else out
    if isinstance(query, str):
        return rewrite(query, standard_conforming_strings=scs)
    return query


class _Rewriting:
    """Cursor mixin: rewrite ThanoSQL before execute()."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        return super().execute(rewrite_query(query, self), params, **kwargs)  # type: ignore[misc]  # a mixin: super() is the cursor


class ThanoSQLCursor(_Rewriting, psycopg.Cursor[Any]):
    pass


class ThanoSQLServerCursor(_Rewriting, psycopg.ServerCursor):
    pass


class ThanoSQLConnection(psycopg.Connection[Any]):
    """A psycopg.Connection whose cursors (and so ``execute``) accept ThanoSQL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = ThanoSQLCursor
        self.server_cursor_factory = ThanoSQLServerCursor


def register_vector_types(conn: psycopg.Connection[Any]) -> bool:
    """Register pgvector's types when the database has the extension; True if it did."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        has = conn.execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'vector'").fetchone()
        if has:
            from pgvector.psycopg import register_vector

            register_vector(conn)
            _load_vectors_as_numpy(conn)
        return bool(has)
    finally:
        # The look-ups must not leave a transaction open on a non-autocommit connection.
        if idle and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            conn.rollback()


def _load_vectors_as_numpy(conn: psycopg.Connection[Any]) -> None:
    """pgvector's loaders return its Vector class; numpy arrays are what pandas
    and numpy users want (writable copies: np.frombuffer's are read-only)."""
    import numpy as np
    from pgvector.psycopg.halfvec import HalfVectorBinaryLoader, HalfVectorLoader
    from pgvector.psycopg.vector import VectorBinaryLoader, VectorLoader

    for name, loaders in (("vector", (VectorLoader, VectorBinaryLoader)),
                          ("halfvec", (HalfVectorLoader, HalfVectorBinaryLoader))):
        info = conn.adapters.types.get(name)
        if info is None:
            continue
        for base in loaders:
            conn.adapters.register_loader(info.oid, _numpy_loader(base, np))


def _numpy_loader(base: type, np: Any) -> type:
    class NumpyLoader(base):  # type: ignore[misc]  # base: a loader class found at run time
        def load(self, data: Any) -> Any:
            return np.array(super().load(data).to_numpy())

    return NumpyLoader


def connect(dsn: str | None = None, **kwargs: Any) -> ThanoSQLConnection:
    """Connect to ``dsn`` (default: see :func:`default_dsn`); keyword arguments
    are psycopg.connect's (autocommit=True, row_factory=..., ...)."""
    conn = ThanoSQLConnection.connect(dsn or default_dsn(), **kwargs)
    try:
        register_vector_types(conn)
    except BaseException:
        conn.close()
        raise
    return conn
