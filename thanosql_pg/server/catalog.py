"""The model catalog: thanosql.models rows and their weights in model_chunks.

All reads and writes go through SPI in the calling statement's transaction,
under the caller's role, so row-level security decides who sees and changes
which model, and a failed or rolled-back statement leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import plpy

from thanosql_pg.errors import DuplicateModel, InsufficientPrivilege, UndefinedModel

CHUNK_BYTES = 1 << 20  # 1 MiB chunks keep each TOAST value small


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


_COLUMNS = "id, name, algorithm, family, owner, options, labels, label_type, format, size_bytes, version"


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
    )


_plans: dict[str, Any] = {}


def _plan(key: str, sql: str, types: list[str]) -> Any:
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = plpy.prepare(sql, types)
    return plan


def find(name: str) -> ModelRecord | None:
    """The model called ``name`` if the current role may see (USE) it."""
    rows = plpy.execute(
        _plan("find", f"SELECT {_COLUMNS} FROM thanosql.models WHERE name = $1", ["text"]), [name]
    )
    return _record(rows[0]) if rows.nrows() else None


def get(name: str, privilege: str = "USE") -> ModelRecord:
    """Look a model up for a statement that needs ``privilege`` (USE or MODIFY)."""
    rec = find(name)
    if rec is None:
        raise UndefinedModel(
            f'model "{name}" does not exist', hint="LIST MODEL shows the models you can use."
        )
    if privilege == "MODIFY":
        require_modify(rec)
    return rec


def require_modify(rec: ModelRecord) -> None:
    ok = plpy.execute(
        _plan(
            "can_modify", "SELECT thanosql._has_model_privilege($1, $2, 'MODIFY') AS ok", ["bigint", "name"]
        ),
        [rec.id, rec.owner],
    )[0]["ok"]
    if not ok:
        raise InsufficientPrivilege(
            f'permission denied to modify model "{rec.name}"',
            hint=f'Model "{rec.name}" belongs to role {rec.owner}; ask its owner to run '
            f"SELECT thanosql.grant_model('{rec.name}', current_user, 'MODIFY'), or choose another name.",
        )


def check_target(name: str, overwrite: bool) -> ModelRecord | None:
    """Before training into ``name``: fail fast on a clash, return the model to replace."""
    rec = find(name)
    if rec is not None:
        if not overwrite:
            raise DuplicateModel(
                f'model "{name}" already exists',
                hint="Add overwrite=True to OPTIONS to replace it, or choose another name.",
            )
        require_modify(rec)
    elif _exists_hidden(name):
        raise DuplicateModel(
            f'model "{name}" already exists and belongs to another role',
            hint="Choose another name.",
        )
    return rec


def _exists_hidden(name: str) -> bool:
    # RLS hides other roles' models; the unique index still sees them.
    rows = plpy.execute(_plan("hidden", "SELECT thanosql._model_name_taken($1) AS taken", ["text"]), [name])
    return bool(rows[0]["taken"])


def save(
    name: str,
    *,
    algorithm: str,
    family: str,
    options: dict[str, Any],
    labels: list[Any] | None,
    label_type: str | None,
    payload: bytes,
    format: str,
    replace: ModelRecord | None,
    keep_history: bool = False,
) -> ModelRecord:
    """Store a trained model. With ``replace`` the old model's row is updated in
    place (owner and grants stay) and its weights are swapped, all inside the
    current transaction: readers see either the old or the new model."""
    opts = json.dumps(options)
    labels_json = json.dumps(labels) if labels is not None else None
    if replace is None:
        row = plpy.execute(
            _plan(
                "insert",
                "INSERT INTO thanosql.models (name, algorithm, family, options, labels, label_type,"
                " format, size_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING " + _COLUMNS,
                ["text", "text", "text", "jsonb", "jsonb", "text", "text", "bigint"],
            ),
            [name, algorithm, family, opts, labels_json, label_type, format, len(payload)],
        )[0]
    else:
        plpy.execute(
            _plan("del_chunks", "DELETE FROM thanosql.model_chunks WHERE model_id = $1", ["bigint"]),
            [replace.id],
        )
        if not keep_history:
            plpy.execute(
                _plan("del_metrics", "DELETE FROM thanosql.model_metrics WHERE model_id = $1", ["bigint"]),
                [replace.id],
            )
        row = plpy.execute(
            _plan(
                "update",
                "UPDATE thanosql.models SET algorithm = $2, family = $3, options = $4, labels = $5,"
                " label_type = $6, format = $7, size_bytes = $8, version = version + 1, updated_at = now(),"
                " created_at = CASE WHEN $9 THEN created_at ELSE now() END"
                " WHERE id = $1 RETURNING " + _COLUMNS,
                ["bigint", "text", "text", "jsonb", "jsonb", "text", "text", "bigint", "bool"],
            ),
            [
                replace.id,
                algorithm,
                family,
                opts,
                labels_json,
                label_type,
                format,
                len(payload),
                keep_history,
            ],
        )[0]
    rec = _record(row)
    insert = _plan(
        "chunk",
        "INSERT INTO thanosql.model_chunks (model_id, seq, data) VALUES ($1, $2, $3)",
        ["bigint", "int4", "bytea"],
    )
    for seq, start in enumerate(range(0, len(payload), CHUNK_BYTES)):
        plpy.execute(insert, [rec.id, seq, payload[start : start + CHUNK_BYTES]])
    return rec


def load_payload(rec: ModelRecord) -> bytes:
    cursor = plpy.cursor(
        _plan(
            "chunks", "SELECT data FROM thanosql.model_chunks WHERE model_id = $1 ORDER BY seq", ["bigint"]
        ),
        [rec.id],
    )
    parts: list[bytes] = []
    for row in _iterate(cursor, 16):
        parts.append(row["data"])
    return b"".join(parts)


def record_metrics(rec: ModelRecord, statement: str, rows: int, metrics: dict[str, float]) -> None:
    plpy.execute(
        _plan(
            "metrics",
            "INSERT INTO thanosql.model_metrics (model_id, statement, rows, metrics) VALUES ($1, $2, $3, $4)",
            ["bigint", "text", "bigint", "jsonb"],
        ),
        [rec.id, statement, rows, json.dumps(metrics)],
    )


def current_version(rec_id: int) -> int | None:
    rows = plpy.execute(
        _plan("version", "SELECT version FROM thanosql.models WHERE id = $1", ["bigint"]), [rec_id]
    )
    return rows[0]["version"] if rows.nrows() else None


def _iterate(cursor: Any, size: int) -> Iterator[dict[str, Any]]:
    while True:
        rows = cursor.fetch(size)
        if not rows:
            return
        yield from rows
