"""`thanosql-proxy`: a PostgreSQL wire-protocol proxy that rewrites ThanoSQL statements.

It rewrites the SQL text of Query and Parse messages with the preprocessor and relays
every other byte untouched (authentication, COPY, notices, notifications, cancels).
"""

from thanosql_pg.proxy.server import BackgroundProxy, ProxyConfig, ProxyServer, main, serve

__all__ = ["BackgroundProxy", "ProxyConfig", "ProxyServer", "main", "serve"]
