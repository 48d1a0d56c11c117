"""The %%thanosql magic in a real IPython kernel, and thanosql_pg.connect.

The kernel is a separate process started by jupyter_client, exactly as a
notebook server starts one; each test sends it cells and reads back what a
notebook would show: stdout/stderr streams, the cell's value, the error.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
import pytest
from jupyter_client.manager import KernelManager

import thanosql_pg
from thanosql_pg import progress_text
from thanosql_pg.algorithms import registry
from thanosql_pg.errors import ThanoSQLError
from thanosql_pg.magic import caret_lines, split_with_offsets

import digits as digits_data  # tests/digits.py  # isort: skip


@dataclass
class CellResult:
    stdout: str = ""
    stderr: str = ""
    value: str | None = None  # text/plain of the cell's result
    error: dict[str, Any] | None = None  # ename, evalue, traceback
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error_text(self) -> str:
        assert self.error is not None, f"no error; stdout={self.stdout!r} value={self.value!r}"
        return "\n".join(self.error["traceback"])


class Kernel:
    def __init__(self) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 300) -> CellResult:
        msg_id = self.kc.execute(code)
        res = CellResult()
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no answer from the kernel for {code!r}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    res.stdout += content["text"]
                else:
                    res.stderr += content["text"]
            elif kind == "execute_result":
                res.value = content["data"].get("text/plain")
            elif kind == "error":
                res.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                return res
            res.outputs.append(msg)

    def ok(self, code: str, timeout: float = 300) -> CellResult:
        res = self.run(code, timeout)
        assert res.error is None, "\n".join(res.error["traceback"])
        return res

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(cluster: dict) -> Iterator[Kernel]:
    k = Kernel()
    try:
        k.ok("%load_ext thanosql_pg")
        yield k
    finally:
        k.close()


def caret_column(error_text: str, line_no: int) -> int:
    """The 0-based column the caret points at, in the LINE line_no psql-style display."""
    m = re.search(rf"^LINE {line_no}: .*\n( *)\^$", error_text, re.MULTILINE)
    assert m, error_text
    return len(m[1]) - len(f"LINE {line_no}: ")


# --- in the kernel ------------------------------------------------------------------
def test_default_connection_is_the_embedded_server(kernel: Kernel, cluster: dict) -> None:
    kernel.ok("%%thanosql\nSELECT inet_server_port() AS port")
    res = kernel.ok("print(int(_.port[0]))")
    assert res.stdout.strip() == str(cluster["port"])  # the server itself, not the proxy


def test_line_magic_sets_the_connection(kernel: Kernel, server_dsn: str) -> None:
    res = kernel.ok(f"%thanosql {server_dsn}")
    assert res.value is not None and "connected to thanosql on 127.0.0.1" in res.value


def test_plain_sql_into_a_dataframe(kernel: Kernel) -> None:
    res = kernel.ok("%%thanosql\nSELECT 1 AS a;  -- only the last result is shown\n"
                    "SELECT g AS n, g * g AS sq FROM generate_series(1, 3) AS g")
    assert res.value is not None and "sq" in res.value
    res = kernel.ok("print(type(_).__name__, _.to_dict('list'))")
    assert res.stdout.strip() == "DataFrame {'n': [1, 2, 3], 'sq': [1, 4, 9]}"


def test_vector_column_as_numpy(kernel: Kernel) -> None:
    kernel.ok("%%thanosql\nSELECT '[1,2.5,3]'::vector AS v")
    res = kernel.ok("v = _.v[0]; print(type(v).__module__, type(v).__name__, v.dtype, v.tolist())")
    assert res.stdout.strip() == "numpy ndarray float32 [1.0, 2.5, 3.0]"


def test_thanosql_statement_and_notices(kernel: Kernel) -> None:
    kernel.ok("%%thanosql\nLIST MODEL")
    res = kernel.ok("print(list(_.columns))")
    assert res.stdout.strip() == "['name', 'class_name', 'last_updated_utc']"
    res = kernel.ok("%%thanosql\nDROP MODEL IF EXISTS no_such_model_xyz")
    assert 'NOTICE:  model "no_such_model_xyz" does not exist, skipping' in res.stdout


def test_statement_without_rows_shows_its_status(kernel: Kernel) -> None:
    res = kernel.ok("%%thanosql\nCREATE TEMP TABLE mt (a int);\nINSERT INTO mt VALUES (1), (2)")
    assert res.value == "INSERT 0 2"


def test_server_error_caret_in_the_cell(kernel: Kernel) -> None:
    res = kernel.run("%%thanosql\nSELECT 1;\nSELECT a,\n       nocol FROM (SELECT 1 AS a) AS t")
    text = res.error_text
    assert res.error["ename"] == "ThanoSQLCellError" and "Traceback" not in text
    assert text.startswith('ERROR:  column "nocol" does not exist')
    assert "LINE 3:        nocol FROM" in text and caret_column(text, 3) == 7
    assert "SQLSTATE: 42703" in text


def test_thanosql_syntax_error_caret(kernel: Kernel) -> None:
    res = kernel.run("%%thanosql\nSELECT 1;\nBUILD MODEL m USING ConvNeXt_Tiny\n"
                     "  OPTIONS (epochz=3) AS SELECT 1")
    text = res.error_text
    assert 'unknown option "epochz"' in text and "SQLSTATE: 22023" in text
    assert caret_column(text, 3) == len("  OPTIONS (")


def test_error_in_a_rewritten_statement_has_no_caret(kernel: Kernel) -> None:
    res = kernel.run("%%thanosql\nSELECT 1;\n"
                     "PREDICT USING no_such_model_xyz OPTIONS (image_col='p') AS SELECT 'x' AS p")
    text = res.error_text
    assert 'model "no_such_model_xyz" does not exist' in text and "SQLSTATE: 42704" in text
    assert "LINE" not in text and "STATEMENT:  PREDICT USING no_such_model_xyz" in text


def test_unavailable_algorithm_is_a_clean_0A000(kernel: Kernel) -> None:
    unavailable = [a for a in registry.ALGORITHMS.values() if not a.available]
    if not unavailable:
        pytest.skip("every algorithm is implemented")
    algo = unavailable[0]
    res = kernel.run(f"%%thanosql\nBUILD MODEL m_unavail USING {algo.name} AS SELECT 1 AS x")
    text = res.error_text
    assert text.startswith(f"ERROR:  algorithm {algo.name} is not available") and "SQLSTATE: 0A000" in text


def test_build_streams_progress(kernel: Kernel, cluster: dict) -> None:
    if "image_classification" not in registry.FAMILIES:
        pytest.skip("image classification is not implemented yet")
    with psycopg.connect(cluster["server"], autocommit=True) as conn:
        rows = digits_data.per_class(digits_data.digits(cluster["files_dir"]), 8)
        digits_data.load_table(conn, "magic_digits", rows)
    res = kernel.ok(
        "%%thanosql\n"  # no SET: the magic asked for a notice every second, with its fields
        "BUILD MODEL magic_digits USING ConvNeXt_Tiny OPTIONS (image_col='path', label_col='label',\n"
        "  epochs=2, batch_size=8, input_size=32, pretrained=False, overwrite=True)\n"
        "AS SELECT path, label FROM magic_digits", timeout=600)
    assert "magic_digits" in (res.value or "")
    assert "training done" in res.stdout  # a notice without counters: printed as a line
    seconds = float(kernel.ok("print(_.seconds[0])").stdout)
    if seconds >= 3:  # progress NOTICEs come every second (not before): a fast GPU may send none
        # tqdm's bar on stderr, moved by the progress NOTICEs; it ends full.
        assert re.search(r"ConvNeXt_Tiny training: +\d+%\|", res.stderr), res.stderr
        assert "20/20 [" in res.stderr and "loss" in res.stderr  # 80 rows / 8 per step * 2 epochs
    kernel.ok("%%thanosql\nDROP MODEL magic_digits; DROP TABLE magic_digits")


def test_background_job_shows_a_bar_until_it_ends(kernel: Kernel, cluster: dict) -> None:
    with psycopg.connect(cluster["server"], autocommit=True) as conn:
        rows = digits_data.per_class(digits_data.digits(cluster["files_dir"]), 4)
        digits_data.load_table(conn, "magic_job_digits", rows)
    build = ("BUILD MODEL magic_job USING ConvNeXt_Tiny OPTIONS (image_col='path', label_col='label',\n"
             "  epochs=2, batch_size=8, input_size=32, pretrained=False, overwrite=True, background=True)\n"
             "AS SELECT path, label FROM magic_job_digits")
    res = kernel.ok("%%thanosql\n" + build, timeout=600)
    # the job's row when it ended, and a bar of its epochs that ends full
    assert "succeeded" in (res.value or ""), res.value
    assert re.search(r"job \d+: 100%\|", res.stderr) and "2.0/2 epochs" in res.stderr, res.stderr
    # asked not to wait: the submitted row, at once
    res = kernel.ok("%%thanosql --no-wait\n" + build, timeout=60)
    assert "queued" in (res.value or ""), res.value
    job_id = int(kernel.ok("print(_.job_id[0])").stdout)
    with psycopg.connect(cluster["server"], autocommit=True) as conn:
        assert conn.execute("SELECT thanosql.wait_job(%s)", (job_id,)).fetchone() == ("succeeded",)
    kernel.ok("%%thanosql\nDROP MODEL magic_job; DROP TABLE magic_job_digits")


def images(res: CellResult) -> list[bytes]:
    """The PNG images a cell displayed (display_data, as a notebook shows them inline)."""
    import base64

    return [base64.b64decode(m["content"]["data"]["image/png"]) for m in res.outputs
            if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]


def test_training_curve_and_confusion_heatmap_images(kernel: Kernel, cluster: dict) -> None:
    """A finished BUILD shows its training curve, an EVALUATE with report='confusion_matrix'
    its heatmap: PNG images beside the DataFrame."""
    if "image_classification" not in registry.FAMILIES:
        pytest.skip("image classification is not implemented yet")
    with psycopg.connect(cluster["server"], autocommit=True) as conn:
        rows = digits_data.per_class(digits_data.digits(cluster["files_dir"]), 4)
        digits_data.load_table(conn, "magic_cm_digits", rows)
    try:
        res = kernel.ok(
            "%%thanosql\nBUILD MODEL magic_cm USING ConvNeXt_Tiny\n"
            "OPTIONS (image_col='path', label_col='label', epochs=2, batch_size=8, input_size=32,\n"
            "         pretrained=False, overwrite=True)\n"
            "AS SELECT path, label FROM magic_cm_digits", timeout=600)
        (curve,) = images(res)
        assert curve.startswith(b"\x89PNG\r\n\x1a\n") and len(curve) > 2000
        res = kernel.ok("%%thanosql\nEVALUATE USING magic_cm OPTIONS (image_col='path', label_col='label',\n"
                        "  report='confusion_matrix') AS SELECT path, label FROM magic_cm_digits")
        (heatmap,) = images(res)
        assert heatmap.startswith(b"\x89PNG\r\n\x1a\n") and heatmap != curve
        out = kernel.ok("print(list(_.columns), int(_['count'].sum()))").stdout.split()
        assert out == ["['actual',", "'predicted',", "'count']", "40"]
        # other results draw nothing
        res = kernel.ok("%%thanosql\nEVALUATE USING magic_cm OPTIONS (image_col='path', label_col='label')\n"
                        "AS SELECT path, label FROM magic_cm_digits")
        assert images(res) == [] and "Accuracy" in (res.value or "")
    finally:
        kernel.ok("%%thanosql\nDROP MODEL IF EXISTS magic_cm; DROP TABLE IF EXISTS magic_cm_digits")


# --- pure functions -----------------------------------------------------------------
def test_progress_fields_round_trip_and_reject_bad_input() -> None:
    info = progress_text.ProgressInfo(
        label="ConvNeXt_Tiny training", phase="train", epoch=2, epochs=3, step=10, steps=50, loss=0.5,
        metric="accuracy", score=0.9, samples_per_second=41.5, speed="41.5 images/s", eta_seconds=61.0)
    back = progress_text.read(progress_text.detail(info))
    assert back == info and (back.done, back.total) == (60, 150)
    assert back.summary() == "loss 0.5000, accuracy 0.9000, 41.5 images/s, ETA 1m01s"
    done = progress_text.ProgressInfo(**{**progress_text.as_dict(info), "phase": "done", "epoch": 2})
    assert done.done == done.total == 150  # an early stop still ends the bar full
    # the prose is never read: any other DETAIL, or none, is an ordinary notice
    assert progress_text.read(None) is None and progress_text.read("epoch 2/3, step 10/50") is None
    good = progress_text.as_dict(info)
    for bad in ({**good, "step": "10"}, {**good, "loss": float("nan")}, {**good, "phase": "drop"},
                {**good, "epoch": True}, {k: v for k, v in good.items() if k != "steps"}, [], None):
        assert progress_text.from_dict(bad) is None, bad


def test_split_with_offsets() -> None:
    text = "-- SELECT 1\nSELECT 1; /* x */ SELECT ';' ;\n\nLIST MODEL"
    parts = split_with_offsets(text)
    assert [s for _, s in parts] == ["SELECT 1", "SELECT ';'", "LIST MODEL"]
    assert all(text[o : o + len(s)] == s for o, s in parts) and parts[0][0] == 12


def test_caret_lines() -> None:
    assert caret_lines("SELECT 1;\nSELECT\tnocol", 18) == ["LINE 2: SELECT nocol", "               ^"]


# --- thanosql_pg.connect --------------------------------------------------------------
def test_connect_runs_thanosql_and_plain_sql(server_dsn: str) -> None:
    with thanosql_pg.connect(server_dsn, autocommit=True) as conn:
        port = conn.execute("SELECT inet_server_port()").fetchone()[0]
        assert f":{port}/" in server_dsn  # straight to the server
        cur = conn.execute("LIST MODEL")
        assert [c.name for c in cur.description] == ["name", "class_name", "last_updated_utc"]
        with conn.cursor() as cur:
            cur.execute("DROP MODEL IF EXISTS no_such_model_xyz")
            assert cur.fetchone() == (None,)
        v = conn.execute("SELECT %s::vector", (np.array([1.0, 2.0]),)).fetchone()[0]
        assert isinstance(v, np.ndarray) and v.tolist() == [1.0, 2.0]
        with pytest.raises(ThanoSQLError) as e:
            conn.execute("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochz=3) AS SELECT 1")
        assert e.value.sqlstate == "22023"
        assert e.value.position == len("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (") + 1
        with conn.cursor(name="named") as cur, conn.transaction():
            cur.execute("LIST MODEL")
            assert isinstance(cur.fetchall(), list)


def test_connect_default_and_transactions(monkeypatch: pytest.MonkeyPatch, server_dsn: str) -> None:
    monkeypatch.setenv("THANOSQL_DSN", server_dsn)
    with thanosql_pg.connect() as conn:  # not autocommit: registering pgvector leaves no transaction open
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("LIST MODEL")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
