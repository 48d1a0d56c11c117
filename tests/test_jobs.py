"""Background jobs (OPTIONS (background=True)), against the test cluster through the proxy:
submission, the queue, cancels, privileges, and resumption from checkpoints after kill -9
and after a server stop and start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import digits
import psycopg
import pytest
from catalog_rows import drop_prefixed
from psycopg import errors
from psycopg.conninfo import make_conninfo
from reconnect import connect

ROOT = Path(__file__).resolve().parents[1]
THANOSQL = [sys.executable, "-m", "thanosql_pg.cli"]
PREFIX = "tj_"
OPTS = "image_col='path', label_col='label', input_size=32, pretrained=False, batch_size=16"
FINAL = ("succeeded", "failed", "cancelled")


def dsn_as(dsn: str, role: str) -> str:
    return make_conninfo(dsn, user=role)


@pytest.fixture(scope="module")
def rows(server_dsn: str, files: Path) -> Iterator[str]:
    train, _ = digits.split(digits.digits(files))
    with connect(server_dsn) as c:
        digits.load_table(c, "tj_train", digits.per_class(train, 4))
        c.execute("GRANT SELECT ON tj_train TO PUBLIC")
    yield "tj_train"
    with connect(server_dsn) as c:  # a new connection: a test restarts the server
        drop_prefixed(c, PREFIX)


def build_sql(model: str, epochs: int, extra: str = "", table: str = "tj_train") -> str:
    return (f"BUILD MODEL {model} USING ConvNeXt_Tiny OPTIONS ({OPTS}, epochs={epochs}{extra})"
            f" AS SELECT path, label FROM {table}")


def job(dsn: str, job_id: int) -> dict[str, Any]:
    with connect(dsn) as c:
        cur = c.execute("SELECT * FROM thanosql.jobs WHERE job_id = %s", (job_id,))
        row = cur.fetchone()
        assert row is not None, job_id
        return dict(zip([d.name for d in cur.description], row, strict=True))


def wait_for(dsn: str, job_id: int, done: Callable[[dict[str, Any]], bool],
             timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = job(dsn, job_id)
        except psycopg.OperationalError:  # the server restarting
            time.sleep(0.5)
            continue
        if done(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there: {job(dsn, job_id)}")


def submit(c: psycopg.Connection, sql: str) -> int:
    """The statement's one row, (job_id, model, 'queued'); how fast it comes is
    bench/job_overhead.py's to measure."""
    row = c.execute(sql).fetchone()
    assert row is not None and row[2] == "queued", row
    return int(row[0])


@pytest.fixture
def clean(server_dsn: str) -> Iterator[None]:
    yield
    # nothing of a test's jobs may keep running into the next test
    with connect(server_dsn) as c:
        active = "SELECT job_id FROM thanosql.jobs WHERE status IN ('queued', 'running')"
        for (j,) in c.execute(active).fetchall():
            c.execute("SELECT thanosql.cancel_job(%s)", (j,))
            c.execute("SELECT thanosql.wait_job(%s, '60 s')", (j,))


def test_a_background_build_returns_at_once_and_trains_the_rows_of_submission(
        rows: str, proxy_dsn: str, server_dsn: str, clean: None) -> None:
    with connect(proxy_dsn) as c:
        c.execute("CREATE TABLE tj_moving AS SELECT * FROM tj_train")
        job_id = submit(c, build_sql("tj_bg", 2, ", background=True", table="tj_moving"))
        # the rows are fixed at submission: what happens to the source now changes nothing
        c.execute("DELETE FROM tj_moving WHERE label <> '0'")
        # the name is taken by the job: a second BUILD fails at once
        with pytest.raises(errors.LockNotAvailable, match="background job"):
            c.execute(build_sql("tj_bg", 1))
        with pytest.raises(errors.LockNotAvailable):
            c.execute(build_sql("tj_bg", 1, ", background=True"))
        assert c.execute("SELECT thanosql.wait_job(%s)", (job_id,)).fetchone() == ("succeeded",)
        state = job(server_dsn, job_id)
        assert state["attempts"] == 1 and state["kind"] == "build" and state["epochs"] == 2
        assert state["result"][0]["rows"] == 40 and state["result"][0]["model"] == "tj_bg"
        assert [e for (e,) in c.execute("SELECT epoch FROM thanosql.training_info('tj_bg')")] == [1, 2]
        # what the job kept while it ran is gone
        rows_table = f"thanosql_jobs.rows_{job_id}"
        assert c.execute("SELECT pg_catalog.to_regclass(%s)", (rows_table,)).fetchone() == (None,)
    with connect(server_dsn) as su:
        assert su.execute("SELECT count(*) FROM thanosql.job_checkpoints WHERE job_id = %s",
                          (job_id,)).fetchone() == (0,)


