"""thanosql_pg: the ThanoSQL machine-learning dialect of SQL for PostgreSQL.

PL/Python imports this package inside every backend that uses the extension,
so nothing heavy is imported here: the client and the IPython magic load on
first use.
"""

from __future__ import annotations

from typing import Any

from thanosql_pg._version import __version__

__all__ = ["__version__", "connect", "load_ipython_extension", "unload_ipython_extension"]


def connect(dsn: str | None = None, **kwargs: Any) -> Any:
    """A psycopg 3 connection whose execute() accepts ThanoSQL statements
    (see thanosql_pg.client.connect)."""
    from thanosql_pg.client import connect as _connect

    return _connect(dsn, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext thanosql_pg``: registers the %thanosql / %%thanosql magic."""
    from thanosql_pg.magic import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from thanosql_pg.magic import unload_ipython_extension as _unload

    _unload(ipython)
