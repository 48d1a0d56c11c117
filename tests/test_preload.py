"""The preload (thanosql.preload, src/preload.c), a new cluster's default: the postmaster
imports torch, timm and thanosql_pg once, and every session is forked with them loaded.

The test runs a second embedded cluster of its own (THANOSQL_HOME), since the shared one
runs without the preload (conftest starts it with --no-preload): there a session's Python
code is read when it is first used, which the family-contract test relies on. How much
faster the first call gets is bench/first_call.py's business, not a test's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import digits
import psycopg
import pytest

from thanosql_pg.cluster import JOB_LINES, OLD_PRELOAD, PRELOAD_OFF, PRELOAD_ON, Cluster

ROOT = Path(__file__).resolve().parent.parent
THANOSQL = [sys.executable, "-m", "thanosql_pg.cli"]
SMALL = {"image_col": "path", "label_col": "label", "epochs": 1, "input_size": 32, "pretrained": False,
         "batch_size": 8}


def thanosql(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*THANOSQL, *args], env={**os.environ, "THANOSQL_HOME": str(home)}, cwd=ROOT,
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def preloaded(cluster: dict) -> Iterator[dict]:
    # under the shared cluster's home: a folder the server's OS user can reach
    home = Path(cluster["home"]) / f"preload-test-{uuid.uuid4().hex[:6]}"
    started = thanosql(home, "start")  # a new cluster preloads by default
    assert started.returncode == 0, started.stderr
    try:
        info = json.loads(thanosql(home, "status", "--json").stdout)
        yield info
    finally:
        thanosql(home, "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_the_postmaster_imported_without_starting_threads(preloaded: dict) -> None:
    assert preloaded["preload"] is True
    with psycopg.connect(preloaded["server"], autocommit=True) as c:
        assert c.execute("SHOW thanosql.preload").fetchone()[0] == "on"
        assert "plpython3" in c.execute("SHOW shared_preload_libraries").fetchone()[0]
    pid = int((Path(preloaded["data_dir"]) / "postmaster.pid").read_text().split()[0])
    # forking is safe only from a single-threaded process: importing torch started none
    assert len(os.listdir(f"/proc/{pid}/task")) == 1


def test_a_new_session_starts_with_the_libraries_loaded(preloaded: dict) -> None:
    with psycopg.connect(preloaded["server"], autocommit=True) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("DO LANGUAGE plpython3u $$ import sys; plpy.notice(' '.join(sorted(m for m in"
                  " ('torch', 'timm', 'thanosql_pg.server.entry') if m in sys.modules))) $$")
    assert notices == ["thanosql_pg.server.entry timm torch"]


def test_predict_in_new_sessions(preloaded: dict) -> None:
    """A model built there answers alike in every new session, first call or not."""
    prefix = "pl_" + uuid.uuid4().hex[:6]
    with psycopg.connect(preloaded["server"], autocommit=True) as c:
        train, test = digits.tables(c, preloaded["files_dir"], prefix, train_per_class=4, test_per_class=2)
        c.execute("SELECT * FROM thanosql.build_model(%s, 'ConvNeXt_Tiny', %s, %s)",
                  [prefix, json.dumps(SMALL), f"SELECT path, label FROM {train}"])
    call = (f"SELECT thanosql.predict_batch(thanosql.prepare('predict', %s, %s::jsonb),"
            f" (SELECT array_agg(to_jsonb(path) ORDER BY id) FROM {test}))")
    answers = []
    for _ in range(2):
        with psycopg.connect(preloaded["proxy"], autocommit=True) as c:
            first = c.execute(call, [prefix, json.dumps({"image_col": "path"})]).fetchone()[0]
            second = c.execute(call, [prefix, json.dumps({"image_col": "path"})]).fetchone()[0]
            assert first == second and len(first) == 20
            answers.append(first)
    assert answers[0] == answers[1]
    assert set(answers[0]) <= {str(d) for d in range(10)}


def test_preload_is_switched_in_postgresql_conf(tmp_path: Path) -> None:
    """--preload / --no-preload rewrite thanosql's lines and keep everything else."""
    cl = Cluster(tmp_path)
    cl.data.mkdir(parents=True)
    conf = cl.data / "postgresql.conf"
    # a cluster made by an earlier release: its preload line, without the jobs' and pg_cron's lines
    conf.write_text(f"port = 5\n{OLD_PRELOAD[0]}\nwork_mem = '8MB'\n")
    assert not cl.preloading()
    assert cl.configure_preload(None) is True  # brought to this release's lines
    assert conf.read_text().splitlines() == ["port = 5", "work_mem = '8MB'", PRELOAD_OFF, *JOB_LINES]
    assert cl.configure_preload(None) is False
    assert cl.configure_preload(True) is True and cl.preloading()
    assert cl.configure_preload(None) is False and cl.preloading()
    lines = conf.read_text().splitlines()
    assert lines[:2] == ["port = 5", "work_mem = '8MB'"] and lines[2:] == [*PRELOAD_ON, *JOB_LINES]
    assert cl.configure_preload(False) is True and not cl.preloading()
    assert conf.read_text().splitlines() == ["port = 5", "work_mem = '8MB'", PRELOAD_OFF, *JOB_LINES]
