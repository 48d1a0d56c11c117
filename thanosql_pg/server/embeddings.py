"""CONVERT and SEARCH IMAGE on the server: embeddings into pgvector columns.

CONVERT writes where its query reads (docs/ARCHITECTURE.md):

- ``table_name='t'``: table t (replaced) gets the query's rows plus the vector
  column, in one ``CREATE TABLE ... AS`` over the PREDICT-shaped query that
  embeds in batches (``convert_batch``), so nothing is written twice.
- a query on one table (``SELECT ... FROM t [WHERE ...]``, as the preprocessor
  found it): the column is added to t when missing, and exactly the query's
  rows are updated. The query is run once, with ``tableoid`` and ``ctid``
  added to its select list, through a cursor; each batch of embeddings is
  written with one ``UPDATE ... FROM unnest(...)`` that PostgreSQL joins by
  TID, so memory stays at one batch and the WHERE clause is honoured. The
  cursor's snapshot predates the UPDATEs, so rows it has yet to return are
  seen as they were; SHARE ROW EXCLUSIVE keeps other writers out meanwhile.
- otherwise the preprocessor returns the rows inline and this module only
  embeds batches (``embed_values``).

Then an HNSW index (vector_cosine_ops), unless one serves the column already.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import plpy

from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import Resolved, Row
from thanosql_pg.errors import (
    DatatypeMismatch,
    FeatureNotAvailable,
    InvalidOption,
    NullValue,
    ThanoSQLError,
    UndefinedTable,
    WrongObjectType,
)
from thanosql_pg.server import models, native, spi
from thanosql_pg.server.media import MediaReader
from thanosql_pg.server.rows import clean_query, progress_interval, query_columns, resolve_column

_vector_schema: str | None = None


def vector_schema() -> str:
    """pgvector's schema, quoted: names are qualified so that search_path cannot matter."""
    global _vector_schema
    if _vector_schema is None:
        rows = plpy.execute("SELECT pg_catalog.quote_ident(n.nspname) AS s FROM pg_catalog.pg_extension e"
                            " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
                            " WHERE e.extname = 'vector'")
        if not rows.nrows():
            raise FeatureNotAvailable("the pgvector extension (vector) is not installed in this database",
                                      hint="CREATE EXTENSION vector;")
        _vector_schema = str(rows[0]["s"])
    return _vector_schema


def vector_literal(v: Any) -> str | None:
    """pgvector's text form; %.9g round-trips float32 exactly."""
    if v is None:
        return None
    return "[" + (",".join(["%.9g"] * len(v)) % tuple(v.tolist())) + "]"


def _embedder(rec: Any, device: str) -> Any:
    resolved = Resolved(model=rec.name, model_id=rec.id, version=rec.version, statement="", input_col="",
                        input_option="", modality=None, device=device)
    return models.cached(resolved).model


# --- SEARCH IMAGE -----------------------------------------------------------------------------
def embed_query(rec: Any, opts: registry.Options, device: str, call: tuple[Any, ...] | None = None) -> str:
    """The query's embedding (of search_input, as search_by says), as pgvector text.
    ``call``: the entry point's arguments as ``repeated_query`` keys them, to remember the
    answer under (None: not remembered)."""
    by = str(opts.search_by)
    registry.check_search_by(registry.family(rec.family), rec.name, rec.algorithm, by)
    value = opts.search_input
    what = registry.MODALITIES[by].search_input
    if value is None:
        raise NullValue('search_input is NULL', hint=f"Pass {what}.")
    if not isinstance(value, (str, bytes)):
        raise DatatypeMismatch(f"search_input must be {what}, got {value!r}")
    reader = MediaReader.for_session(column="search_input", from_json=True)
    # A file is identified before it is read: a file changed in between is read anew next time.
    file = _file_identity(reader, value) if by != "text" and isinstance(value, str) else None
    # The cache is keyed by what is embedded: the bytes of a file (read now, so that a file
    # rewritten under the same path is embedded anew), or the text.
    content: str | bytes = value if by == "text" else reader.read(Row(0, value))
    key = (rec.id, rec.version, by, hashlib.sha256(content.encode() if isinstance(content, str)
                                                   else content).digest())
    size = _query_cache_size()
    literal = _query_cache.get(key) if size > 0 else None
    if literal is None:
        (vec,) = _embedder(rec, device).embed([Row(0, content)], reader, by)
        literal = vector_literal(vec)
        if literal is None:  # embed() gives None only for a None value, refused above
            raise NullValue("search_input is NULL", hint=f"Pass {what}.")
        _query_cache.put(key, literal, size)
    if call is not None and size > 0 and (by == "text" or not isinstance(value, str) or file is not None):
        path = value if isinstance(value, str) and file is not None else None
        _repeats.put(call, _Repeat(rec.id, rec.version, reader.unrestricted, _media_settings(), path, file,
                                   literal), size)
    _iterative_hnsw_scans()
    return literal


