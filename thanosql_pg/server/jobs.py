"""Background jobs (OPTIONS (background=True)): submission in the caller's session, and
the run in a background worker (src/jobs.c) connected as the job's owner.

Submission checks what the statement would check at once (options, the model and the
caller's privileges on it, the name a BUILD/FIT writes) and fixes the rows: the query
runs once, as the caller, into a temporary table that ``thanosql._create_job`` copies to
``thanosql_jobs.rows_<id>``, which only the caller may read. Every attempt of the job
reads exactly those rows, whatever happens to the source meanwhile.

The run is ``CALL thanosql._run_job(id)``, a procedure at top level: a training commits a
checkpoint after every epoch (``Checkpoints``), so that a job interrupted by kill -9, a
crash or a server restart resumes from its newest epoch. The job records its own end in
the transaction that commits its work, so nothing can run it twice.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import plpy

from thanosql_pg import shapes
from thanosql_pg.algorithms.contract import CheckpointStore
from thanosql_pg.algorithms.registry import Family, Options
from thanosql_pg.errors import FeatureNotAvailable, ObjectNotInPrerequisiteState, ReadOnlySqlTransaction
from thanosql_pg.server import caller, spi

CHUNK_BYTES = 64 * 1024 * 1024  # a checkpoint is stored in chunks of this size (as model weights are)
_counter = itertools.count(1)


# --- submission ---------------------------------------------------------------------------------
def check_server() -> None:
    """Before anything else of a submission: this server and database run jobs."""
    from thanosql_pg.server.rows import in_recovery

    _check_server(in_recovery())


def submit(kind: str, model: str, source: str | None, written: dict[str, Any], query: str,
           statement: str | None, opts: Options, family: Family) -> list[tuple[Any, ...]]:
    """Queue a job whose options (``written``, checked as ``opts`` of ``family``) the
    statement's own checks passed."""
    from thanosql_pg.server.rows import clean_query, query_columns, resolve_columns

    query = clean_query(query)
    if kind != "predict" and kind != "convert":
        # the columns that BUILD, FIT and EVALUATE read, checked now (before the query runs),
        # as those statements would
        resolve_columns(family.column_names(kind, opts), query_columns(query),
                        family.column_options(kind, opts))
    table = f"__thanosql_job_src_{next(_counter)}"
    with caller.as_caller():
        plpy.execute(f"CREATE TEMPORARY TABLE {table} AS {query}")
    try:
        payload = {"source": source, "options": written, "statement": statement}
        job_id = plpy.execute(spi.plan(
            "SELECT thanosql._create_job($1, $2, $3::jsonb, $4, $5, $6::pg_catalog.regclass) AS id",
            ["text", "text", "text", "text", "int4", "text"]),
            [kind, model, json.dumps(payload), caller.path() or "", opts.epochs if kind in ("build", "fit")
             else None, f"pg_temp.{table}"])[0]["id"]
    finally:
        plpy.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")
    plpy.execute(spi.plan("SELECT thanosql._jobs_wake()"))
    return [(int(job_id), model, "queued")]


def _check_server(recovering: bool) -> None:
    if recovering:
        raise ReadOnlySqlTransaction(
            "cannot submit a background job on a read-only standby",
            hint="Submit jobs on the primary server: they write models and tables, which reach the standbys"
                 " by replication.")
    row = plpy.execute(spi.plan(
        "SELECT thanosql._jobs_available() AS on,"
        " pg_catalog.current_setting('thanosql.jobs_database') AS db,"
        " pg_catalog.current_database() AS here"))[0]
    if not row["on"]:
        raise FeatureNotAvailable(
            "background jobs need the server to preload the thanosql library",
            hint="Add thanosql to shared_preload_libraries in postgresql.conf and restart the server"
                 " (thanosql start does both), or run the statement without background=True.")
    if row["db"] != row["here"]:
        raise ObjectNotInPrerequisiteState(
            f"background jobs run in database \"{row['db']}\", not in \"{row['here']}\"",
            hint="Submit the job there, or set thanosql.jobs_database in postgresql.conf (restart needed).")


# --- the run, in the job's worker ----------------------------------------------------------------------
def job_dir(job_id: int) -> str:
    """A job's checkpoint files on their way into the catalog: relative to the data directory,
    every backend's working directory (removed with the job: thanosql._remove_job_files)."""
    return os.path.join("thanosql_jobs", str(int(job_id)))


