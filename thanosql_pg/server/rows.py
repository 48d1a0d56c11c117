"""Training and evaluation rows from a user's query, with bounded memory.

``QueryRows.from_query`` runs the query exactly once, keeping only the two
columns a model needs (input, label) in a temporary table, then streams them
in batches through SPI cursors: every epoch reads the table again in a new
shuffled order, so the backend never holds more than a batch of rows (bytea
images included) whatever the size of the table. The table lives in the
statement's transaction: it is dropped at exit, and a failed or cancelled
statement rolls its creation back. On a hot standby, where no temporary table
can be made, EVALUATE reads the two columns once into memory instead (MemoryRows,
bounded by MEMORY_ROWS_BYTES and MEMORY_ROWS_MAX, measured by the server before any
row is read).
"""


from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import plpy

from thanosql_pg import progress_text
from thanosql_pg.algorithms.contract import CheckpointStore, Row
from thanosql_pg.errors import DataError, LimitExceeded, NullValue, UndefinedColumn
from thanosql_pg.errors import SyntaxError as SQLSyntaxError
from thanosql_pg.progress_text import ProgressInfo
from thanosql_pg.server import native, spi
from thanosql_pg.server.caller import as_caller
from thanosql_pg.server.media import MediaReader
from thanosql_pg.server.progress import report_progress

_counter = itertools.count(1)


def clean_query(query: str) -> str:
    """The query as a subquery: trailing semicolons dropped; a newline before the
    closing parenthesis keeps a trailing -- comment from swallowing it."""
    q = query.strip()
    while q.endswith(";"):
        q = q[:-1].rstrip()
    if not q:
        raise SQLSyntaxError("the query after AS is empty")
    return q + "\n"


def query_columns(query: str) -> list[str]:
    """Column names of a query's result, without running it (LIMIT 0 never
    pulls a row from the subquery)."""
    with as_caller():
        return list(plpy.execute(f"SELECT * FROM ({query}) AS q LIMIT 0").colnames())