class _Lru:
    """At most ``size`` entries, the most recently used last (size 0: none)."""

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Any:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def bound(self, size: int) -> None:
        while len(self.entries) > max(0, size):
            self.entries.popitem(last=False)


class QueryCache(_Lru):
    """SEARCH's query embeddings in this session, most recently used last, at most
    thanosql.query_cache_size of them: a repeated search (paging, a dashboard) skips the
    model. Keyed by the model's id and version, so that a new version of a model drops
    the embeddings its earlier versions made."""

    def put(self, key: tuple[Any, ...], literal: str, size: int) -> None:
        model_id, version = key[0], key[1]
        for old in [k for k in self.entries if k[0] == model_id and k[1] != version]:
            del self.entries[old]
        self.entries[key] = literal
        self.bound(size)


_query_cache = QueryCache()


# --- a repeated SEARCH -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Repeat:
    """What a SEARCH's query embedding was made from, beside the embedding."""

    model_id: int
    version: int
    unrestricted: bool  # the role could read any server file (pg_read_server_files)
    settings: tuple[str | None, ...]  # _media_settings(): where relative paths resolve, the size limits
    path: str | None  # search_input when it names a file
    file: tuple[Any, ...] | None  # _file_identity() of that file
    literal: str


class _Repeats(_Lru):
    """embed_query's answers by its exact arguments and the calling role: a repeated SEARCH
    (paging, a dashboard) checks what could have changed (one catalog lookup, the settings,
    a stat of the file) instead of parsing its options and reading and hashing its input."""

    def put(self, key: tuple[Any, ...], value: _Repeat, size: int) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        self.bound(size)


_repeats = _Repeats()


def _query_cache_size() -> int:
    return int(native.setting("thanosql.query_cache_size") or 0)
RECENT_NS = 2_000_000_000  # a file modified less than 2 s ago is not identified by its stat
_MEDIA_SETTINGS = ("thanosql.data_dir", "thanosql.max_image_pixels", "thanosql.max_audio_seconds",
                   "thanosql.max_text_bytes")


def _media_settings() -> tuple[str | None, ...]:
    return tuple(native.setting(name) for name in _MEDIA_SETTINGS)


def _file_identity(reader: MediaReader, value: str) -> tuple[Any, ...] | None:
    """The file a path names now: its real path (symlinks resolved), device, inode, size and
    change times; None for a value that is not a readable path (it is never remembered)."""
    if reader.is_hex(value):
        return None  # bytea as hex: the bytes are in the options themselves
    try:
        path = reader.resolve_path(value)
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, ThanoSQLError):
        return None  # reading it raises the error the user should see
    if time.time_ns() - st.st_mtime_ns < RECENT_NS:
        # A file written this recently could be written again within the same timestamp
        # tick, unseen (git's "racy" files): its bytes are read and hashed every time.
        return None
    return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def call_key(model: str, options: str, search_input: Any) -> tuple[Any, ...]:
    """embed_query's arguments as _repeats keys them: the calling role first."""
    if isinstance(search_input, (bytes, bytearray, memoryview)):
        search_input = ("bytea", hashlib.sha256(search_input).digest())
    return (native.user_id(), model, options, search_input)


