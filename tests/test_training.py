"""Training you can watch and trust: validation_split,
early_stopping/patience, the per-epoch history (thanosql.training_info), class_weight,
and the thanosql.progress view seen from another session. Real PostgreSQL, the real
extension, every family's shared training loop (shared/training.py).

Image classification runs a tiny timm network (``test_convnext``, 0.2 M parameters,
~1 s an epoch on 160 digits) given as a model folder with config.json and random
weights: the algorithm is ConvNeXt_Tiny's, the network small enough for 30 epochs in
seconds. Speech uses the tests' tiny Wav2Vec2 checkpoint, SimCLR timm's ``test_resnet``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import digits
import psycopg
import pytest
import speech
from catalog_rows import drop_prefixed
from expect import fails

Conn = psycopg.Connection
PREFIX = "tr_" + uuid.uuid4().hex[:6]
TINY = {"image_col": "path", "label_col": "label", "batch_size": 32, "learning_rate": 0.005,
        "input_size": 32}


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


@pytest.fixture(scope="module")
def conn(server_dsn: str) -> Iterator[Conn]:
    """One backend for the module (torch imported once); its NOTICEs in ``conn.notices``."""
    with psycopg.connect(server_dsn, autocommit=True) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.notices = notices  # type: ignore[attr-defined]
        c.execute("SET thanosql.progress_interval = 1000")
        yield c
        drop_prefixed(c, PREFIX)


@pytest.fixture(scope="module")
def data(conn: Conn, files: Path) -> dict[str, str]:
    """20 digits of each class (200 rows) to train on, 5 of each to test on."""
    train, test = digits.tables(conn, files, name("d"), train_per_class=20, test_per_class=5)
    return {"train": train, "test": test, "query": f"SELECT path, label FROM {train} ORDER BY id"}


def build(conn: Conn, model: str, algo: str, opts: dict[str, Any], query: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM thanosql.build_model(%s, %s, %s, %s)",
                       [model, algo, json.dumps(opts), query])
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def history(conn: Conn, model: str) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM thanosql.training_info(%s)", [model])
    return [dict(zip([c.name for c in cur.description], r, strict=True)) for r in cur.fetchall()]


def model_exists(conn: Conn, model: str) -> bool:
    return bool(conn.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", [model]).fetchone()[0])



# --- early stopping on digits ------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped(conn: Conn, data: dict[str, str], tiny_net: str) -> dict[str, Any]:
    model = name("early")
    conn.notices.clear()  # type: ignore[attr-defined]
    start = time.monotonic()
    opts = {**TINY, "base_model": tiny_net, "epochs": 30, "validation_split": 0.2, "early_stopping": True,
            "patience": 3}
    built = build(conn, model, "ConvNeXt_Tiny", opts, data["query"])
    seconds = time.monotonic() - start
    return {"model": model, "built": built, "seconds": seconds, "notices": list(conn.notices)}  # type: ignore[attr-defined]


def test_early_stopping_keeps_the_best_epoch(conn: Conn, stopped: dict[str, Any],
                                             data: dict[str, str]) -> None:
    m = stopped["built"]["metrics"]
    rows = history(conn, stopped["model"])
    last = rows[-1]
    print(f"\ndigits, early stopping: {m['epochs_run']} of 30 epochs run in {stopped['seconds']:.1f} s;"
          f" stopped at epoch {last['epoch']} (validation accuracy {last['validation_metric']:.3f}),"
          f" kept epoch {m['kept_epoch']} (validation accuracy {m['validation_accuracy']:.3f})")
    assert m["stopped_early"] is True and m["epochs_run"] < 30
    # one history row per epoch run, 1-based
    assert [r["epoch"] for r in rows] == list(range(1, m["epochs_run"] + 1))
    for r in rows:
        assert r["metric"] == "accuracy" and r["seconds"] > 0 and r["samples_per_second"] > 0, r
        assert None not in (r["validation_metric"], r["validation_loss"], r["learning_rate"]), r
    # the kept epoch is the first best one; patience epochs without improvement followed it
    best = max(r["validation_metric"] for r in rows)
    first_best = next(r for r in rows if r["validation_metric"] == best)
    assert m["best_epoch"] == m["kept_epoch"] == first_best["epoch"]
    assert m["validation_accuracy"] == pytest.approx(best)
    assert m["epochs_run"] == m["kept_epoch"] + 3
    assert m["train_accuracy"] == pytest.approx(first_best["train_metric"])
    assert any(f"stopped early at epoch {m['epochs_run']}; kept epoch {m['kept_epoch']} (validation accuracy"
               in n for n in stopped["notices"]), stopped["notices"]
    assert any("validation: 40 of 200 rows held out" in n for n in stopped["notices"]), stopped["notices"]
    # the stored weights are the kept epoch's: its accuracy on the held-out rows, recomputed by
    # the split's rule (per label, ranked by md5(rn || 'split 0'); smallest (rank - 0.5) / count)
    held = f"""
        SELECT path, label FROM (
            SELECT path, label, rn, md5(rn::text || 'split 0') AS h,
                   (row_number() OVER (PARTITION BY label::text ORDER BY md5(rn::text || 'split 0'), rn)
                    - 0.5) / count(*) OVER (PARTITION BY label::text) AS k
            FROM (SELECT row_number() OVER () AS rn, path, label FROM ({data['query']}) AS q) AS n) AS r
        ORDER BY k, h, rn LIMIT 40"""
    assert conn.execute(f"SELECT count(DISTINCT label) FROM ({held}) AS v").fetchone()[0] == 10  # stratified
    scores = dict(conn.execute("SELECT * FROM thanosql.evaluate(%s, %s, %s)",
                               [stopped["model"], json.dumps({"image_col": "path"}), held]).fetchall())
    assert scores["Accuracy"] == pytest.approx(m["validation_accuracy"])
    # the history row's figures are those of the result row
    assert stopped["built"]["epochs"] == 30 and stopped["built"]["rows"] == 200


def test_fit_with_validation_records_its_own_history(conn: Conn, stopped: dict[str, Any],
                                                     data: dict[str, str]) -> None:
    model = name("fitted")
    opts = {"image_col": "path", "label_col": "label", "epochs": 2, "validation_split": 0.1}
    cur = conn.execute("SELECT * FROM thanosql.fit_model(%s, %s, %s, %s)",
                       [model, stopped["model"], json.dumps(opts), data["query"]])
    metrics = cur.fetchone()[-1]
    assert metrics["epochs_run"] == 2 and metrics["stopped_early"] is False
    assert "validation_accuracy" in metrics
    rows = history(conn, model)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["validation_metric"] is not None for r in rows)
    assert len(history(conn, stopped["model"])) == stopped["built"]["metrics"]["epochs_run"]  # untouched


def test_history_without_validation(conn: Conn, data: dict[str, str], tiny_net: str) -> None:
    """Today's behaviour by default: all epochs, the last one's weights, no validation figures."""
    model = name("plain")
    built = build(conn, model, "ConvNeXt_Tiny", {**TINY, "base_model": tiny_net, "epochs": 2},
                  f"SELECT path, label FROM {data['test']}")
    assert set(built["metrics"]) == {"train_loss", "train_accuracy", "images_per_second"}
    rows = history(conn, model)
    assert [(r["epoch"], r["metric"]) for r in rows] == [(1, "accuracy"), (2, "accuracy")]
    assert all(r["validation_loss"] is None and r["validation_metric"] is None for r in rows)
    assert rows[-1]["train_loss"] == pytest.approx(built["metrics"]["train_loss"])
    assert rows[-1]["learning_rate"] < rows[0]["learning_rate"]  # the cosine schedule, per epoch


# --- class weights ----------------------------------------------------------------------------
def test_class_weight_balanced(conn: Conn, data: dict[str, str], tiny_net: str) -> None:
    """An imbalanced set (20 zeros, 2 of every other digit): 'balanced' weighs the loss, so the
    same seeded run gives another loss than 'none'."""
    query = (f"SELECT path, label FROM {data['train']} WHERE label = 0 OR id IN"
             f" (SELECT min(id) FROM {data['train']} GROUP BY label UNION SELECT max(id) FROM {data['train']}"
             " GROUP BY label) ORDER BY id")
    losses = {}
    for weight in ("none", "balanced"):
        built = build(conn, name(f"cw_{weight}"), "ConvNeXt_Tiny",
                      {**TINY, "base_model": tiny_net, "epochs": 2, "class_weight": weight}, query)
        assert built["rows"] == 38
        losses[weight] = built["metrics"]["train_loss"]
    assert losses["none"] != pytest.approx(losses["balanced"])
    stored = conn.execute("SELECT options->>'class_weight' FROM thanosql.models WHERE name = %s",
                          [name("cw_balanced")]).fetchone()[0]
    assert stored == "balanced"


# --- progress from another session ----------------------------------------------------------------
def _progress(watcher: Conn, pid: int) -> list[tuple[Any, ...]]:
    return watcher.execute("SELECT statement, model, role, phase, epoch, epochs, step, steps, loss"
                           " FROM thanosql.progress WHERE pid = %s", [pid]).fetchall()


def _in_thread(server_dsn: str, sql: str, params: list[Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``sql`` on a new connection in a thread; the result dict gets its backend ``pid`` at once
    and its ``error`` (or None) at the end."""
    out: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        with psycopg.connect(server_dsn, autocommit=True) as c:
            out["pid"] = c.info.backend_pid
            ready.set()
            try:
                c.execute(sql, params)
                out["error"] = None
            except psycopg.Error as e:
                out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert ready.wait(30)
    return t, out