def test_what_can_be_checked_fails_at_submission(rows: str, proxy_dsn: str) -> None:
    with connect(proxy_dsn) as c:
        with pytest.raises(errors.InvalidParameterValue, match="epoch"):
            c.execute(build_sql("tj_bad", 0, ", background=True"))
        with pytest.raises(errors.UndefinedTable):
            c.execute(build_sql("tj_bad", 1, ", background=True", table="tj_no_such_table"))
        with pytest.raises(errors.UndefinedColumn):
            c.execute(f"BUILD MODEL tj_bad USING ConvNeXt_Tiny OPTIONS ({OPTS}, epochs=1, background=True)"
                      " AS SELECT path FROM tj_train")
        with pytest.raises(errors.UndefinedObject):
            c.execute("PREDICT USING tj_no_model OPTIONS (image_col='path', table_name='tj_p',"
                      " background=True) AS SELECT path FROM tj_train")
        # the synchronous function does not take the option: the rewrite submits the job
        with pytest.raises(errors.InvalidParameterValue, match="runs as a job"):
            c.execute("SELECT * FROM thanosql.build_model('tj_bad', 'ConvNeXt_Tiny',"
                      " '{\"image_col\": \"path\", \"label_col\": \"label\", \"background\": true}',"
                      " 'SELECT 1')")
        assert c.execute("SELECT count(*) FROM thanosql.jobs WHERE model = 'tj_bad'").fetchone() == (0,)


def test_queue_order_cancels_and_progress(rows: str, proxy_dsn: str, server_dsn: str, clean: None) -> None:
    with connect(proxy_dsn) as c:
        long = submit(c, build_sql("tj_long", 50, ", background=True"))
        queued = [submit(c, build_sql(f"tj_q{i}", 1, ", background=True")) for i in range(3)]
        # thanosql.max_jobs = 1: the others wait, and say so in both views
        wait_for(server_dsn, long, lambda j: j["status"] == "running")
        assert [job(server_dsn, j)["status"] for j in queued] == ["queued"] * 3
        shown = c.execute("SELECT model, phase FROM thanosql.progress WHERE phase = 'queued' ORDER BY model")
        assert [m for m, _ in shown.fetchall() if m.startswith("tj_q")] == ["tj_q0", "tj_q1", "tj_q2"]
        # a queued job cancelled never starts
        assert c.execute("SELECT thanosql.cancel_job(%s)", (queued[1],)).fetchone() == (True,)
        assert job(server_dsn, queued[1])["status"] == "cancelled"
        # a running job cancelled stops within a batch and leaves nothing
        wait_for(server_dsn, long, lambda j: (j["epoch"] or 0) >= 1)
        started = time.monotonic()
        assert c.execute("SELECT thanosql.cancel_job(%s)", (long,)).fetchone() == (True,)
        assert c.execute("SELECT thanosql.wait_job(%s, '60 s')", (long,)).fetchone() == ("cancelled",)
        assert time.monotonic() - started < 20
        state = job(server_dsn, long)
        assert state["sqlstate"] == "57014", state
        assert c.execute("SELECT count(*) FROM thanosql.models WHERE name = 'tj_long'").fetchone() == (0,)
        # the others then run in submission order, one at a time
        for j in (queued[0], queued[2]):
            assert c.execute("SELECT thanosql.wait_job(%s)", (j,)).fetchone() == ("succeeded",)
        first, last = job(server_dsn, queued[0]), job(server_dsn, queued[2])
        assert first["finished_at"] <= last["started_at"]
        assert job(server_dsn, queued[1])["started_at"] is None
        # the cancelled job's name is free again, and an ended job cancels no more
        assert c.execute("SELECT thanosql.cancel_job(%s)", (long,)).fetchone() == (False,)
        assert c.execute("SELECT thanosql.wait_job(%s, '0 s')", (long,)).fetchone() == ("cancelled",)