def repeated_query(call: tuple[Any, ...]) -> str | None:
    """The embedding a SEARCH with the same arguments, by the same role, got before, when
    nothing it depends on has changed since: the model (its version, and that the role may
    still use it), the role's right to read any file, the settings, the file. None otherwise."""
    hit: _Repeat | None = _repeats.get(call) if _query_cache_size() > 0 else None
    if hit is None:
        return None
    rows = plpy.execute(spi.plan(
        "SELECT m.id, m.version, pg_catalog.pg_has_role('pg_read_server_files', 'USAGE') AS unrestricted"
        " FROM thanosql.models m WHERE m.name OPERATOR(pg_catalog.=) $1", ["text"]), [call[1]])
    now = (rows[0]["id"], rows[0]["version"], rows[0]["unrestricted"]) if rows.nrows() else None
    if now != (hit.model_id, hit.version, hit.unrestricted) or hit.settings != _media_settings() or (
            hit.path is not None and hit.file != _file_identity(
                MediaReader(hit.settings[0] or "", hit.unrestricted, from_json=True), hit.path)):
        del _repeats.entries[call]
        return None
    _iterative_hnsw_scans()
    return hit.literal


_iterative_scan_default: bool | None = None  # hnsw.iterative_scan is at its default in this session


def _iterative_hnsw_scans() -> None:
    """An HNSW index scan returns at most hnsw.ef_search (40) rows unless pgvector's
    iterative scans are on, which would cut top_k=1000 (or a WHERE on the query) short.
    This runs before the scan starts (the embedding is its InitPlan), so turn them on
    for this transaction, unless the session chose a setting itself."""
    global _iterative_scan_default
    value = native.setting("hnsw.iterative_scan")
    if value != "off":
        return  # set by the session (or missing: pgvector too old to have it)
    if _iterative_scan_default is None:  # pg_settings' source, read once: building its rows costs
        rows = plpy.execute("SELECT source FROM pg_catalog.pg_settings WHERE name = 'hnsw.iterative_scan'")
        _iterative_scan_default = bool(rows.nrows()) and rows[0]["source"] == "default"
    if _iterative_scan_default:
        native.set_local("hnsw.iterative_scan", "strict_order")


# --- CONVERT that returns rows -----------------------------------------------------------------
def embed_values(resolved: Resolved, values: list[Any]) -> list[str | None]:
    """convert_batch: jsonb-decoded values (a path, or bytea as "\\x..." hex; None for
    NULL) → embeddings as pgvector text (NULL for NULL)."""
    reader = MediaReader.for_session(column=resolved.input_col, from_json=True)
    embedder = models.cached(resolved).model
    rows = [Row(0, v) for v in values]
    return [vector_literal(v) for v in embedder.embed(rows, reader, resolved.modality or "image")]


