"""Catalog rows without training: a model stored through the same writers a BUILD
uses (the C gates; PUBLIC cannot write the catalog tables), as the connection's
current role. For tests of who sees and changes what."""

from __future__ import annotations

import json
from typing import Any


def add_model(conn: Any, name: str, payload: bytes = b"\x00weights", *, algorithm: str = "ConvNeXt_Tiny",
              family: str = "image_classification", options: dict[str, Any] | None = None,
              labels: list[Any] | None = None, overwrite: bool = False) -> int:
    """Claim ``name``, write a version with one chunk of ``payload``; returns the model id."""
    mid = conn.execute("SELECT model_id FROM thanosql._claim_model(%s, %s, false)",
                       (name, overwrite)).fetchone()[0]
    conn.execute("SELECT thanosql._write_model(%s, %s, %s, %s, %s, NULL, 'test', 'BUILD', 2)",
                 (mid, algorithm, family, json.dumps(options if options is not None else {"epochs": 1}),
                  json.dumps(labels if labels is not None else [0, 1])))
    chunk = 1 << 20
    for seq, start in enumerate(range(0, len(payload), chunk)):
        conn.execute("SELECT thanosql._put_model_chunk(%s, %s, %s)", (mid, seq, payload[start:start + chunk]))
    conn.execute("SELECT thanosql._seal_model(%s)", (mid,))
    return int(mid)


def drop_prefixed(conn: Any, prefix: str) -> None:
    """A test module's clean-up: its models and tables, all named ``<prefix>...``."""
    like = [prefix + "%"]
    conn.execute("SELECT thanosql.delete_model(name) FROM thanosql.models WHERE name LIKE %s", like)
    for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", like).fetchall():
        conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
