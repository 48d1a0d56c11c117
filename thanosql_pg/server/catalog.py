"""The model catalog: thanosql.models rows and their weights in model_chunks.

Reads go through SPI under the caller's role, so row-level security decides
who sees which model. Writes go through the extension's C gates
(extension/idempotent/040-management.sql, src/act.c), which call the SECURITY
DEFINER writers as the role the server sees calling: this code never names a
role, and PUBLIC cannot write the tables directly. Both happen in the calling
statement's transaction, so a failed or rolled-back statement leaves nothing
behind. The weights' size and hash are computed by the server from the chunks
it stores (thanosql._model_seal), never sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import plpy

from thanosql_pg.algorithms.registry import did_you_mean
from thanosql_pg.errors import InsufficientPrivilege, UndefinedModel
from thanosql_pg.server import spi

CHUNK_BYTES = 1 << 20  # 1 MiB chunks keep each TOAST value small; the writers insist on it


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    algorithm: str
    family: str
    owner: str
    options: dict[str, Any]
    labels: list[Any] | None
    label_type: str | None
    format: str
    size_bytes: int
    version: int
    payload_sha256: str | None = None  # hex, made by the server (_model_seal); None if never sealed


# A model's current row, with its version's weights hash (server.weights_cache).
_COLUMNS = ("m.id, m.name, m.algorithm, m.family, pg_catalog.pg_get_userbyid(m.owner)::text AS owner,"
            " m.options, m.labels, m.label_type, m.format, m.size_bytes, m.version, v.payload_sha256")
_FROM = ("thanosql.models m LEFT JOIN thanosql.model_versions v ON v.model_id OPERATOR(pg_catalog.=) m.id"
         " AND v.version OPERATOR(pg_catalog.=) m.version")


def _record(row: dict[str, Any]) -> ModelRecord:
    return ModelRecord(
        id=row["id"],
        name=row["name"],
        algorithm=row["algorithm"],
        family=row["family"],
        owner=row["owner"],
        options=json.loads(row["options"]),
        labels=json.loads(row["labels"]) if row["labels"] is not None else None,
        label_type=row["label_type"],
        format=row["format"],
        size_bytes=row["size_bytes"],
        version=row["version"],
        payload_sha256=row["payload_sha256"],
    )




def find(name: str) -> ModelRecord | None:
    """The model called ``name`` if the current role may see (USE) it."""
    rows = plpy.execute(
        spi.plan(f"SELECT {_COLUMNS} FROM {_FROM} WHERE m.name OPERATOR(pg_catalog.=) $1",
              ["text"]),
        [name],
    )
    return _record(rows[0]) if rows.nrows() else None


def get(name: str, privilege: str = "USE") -> ModelRecord:
    """Look a model up for a statement that needs ``privilege`` (USE or MODIFY)."""
    rec = find(name)
    if rec is None:
        raise UndefinedModel(f'model "{name}" does not exist',
                             hint=did_you_mean(name, visible_names())
                             + "LIST MODEL shows the models you can use.")
    if privilege == "MODIFY":
        require_modify(rec)
    return rec


def visible_names(limit: int = 10_000) -> list[str]:
    """The names of the models the current role may use (row-level security decides), the
    first ``limit`` of them: the candidates of a "did you mean" hint."""
    rows = plpy.execute(spi.plan("SELECT name FROM thanosql.models ORDER BY name LIMIT $1", ["int4"]),
                        [limit])
    return [str(r["name"]) for r in rows]


def require_modify(rec: ModelRecord) -> None:
    if not can_modify(rec):
        raise InsufficientPrivilege(
            f'permission denied to modify model "{rec.name}"',
            hint=f'Model "{rec.name}" belongs to role {rec.owner}; ask its owner to run '
            f"SELECT thanosql.grant_model('{rec.name}', current_user, 'MODIFY'), or choose another name.",
        )


@dataclass(frozen=True)
class Claim:
    """A model name held by this statement's transaction (see ``claim``)."""

    model_id: int
    existed: bool


