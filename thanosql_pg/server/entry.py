"""Entry points behind the extension's PL/Python functions.

Each public function here is one SQL function in extension/thanosql--*.sql.
They translate ThanoSQLError into a PostgreSQL error with its SQLSTATE, hint
and detail; everything else (SPI errors from the user's query included)
propagates unchanged, keeping its own SQLSTATE.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar, cast

import plpy

from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import CheckpointStore, Resolved, RowSource
from thanosql_pg.errors import (
    FeatureNotAvailable,
    InvalidOption,
    ObjectNotInPrerequisiteState,
    ThanoSQLError,
    UndefinedColumn,
    WrongModelType,
)

F = TypeVar("F", bound=Callable[..., Any])


def on_load(sql_version: str | None = None) -> None:
    """Called by thanosql._load(), which has checked that this package is the
    release of the SQL that calls it. An older release's _load passes nothing:
    its SQL functions would call this package with other arguments."""
    if sql_version is None:
        from thanosql_pg._version import __version__

        rows = plpy.execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'thanosql'")
        found = rows[0]["extversion"] if rows.nrows() else "unknown"
        _raise_pg(ObjectNotInPrerequisiteState(
            f"this database's extension thanosql is {found}, but the installed thanosql_pg is {__version__}",
            hint="Run ALTER EXTENSION thanosql UPDATE (as the extension's owner), then reconnect."))
    _session_setup()


def _session_setup() -> None:
    # torch and LLVM JIT clash in one process (PostgresML saw backend crashes):
    # keep JIT off for the rest of a session that has loaded thanosql_pg. A
    # plain SET is undone when the transaction aborts, so check it per call
    # (natively: no SPI unless it must be set again).
    from thanosql_pg.server import native

    if native.setting("jit") != "off":
        plpy.execute("SELECT pg_catalog.set_config('jit', 'off', false)")


def _raise_pg(e: ThanoSQLError) -> None:
    detail = e.detail
    if e.position:
        where = f"at character {e.position} of the ThanoSQL text"
        detail = f"{detail} ({where})" if detail else where
    _raise_clean(e.message, sqlstate=e.sqlstate, detail=detail, hint=e.hint)


def _raise_clean(message: str, *, sqlstate: str, detail: str | None = None, hint: str | None = None) -> None:
    """Raise a PostgreSQL error that reads like a native one: no Python class
    prefix, no traceback (the C module's log hook strips them)."""
    extra = {k: v for k, v in (("detail", detail), ("hint", hint)) if v}
    plpy.execute("SELECT thanosql._clean_next_error()")
    plpy.error(message, sqlstate=sqlstate, **extra)


def entry_point(fn: F) -> F:
    return _wrap(fn, caller_sql=None)


def caller_sql_entry_point(*, whole_call: bool) -> Callable[[F], F]:
    """For functions that run SQL the caller wrote: the SQL function passes the
    caller's search_path as its last argument, which the wrapper takes off.
    ``whole_call``: the whole function is the caller's SQL (thanosql.execute,
    save_table, CONVERT); else it uses caller.as_caller() where it runs it."""
    def deco(fn: F) -> F:
        return _wrap(fn, caller_sql="whole" if whole_call else "scoped")

    return deco


def _wrap(fn: F, *, caller_sql: str | None) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        from thanosql_pg.server import caller

        path = None
        if caller_sql is not None:
            path = args[-1]
            args = args[:-1]
        try:
            _session_setup()
            with caller.caller_search_path(path):
                if caller_sql == "whole":
                    with caller.as_caller():
                        return fn(*args)
                return fn(*args)
        except ThanoSQLError as e:
            _raise_pg(e)
        except (MemoryError, RuntimeError) as e:
            _raise_out_of_memory(e)
        except plpy.SPIError as e:
            # An error from the user's own query (say, a missing column):
            # pass it on with its SQLSTATE, minus PL/Python's decoration.
            # spidata = (sqlerrcode, detail, hint, query, position, ...)
            spidata = getattr(e, "spidata", None) or (None, None, None)
            message = str(e.args[0]) if e.args else str(e)
            sqlstate = getattr(e, "sqlstate", None) or "XX000"
            hint = spidata[2]
            if sqlstate == "25006" and not hint:  # read_only_sql_transaction: a hot standby, say
                hint = _READ_ONLY_HINT
            _raise_clean(message, sqlstate=sqlstate, detail=spidata[1], hint=hint)

    return cast(F, wrapper)


_READ_ONLY_HINT = ("On a read-only standby (or transaction) PREDICT, SEARCH IMAGE, EVALUATE and CONVERT's"
                   " inline form run; BUILD, FIT and CONVERT into a table run on the primary server, whose"
                   " models reach the standbys by replication.")


def runs_model(fn: F) -> F:
    """For entry points that run a model: the session takes its share of the cores for
    the call (server/compute.py), and counts as busy meanwhile for the others."""
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        from thanosql_pg.server import compute

        with compute.running_model():
            return fn(*args)

    return cast(F, wrapper)


def shows_progress(statement: str, phase: str) -> Callable[[F], F]:
    """For entry points of long statements: a row in thanosql.progress while they run
    (the first argument names the model; ``phase`` until the statement reports another),
    gone when they end, fail or are cancelled."""
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            from thanosql_pg.server import progress

            with progress.statement_progress(statement, args[0], phase):
                return fn(*args)

        return cast(F, wrapper)

    return deco


def _raise_out_of_memory(e: BaseException) -> None:
    """Out of memory (the host's or a GPU's) is 53200, never a dead backend; any other
    error goes on as it was."""
    from thanosql_pg.server import compute

    mapped = compute.memory_error(e)
    if mapped is None:
        raise e
    _raise_pg(mapped)


def _guard_iter(it: Iterator[Any]) -> Iterator[Any]:
    """Errors raised while PostgreSQL pulls rows from a generator."""
    try:
        yield from it
    except ThanoSQLError as e:
        _raise_pg(e)
    except (MemoryError, RuntimeError) as e:
        _raise_out_of_memory(e)


def family_module(family: registry.Family) -> Any:
    """The family's model module (contract.FamilyModule), imported on first use."""
    from thanosql_pg.server import models

    return models.family_module(family)


# --- text ----------------------------------------------------------------------
@entry_point
def rewrite(sql: str) -> str:
    from thanosql_pg.preprocessor import rewrite as _rewrite
    from thanosql_pg.preprocessor.rewriter import DEFAULT_MAX_TOKENS
    from thanosql_pg.server import spi

    # The session's setting decides where its strings end ('it\'s' when off).
    scs = spi.standard_conforming_strings()
    return _rewrite(sql, standard_conforming_strings=scs, max_tokens=DEFAULT_MAX_TOKENS)


@caller_sql_entry_point(whole_call=True)
def execute(sql: str) -> Iterator[str]:
    """Run ThanoSQL and plain SQL; yield the last statement's rows as jsonb.

    A last statement that returns no rows (DDL, INSERT without RETURNING)
    yields one object {"command": ..., "rows_affected": n}.
    """
    from thanosql_pg.preprocessor import rewrite as _rewrite
    from thanosql_pg.preprocessor.rewriter import DEFAULT_MAX_TOKENS
    from thanosql_pg.preprocessor.sqltree import split_plain
    from thanosql_pg.server import spi

    # Statements are split by the preprocessor's lexer (PostgreSQL's rules, under this
    # session's standard_conforming_strings) and PostgreSQL's grammar; the last one is
    # classified from a parse tree only once its depth is known to be safe (a deep one
    # once crashed the backend in pglast.parse_sql).
    scs = spi.standard_conforming_strings()
    text = _rewrite(sql, standard_conforming_strings=scs, max_tokens=DEFAULT_MAX_TOKENS)
    try:
        statements = split_plain(text, standard_conforming_strings=scs, max_tokens=DEFAULT_MAX_TOKENS)
    except ThanoSQLError as exc:
        if text is not sql:  # the position is in the rewrite, not in the caller's text
            exc.position = None
        raise
    if not statements:
        return iter(())
    for stmt, _ in statements[:-1]:
        plpy.execute(stmt)
    last, kind = statements[-1]
    if kind == "SelectStmt":
        return _guard_iter(_stream_json(last))
    res = plpy.execute(last)
    return iter([json.dumps({"command": (kind or "").removesuffix("Stmt").upper(),
                             "rows_affected": res.nrows()})])


def _stream_json(select_sql: str) -> Iterator[str]:
    # The newline ends a trailing -- comment of the statement before it can hide ")".
    cursor = plpy.cursor(f"SELECT to_jsonb(__t)::text AS j FROM ({select_sql}\n) AS __t")
    # The first batch is fetched now, inside the entry point's error handling:
    # errors raised while PostgreSQL iterates come out wrapped by PL/Python.
    first = cursor.fetch(500)

    def rows() -> Iterator[str]:
        batch = first
        while batch:
            for row in batch:
                yield row["j"]
            batch = cursor.fetch(500)

    return rows()


# --- training -------------------------------------------------------------------
def _train(name: str, algo: registry.Algorithm, opts: registry.Options, query: str,
           base: Any = None, checkpoints: CheckpointStore | None = None) -> list[tuple[Any, ...]]:
    """BUILD/FIT. ``checkpoints``: a background job's (server/jobs.py), which commits after
    every epoch; its name was taken by the job at submission, so the claim comes last, in
    the transaction that stores the model."""
    from thanosql_pg.server import catalog, models, progress
    from thanosql_pg.server.rows import QueryRows

    module = family_module(algo.family)
    statement = opts.statement
    claimed = catalog.claim(name, overwrite=opts.overwrite, wait=opts.wait) if checkpoints is None else None
    start = time.monotonic()
    with QueryRows.from_query(query, algo.family.column_names(statement, opts), on_error=opts.on_error,
                                   options=algo.family.column_options(statement, opts)) as source:
        source.checkpoints = checkpoints
        # 'auto' defers to the thanosql.device setting; the stored options keep 'auto'
        resolved = replace(opts, device=models.resolve_device(opts.device))
        if opts.workers > 1:  # the family's train runs in each worker process instead
            from thanosql_pg.server import distributed

            trained = distributed.train(algo, resolved, cast(RowSource, source), base)
        else:
            trained = module.train(algo, resolved, source, base)
        rows = source.count
        progress.report_progress("saving", 0, 0, 0, 0, None, None, None)
    if claimed is None:
        claimed = catalog.claim(name, overwrite=opts.overwrite, wait=opts.wait)
    stored = {k: v for k, v in opts.declared().items() if k not in ("overwrite", "wait", "background")}
    stored.update(trained.options)
    rec = catalog.save(
        claimed, algorithm=algo.name, family=algo.family.name, options=stored, labels=trained.labels,
        label_type=trained.label_type, payload=trained.payload, format=trained.format,
        statement=statement.upper(), rows=rows,
    )
    catalog.record_metrics(rec, statement.upper(), rows, trained.metrics)
    catalog.record_epochs(rec, trained.epochs)
    return [(rec.name, algo.name, rows, opts.epochs, round(time.monotonic() - start, 3),
             json.dumps(trained.metrics))]


def _not_background(opts: registry.Options) -> registry.Options:
    """The synchronous functions run now: background=True is the rewrite's (submit_job)."""
    if opts.background:
        raise InvalidOption(f"{opts.statement.upper()} with background=True runs as a job, which"
                            " the statement's rewrite submits (thanosql.submit_job)",
                            hint="Write the statement through the proxy, %%thanosql or thanosql.execute.")
    return opts


def _build_setup(algorithm: str, written: dict[str, Any]) -> tuple[registry.Algorithm, registry.Options]:
    algo = registry.lookup(algorithm)
    registry.require_available(algo)
    return algo, _checked_workers(registry.normalize_options("build", written, algo.family))


def _checked_workers(opts: registry.Options) -> registry.Options:
    """``workers`` within thanosql.max_workers, before any row is read."""
    if opts.workers > 1:
        from thanosql_pg.server import distributed

        distributed.check_workers(opts)
    return opts


def _fit_setup(name: str, base_model: str, written: dict[str, Any]) -> tuple[registry.Algorithm,
                                                                             registry.Options, Any]:
    """FIT's algorithm, options and base model's record."""
    from thanosql_pg.server import catalog

    base_rec = catalog.get(base_model, "USE")
    algo = registry.lookup(base_rec.algorithm)
    registry.require_available(algo)
    written = dict(written)
    if name == base_model and not any(k.lower() == "overwrite" for k in written):
        written[registry.OVERWRITE.name] = True  # FIT MODEL m USING m trains m further in place
    # properties of the trained model (the family's spec says which): FIT keeps them unless told otherwise
    for key in algo.family.carry_over:
        if key not in written and key in base_rec.options:
            written[key] = base_rec.options[key]
    return algo, _checked_workers(registry.normalize_options("fit", written, algo.family)), base_rec


@caller_sql_entry_point(whole_call=False)
@runs_model
@shows_progress("BUILD", "preparing")
def build_model(name: str, algorithm: str, options: str, query: str) -> list[tuple[Any, ...]]:
    algo, opts = _build_setup(algorithm, json.loads(options))
    return _train(name, algo, _not_background(opts), query)


@caller_sql_entry_point(whole_call=False)
@runs_model
@shows_progress("FIT", "preparing")
def fit_model(name: str, base_model: str, options: str, query: str) -> list[tuple[Any, ...]]:
    from thanosql_pg.server import models

    algo, opts, base_rec = _fit_setup(name, base_model, json.loads(options))
    base = models.load(base_rec, family_module(algo.family), device=_not_background(opts).device)
    return _train(name, algo, opts, query, base=base)


def train_job(kind: str, model: str, source: str, written: dict[str, Any], query: str,
              checkpoints: CheckpointStore) -> list[tuple[Any, ...]]:
    """A background BUILD/FIT (server/jobs.py), from its payload."""
    from thanosql_pg.server import models

    if kind == "build":
        algo, opts = _build_setup(source, written)
        return _train(model, algo, opts, query, checkpoints=checkpoints)
    algo, opts, base_rec = _fit_setup(model, source, written)
    base = models.load(base_rec, family_module(algo.family), device=opts.device)
    return _train(model, algo, opts, query, base=base, checkpoints=checkpoints)


def job_options(kind: str, model: str, source: str | None, written: dict[str, Any]) -> tuple[registry.Options,
                                                                                           registry.Family]:
    """A job's options, checked at submission as the statement would check them; for
    BUILD/FIT also the model name, claimed and released at once (a taken name fails now)."""
    from thanosql_pg.server import catalog

    if kind in ("build", "fit"):
        if source is None:
            what = "algorithm" if kind == "build" else "base model"
            raise InvalidOption(f"{kind.upper()} names its {what}")
        if kind == "build":
            algo, opts = _build_setup(source, written)
        else:
            algo, opts, _ = _fit_setup(model, source, written)
        registry.check_training(opts)
        catalog.try_claim(model, overwrite=opts.overwrite)
        return opts, algo.family
    rec, opts = _resolve(kind, model, written)
    if kind in ("predict", "convert") and opts.table_name is None:
        raise InvalidOption(f"{kind.upper()} with background=True writes its rows into a table",
                            hint="Add table_name='...' to OPTIONS.")
    return opts, registry.family(rec.family)


# --- inference ------------------------------------------------------------------
def _resolve(statement: str, model: str, written: dict[str, Any]) -> tuple[Any, registry.Options]:
    from thanosql_pg.server import catalog

    rec = catalog.get(model, "USE")
    family = registry.family(rec.family)
    if not family.supports(statement):
        raise WrongModelType(
            f'{statement.upper()} does not apply to model "{rec.name}" ({rec.algorithm}, {family.name})',
            hint=f"{rec.algorithm} models support: " + ", ".join(s.upper() for s in family.options),
        )
    return rec, _not_background(registry.normalize_options(statement, written, family))


def _resolved(rec: Any, opts: registry.Options) -> Resolved:
    """What the server decides for a statement on model ``rec`` beside its options."""
    from thanosql_pg.server import models

    family = registry.family(rec.family)
    family_module(family)
    columns = family.statement_columns(opts.statement, opts)
    return Resolved(model=rec.name, model_id=rec.id, version=rec.version, statement=opts.statement,
                    input_col=str(opts.value(columns.input)), input_option=columns.input,
                    modality=columns.modality, device=models.resolve_device(opts.device))


@entry_point
def prepare(statement: str, model: str, options: str) -> str:
    """PREDICT's and CONVERT's configuration, kept in this backend (server/handles.py): the
    result names it by a handle and shows the input column, which the rewritten SQL reads."""
    from thanosql_pg.server import handles

    rec, opts = _resolve(statement, model, json.loads(options))
    resolved = _resolved(rec, opts)
    return handles.issue(opts, resolved)


def _batch_values(opts: registry.Options, resolved: Resolved, vals: list[str | None]) -> list[list[Any]]:
    """A batch function's values, decoded, in slices of the prepared ``batch_size``: however
    many values a caller passes, the model never sees more at once."""
    # vals come from `to_jsonb(row) -> input_col`: a NULL column value is JSON
    # null, while SQL NULL means the row has no such column at all.
    if any(v is None for v in vals):
        raise UndefinedColumn(
            f'column "{resolved.input_col}" does not exist in the query after AS',
            hint=f"Name an existing column with {resolved.input_option}=..., or select it in the query.",
        )
    size = max(1, opts.batch_size)
    return [[json.loads(v) for v in vals[i:i + size] if v is not None] for i in range(0, len(vals), size)]


@entry_point
@runs_model
def predict_batch(cfg: str, vals: list[str | None]) -> list[Any]:
    from thanosql_pg.server import handles, models

    opts, resolved = handles.take(cfg, "predict")
    out: list[Any] = []
    for values in _batch_values(opts, resolved, vals):
        out.extend(models.cached(resolved).predict_values(values, opts, resolved))
    return out


@caller_sql_entry_point(whole_call=False)
@runs_model
@shows_progress("EVALUATE", "evaluating")
def evaluate(model: str, options: str, query: str) -> list[tuple[str, float]]:
    """EVALUATE's summary: rows (metric, score)."""
    return _evaluate(model, options, query, "summary")


@caller_sql_entry_point(whole_call=False)
@runs_model
@shows_progress("EVALUATE", "evaluating")
def evaluate_report(model: str, options: str, query: str, report: str) -> list[tuple[Any, ...]]:
    """EVALUATE with option ``report``: each report's SQL function (registry.REPORTS) names
    its report here; its rows have the report's columns."""
    return _evaluate(model, options, query, report)


def _evaluate(model: str, options: str, query: str, report: str) -> list[tuple[Any, ...]]:
    from thanosql_pg.algorithms.contract import Evaluation
    from thanosql_pg.server import catalog, models
    from thanosql_pg.server.rows import QueryRows, in_recovery

    shape = registry.REPORTS[report]
    written: dict[str, Any] = json.loads(options)
    if report != "summary" and not any(k.lower() == "report" for k in written):
        written["report"] = report
    rec, opts = _resolve("evaluate", model, written)  # the family's spec says which reports it has
    asked = registry.report_of(opts.report)
    if asked is not shape:  # a call of one report's function with another report's options
        raise InvalidOption(
            f"EVALUATE with report='{opts.report}' has other columns than thanosql.{shape.function}'s",
            hint=f"Call thanosql.{asked.function}, or write the EVALUATE statement (through the proxy, or"
                 " thanosql.execute), which calls the right function.")
    family = registry.family(rec.family)
    predictor = models.cached(_resolved(rec, opts))
    with QueryRows.from_query(query, family.column_names("evaluate", opts), on_error=opts.on_error,
                                   options=family.column_options("evaluate", opts)) as source:
        result = predictor.evaluate(source, opts)
        rows = source.count
    if isinstance(result, Evaluation):
        metrics, out = result.metrics, result.rows
        made = result.report
    else:
        metrics, out, made = result, None, "summary"
    if made != report:
        raise FeatureNotAvailable(f"{rec.algorithm} models did not make EVALUATE report '{report}'",
                                  hint=f"Their model module returned report '{made}'.")
    # The model's history is written by its owner and MODIFY grantees only, and on the
    # primary (a standby cannot write it): a USE grantee's EVALUATE is not recorded.
    if not in_recovery() and catalog.can_modify(rec):
        catalog.record_metrics(rec, "EVALUATE", rows, metrics)
    if out is None:
        return [(k, float(v)) for k, v in metrics.items()] + [("Rows", float(rows))]
    return out


def _table_ident(table_name: str) -> str:
    """table_name as SQL: ``name`` or ``schema.name``, each part quoted."""
    if not table_name:
        raise InvalidOption('option "table_name" must not be empty')
    parts = table_name.split(".", 1) if "." in table_name.strip('"') else [table_name]
    return ".".join(plpy.quote_ident(p) for p in parts)


@caller_sql_entry_point(whole_call=True)
def save_table(table_name: str, query: str) -> list[tuple[str, int]]:
    ident = _table_ident(table_name)
    plpy.execute(f"DROP TABLE IF EXISTS {ident}")
    res = plpy.execute(f"CREATE TABLE {ident} AS {query}")
    return [(table_name, res.nrows())]


@caller_sql_entry_point(whole_call=True)
@runs_model
@shows_progress("CONVERT", "embedding")
def convert(model: str, options: str, query: str, source_table: str | None) -> list[tuple[str, int]]:
    from thanosql_pg.server import embeddings

    rec, opts = _resolve("convert", model, json.loads(options))
    resolved = _resolved(rec, opts)
    target = None
    if opts.table_name is not None:
        target = _table_ident(opts.table_name)
        same = plpy.execute(plpy.prepare(
            "SELECT pg_catalog.to_regclass($1) = pg_catalog.to_regclass($2) AS s", ["text", "text"]),
            [target, source_table])
        if source_table is not None and same[0]["s"]:
            target = None  # table_name is the query's own table: convert in place, do not drop it
    return embeddings.convert(rec, opts, resolved, query, source_table, target)


@entry_point
@runs_model
def convert_batch(cfg: str, vals: list[str | None]) -> list[str | None]:
    from thanosql_pg.server import embeddings, handles

    opts, resolved = handles.take(cfg, "convert")
    out: list[str | None] = []
    for values in _batch_values(opts, resolved, vals):
        out.extend(embeddings.embed_values(resolved, values))
    return out


_NO_INPUT = object()


@entry_point
def embed_query(model: str, options: str, search_input: Any = _NO_INPUT) -> str:
    """SEARCH IMAGE's query embedding; ``search_input`` is the client's $n when given.
    A repeated call (same arguments, same role, nothing changed) is answered from memory."""
    from thanosql_pg.server import embeddings

    call = embeddings.call_key(model, options, None if search_input is _NO_INPUT else search_input)
    return embeddings.repeated_query(call) or _embed_query(model, options, search_input, call)


@runs_model
def _embed_query(model: str, options: str, search_input: Any, call: tuple[Any, ...]) -> str:
    from thanosql_pg.server import embeddings, models

    written: dict[str, Any] = json.loads(options)
    if search_input is not _NO_INPUT:
        written["search_input"] = search_input
    rec, opts = _resolve("search", model, written)
    family_module(registry.family(rec.family))
    return embeddings.embed_query(rec, opts, models.resolve_device(opts.device), call)


# --- background jobs ---------------------------------------------------------------
@caller_sql_entry_point(whole_call=False)
def submit_job(kind: str, model: str, source: str | None, options: str, query: str,
               statement: str | None) -> list[tuple[Any, ...]]:
    from thanosql_pg.server import jobs

    jobs.check_server()
    written = {k: v for k, v in json.loads(options).items() if k.lower() != registry.BACKGROUND.name}
    opts, family = job_options(kind, model, source, written)
    return jobs.submit(kind, model, source, written, query, statement, opts, family)


@entry_point
def run_job(job_id: int) -> None:
    from thanosql_pg.server import jobs

    jobs.run(job_id, train_job)


@entry_point
def store_job_checkpoint(job_id: int, epoch: int) -> None:
    """A job's checkpoint helper (src/jobs.c): the worker's checkpoint file into the catalog."""
    from thanosql_pg.server import jobs

    jobs.store_checkpoint(job_id, epoch)


# --- discovery -------------------------------------------------------------------
@entry_point
def algorithms() -> list[tuple[str, str, str]]:
    """thanosql.algorithms(): every algorithm, its task (family) and its options by statement,
    straight from the registry."""
    return [(name, task, json.dumps(options)) for name, task, options in registry.algorithm_rows()]


# --- folders ---------------------------------------------------------------------
@entry_point
def scan_folder(path: str, recursive: bool, media_type: str | None,
                include_hidden: bool) -> Iterator[tuple[Any, ...]]:
    from thanosql_pg.server import scan

    return _guard_iter(scan.scan_folder(path, recursive, media_type, include_hidden))