# --- CONVERT into a table -------------------------------------------------------------------------
def convert(rec: Any, opts: registry.Options, resolved: Resolved, query: str, source_table: str | None,
            table_ident: str | None) -> list[tuple[str, int]]:
    """Into ``table_ident`` (table_name, replaced) or into ``source_table`` (the query's own)."""
    from thanosql_pg.preprocessor import printer

    embedder = _embedder(rec, resolved.device)
    dim = int(embedder.dim)
    query = clean_query(query)
    columns = query_columns(query)
    input_col = resolve_column(resolved.input_col, columns, option=resolved.input_option)
    result_col = opts.result_col
    if not result_col:
        raise InvalidOption('option "result_col" cannot be an empty string')
    vtype = f"{vector_schema()}.vector"
    if table_ident is not None:
        inline_opts = {k: v for k, v in opts.declared().items() if k not in ("table_name", "device")}
        inline_opts.update({resolved.input_option: input_col, registry.DEVICE.name: resolved.device})
        sql = printer.inline("convert", rec.name, inline_opts, query,
                             columns=[c for c in columns if c != result_col], result_type=f"{vtype}({dim})")
        plpy.execute(f"DROP TABLE IF EXISTS {table_ident}")
        rows = int(plpy.execute(f"CREATE TABLE {table_ident} AS {sql}").nrows())
        oid = plpy.execute(plpy.prepare("SELECT $1::regclass::oid AS o", ["text"]), [table_ident])[0]["o"]
        column = _column(oid, result_col)
        assert column is not None
        if opts.create_index:
            _ensure_index(oid, table_ident, result_col, column)
        return [(str(opts.table_name), rows)]
    if source_table is None:
        raise FeatureNotAvailable(
            "CONVERT without table_name writes into the table its query reads, and this query reads no"
            " single table",
            hint="Add table_name='...' to OPTIONS, or run CONVERT through the ThanoSQL preprocessor"
            " (the proxy, thanosql.execute), which returns the rows for such queries.")
    oid, ident, relkind = _relation(source_table)
    if relkind not in ("r", "p"):
        kinds = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}
        raise WrongObjectType(
            f'CONVERT can add column "{result_col}" only to a table, and {source_table} is'
            f" {kinds.get(relkind, 'not a table')}",
            hint="Add table_name='...' to OPTIONS to write the rows and their embeddings to a new table.")
    column = _column(oid, result_col)
    if column is None:
        plpy.execute(f"ALTER TABLE {ident} ADD COLUMN {plpy.quote_ident(result_col)} {vtype}({dim})")
        column = _column(oid, result_col)
        assert column is not None
    else:
        _check_column(column, source_table, result_col, dim)
    plpy.execute(f"LOCK TABLE {ident} IN SHARE ROW EXCLUSIVE MODE")
    rows = _update_rows(embedder, opts, query, input_col, resolved.modality, ident, result_col, vtype)
    if opts.create_index:
        _ensure_index(oid, ident, result_col, column)
    return [(source_table, rows)]


