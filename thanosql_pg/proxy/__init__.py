"""`thanosql-proxy`: a PostgreSQL wire-protocol proxy that rewrites ThanoSQL statements.

It rewrites the SQL text of Query and Parse messages with the preprocessor and relays
every other byte untouched (authentication, COPY, notices, notifications, cancels).
Nothing is rewritten before the server has authenticated the client, Query/Parse
messages over `--max-rewrite-bytes` pass through untouched, and no more than
`--max-rewrite-tokens` tokens of one are read (a ThanoSQL statement with more gets 54000).
Each session is relayed on two threads with blocking sockets once its startup packet is
in (`--relay loop` keeps it on the event loop); `--workers N` runs N processes on one port,
and starts again one that dies.
Run it with `thanosql-proxy` or `python -m thanosql_pg.proxy`; embed it with
`ProxyServer`, `serve` or `BackgroundProxy` from `thanosql_pg.proxy.server`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BackgroundProxy", "ProxyConfig", "ProxyServer", "main", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m thanosql_pg.proxy.server` does not find its own module
    # half-imported through this package (runpy warns about that).
    if name in __all__:
        from thanosql_pg.proxy import server

        return getattr(server, name)
    raise AttributeError(name)