class Checkpoints:
    """A job's newest training checkpoint (contract.CheckpointStore), in the catalog, written
    through the job's own writers. Storing hundreds of MB takes seconds: the worker writes the
    state to a file and a helper process (src/jobs.c) stores it and commits while training
    goes on; without a free worker slot, the worker stores it itself."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id

    def load(self) -> dict[str, Any] | None:
        import torch

        read = spi.plan("SELECT thanosql._read_job_checkpoint($1, $2) AS d", ["int8", "int4"])
        chunks: list[bytes] = []
        while True:
            data = plpy.execute(read, [self.job_id, len(chunks)])[0]["d"]
            if data is None:
                break
            chunks.append(data)
        if not chunks:
            return None
        state: dict[str, Any] = torch.load(io.BytesIO(b"".join(chunks)), map_location="cpu",
                                           weights_only=True)
        return state

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        import torch

        self.flush()  # the previous one is in the catalog, and its file gone
        path = checkpoint_file(self.job_id, epoch)
        try:
            os.makedirs(job_dir(self.job_id), mode=0o700, exist_ok=True)
            torch.save(state, path)
        except OSError as e:  # a full disk, say: training goes on (from the previous checkpoint if need be)
            if os.path.exists(path):
                os.remove(path)
            plpy.warning(f"job {self.job_id}: no checkpoint after epoch {epoch} ({e.strerror or e}); an"
                         " interrupted job would resume from its previous one")
            plpy.commit()
            return
        started = plpy.execute(spi.plan("SELECT thanosql._store_job_checkpoint_async($1) AS ok", ["int4"]),
                               [epoch])[0]["ok"]
        if not started:
            store_checkpoint(self.job_id, epoch)
        # hours of training in one transaction would hold back VACUUM server-wide
        plpy.commit()

    def flush(self) -> None:
        """Wait for the checkpoint being stored."""
        plpy.execute(spi.plan("SELECT thanosql._wait_job_checkpoint()"))


def checkpoint_file(job_id: int, epoch: int) -> str:
    return os.path.join(job_dir(job_id), f"epoch-{int(epoch)}.pt")


def store_checkpoint(job_id: int, epoch: int) -> None:
    """The checkpoint file of ``epoch`` into the catalog, in chunks, committed; then the file
    goes (the job's worker, or its helper)."""
    path = checkpoint_file(job_id, epoch)
    put = spi.plan("SELECT thanosql._put_job_checkpoint($1, $2, $3, $4)", ["int8", "int4", "int4", "bytea"])
    with open(path, "rb") as f:
        seq = 0
        while chunk := f.read(CHUNK_BYTES):
            plpy.execute(put, [job_id, epoch, seq, chunk])
            seq += 1
    plpy.execute(spi.plan("SELECT thanosql._keep_job_checkpoint($1, $2)", ["int8", "int4"]), [job_id, epoch])
    plpy.commit()
    os.remove(path)


Train = Callable[[str, str, str, dict[str, Any], str, CheckpointStore], list[tuple[Any, ...]]]


def run(job_id: int, train: Train) -> None:
    """The job's statement: ``train`` (kind, model, source, options, query, checkpoints) for
    BUILD/FIT, else its plain SQL."""
    from thanosql_pg.server import compute, progress

    job = plpy.execute(spi.plan("SELECT kind, model, search_path, payload::text AS payload"
                                " FROM thanosql._job_begin($1)", ["int8"]), [job_id])[0]
    # the job's row is not to stay locked (by _job_begin's update) while it runs: its
    # checkpoint helper and cancel_job take it
    plpy.commit()
    kind, model = job["kind"], job["model"]
    payload = json.loads(job["payload"])
    rows = f"SELECT * FROM thanosql_jobs.rows_{int(job_id)}"
    result: Any
    with caller.caller_search_path(job["search_path"]):
        if kind in ("build", "fit"):
            with compute.running_model(), progress.statement_progress(kind.upper(), model, "preparing"):
                checkpoints = Checkpoints(job_id)
                trained = train(kind, model, payload["source"], payload["options"], rows, checkpoints)
                checkpoints.flush()
            # BUILD's result row, as thanosql.build_model returns it (metrics: JSON text there)
            result = [{name: json.loads(v) if sql_type == "jsonb" else v
                       for (name, sql_type), v in zip(shapes.TRAINED, r, strict=True)} for r in trained]
        else:
            # the statement's own SQL, reading the job's rows through this view
            plpy.execute(f"CREATE TEMPORARY VIEW __thanosql_job_rows AS {rows}")
            with caller.as_caller():
                out = plpy.execute("SELECT pg_catalog.to_jsonb(r)::text AS j"
                                   f" FROM ({payload['statement']}\n) AS r")
            result = [json.loads(r["j"]) for r in out]
            plpy.execute("DROP VIEW pg_temp.__thanosql_job_rows")
    plpy.execute(spi.plan("SELECT thanosql._finish_job($1, $2::jsonb)", ["int8", "text"]),
                 [job_id, json.dumps(result, default=str)])
