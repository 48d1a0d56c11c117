"""A background job's overhead, and the cost of resuming one after a restart.

The same BUILD MODEL (ConvNeXt_Tiny from scratch on digits PNGs) runs, alternately,

- synchronously: a new connection runs ``thanosql.build_model(...)`` and waits for it
  (the client's session imports torch, as a job's worker does);
- as a job: a new connection submits it (``thanosql.submit_job``, what ``background=True``
  rewrites to) and ``thanosql.wait_job`` waits for the end. On top of the training, the job
  pays the copy of its rows at submission, the queue (the submission wakes the launcher), a
  fresh background worker, and a checkpoint after every epoch but the last (written to a file,
  then stored in the catalog by a helper process while training goes on).

Medians of the seconds from the call to the model being stored; ratio job / sync (target:
overhead <= 5 %); and the submitting statement's own seconds (target: well under a second).
Then the resume cost: a job is stopped by ``thanosql stop`` during its second epoch, the
server is started again, and the time from the server accepting connections to the job
training again (its thanosql.progress row in phase 'train') is measured.
Results: bench/results/job_overhead.json.

    .venv/bin/python bench/job_overhead.py [--rows 960] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import common

QUERY = "SELECT path, label FROM bench_jobs"
SUBMIT = "SELECT job_id FROM thanosql.submit_job('build', 'bench_jobs_job', 'ConvNeXt_Tiny', %s, %s, NULL)"


def parse_args() -> Any:
    p = common.parser(__doc__, "job_overhead")
    common.add_training_args(p, rows=960, epochs=3)
    return p.parse_args()


def main() -> int:
    import psycopg

    args = parse_args()
    dsn, opts = common.digits_training(args, "bench_jobs")

    def sync() -> float:
        start = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT * FROM thanosql.build_model('bench_jobs_sync', 'ConvNeXt_Tiny', %s, %s)",
                      (json.dumps(opts), QUERY)).fetchall()
        return time.perf_counter() - start

    submissions: list[float] = []

    def job() -> float:
        start = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c:
            # the statement's own time, in a session that has loaded thanosql_pg (as a client's
            # has after its first statement): the issue asks for well under a second
            c.execute("SELECT thanosql.rewrite('LIST MODEL')")
            submitted = time.perf_counter()
            job_id = c.execute(SUBMIT, (json.dumps(opts), QUERY)).fetchone()[0]
            submissions.append(time.perf_counter() - submitted)
            status = c.execute("SELECT thanosql.wait_job(%s)", (job_id,)).fetchone()[0]
        assert status == "succeeded", status
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {"sync": [], "job": []}
    sync()  # warm-up: the page cache holds the PNGs and the libraries for both sides
    for r in range(args.repeats):
        runs["sync"].append(sync())
        runs["job"].append(job())
        print(f"run {r + 1}: sync {runs['sync'][-1]:.1f} s, job {runs['job'][-1]:.1f} s", flush=True)
    resume = measure_resume(dsn, opts)
    print(f"resume: {resume}", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        common.clean_up(conn, "bench_jobs_sync", "bench_jobs")
        common.clean_up(conn, "bench_jobs_job")
    med = {k: common.median_of([{"s": v} for v in vs], "s") for k, vs in runs.items()}
    summary = {"sync_seconds": med["sync"], "job_seconds": med["job"], "ratio": med["job"] / med["sync"],
               "submission_seconds": common.median_of([{"s": v} for v in submissions], "s"),
               "overhead_percent": 100 * (med["job"] / med["sync"] - 1), "target": "overhead <= 5 %",
               **{f"resume_{k}": v for k, v in resume.items()}}
    common.save(args, "job_overhead", {"runs": runs, "submissions": submissions, "resume": resume}, summary)
    return 0


def measure_resume(dsn: str, opts: dict[str, Any]) -> dict[str, float]:
    """Stop the server during a job's second epoch; seconds from the server accepting
    connections again to the job training again."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        job_id = c.execute(SUBMIT, (json.dumps(opts), QUERY)).fetchone()[0]
        epoch = "SELECT epoch FROM thanosql.jobs WHERE job_id = %s"
        while (c.execute(epoch, (job_id,)).fetchone()[0] or 0) < 2:
            time.sleep(0.2)
    cli = [sys.executable, "-m", "thanosql_pg.cli"]
    stop_start = time.perf_counter()
    subprocess.run([*cli, "stop"], check=True, cwd=common.ROOT, stdout=subprocess.DEVNULL)
    stopped = time.perf_counter()
    subprocess.run([*cli, "start"], check=True, cwd=common.ROOT, stdout=subprocess.DEVNULL)
    while True:
        try:
            conn = psycopg.connect(dsn, autocommit=True)
            break
        except psycopg.OperationalError:
            time.sleep(0.05)
    back = time.perf_counter()
    with conn:
        running = None
        while True:
            row = conn.execute("SELECT j.status, p.phase, p.step FROM thanosql.jobs j"
                               " LEFT JOIN thanosql.progress p ON p.pid = j.pid WHERE j.job_id = %s",
                               (job_id,)).fetchone()
            if row[0] == "running" and running is None:
                running = time.perf_counter()
            if row[1] == "train" and (row[2] or 0) > 0:
                break
            time.sleep(0.05)
        training = time.perf_counter()
        status = conn.execute("SELECT thanosql.wait_job(%s)", (job_id,)).fetchone()[0]
        attempts = conn.execute("SELECT attempts FROM thanosql.jobs WHERE job_id = %s",
                                (job_id,)).fetchone()[0]
    assert status == "succeeded" and attempts == 2, (status, attempts)
    return {"stop_seconds": stopped - stop_start, "server_back_to_running_seconds": (running or back) - back,
            "server_back_to_training_seconds": training - back}


if __name__ == "__main__":
    sys.exit(main())
