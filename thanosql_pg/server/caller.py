"""The caller's search_path, in effect only around the SQL the caller wrote.

Every extension function pins search_path = pg_catalog, pg_temp, so that nothing
thanosql_pg runs resolves a name through the caller's path. The SQL the caller
wrote (the query after AS, table names, thanosql.execute's text) must resolve as
the caller would: those functions receive the caller's path (an argument whose
default is evaluated before the function's SET applies), and ``as_caller``
switches to it only around that SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import plpy

from thanosql_pg.server import spi

PINNED_SEARCH_PATH = "pg_catalog, pg_temp"
_caller_path: str | None = None
_as_caller = False  # the caller's path is in effect now


@contextmanager
def caller_search_path(path: str | None) -> Iterator[None]:
    """For one entry point call: remember the caller's search_path (see ``as_caller``)."""
    global _caller_path, _as_caller
    previous = _caller_path, _as_caller
    _caller_path, _as_caller = path, False
    try:
        yield
    finally:
        _caller_path, _as_caller = previous


def path() -> str | None:
    """The caller's search_path, as its entry point received it (a background job keeps it)."""
    return _caller_path


@contextmanager
def as_caller() -> Iterator[None]:
    """Run the caller's own SQL with the caller's search_path, then pin it again.
    The setting is transaction-local and the function's SET clause restores it
    on exit, errors included. Nested uses keep the caller's path until the
    outermost one ends."""
    global _as_caller
    if _caller_path is None or _as_caller:
        yield
        return
    _set_search_path(_caller_path)
    _as_caller = True
    try:
        yield
    finally:
        _as_caller = False
        _set_search_path(PINNED_SEARCH_PATH)


def _set_search_path(path: str) -> None:
    plpy.execute(spi.plan("SELECT pg_catalog.set_config('search_path', $1, true)", ["text"]), [path])