def resolve_column(name: str, available: list[str], *, option: str) -> str:
    if name in available:
        return name
    folded = [c for c in available if c.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise UndefinedColumn(
        f'column "{name}" (option {option}) does not exist in the query result',
        detail="Available columns: " + (", ".join(available) or "none"),
        hint=f"Set {option} to one of the query's columns.",
    )


class QueryRows:
    """Rows (rn, input, label) of one query in a temporary table; ``split`` makes two
    parts of it (a filter on the same table)."""

    def __init__(self, table: str, *, count: int, input_col: str, target_col: str | None,
                 label_type: str | None, skipped: int, skip_null_input: bool) -> None:
        self.table = table
        self.count = count
        self.input_col = input_col
        self.target_col = target_col
        self.label_type = label_type
        self.skipped = skipped
        self._skip_null_input = skip_null_input
        self._part = ""  # SQL condition of a split's part ("" for all rows)
        self._labels: list[str] | None = None
        self.reader = MediaReader.for_session(column=input_col)
        self.weights_dirs = weights_dirs(self.reader.data_dir)
        self.checkpoints: CheckpointStore | None = None  # set by a background job (server/jobs.py)
        self.progress_interval = progress_interval()
        self.progress_fields = native.setting("thanosql.progress_fields") == "on"

    @classmethod
    @contextmanager
    def from_query(cls, query: str, columns: tuple[str, str | None], *, on_error: str = "fail",
                   options: tuple[str, str | None]) -> Iterator[QueryRows]:
        """Materialize ``columns`` (input, label) of ``query``; label may be None.
        ``options`` are the names of the options that named them, for messages.

        Raises: 42703 for a column the query does not have (listing those it
        has), 22000 for no rows, 22004 for a NULL label (or a NULL input unless
        on_error='skip', which skips such rows).
        """
        input_col, target_col = columns
        query = clean_query(query)
        skip = on_error == "skip"
        if in_recovery():
            # A hot standby cannot create the temporary table: EVALUATE reads the rows once
            # into memory instead (bounded, see MemoryRows); BUILD and FIT never get here
            # (claiming the model name is a write, refused first).
            yield MemoryRows.from_query(query, input_col, target_col, options, skip_null_input=skip)
            return
        table = f"pg_temp.__thanosql_rows_{next(_counter)}"
        nrows = _materialize(query, input_col, target_col, options, _create_table(table))
        try:
            stats = plpy.execute(
                "SELECT count(*) FILTER (WHERE x IS NULL) AS null_x,"
                " min(rn) FILTER (WHERE x IS NULL) AS first_x,"
                " count(*) FILTER (WHERE y IS NULL) AS null_y,"
                f" min(rn) FILTER (WHERE y IS NULL) AS first_y FROM {table}"
            )[0]
            _check_rows(nrows, stats, input_col, target_col, skip)
            label_type = None
            if target_col is not None:
                label_type = plpy.execute(
                    f"SELECT pg_catalog.format_type(atttypid, atttypmod) AS t FROM pg_catalog.pg_attribute"
                    f" WHERE attrelid = '{table}'::regclass AND attname = 'y'"
                )[0]["t"]
            yield cls(table, count=nrows, input_col=input_col, target_col=target_col, label_type=label_type,
                      skipped=int(stats["null_x"]) if skip else 0, skip_null_input=skip)
        finally:
            try:
                plpy.execute(f"DROP TABLE IF EXISTS {table}")
            except plpy.SPIError:
                pass  # the statement is failing (cancel...): its rollback drops the table

    # -- RowSource ------------------------------------------------------------------
    def _where(self, *conditions: str) -> str:
        """WHERE of this source's (or part's) rows, and ``conditions``."""
        kept = [c for c in (self._part, *conditions) if c]
        return "WHERE " + " AND ".join(kept) if kept else ""

    def labels(self) -> list[str]:
        """Distinct labels as text, in the label type's own order (numbers numerically)."""
        if self.target_col is None:
            return []
        if self._labels is None:
            where = self._where()
            try:
                rows = plpy.execute(
                    f"SELECT y::text AS l FROM (SELECT DISTINCT y FROM {self.table} {where}) AS d ORDER BY y")
            except plpy.SPIError:
                # a type without equality/ordering (json, point): fall back to text order
                rows = plpy.execute(f"SELECT DISTINCT y::text AS l FROM {self.table} {where} ORDER BY 1")
            self._labels = [r["l"] for r in rows]
        return self._labels

    def label_counts(self) -> dict[str, int]:
        """Rows per label (as text), without the rows skipped for a NULL input."""
        if self.target_col is None:
            return {}
        where = self._where("x IS NOT NULL" if self._skip_null_input else "")
        rows = plpy.execute(f"SELECT y::text AS l, count(*) AS n FROM {self.table} {where} GROUP BY 1")
        return {r["l"]: int(r["n"]) for r in rows}

    def split(self, fraction: float, seed: int = 0) -> tuple[QueryRows, QueryRows]:
        """(training, validation) parts of the rows: about ``fraction`` of the usable rows
        (a NULL input skipped with on_error='skip' is not) held out, stratified by label.

        Deterministic: within each label the rows are ranked by a hash of their row number
        and ``seed``; a row's key is its rank's position within its label,
        (rank - 0.5) / count, and the rows with the smallest keys are held out. So every
        label gives its share (a label of 10 rows at 0.1 gives one), and the total is
        exactly round(fraction x rows). The part is marked by a column of the statement's
        own table: no row is copied."""
        if self._part:
            raise DataError("a validation part cannot be split again")
        usable = self.count - self.skipped
        held = min(usable - 1, max(1, round(fraction * usable)))
        if held < 1:
            raise DataError(f"the query returned {usable} usable row(s): too few to hold out validation rows",
                            hint="validation_split needs at least two rows; remove it, or add rows.")
        plpy.execute(f"ALTER TABLE {self.table} ADD COLUMN held boolean NOT NULL DEFAULT false")
        ranked = plpy.prepare(
            f"UPDATE {self.table} t SET held = true FROM ("
            "  SELECT rn FROM ("
            "    SELECT rn, md5(rn::text || $1) AS h,"
            "           (pg_catalog.row_number() OVER (PARTITION BY y::text ORDER BY md5(rn::text || $1), rn)"
            "            - 0.5) / pg_catalog.count(*) OVER (PARTITION BY y::text) AS k"
            f"    FROM {self.table} {self._where('x IS NOT NULL' if self._skip_null_input else '')}"
            "  ) AS r ORDER BY k, h, rn LIMIT $2"
            ") AS s WHERE t.rn = s.rn", ["text", "int8"])
        plpy.execute(ranked, [f"split {seed}", held])
        training, validation = copy.copy(self), copy.copy(self)
        training._part, training.count = "NOT held", self.count - held
        validation._part, validation.count, validation.skipped = "held", held, 0
        training._labels = validation._labels = None
        return training, validation

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[list[Row]]:
        """Rows in batches; a new pseudo-random order per seed when shuffling.
        Runs SPI: call on the statement's thread only."""
        order = "md5(rn::text || $1)" if shuffle else "rn"
        where = self._where("x IS NOT NULL" if self._skip_null_input else "")
        target = "y::text" if self.target_col is not None else "NULL::text"
        # not cached: the table is this statement's own
        sql = f"SELECT rn, x, {target} AS y FROM {self.table} {where} ORDER BY {order}"
        plan = plpy.prepare(sql, ["text"])
        cursor = plpy.cursor(plan, [str(seed)])
        try:
            while True:
                rows = cursor.fetch(batch_size)
                if not rows:
                    return
                yield [Row(r["rn"], r["x"], r["y"]) for r in rows]
        finally:
            cursor.close()

    def notice(self, message: str, progress: ProgressInfo | None = None) -> None:
        if progress is not None and self.progress_fields:
            plpy.notice(message, detail=progress_text.detail(progress))
        else:
            plpy.notice(message)

    def progress(self, phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
                 samples_per_second: float | None, eta_seconds: float | None) -> None:
        report_progress(phase, epoch, epochs, step, steps, loss, samples_per_second, eta_seconds)

    def check_interrupts(self) -> None:
        spi.check_interrupts()


def progress_interval() -> float:
    """thanosql.progress_interval in seconds (GetConfigOption gives the base unit, whatever
    unit it was set in)."""
    return float(native.setting("thanosql.progress_interval") or 10)


def in_recovery() -> bool:
    """Whether this server is a hot standby (read-only: no temporary tables)."""
    return bool(plpy.execute(spi.plan("SELECT pg_catalog.pg_is_in_recovery() AS r"))[0]["r"])


def _check_rows(nrows: int, stats: dict[str, Any], input_col: str, target_col: str | None,
                skip: bool) -> None:
    """22000 for no rows, 22004 for a NULL label (or a NULL input unless skipped)."""
    if nrows == 0:
        raise DataError("the query returned no rows",
                        hint="Check the query after AS (its WHERE clause).")
    if target_col is not None and stats["null_y"]:
        raise NullValue(
            f'label column "{target_col}" is NULL in row {stats["first_y"]}'
            f' ({stats["null_y"]} of {nrows} rows)',
            hint=f'Every row needs a label: add WHERE "{target_col}" IS NOT NULL to the query.',
        )
    if stats["null_x"] and not skip:
        raise NullValue(
            f'input column "{input_col}" is NULL in row {stats["first_x"]}'
            f' ({stats["null_x"]} of {nrows} rows)',
            hint=f'Add WHERE "{input_col}" IS NOT NULL to the query,'
            " or on_error='skip' to OPTIONS.",
        )


# What EVALUATE on a standby may hold in memory: every row it reads counts, its input and
# its label as Python holds them, plus the Python objects of the row itself (measured:
# about 250 bytes a row, twice that while it is fetched), and the rows are bounded in
# number too. The query's rows are measured by the server before any reaches Python
# (``_read_rows``): more is refused (54000) with nothing read.
MEMORY_ROWS_BYTES = 1 << 30
MEMORY_ROWS_MAX = 1_000_000
MEMORY_ROW_OVERHEAD = 512
MEMORY_FETCH_BYTES = 16 << 20  # rows per fetch: about this much at a time
MemoryRow = tuple[int, Any, "str | None", int]  # (rn, input, label as text, the label's rank)


class MemoryRows(QueryRows):
    """The rows of one query held in this backend's memory: EVALUATE on a hot standby,
    where no temporary table can be made. The query runs once, as for QueryRows."""

    rows: list[MemoryRow]

    # Not QueryRows.from_query's signature (a context manager over a temporary table): rows
    # kept in memory need no clean-up, so this returns them directly.
    @classmethod
    def from_query(cls, query: str, input_col: str, target_col: str | None,  # type: ignore[override]
                   options: tuple[str, str | None], *, skip_null_input: bool) -> MemoryRows:
        kept: dict[str, Any] = {}

        def keep(q: str, inp: str, tgt: str | None) -> int:
            kept["rows"], kept["label_type"] = _read_rows(q, inp, tgt)
            return len(kept["rows"])

        nrows = _materialize(query, input_col, target_col, options, keep)
        rows = kept["rows"]
        null_x = [r[0] for r in rows if r[1] is None]
        null_y = [r[0] for r in rows if r[2] is None] if target_col is not None else []
        stats = {"null_x": len(null_x), "first_x": min(null_x, default=None),
                 "null_y": len(null_y), "first_y": min(null_y, default=None)}
        _check_rows(nrows, stats, input_col, target_col, skip_null_input)
        out = cls("", count=nrows, input_col=input_col, target_col=target_col, label_type=kept["label_type"],
                  skipped=len(null_x) if skip_null_input else 0, skip_null_input=skip_null_input)
        out.rows = rows
        return out

    def _usable(self) -> list[MemoryRow]:
        return [r for r in self.rows if r[1] is not None or not self._skip_null_input]

    def labels(self) -> list[str]:
        if self.target_col is None:
            return []
        ranked = {str(r[2]): r[3] for r in self.rows}
        return sorted(ranked, key=lambda label: (ranked[label], label))

    def label_counts(self) -> dict[str, int]:
        if self.target_col is None:
            return {}
        counts: dict[str, int] = {}
        for r in self._usable():
            label = str(r[2])  # with a target column every row has a label (checked when read)
            counts[label] = counts.get(label, 0) + 1
        return counts

    def split(self, fraction: float, seed: int = 0) -> tuple[QueryRows, QueryRows]:
        raise DataError("validation_split needs the primary server", hint="Train on the primary.")

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[list[Row]]:
        rows = self._usable()
        if shuffle:
            import hashlib

            rows = sorted(rows, key=lambda r: hashlib.md5(f"{r[0]}{seed}".encode()).hexdigest())
        for start in range(0, len(rows), batch_size):
            yield [Row(rn, x, y) for rn, x, y, _ in rows[start:start + batch_size]]


def _read_rows(query: str, inp: str, tgt: str | None) -> tuple[list[MemoryRow], str | None]:
    """(rows (rn, input, label as text, label's rank), the label's SQL type) of ``query``,
    read once through a cursor. The server measures every row first (``_sized_query``):
    past MEMORY_ROWS_MAX rows or MEMORY_ROWS_BYTES, 54000 before any row's value is read."""
    with as_caller():  # the whole read: functions in the query resolve names as the caller's
        kind = _input_kind(query, inp)
        y = f"q.{plpy.quote_ident(tgt)}" if tgt is not None else "NULL::pg_catalog.text"
        # one row past the bound is enough to refuse them: the server stops there
        rows = (f"SELECT q.{plpy.quote_ident(inp)} AS x, {y} AS y FROM ({query}) AS q"
                f" LIMIT {int(MEMORY_ROWS_MAX) + 1}")

        def run(ordered: bool) -> Any:
            return plpy.cursor(_sized_query(rows, ordered, kind, MEMORY_ROWS_BYTES, MEMORY_ROWS_MAX))

        return _read_cursor(run, tgt, MEMORY_ROWS_BYTES, MEMORY_ROWS_MAX)


_BYTEA = 17
_RECORD = 2249
# The type a query's column has, through its domains: how Python will hold its values.
_BASE_TYPE = (
    "WITH RECURSIVE d(oid, depth) AS (SELECT $1::pg_catalog.oid, 0"
    " UNION ALL SELECT t.typbasetype, d.depth OPERATOR(pg_catalog.+) 1 FROM pg_catalog.pg_type t, d"
    "  WHERE t.oid OPERATOR(pg_catalog.=) d.oid AND t.typtype OPERATOR(pg_catalog.=) 'd'"
    "  AND d.depth OPERATOR(pg_catalog.<) 32)"
    " SELECT t.oid::pg_catalog.int8 AS oid, t.typtype::pg_catalog.text AS typtype,"
    " t.typcategory::pg_catalog.text AS category FROM d, pg_catalog.pg_type t"
    " WHERE t.oid OPERATOR(pg_catalog.=) d.oid ORDER BY d.depth DESC LIMIT 1"
)


def _input_kind(query: str, inp: str) -> str:
    """How Python will hold the input column's values: 'bytea' (bytes of its length),
    'container' (lists and dicts: arrays, composites, many objects per value) or 'text'
    (a str, or a number, as large as its text). LIMIT 0: the query does not run."""
    res = plpy.execute(f"SELECT q.{plpy.quote_ident(inp)} AS x FROM ({query}) AS q LIMIT 0")
    rows = plpy.execute(spi.plan(_BASE_TYPE, ["oid"]), [res.coltypes()[0]])
    t = rows[0] if rows.nrows() else {"oid": 0, "typtype": "b", "category": "U"}
    if t["oid"] == _BYTEA:
        return "bytea"
    if t["category"] == "A" or t["typtype"] in ("c", "p") or t["oid"] == _RECORD:
        return "container"
    return "text"


def _text_size(expr: str) -> str:
    """SQL for the most bytes Python holds for a text: one per character when it is ASCII,
    up to four otherwise (a str is as wide as its widest character)."""
    octets, chars = f"pg_catalog.octet_length({expr})", f"pg_catalog.char_length({expr})"
    return (f"COALESCE(CASE WHEN {octets} OPERATOR(pg_catalog.=) {chars} THEN {octets}"
            f" ELSE 4 OPERATOR(pg_catalog.*) {chars} END, 0)::pg_catalog.int8")


def _sized_query(rows: str, ordered: bool, kind: str, max_bytes: int, max_rows: int) -> str:
    """The rows (x, y) of ``rows``, numbered ``rn`` in the order they come, each with its label
    as text, its label's rank ``k`` (``ordered``: by the label type's order; 0 for a type
    without one) and type ``t``; and what the server measured of all of them: ``n`` rows
    holding ``total`` bytes (inputs, labels and MEMORY_ROW_OVERHEAD a row, as Python will
    hold them, the largest row once more for its copy while it is fetched), and
    ``ahead16``/``ahead256`` the bytes of the rows after each (how many to fetch at once).

    The measures come first, in the order the rows come (no sort): past ``max_rows`` or
    ``max_bytes`` no row carries its values, so nothing reaches Python and the sorts after
    (the labels' ranks, the rows' order) handle nulls. Every operator is qualified: the
    caller's search_path is in effect, and the bounds must not depend on it."""
    if kind == "bytea":
        x_size = "COALESCE(pg_catalog.octet_length(i.x), 0)::pg_catalog.int8"
    else:
        x_size = _text_size("i.x::pg_catalog.text")
        if kind == "container":  # lists of Python ints or dicts: many times the text's bytes
            x_size = f"32 OPERATOR(pg_catalog.*) {x_size}"
    sized = (f"SELECT i.x, i.y, {x_size} OPERATOR(pg_catalog.+) {_text_size('i.y::pg_catalog.text')}"
             f" OPERATOR(pg_catalog.+) {MEMORY_ROW_OVERHEAD} AS b FROM ({rows}) AS i")
    ahead = ("COALESCE(pg_catalog.sum(s.b) OVER (ROWS BETWEEN 1 FOLLOWING AND {} FOLLOWING), 0)"
             "::pg_catalog.int8")
    measured = (
        "SELECT pg_catalog.row_number() OVER () AS rn, s.x, s.y,"
        " (pg_catalog.sum(s.b) OVER () OPERATOR(pg_catalog.+) pg_catalog.max(s.b) OVER ())::pg_catalog.int8"
        f" AS total, pg_catalog.count(*) OVER () AS n, {ahead.format(16)} AS ahead16,"
        f" {ahead.format(256)} AS ahead256 FROM ({sized}) AS s")
    fits = (f"m.n OPERATOR(pg_catalog.<=) {int(max_rows)}"
            f" AND m.total OPERATOR(pg_catalog.<=) {int(max_bytes)}")
    label = f"CASE WHEN {fits} THEN m.y END"
    rank = f"pg_catalog.dense_rank() OVER (ORDER BY {label})" if ordered else "0"
    return (f"SELECT r.* FROM (SELECT m.rn, CASE WHEN {fits} THEN m.x END AS x,"
            f" ({label})::pg_catalog.text AS y, {rank} AS k, pg_catalog.pg_typeof(m.y)::pg_catalog.text AS t,"
            f" m.total, m.n, m.ahead16, m.ahead256 FROM ({measured}) AS m) AS r ORDER BY r.rn")


def _read_cursor(run: Callable[[bool], Any], tgt: str | None, max_bytes: int,
                 max_rows: int) -> tuple[list[MemoryRow], str | None]:
    try:
        cursor = run(True)
        batch = cursor.fetch(1)
    except plpy.SPIError as e:
        if e.sqlstate == "42703" or tgt is None:
            raise
        cursor = run(False)  # a label type without an ordering (json, point): text order
        batch = cursor.fetch(1)
    if batch:
        _check_measured(cursor, int(batch[0]["n"]), int(batch[0]["total"]), max_bytes, max_rows)
    rows: list[MemoryRow] = []
    label_type = None
    while batch:
        for r in batch:
            rows.append((r["rn"], r["x"], r["y"], r["k"]))
            label_type = label_type or (r["t"] if tgt is not None else None)
        last = batch[-1]
        size = (256 if last["ahead256"] <= MEMORY_FETCH_BYTES else
                16 if last["ahead16"] <= MEMORY_FETCH_BYTES else 1)
        del batch, last  # the fetched dicts go before the next fetch comes
        spi.check_interrupts()
        batch = cursor.fetch(size)
    return rows, label_type


def _check_measured(cursor: Any, nrows: int, total: int, max_bytes: int, max_rows: int) -> None:
    """54000 when the server measured the rows over the bounds (no row carries its values then)."""
    hint = "Evaluate fewer rows (a WHERE clause), or run EVALUATE on the primary server."
    if nrows > max_rows:
        cursor.close()
        raise LimitExceeded(f"EVALUATE on a standby holds its rows in memory, at most {max_rows} rows:"
                            " the query returns more", hint=hint)
    if total > max_bytes:
        cursor.close()
        raise LimitExceeded(
            f"EVALUATE on a standby holds its rows in memory, at most {max_bytes >> 20} MB: the query's"
            f" rows take {-(-total >> 20)} MB (their inputs and labels, and {MEMORY_ROW_OVERHEAD} bytes"
            " a row)", hint=hint)


def weights_dirs(data_dir: str) -> list[str]:
    """Local places for pretrained weights, searched in order: $THANOSQL_WEIGHTS_DIR
    (the server's environment; several joined with ':') and <thanosql.data_dir>/weights."""
    dirs = [d for d in os.environ.get("THANOSQL_WEIGHTS_DIR", "").split(":") if d]
    if data_dir:
        dirs.append(os.path.join(data_dir, "weights"))
    return dirs  # missing ones included: the first one is named in "weights not found" hints


def _create_table(table: str) -> Callable[[str, str, str | None], int]:
    """``_materialize``'s way of keeping the rows: a temporary table."""
    def create(query: str, inp: str, tgt: str | None) -> int:
        y = f"q.{plpy.quote_ident(tgt)}" if tgt is not None else "NULL::text"
        with as_caller():
            res = plpy.execute(
                f"CREATE TEMP TABLE {table} AS SELECT pg_catalog.row_number() OVER () AS rn,"
                f" q.{plpy.quote_ident(inp)} AS x, {y} AS y FROM ({query}) AS q"
            )
        return int(res.nrows())

    return create


def resolve_columns(columns: tuple[str, str | None], available: list[str],
                    options: tuple[str, str | None]) -> tuple[str, str | None]:
    """The (input, label) columns as ``available`` spells them (``resolve_column``); the label
    may be None. ``options`` name the options that gave them, for messages."""
    input_col, target_col = columns
    inp = resolve_column(input_col, available, option=options[0])
    tgt = resolve_column(target_col, available, option=options[1] or "") if target_col is not None else None
    return inp, tgt


def _materialize(query: str, input_col: str, target_col: str | None, options: tuple[str, str | None],
                 keep: Callable[[str, str, str | None], int]) -> int:
    """``keep(query, input, label)`` the rows; returns how many. A column the query lacks
    that differs only in case is found and used."""
    try:
        return keep(query, input_col, target_col)
    except plpy.SPIError as e:
        if e.sqlstate != "42703":
            raise
        original = e
    # A column is missing (or differs in case): the CREATE failed during parse
    # analysis, so the query has not run. Find the query's columns to fix the
    # case or say which exist; if that fails too the error is the user's own.
    try:
        available = query_columns(query)
    except plpy.SPIError:
        raise original from None
    inp, tgt = resolve_columns((input_col, target_col), available, options)
    if (inp, tgt) == (input_col, target_col):
        raise original
    return keep(query, inp, tgt)
