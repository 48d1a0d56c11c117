"""Training processes beside the server: the ranks of a BUILD/FIT with ``workers`` > 1.

``wire`` is the message format between a backend and its workers; ``worker`` is a
worker process (started by the backend, or by ``thanosql worker --join`` on another
machine). The backend's side is thanosql_pg.server.distributed.
"""