def test_another_role_neither_sees_nor_cancels_a_job(rows: str, proxy_dsn: str, server_dsn: str,
                                                     direct: psycopg.Connection, clean: None) -> None:
    roles = [f"tj_role_{os.getpid()}_{n}" for n in ("alice", "mallory")]
    for r in roles:
        direct.execute(f"DROP ROLE IF EXISTS {r}")
        direct.execute(f"CREATE ROLE {r} LOGIN")
        direct.execute(f"GRANT CREATE ON SCHEMA public TO {r}")
    alice, mallory = roles
    try:
        with connect(dsn_as(proxy_dsn, alice)) as a, connect(dsn_as(proxy_dsn, mallory)) as m:
            job_id = submit(a, build_sql("tj_alice", 1, ", background=True"))
            assert [r[0] for r in a.execute("SELECT job_id FROM thanosql.jobs")] == [job_id]
            assert m.execute("SELECT count(*) FROM thanosql.jobs").fetchone() == (0,)
            shown = m.execute("SELECT count(*) FROM thanosql.progress WHERE model = 'tj_alice'")
            assert shown.fetchone() == (0,)
            # the same answer as for a job that does not exist
            for target in (job_id, 987654321):
                with pytest.raises(errors.UndefinedObject, match=f"job {target} does not exist"):
                    m.execute("SELECT thanosql.cancel_job(%s)", (target,))
                with pytest.raises(errors.UndefinedObject, match=f"job {target} does not exist"):
                    m.execute("SELECT thanosql.wait_job(%s)", (target,))
            # nor can another role read the job's rows, or act as its worker
            with pytest.raises(errors.InsufficientPrivilege):
                m.execute(f"SELECT * FROM thanosql_jobs.rows_{job_id}")
            with pytest.raises(errors.InsufficientPrivilege):
                m.execute("SELECT * FROM thanosql._job_begin(%s)", (job_id,))
            with pytest.raises(errors.InsufficientPrivilege, match="worker"):
                a.execute("SELECT * FROM thanosql._job_begin(%s)", (job_id,))
            assert a.execute("SELECT thanosql.wait_job(%s)", (job_id,)).fetchone() == ("succeeded",)
            # the job ran as alice: her model
            assert direct.execute("SELECT owner::text FROM thanosql.models WHERE name = 'tj_alice'"
                                  ).fetchone() == (alice,)
            # a role that may no longer log in when its job's turn comes: the job fails, saying so
            blocker = submit(a, build_sql("tj_alice2", 30, ", background=True"))
            queued = submit(a, build_sql("tj_alice3", 1, ", background=True"))
            wait_for(server_dsn, blocker, lambda j: j["status"] == "running")
            direct.execute(f"ALTER ROLE {alice} NOLOGIN")
            a.execute("SELECT thanosql.cancel_job(%s)", (blocker,))
            state = wait_for(server_dsn, queued, lambda j: j["status"] in FINAL)
            assert state["status"] == "failed" and "may no longer log in" in state["message"], state
    finally:
        for r in roles:
            direct.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (r,))
            direct.execute("DELETE FROM thanosql.models WHERE owner = %s::regrole", (r,))
            direct.execute(f"DROP OWNED BY {r} CASCADE")
            direct.execute(f"DROP ROLE {r}")


