"""BUILD/FIT with ``workers``: torch.distributed processes (gloo on this CPU) started by the
backend, and workers of "other machines" joining with ``thanosql worker --join`` over
loopback. Real cluster, real extension; the network is test_convnext (tiny_models), so a
3-epoch BUILD takes seconds.

What is checked: the loss curve of workers=2 against workers=1 at the same global batch,
the features of the shared loop (validation_split, early stopping, class weights, history,
progress), the bound on workers, a killed worker, a cancel, no process left behind, the
rendezvous with a secret (an uninvited joiner refused), and an ordinary role's rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import digits
import psycopg
import pytest
from catalog_rows import drop_prefixed
from expect import fails
from psycopg.conninfo import make_conninfo
from reconnect import connect

Conn = psycopg.Connection
PREFIX = "dw_" + uuid.uuid4().hex[:6]
ROOT = Path(__file__).resolve().parents[1]
WORKER = "thanosql_pg.workers.worker"


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


@pytest.fixture(scope="module")
def conn(server_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(server_dsn, autocommit=True) as c:
        c.execute("SET thanosql.progress_interval = 1000")
        yield c
    with connect(server_dsn) as c:  # a new one: the last test crashes the server on purpose
        drop_prefixed(c, PREFIX)


@pytest.fixture(scope="module")
def data(conn: Conn, files: Path) -> dict[str, str]:
    train, test = digits.tables(conn, files, name("d"), train_per_class=20, test_per_class=5)
    conn.execute(f"GRANT SELECT ON {train}, {test} TO PUBLIC")
    return {"train": train, "test": test, "query": f"SELECT path, label FROM {train} ORDER BY id"}


def opts(tiny_net: str, **more: Any) -> dict[str, Any]:
    return {"image_col": "path", "label_col": "label", "batch_size": 32, "learning_rate": 0.005,
            "input_size": 32, "base_model": tiny_net, "epochs": 3, "device": "cpu", **more}


def build(conn: Conn, model: str, options: dict[str, Any], query: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM thanosql.build_model(%s, 'ConvNeXt_Tiny', %s, %s)",
                       [model, json.dumps(options), query])
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def history(conn: Conn, model: str) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM thanosql.training_info(%s) ORDER BY epoch", [model])
    return [dict(zip([c.name for c in cur.description], r, strict=True)) for r in cur.fetchall()]


def accuracy(conn: Conn, model: str, table: str) -> float:
    rows = conn.execute("SELECT metric, score FROM thanosql.evaluate(%s, %s, %s)",
                        [model, json.dumps({"image_col": "path", "label_col": "label"}),
                         f"SELECT path, label FROM {table}"]).fetchall()
    return float(dict(rows)["Accuracy"])


def workers_running() -> list[int]:
    out = subprocess.run(["pgrep", "-f", WORKER], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def no_workers_left(timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and workers_running():
        time.sleep(0.2)
    assert workers_running() == [], "a worker process outlived its statement"


def model_exists(conn: Conn, model: str) -> bool:
    return bool(conn.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", [model]).fetchone()[0])


# --- the same answers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(conn: Conn, data: dict[str, str], tiny_net: str) -> dict[str, Any]:
    one, two = name("w1"), name("w2")
    started = time.monotonic()
    built1 = build(conn, one, opts(tiny_net), data["query"])
    seconds1 = time.monotonic() - started
    started = time.monotonic()
    built2 = build(conn, two, opts(tiny_net, workers=2), data["query"])
    seconds2 = time.monotonic() - started
    return {"one": one, "two": two, "built1": built1, "built2": built2, "seconds": (seconds1, seconds2)}


def test_two_workers_follow_the_one_process_loss_curve(conn: Conn, pair: dict[str, Any],
                                                       data: dict[str, str]) -> None:
    h1, h2 = history(conn, pair["one"]), history(conn, pair["two"])
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h2] == [1, 2, 3]
    for a, b in zip(h1, h2, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.05 * a["train_loss"], (h1, h2)
    acc1, acc2 = accuracy(conn, pair["one"], data["test"]), accuracy(conn, pair["two"], data["test"])
    print(f"\nworkers=1: losses {[round(r['train_loss'], 4) for r in h1]}, accuracy {acc1:.3f},"
          f" {pair['seconds'][0]:.1f} s; workers=2: losses {[round(r['train_loss'], 4) for r in h2]},"
          f" accuracy {acc2:.3f}, {pair['seconds'][1]:.1f} s")
    assert abs(acc1 - acc2) <= 0.1, (acc1, acc2)


def test_the_result_and_describe_show_the_workers(conn: Conn, pair: dict[str, Any]) -> None:
    assert pair["built2"]["metrics"]["workers"] == 2  # jsonb
    assert "workers" not in pair["built1"]["metrics"]
    options = conn.execute("SELECT options FROM thanosql.models WHERE name = %s", [pair["two"]]).fetchone()[0]
    assert options["workers"] == 2
    described = conn.execute("SELECT * FROM thanosql.describe_model(%s)", [pair["two"]]).fetchall()
    assert "workers" in str(described)
    no_workers_left()


def test_validation_early_stopping_and_class_weights_with_workers(conn: Conn, data: dict[str, str],
                                                                  tiny_net: str) -> None:
    model = name("val")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    built = build(conn, model, opts(tiny_net, workers=2, epochs=4, validation_split=0.2, early_stopping=True,
                                    patience=2, class_weight="balanced"), data["query"])
    metrics = built["metrics"]
    rows = history(conn, model)
    assert len(rows) == metrics["epochs_run"] >= 1
    assert all(r["validation_metric"] is not None and r["validation_loss"] is not None for r in rows)
    assert 1 <= metrics["kept_epoch"] <= len(rows)
    assert any("validation: 40 of 200 rows held out" in n for n in notices), notices
    assert any("training done" in n for n in notices), notices  # rank 0's notices are the statement's


def test_progress_of_a_build_with_workers(conn: Conn, server_dsn: str, data: dict[str, str],
                                          tiny_net: str) -> None:
    model = name("prog")
    seen: list[tuple[Any, ...]] = []
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(server_dsn, autocommit=True) as w:
            while not done.is_set():
                seen.extend(w.execute("SELECT phase, epoch, epochs FROM thanosql.progress"
                                      " WHERE model = %s", [model]).fetchall())
                time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    try:
        build(conn, model, opts(tiny_net, workers=2, epochs=6), data["query"])
    finally:
        done.set()
        t.join()
    assert any(phase == "train" and epoch >= 1 and epochs == 6 for phase, epoch, epochs in seen), seen


def test_workers_are_bounded_by_the_setting(conn: Conn, data: dict[str, str], tiny_net: str) -> None:
    limit = int(conn.execute("SHOW thanosql.max_workers").fetchone()[0])
    fails(lambda: build(conn, name("many"), opts(tiny_net, workers=limit + 1), data["query"]), "22023",
          "thanosql.max_workers")
    fails(lambda: build(conn, name("rem"), opts(tiny_net, workers=2, remote_workers=2), data["query"]),
          "22023", "remote_workers")
    assert not model_exists(conn, name("many"))


# --- faults -------------------------------------------------------------------------------------
def _build_in_thread(server_dsn: str, model: str, options: dict[str, Any], query: str,
                     notices: list[str] | None = None) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        with psycopg.connect(server_dsn, autocommit=True) as c:
            out["pid"] = c.info.backend_pid
            if notices is not None:
                c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            started = time.monotonic()
            try:
                out["result"] = build(c, model, options, query)
            except psycopg.Error as e:
                out["error"] = e
            out["seconds"] = time.monotonic() - started
            out["ended"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _wait_training(conn: Conn, model: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = conn.execute("SELECT phase, epoch FROM thanosql.progress WHERE model = %s", [model]).fetchall()
        if any(phase == "train" and epoch >= 1 for phase, epoch in rows) and len(workers_running()) >= 2:
            return
        time.sleep(0.1)
    raise AssertionError("the BUILD never started training")


def test_a_killed_worker_fails_the_build_quickly_and_cleanly(conn: Conn, server_dsn: str,
                                                             data: dict[str, str], tiny_net: str) -> None:
    model = name("killed")
    t, out = _build_in_thread(server_dsn, model, opts(tiny_net, workers=2, epochs=200), data["query"])
    _wait_training(conn, model)
    victim = max(workers_running())
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    t.join(90)
    assert not t.is_alive()
    err = out.get("error")
    assert err is not None, out
    assert out["ended"] - killed < 60
    assert "worker" in str(err), str(err)
    print(f"\na killed worker: the BUILD failed {out['ended'] - killed:.1f} s later: {err}")
    assert not model_exists(conn, model)
    no_workers_left()


def test_a_cancel_stops_every_worker(conn: Conn, server_dsn: str, data: dict[str, str],
                                     tiny_net: str) -> None:
    model = name("cancel")
    t, out = _build_in_thread(server_dsn, model, opts(tiny_net, workers=2, epochs=200), data["query"])
    _wait_training(conn, model)
    conn.execute("SELECT pg_cancel_backend(%s)", [out["pid"]])
    cancelled = time.monotonic()
    t.join(60)
    assert not t.is_alive()
    assert out["error"].sqlstate == "57014", out
    assert out["ended"] - cancelled < 10
    assert not model_exists(conn, model)
    no_workers_left()


# --- another machine --------------------------------------------------------------------------
def _joiner(address: str, secret: str) -> subprocess.Popen[str]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}  # loopback only: the "machines" are this one
    return subprocess.Popen([sys.executable, "-m", "thanosql_pg.cli", "worker", "--join", address,
                             "--secret", secret], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _invited_build(server_dsn: str, model: str, data: dict[str, str],
                   tiny_net: str) -> tuple[threading.Thread, dict[str, Any], list[str], str, str]:
    """A BUILD with one remote worker, running in a thread until that worker joins: (its
    thread, its outcome, its notices, and the address and secret its NOTICE invites with)."""
    notices: list[str] = []
    t, out = _build_in_thread(server_dsn, model, opts(tiny_net, workers=2, remote_workers=1), data["query"],
                              notices)
    deadline = time.monotonic() + 60
    join = None
    while join is None and time.monotonic() < deadline:
        join = next((n for n in notices if "thanosql worker --join" in n), None)
        time.sleep(0.1)
    assert join is not None, notices
    words = join.split()
    return t, out, notices, words[words.index("--join") + 1], words[words.index("--secret") + 1]


def test_a_worker_joins_from_another_machine_with_the_secret(conn: Conn, server_dsn: str,
                                                             data: dict[str, str], tiny_net: str) -> None:
    model = name("remote")
    t, out, notices, address, secret = _invited_build(server_dsn, model, data, tiny_net)
    uninvited = _joiner(address, "0" * len(secret))
    said, _ = uninvited.communicate(timeout=60)
    assert uninvited.returncode != 0 and "refused" in said, said
    invited = _joiner(address, secret)
    try:
        t.join(180)
        said, _ = invited.communicate(timeout=60)
    finally:
        if invited.poll() is None:
            os.killpg(invited.pid, signal.SIGKILL)
    assert "result" in out, (out, said)
    assert invited.returncode == 0, said
    assert out["result"]["metrics"]["workers"] == 2
    assert any("refused a worker" in n for n in notices), notices
    assert any("joined from" in n for n in notices), notices
    no_workers_left()


def test_an_admitted_peer_that_stalls_cannot_hold_the_backend(conn: Conn, server_dsn: str,
                                                               data: dict[str, str], tiny_net: str) -> None:
    """A joiner with the secret that starts a message and never finishes it: the backend
    gives up on it within seconds (it would otherwise wait, deaf to cancels), and the
    BUILD fails cleanly."""
    import socket

    from thanosql_pg.workers import wire

    model = name("stall")
    t, out, _, address, secret = _invited_build(server_dsn, model, data, tiny_net)
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as peer:
        hello, _ = wire.receive(peer)
        wire.send(peer, {"t": "answer", "hmac": wire.answer(secret, bytes.fromhex(hello["nonce"]))})
        assert wire.receive(peer)[0]["t"] == "admitted"
        wire.receive(peer)  # its start
        stalled = time.monotonic()
        peer.sendall(wire.HEADER.pack(100, 0) + b'{"t": "lab')  # ... and nothing more
        t.join(60)
    assert not t.is_alive()
    assert out["error"].sqlstate == "58000" and "worker 1 of 2" in str(out["error"]), out
    assert out["ended"] - stalled < 20
    assert not model_exists(conn, model)
    no_workers_left()


# --- whose rows --------------------------------------------------------------------------------
@pytest.fixture
def analyst(direct: Conn, data: dict[str, str]) -> Iterator[str]:
    """A role that sees only the rows of even id of the training table (row-level security)."""
    role = name("analyst")
    table = data["train"]
    direct.execute(f"CREATE ROLE {role} LOGIN")
    direct.execute(f"GRANT USAGE ON SCHEMA thanosql TO {role}")
    direct.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    direct.execute(f"CREATE POLICY {role}_low ON {table} FOR SELECT TO {role} USING (id % 2 = 0)")
    try:
        yield role
    finally:
        direct.execute(f"DROP POLICY {role}_low ON {table}")
        direct.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        direct.execute(f"DROP OWNED BY {role}")
        direct.execute(f"DROP ROLE {role}")


def test_an_ordinary_role_trains_on_what_it_may_read(server_dsn: str, analyst: str, data: dict[str, str],
                                                     tiny_net: str, conn: Conn) -> None:
    model = name("rls")
    with psycopg.connect(make_conninfo(server_dsn, user=analyst), autocommit=True) as c:
        built = build(c, model, opts(tiny_net, workers=2, epochs=1), data["query"])
        visible = c.execute(f"SELECT count(*) FROM {data['train']}").fetchone()[0]
        assert built["rows"] == visible < 200  # what the policy shows it, of the table's 200
        # a file outside thanosql.data_dir: refused as with one process
        fails(lambda: build(c, name("etc"), opts(tiny_net, workers=2, epochs=1),
                            f"SELECT '/etc/passwd' AS path, label FROM {data['train']}"),
              "42501")
    no_workers_left()


# --- a background job (last: it crashes the server) ---------------------------------------------
def test_a_background_job_with_workers_resumes_after_kill_9(server_dsn: str, data: dict[str, str],
                                                             tiny_net: str) -> None:
    """kill -9 of the job's backend (a crash restart): its workers die with it; the job
    goes back to the queue, resumes from its newest checkpoint with two workers again,
    and its history has every epoch once."""
    model = name("job")
    options = opts(tiny_net, workers=2, epochs=6)
    with connect(server_dsn) as c:
        job_id = c.execute("SELECT job_id FROM thanosql.submit_job('build', %s, 'ConvNeXt_Tiny', %s, %s,"
                           " NULL)", [model, json.dumps(options), data["query"]]).fetchone()[0]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status, epoch, pid = c.execute("SELECT status, epoch, pid FROM thanosql.jobs WHERE job_id = %s",
                                           [job_id]).fetchone()
            if status == "running" and (epoch or 0) >= 2 and pid:
                break
            assert status in ("queued", "running"), status
            time.sleep(0.2)
        else:
            raise AssertionError("the job never reached its second epoch")
        assert len(workers_running()) == 2
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 600
    while True:
        with connect(server_dsn) as c:
            status = c.execute("SELECT status FROM thanosql.jobs WHERE job_id = %s", [job_id]).fetchone()[0]
        if status not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    with connect(server_dsn) as c:
        job = c.execute("SELECT status, attempts, message, result FROM thanosql.jobs WHERE job_id = %s",
                        [job_id]).fetchone()
        assert job[0] == "succeeded" and job[1] == 2, job
        assert job[3][0]["metrics"]["workers"] == 2, job
        assert [r["epoch"] for r in history(c, model)] == [1, 2, 3, 4, 5, 6]
    no_workers_left()