def _relation(name: str) -> tuple[int, str, str]:
    rows = plpy.execute(plpy.prepare(
        "SELECT c.oid, c.relkind,"
        " pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS ident"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = pg_catalog.to_regclass($1)", ["text"]), [name])
    if not rows.nrows():
        raise UndefinedTable(f'relation "{name}" does not exist')
    return int(rows[0]["oid"]), str(rows[0]["ident"]), str(rows[0]["relkind"])


def _column(oid: int, name: str) -> dict[str, Any] | None:
    rows = plpy.execute(plpy.prepare(
        "SELECT a.attnum, a.atttypmod AS typmod, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,"
        " t.typname = 'vector' AND t.typnamespace = (SELECT extnamespace FROM pg_catalog.pg_extension"
        "   WHERE extname = 'vector') AS is_vector, a.attgenerated <> '' AS generated"
        " FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        ["oid", "text"]), [oid, name])
    return dict(rows[0]) if rows.nrows() else None


def _check_column(column: dict[str, Any], table: str, name: str, dim: int) -> None:
    hint = (f"Choose another result_col, or drop the column first: ALTER TABLE {table} DROP COLUMN "
            f"{plpy.quote_ident(name)};")
    if not column["is_vector"] or column["generated"]:
        raise DatatypeMismatch(
            f'column "{name}" of {table} has type {column["type"]}, not vector({dim})', hint=hint)
    if column["typmod"] not in (-1, dim):
        raise DatatypeMismatch(
            f'column "{name}" of {table} is {column["type"]},'
            f" but the model makes {dim}-dimensional embeddings",
            hint=hint)


def _with_row_ids(query: str) -> str:
    """The one-table query with ``tableoid`` and ``ctid`` of its table appended to its
    select list, naming the rows to update. The columns are inserted into the query's
    text before its FROM (no parse tree is printed back: a deep one could overflow the
    C stack); the preprocessor reads the text as PostgreSQL does, under this session's
    standard_conforming_strings, and bounds the depth before parsing."""
    from thanosql_pg.preprocessor.sqltree import append_to_select_list

    scs = spi.standard_conforming_strings()
    # One table in FROM: unqualified system columns can only be its own.
    return append_to_select_list(query, "tableoid AS __thanosql_toid, ctid AS __thanosql_tid",
                                 standard_conforming_strings=scs)


def _update_rows(embedder: Any, opts: registry.Options, query: str, input_col: str, modality: str | None,
                 ident: str, result_col: str, vtype: str) -> int:
    capture = (f"SELECT q.__thanosql_toid AS toid, q.__thanosql_tid AS tid,"
               f" q.{plpy.quote_ident(input_col)} AS x FROM ({_with_row_ids(query)}) AS q")
    update = plpy.prepare(
        f"UPDATE {ident} AS __thanosql_t SET {plpy.quote_ident(result_col)} = v.e"
        f" FROM unnest($1::oid[], $2::tid[], $3::{vtype}[]) AS v(toid, tid, e)"
        " WHERE __thanosql_t.tableoid = v.toid AND __thanosql_t.ctid = v.tid",
        ["oid[]", "tid[]", "text[]"])
    reader = MediaReader.for_session(column=input_col)
    interval = progress_interval()
    ids: collections.deque[tuple[list[int], list[str]]] = collections.deque()
    cursor = plpy.cursor(plpy.prepare(capture))
    done = nulls = 0

    def batches() -> Iterator[list[Row]]:
        n = 0
        while True:
            rows = cursor.fetch(opts.batch_size)
            if not rows:
                return
            ids.append(([r["toid"] for r in rows], [r["tid"] for r in rows]))
            yield [Row(n + i + 1, r["x"]) for i, r in enumerate(rows)]
            n += len(rows)

    start = last = time.monotonic()
    try:
        for vecs in embedder.embed_batches(batches(), reader, modality):
            spi.check_interrupts()
            toids, tids = ids.popleft()
            plpy.execute(update, [toids, tids, [vector_literal(v) for v in vecs]])
            done += len(vecs)
            nulls += sum(v is None for v in vecs)
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                plpy.notice(f"CONVERT: {done} rows, {done / (last - start):.1f} rows/s")
    finally:
        cursor.close()
    if nulls:
        plpy.notice(f"CONVERT: {nulls} of {done} rows have a NULL {input_col}; their {result_col} is NULL")
    return done


def _ensure_index(oid: int, ident: str, result_col: str, column: dict[str, Any]) -> None:
    """An HNSW index for cosine distance on the column, unless a cosine index (HNSW or
    IVFFlat) already serves it. HNSW needs the column's dimension."""
    existing = plpy.execute(plpy.prepare(
        "SELECT count(*) AS n FROM pg_catalog.pg_index i"
        " JOIN pg_catalog.pg_opclass oc ON oc.oid = i.indclass[0]"
        " WHERE i.indrelid = $1 AND i.indnatts = 1 AND i.indkey[0] = $2 AND oc.opcname = 'vector_cosine_ops'",
        ["oid", "int2"]), [oid, column["attnum"]])[0]["n"]
    if existing:
        return
    if column["typmod"] == -1:
        plpy.notice(f'CONVERT: no HNSW index on "{result_col}": the column has no fixed dimension'
                    f" (declare it vector(n) for an index)")
        return
    plpy.execute(f"CREATE INDEX ON {ident} USING hnsw ({plpy.quote_ident(result_col)}"
                 f" {vector_schema()}.vector_cosine_ops)")