def _server_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_kill_9_then_stop_and_start_resume_from_checkpoints(rows: str, proxy_dsn: str, server_dsn: str,
                                                             clean: None) -> None:
    """kill -9 of the job's process at epoch >= 2 (a crash restart of the server), then a
    clean stop and start: the job resumes each time from its newest checkpoint and ends
    with every epoch once, and the very model of an uninterrupted run."""
    with connect(proxy_dsn) as c:
        job_id = submit(c, build_sql("tj_resume", 6, ", validation_split=0.2, background=True"))
    state = wait_for(server_dsn, job_id, lambda j: (j["epoch"] or 0) >= 3)
    os.kill(state["pid"], signal.SIGKILL)
    state = wait_for(server_dsn, job_id, lambda j: j["attempts"] == 2 and (j["epoch"] or 0) >= 4)
    subprocess.run([*THANOSQL, "stop"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    assert not _server_pid_alive(state["pid"])
    subprocess.run([*THANOSQL, "start"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    state = wait_for(server_dsn, job_id, lambda j: j["status"] in FINAL)
    assert state["status"] == "succeeded" and state["attempts"] == 3, state
    with connect(proxy_dsn) as c:
        epochs = c.execute("SELECT epoch FROM thanosql.training_info('tj_resume')").fetchall()
        assert [e for (e,) in epochs] == [1, 2, 3, 4, 5, 6]
        c.execute(build_sql("tj_straight", 6, ", validation_split=0.2"))
        history = "SELECT epoch, train_loss, validation_loss FROM thanosql.training_info(%s)"
        assert c.execute(history, ("tj_resume",)).fetchall() == c.execute(history,
                                                                          ("tj_straight",)).fetchall()
        predict = "PREDICT USING {} OPTIONS (image_col='path') AS SELECT path FROM tj_train ORDER BY id"
        resumed = c.execute(predict.format("tj_resume")).fetchall()
        assert resumed == c.execute(predict.format("tj_straight")).fetchall()


def test_background_predict_and_evaluate(rows: str, proxy_dsn: str, server_dsn: str, clean: None) -> None:
    with connect(proxy_dsn) as c:
        c.execute(build_sql("tj_pe", 1))
        predict = submit(c, "PREDICT USING tj_pe OPTIONS (image_col='path', table_name='tj_predicted',"
                            " background=True) AS SELECT id, path FROM tj_train")
        evaluate = submit(c, "EVALUATE USING tj_pe OPTIONS (image_col='path', label_col='label',"
                             " background=True) AS SELECT path, label FROM tj_train")
        for j in (predict, evaluate):
            assert c.execute("SELECT thanosql.wait_job(%s)", (j,)).fetchone() == ("succeeded",)
        assert c.execute("SELECT count(*) FROM tj_predicted").fetchone() == (40,)
        direct = c.execute("PREDICT USING tj_pe OPTIONS (image_col='path') AS SELECT id, path FROM tj_train"
                           " ORDER BY id").fetchall()
        assert c.execute("SELECT id, path, predict_result FROM tj_predicted ORDER BY id").fetchall() == direct
        metrics = {r["metric"]: r["score"] for r in job(server_dsn, evaluate)["result"]}
        assert metrics["Rows"] == 40 and 0 <= metrics["Accuracy"] <= 1, metrics
        with pytest.raises(errors.InvalidParameterValue, match="table_name"):
            c.execute("PREDICT USING tj_pe OPTIONS (image_col='path', background=True)"
                      " AS SELECT path FROM tj_train")


@pytest.mark.slow
def test_a_pg_cron_schedule_submits_a_job_that_succeeds(rows: str, proxy_dsn: str, clean: None) -> None:
    """The README's recipe: a schedule (each minute here) whose command submits a background
    FIT through thanosql.execute."""
    with connect(proxy_dsn) as c:
        c.execute(build_sql("tj_cron", 1))
        fit = ("FIT MODEL tj_cron USING tj_cron OPTIONS (image_col='path', label_col='label', epochs=1,"
               " batch_size=16, background=True) AS SELECT path, label FROM tj_train")
        c.execute("SELECT cron.schedule('tj_cron_refit', '* * * * *',"
                  " pg_catalog.format('SELECT * FROM thanosql.execute(%%L)', %s::text))", (fit,))
        try:
            deadline = time.monotonic() + 150
            found = None
            while found is None and time.monotonic() < deadline:
                found = c.execute("SELECT job_id FROM thanosql.jobs WHERE model = 'tj_cron' AND kind = 'fit'"
                                  " ORDER BY job_id LIMIT 1").fetchone()
                time.sleep(1)
            assert found is not None, c.execute("SELECT status, return_message FROM cron.job_run_details"
                                                " ORDER BY runid DESC LIMIT 3").fetchall()
        finally:
            c.execute("SELECT cron.unschedule('tj_cron_refit')")
        assert c.execute("SELECT thanosql.wait_job(%s)", found).fetchone() == ("succeeded",)
        assert c.execute("SELECT count(*) FROM thanosql.model_versions v JOIN thanosql.models m"
                         " ON m.id = v.model_id WHERE m.name = 'tj_cron'").fetchone()[0] >= 2


def test_with_two_job_slots_trainings_still_take_turns(rows: str, proxy_dsn: str, server_dsn: str,
                                                        direct: psycopg.Connection, clean: None) -> None:
    """thanosql.max_jobs = 2: a PREDICT job runs beside a training, but two trainings never
    share the device (thanosql.device is not 'cpu')."""
    direct.execute("ALTER SYSTEM SET thanosql.max_jobs = 2")
    direct.execute("SELECT pg_reload_conf()")
    try:
        with connect(proxy_dsn) as c:
            c.execute(build_sql("tj_two", 1))
            time.sleep(1)  # the launcher has read the new setting
            first = submit(c, build_sql("tj_two_a", 3, ", background=True"))
            second = submit(c, build_sql("tj_two_b", 1, ", background=True"))
            predict = submit(c, "PREDICT USING tj_two OPTIONS (image_col='path', table_name='tj_two_p',"
                                " background=True) AS SELECT id, path FROM tj_train")
            for j in (first, second, predict):
                assert c.execute("SELECT thanosql.wait_job(%s)", (j,)).fetchone() == ("succeeded",)
        a, b, p = (job(server_dsn, j) for j in (first, second, predict))
        assert b["started_at"] >= a["finished_at"], (a, b)  # the trainings took turns
        assert p["started_at"] < a["finished_at"], (a, p)  # the PREDICT did not wait for them
    finally:
        direct.execute("ALTER SYSTEM RESET thanosql.max_jobs")
        direct.execute("SELECT pg_reload_conf()")


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_job(rows: str, proxy_dsn: str, cluster: dict,
                                                                   clean: None) -> None:
    """Where the checkpoint files go cannot be written (as on a full disk): the job warns and
    trains on."""
    folder = Path(cluster["data_dir"]) / "thanosql_jobs"
    folder.mkdir(exist_ok=True)
    server = Path(cluster["data_dir"]).stat()  # the server's OS user owns it, and may not write it now
    os.chown(folder, server.st_uid, server.st_gid)
    folder.chmod(0o500)
    try:
        with connect(proxy_dsn) as c:
            job_id = submit(c, build_sql("tj_nockpt", 2, ", background=True"))
            assert c.execute("SELECT thanosql.wait_job(%s)", (job_id,)).fetchone() == ("succeeded",)
            epochs = c.execute("SELECT epoch FROM thanosql.training_info('tj_nockpt')").fetchall()
            assert [e for (e,) in epochs] == [1, 2]
    finally:
        folder.chmod(0o700)


@pytest.mark.slow
def test_after_max_attempts_the_job_fails_and_a_dropped_role_fails_its_job(
        rows: str, proxy_dsn: str, server_dsn: str, clean: None) -> None:
    role = f"tj_role_{os.getpid()}_gone"

    def admin(*sql: str) -> None:
        with connect(server_dsn) as su:  # a new connection each time: the server restarts here
            for statement in sql:
                su.execute(statement)

    admin("ALTER SYSTEM SET thanosql.job_max_attempts = 1", "SELECT pg_reload_conf()",
          f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN")
    try:
        time.sleep(1)  # the launcher has read the new setting
        with connect(proxy_dsn) as c:
            job_id = submit(c, build_sql("tj_once", 20, ", background=True"))
        state = wait_for(server_dsn, job_id, lambda j: (j["epoch"] or 0) >= 2)
        os.kill(state["pid"], signal.SIGKILL)  # one interruption is all it may take
        state = wait_for(server_dsn, job_id, lambda j: j["status"] in FINAL)
        assert state["status"] == "failed" and state["sqlstate"] == "57P01", state
        assert "interrupted 1 times" in state["message"] and state["attempts"] == 1, state
        with connect(server_dsn) as su:
            assert su.execute("SELECT count(*) FROM thanosql.job_checkpoints WHERE job_id = %s",
                              (job_id,)).fetchone() == (0,)
        # a role dropped while its job waits: the job fails, saying so
        with connect(proxy_dsn) as c:
            blocker = submit(c, build_sql("tj_block", 30, ", background=True"))
            wait_for(server_dsn, blocker, lambda j: j["status"] == "running")
            with connect(dsn_as(proxy_dsn, role)) as r:
                orphan = submit(r, build_sql("tj_orphan", 1, ", background=True"))
            admin(f"DROP OWNED BY {role}", f"DROP ROLE {role}")  # DROP OWNED: the grant on the job's rows
            c.execute("SELECT thanosql.cancel_job(%s)", (blocker,))
        state = wait_for(server_dsn, orphan, lambda j: j["status"] in FINAL)
        assert state["status"] == "failed" and "was dropped" in state["message"], state
    finally:
        admin("ALTER SYSTEM RESET thanosql.job_max_attempts", "SELECT pg_reload_conf()")
        with connect(server_dsn) as su:
            if su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                su.execute(f"DROP OWNED BY {role}")
                su.execute(f"DROP ROLE {role}")