def test_progress_view_sees_a_running_build(server_dsn: str, conn: Conn, data: dict[str, str],
                                            tiny_net: str) -> None:
    model = name("watched")
    opts = {**TINY, "base_model": tiny_net, "epochs": 10, "validation_split": 0.2}
    t, out = _in_thread(server_dsn, "SELECT * FROM thanosql.build_model(%s, 'ConvNeXt_Tiny', %s, %s)",
                        [model, json.dumps(opts), data["query"]])
    seen: list[tuple[Any, ...]] = []
    with psycopg.connect(server_dsn, autocommit=True) as watcher:
        while t.is_alive():
            seen += _progress(watcher, out["pid"])
            time.sleep(0.1)
        t.join()
        assert out["error"] is None, out["error"]
        assert _progress(watcher, out["pid"]) == []  # gone when the statement ended
    assert seen and {s[:3] for s in seen} == {("BUILD", model, "root")}
    training = [s for s in seen if s[3] in ("train", "validate")]
    epochs = [s[4] for s in training]
    assert len(set(epochs)) >= 3 and epochs == sorted(epochs), epochs  # advancing
    assert all(s[5] == 10 and 1 <= s[4] <= 10 and 1 <= s[6] <= s[7] for s in training), training
    assert {s[3] for s in seen} <= {"preparing", "train", "validate", "saving"}, seen