def claim(name: str, *, overwrite: bool, wait: bool = False) -> Claim:
    """Before training into ``name``: take the name, so that a second BUILD or FIT
    of it fails at once (55P03, naming the session that holds it) or, with
    ``wait``, waits, instead of both training to the end. A new name gets its
    catalog row now (nobody else sees it before the statement commits); an
    existing model (overwrite, FIT) is locked. Raises 42710 for a taken name
    without overwrite, 42501 without MODIFY."""
    row = plpy.execute(
        spi.plan("SELECT model_id, existed FROM thanosql._claim_model($1, $2, $3)",
              ["text", "bool", "bool"]),
        [name, overwrite, wait],
    )[0]
    return Claim(int(row["model_id"]), bool(row["existed"]))


class _Release(Exception):
    """Rolls back try_claim's subtransaction."""


def try_claim(name: str, *, overwrite: bool) -> None:
    """What ``claim`` would say of ``name`` now (a background job's submission): its errors,
    or nothing, with nothing kept (the claim is rolled back at once)."""
    try:
        with plpy.subtransaction():
            claim(name, overwrite=overwrite)
            raise _Release
    except _Release:
        pass


def save(
    claimed: Claim,
    *,
    algorithm: str,
    family: str,
    options: dict[str, Any],
    labels: list[Any] | None,
    label_type: str | None,
    payload: bytes,
    format: str,
    statement: str,
    rows: int,
) -> ModelRecord:
    """Store a trained model as a new version of the claimed model. Earlier
    versions stay (thanosql.keep_versions of them, for rollback), all inside the
    current transaction: readers see either the old or the new model."""
    plpy.execute(
        spi.plan("SELECT thanosql._write_model($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            ["bigint", "text", "text", "jsonb", "jsonb", "text", "text", "text", "bigint"],
        ),
        [claimed.model_id, algorithm, family, json.dumps(options),
         json.dumps(labels) if labels is not None else None, label_type, format, statement, rows],
    )
    put = spi.plan("SELECT thanosql._put_model_chunk($1, $2, $3)", ["bigint", "int4", "bytea"])
    for seq, start in enumerate(range(0, len(payload), CHUNK_BYTES)):
        plpy.execute(put, [claimed.model_id, seq, payload[start : start + CHUNK_BYTES]])
    plpy.execute(spi.plan("SELECT thanosql._seal_model($1)", ["bigint"]), [claimed.model_id])
    row = plpy.execute(
        spi.plan(f"SELECT {_COLUMNS} FROM {_FROM} WHERE m.id OPERATOR(pg_catalog.=) $1",
              ["bigint"]),
        [claimed.model_id],
    )[0]
    return _record(row)


def record_epochs(rec: ModelRecord, epochs: list[dict[str, Any]]) -> None:
    """The per-epoch history of the BUILD/FIT that made the current version."""
    if epochs:
        plpy.execute(
            spi.plan("SELECT thanosql._write_epochs($1, $2)", ["bigint", "jsonb"]),
            [rec.id, json.dumps(epochs)],
        )


def load_payload(rec: ModelRecord) -> bytes:
    cursor = plpy.cursor(
        spi.plan("SELECT data FROM thanosql.model_chunks WHERE model_id OPERATOR(pg_catalog.=) $1"
            " AND version OPERATOR(pg_catalog.=) $2 ORDER BY seq",
            ["bigint", "int4"],
        ),
        [rec.id, rec.version],
    )
    parts: list[bytes] = []
    for row in _iterate(cursor, 16):
        parts.append(row["data"])
    return b"".join(parts)


def can_modify(rec: ModelRecord) -> bool:
    """Whether the current role holds MODIFY on ``rec`` (owner, member of the owner, or grantee)."""
    return bool(plpy.execute(
        spi.plan("SELECT thanosql._has_model_privilege(m.id, m.owner, 'MODIFY', thanosql._current_role())"
                 " AS ok"
            " FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) $1", ["bigint"]
        ),
        [rec.id],
    )[0]["ok"])


def record_metrics(rec: ModelRecord, statement: str, rows: int, metrics: dict[str, float]) -> None:
    """Into the model's metrics history: only the owner and MODIFY grantees write it (an
    EVALUATE by a USE grantee returns its results unrecorded)."""
    plpy.execute(
        spi.plan("SELECT thanosql._write_metrics($1, $2, $3, $4)",
              ["bigint", "text", "bigint", "jsonb"]),
        [rec.id, statement, rows, json.dumps(metrics)],
    )


def _iterate(cursor: Any, size: int) -> Iterator[dict[str, Any]]:
    while True:
        rows = cursor.fetch(size)
        if not rows:
            return
        yield from rows
