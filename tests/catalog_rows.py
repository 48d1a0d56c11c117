"""Catalog rows without training: a model stored through the same SECURITY
DEFINER writers a BUILD uses (PUBLIC cannot write the catalog tables), as the
connection's current role. For tests of who sees and changes what."""

from __future__ import annotations

import json
from typing import Any

ROLE = "thanosql._current_role()"


def add_model(conn: Any, name: str, payload: bytes = b"\x00weights", *, algorithm: str = "ConvNeXt_Tiny",
              family: str = "image_classification", options: dict[str, Any] | None = None,
              labels: list[Any] | None = None, overwrite: bool = False) -> int:
    """Claim ``name``, write a version with one chunk of ``payload``; returns the model id."""
    mid = conn.execute(f"SELECT model_id FROM thanosql._model_claim(%s, %s, false, {ROLE})",
                       (name, overwrite)).fetchone()[0]
    conn.execute("SELECT thanosql._model_write(%s, %s, %s, %s, %s, NULL, 'test', %s, NULL, 'BUILD', 2,"
                 f" {ROLE})",
                 (mid, algorithm, family, json.dumps(options if options is not None else {"epochs": 1}),
                  json.dumps(labels if labels is not None else [0, 1]), len(payload)))
    conn.execute(f"SELECT thanosql._model_put_chunk(%s, 0, %s, {ROLE})", (mid, payload))
    return int(mid)


def drop_prefixed(conn: Any, prefix: str) -> None:
    """A test module's clean-up: its models and tables, all named ``<prefix>...``."""
    like = [prefix + "%"]
    conn.execute("SELECT thanosql.delete_model(name) FROM thanosql.models WHERE name LIKE %s", like)
    for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", like).fetchall():
        conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