def test_progress_view_after_a_cancel(server_dsn: str, conn: Conn, data: dict[str, str],
                                      tiny_net: str) -> None:
    model = name("cancelled")
    opts = {**TINY, "base_model": tiny_net, "epochs": 500}
    t, out = _in_thread(server_dsn, "SELECT * FROM thanosql.build_model(%s, 'ConvNeXt_Tiny', %s, %s)",
                        [model, json.dumps(opts), data["query"]])
    with psycopg.connect(server_dsn, autocommit=True) as watcher:
        deadline = time.monotonic() + 120
        while not any(s[3] == "train" for s in _progress(watcher, out["pid"])):
            assert t.is_alive() and time.monotonic() < deadline, out
            time.sleep(0.1)
        watcher.execute("SELECT pg_cancel_backend(%s)", [out["pid"]])
        t.join(60)
        assert isinstance(out["error"], psycopg.errors.QueryCanceled), out
        assert _progress(watcher, out["pid"]) == []
        assert not model_exists(watcher, model)


# --- the other families ------------------------------------------------------------------------------
@pytest.fixture
def sdir(files: Path) -> Iterator[Path]:
    with speech.scratch_dir(files, PREFIX) as d:
        yield d


def test_speech_validation_split(conn: Conn, files: Path, sdir: Path) -> None:
    ckpt = speech.write_checkpoint(sdir / "tiny_en")
    table = speech.load_table(conn, name("words"), speech.english_words(files, 8))
    model = name("speech")
    cur = conn.execute("SELECT * FROM thanosql.build_model(%s, 'Wav2Vec2En', %s, %s)", [model, json.dumps(
        {"audio_col": "audio_path", "text_col": "text", "base_model": ckpt, "epochs": 3, "batch_size": 8,
         "learning_rate": 0.003, "validation_split": 0.25, "early_stopping": True, "patience": 5}),
        f"SELECT audio_path, text FROM {table}"])
    metrics = cur.fetchone()[-1]
    assert {"validation_cer", "validation_loss", "train_cer", "best_epoch", "epochs_run"} <= set(metrics)
    rows = history(conn, model)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["metric"] == "cer" and None not in (r["validation_metric"], r["validation_loss"]), r
    assert 0 <= rows[-1]["validation_metric"] and metrics["epochs_run"] == 3


def test_simclr_validation_split(conn: Conn, data: dict[str, str]) -> None:
    model = name("simclr")
    cur = conn.execute("SELECT * FROM thanosql.build_model(%s, 'SimCLR', %s, %s)", [model, json.dumps(
        {"image_col": "path", "backbone": "test_resnet", "input_size": 32, "embedding_dim": 16, "epochs": 2,
         "batch_size": 16, "validation_split": 0.25}), f"SELECT path FROM {data['test']}"])
    metrics = cur.fetchone()[-1]
    assert {"train_loss", "contrastive_accuracy", "validation_loss", "best_epoch",
            "validation_view_precision_at_1"} <= set(metrics)
    rows = history(conn, model)
    # without labels, each epoch is scored by how often a random view of a held-out image finds
    # that image (tests/test_retrieval_tracking.py); the NT-Xent loss is the validation loss
    assert [(r["epoch"], r["metric"]) for r in rows] == [(1, "view_precision_at_1"),
                                                         (2, "view_precision_at_1")]
    for r in rows:
        assert 0 <= r["validation_metric"] <= 1 and r["validation_loss"] > 0
        assert r["train_metric"] is None and r["train_loss"] > 0


def test_simclr_without_validation_scores_the_loss(conn: Conn, data: dict[str, str]) -> None:
    """No validation part: the epochs' metric is the NT-Xent loss itself."""
    model = name("simclr_loss")
    conn.execute("SELECT * FROM thanosql.build_model(%s, 'SimCLR', %s, %s)", [model, json.dumps(
        {"image_col": "path", "backbone": "test_resnet", "input_size": 32, "embedding_dim": 16, "epochs": 1,
         "batch_size": 16}), f"SELECT path FROM {data['test']}"])
    rows = history(conn, model)
    assert [(r["epoch"], r["metric"]) for r in rows] == [(1, "contrastive_loss")]
    assert rows[0]["train_metric"] == pytest.approx(rows[0]["train_loss"])


# --- bad values ----------------------------------------------------------------------------------
def test_bad_training_options(conn: Conn, data: dict[str, str]) -> None:
    q = f"AS SELECT path, label FROM {data['test']}"
    head = f"BUILD MODEL {name('bad')} USING ConvNeXt_Tiny OPTIONS (image_col='path', epochs=1,"

    def native(sql: str) -> Any:  # ThanoSQL, rewritten by the server's own preprocessor
        return conn.execute("SELECT * FROM thanosql.execute(%s)", [sql]).fetchall()

    fails(lambda: native(f"{head} validation_split=0.9) {q}"), "22023", "validation_split", "0.5")
    fails(lambda: native(f"{head} validation_split=-0.1) {q}"), "22023", "validation_split")
    fails(lambda: native(f"{head} validation_split=0.1, early_stopping=True, patience=0) {q}"), "22023",
          "patience")
    fails(lambda: native(f"{head} early_stopping=True) {q}"), "22023", "early_stopping", "validation_split")
    fails(lambda: native(f"{head} class_weight='inverse') {q}"), "22023", "class_weight", "balanced")
    # straight to the server (no preprocessor): the same checks
    fails(lambda: build(conn, name("bad"), "ConvNeXt_Tiny", {**TINY, "validation_split": 0.9}, q[3:]),
          "22023", "validation_split")
    fails(lambda: build(conn, name("bad"), "SimCLR", {"image_col": "path", "early_stopping": True,
                                                      "validation_split": 0}, q[3:]),
          "22023", "early_stopping", "validation_split")
    # one usable row cannot be split
    fails(lambda: build(conn, name("bad"), "SimCLR", {"image_col": "path", "validation_split": 0.5},
                        f"SELECT path FROM {data['test']} LIMIT 1"), "22000", "validation")
    assert not model_exists(conn, name("bad"))
