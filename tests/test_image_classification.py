"""Image classification (ConvNeXt / EfficientNetV2) end to end: real PostgreSQL,
real extension, real timm models on CPU.

Data: scikit-learn's handwritten digits as 8x8 PNG files the server reads
(tests/digits.py), and the same images as bytea. Most tests call the SQL
functions straight on the server (``thanosql.build_model`` ...); the main flow
also runs in native ThanoSQL syntax through the proxy.

Slow tests (marked ``slow``) train on all 1,437 training digits; the rest use
a few images per class, one epoch and input_size 32.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import digits
import numpy as np
import psycopg
import pytest
from catalog_rows import add_model
from PIL import Image

from thanosql_pg import progress_text

Conn = psycopg.Connection
PREFIX = "ic_" + uuid.uuid4().hex[:6]
SMALL = {"image_col": "path", "label_col": "label", "epochs": 1, "input_size": 32, "pretrained": False}


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(conn: Conn, files: Path) -> dict[str, str]:
    """Tables: full train/test splits, and small balanced ones."""
    train, test = digits.tables(conn, files, f"{PREFIX}_d")
    small, small_test = digits.tables(conn, files, f"{PREFIX}_s", train_per_class=6, test_per_class=2)
    yield {"train": train, "test": test, "small": small, "small_test": small_test}
    for t in (train, test, small, small_test):
        conn.execute(f"DROP TABLE IF EXISTS {t}")


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def build(conn: Conn, model: str, algo: str, opts: dict[str, Any], query: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM thanosql.build_model(%s, %s, %s, %s)",
                       [model, algo, json.dumps(opts), query])
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def fit(conn: Conn, model: str, base: str, opts: dict[str, Any], query: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM thanosql.fit_model(%s, %s, %s, %s)",
                       [model, base, json.dumps(opts), query])
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def evaluate(conn: Conn, model: str, opts: dict[str, Any], query: str) -> dict[str, float]:
    return dict(conn.execute("SELECT * FROM thanosql.evaluate(%s, %s, %s)", [model, json.dumps(opts), query]))


def predict_sql(model: str, opts: dict[str, Any], query: str) -> str:
    """The PREDICT shape of docs/ARCHITECTURE.md (what the preprocessor emits)."""
    lit = psycopg.sql.Literal
    batch = int(opts.get("batch_size", 16))
    result = opts.get("result_col", "predict_result").replace('"', '""')
    cfg = psycopg.sql.SQL("{}").format(lit(json.dumps(opts))).as_string(None)
    mname = psycopg.sql.SQL("{}").format(lit(model)).as_string(None)
    return f"""
WITH __thanosql_cfg AS MATERIALIZED (
  SELECT thanosql.prepare('predict', {mname}, {cfg}::jsonb) AS c
), __thanosql_in AS MATERIALIZED (
  SELECT q, row_number() OVER () AS __rn FROM ({query}) AS q
)
SELECT (i.q).*, r.res AS "{result}"
FROM __thanosql_in AS i
JOIN (
  SELECT unnest(g.rns) AS __rn,
         unnest(thanosql.predict_batch((SELECT c FROM __thanosql_cfg), g.vals)) AS res
  FROM (SELECT array_agg(__rn ORDER BY __rn) AS rns,
               array_agg(to_jsonb(q) -> (SELECT c->>'input_col' FROM __thanosql_cfg) ORDER BY __rn) AS vals
        FROM __thanosql_in GROUP BY (__rn - 1) / {batch}) AS g
) AS r USING (__rn)
ORDER BY __rn"""


def predict(conn: Conn, model: str, opts: dict[str, Any], query: str) -> list[tuple[Any, ...]]:
    return conn.execute(predict_sql(model, opts, query)).fetchall()


def model_exists(conn: Conn, model: str) -> bool:
    return bool(conn.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", [model]).fetchone()[0])


def temp_tables(conn: Conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_\\_thanosql\\_rows%%'"
                        " AND relpersistence = 't' AND pg_table_is_visible(oid)").fetchone()[0]


def fails(conn: Conn, sqlstate: str, fn: Callable[[], Any]) -> psycopg.Error:
    """Run ``fn``; it must fail with ``sqlstate`` and leave no temporary table behind."""
    with pytest.raises(psycopg.Error) as ei:
        fn()
    assert ei.value.sqlstate == sqlstate, (ei.value.sqlstate, str(ei.value))
    assert temp_tables(conn) == 0
    return ei.value


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    os.chmod(path, 0o644)  # the server runs as another OS user
    return str(path)


# --- the main flow, in native ThanoSQL through the proxy -----------------------------------------
@pytest.fixture(scope="module")
def trained(proxy_dsn: str, data: dict[str, str]) -> dict[str, Any]:
    """ConvNeXt_Tiny from scratch on all training digits, built with BUILD MODEL
    through the proxy and evaluated on the held-out digits. The settings are
    the cheapest found that reach >= 90 % reliably on two CPU cores (about
    30 s): input_size 32, 2 epochs, batch 32, learning rate 2e-3 (94.4 %)."""
    model = name("main")
    with psycopg.connect(proxy_dsn, autocommit=True) as db:
        notices: list[str] = []
        fields: list[progress_text.ProgressInfo | None] = []
        db.add_notice_handler(lambda d: (notices.append(d.message_primary or ""),
                                         fields.append(progress_text.read(d.message_detail))))
        db.execute("SET thanosql.progress_interval = 2")
        db.execute("SET thanosql.progress_fields = on")  # what the notebook magic asks for
        start = time.monotonic()
        built = db.execute(f"""
            BUILD MODEL {model} USING ConvNeXt_Tiny
            OPTIONS (image_col='path', label_col='label', epochs=2, batch_size=32,
                     learning_rate=0.002, input_size=32, pretrained=False)
            AS SELECT path, label FROM {data['train']}""").fetchone()
        seconds = time.monotonic() - start
        metrics = dict(db.execute(f"""
            EVALUATE USING {model} OPTIONS (image_col='path', label_col='label')
            AS SELECT path, label FROM {data['test']}""").fetchall())
    return {"model": model, "built": built, "metrics": metrics, "seconds": seconds, "notices": notices,
            "fields": fields}


@pytest.mark.slow
def test_convnext_tiny_from_scratch_reaches_90_percent(trained: dict[str, Any], conn: Conn) -> None:
    m = trained["metrics"]
    print(f"\nConvNeXt_Tiny digits: BUILD {trained['seconds']:.1f} s, EVALUATE {m}")
    assert m["Accuracy"] >= 0.90
    assert set(m) == {"Accuracy", "Precision", "Recall", "F1", "Rows"}
    assert m["Rows"] == 360
    assert 0.85 <= m["F1"] <= 1.0
    rec = conn.execute("SELECT labels, label_type, options FROM thanosql.models WHERE name = %s",
                       [trained["model"]]).fetchone()
    assert rec[0] == [str(i) for i in range(10)]
    assert rec[1] == "integer"
    assert rec[2]["arch"] == "convnext_tiny" and rec[2]["input_size"] == 32
    history = conn.execute("SELECT h.statement, h.rows, h.metrics FROM thanosql.model_metrics h"
                           " JOIN thanosql.models m ON m.id = h.model_id WHERE m.name = %s ORDER BY h.at",
                           [trained["model"]]).fetchall()
    assert [h[0] for h in history] == ["BUILD", "EVALUATE"]
    assert history[0][1] == 1437 and "train_loss" in history[0][2]
    assert history[1][2]["Accuracy"] == pytest.approx(m["Accuracy"])


@pytest.mark.slow
def test_progress_notices(trained: dict[str, Any]) -> None:
    progress = [n for n in trained["notices"] if "epoch" in n and "ETA" in n]
    assert progress, trained["notices"]
    for word in ("epoch", "step", "loss", "accuracy", "images/s", "ETA"):
        assert word in progress[0]
    # the same counters as data, in DETAIL, on progress notices only; the last one says 'done'
    with_fields = [(n, f) for n, f in zip(trained["notices"], trained["fields"], strict=True)
                   if f is not None]
    assert [n for n, _ in with_fields[:-1]] == progress
    for text, f in with_fields[:-1]:
        assert (f.phase, f.epochs, f.steps, f.metric) == ("train", 2, 45, "accuracy")  # 1437 rows / 32
        # a notice falls due on any step, the last one included (then done == total, before 'done')
        assert text.startswith(f"{f.label}: epoch {f.epoch}/2, step {f.step}/45") and 0 < f.done <= f.total
        assert f.loss is not None and f.loss > 0 and f.samples_per_second > 0
    last_text, last = with_fields[-1]
    assert last.phase == "done" and last.done == last.total == 90 and "done" in last_text


@pytest.mark.slow
def test_native_predict_forms(trained: dict[str, Any], proxy_dsn: str, data: dict[str, str]) -> None:
    model = trained["model"]
    with psycopg.connect(proxy_dsn, autocommit=True) as db:
        rows = db.execute(f"""
            PREDICT USING {model} OPTIONS (image_col='path', result_col='guess', batch_size=7)
            AS SELECT id, path, label FROM {data['test']} ORDER BY id DESC""").fetchall()
        assert len(rows) == 360
        assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)  # input order kept
        assert all(isinstance(r[3], str) for r in rows)  # PREDICT returns text labels
        assert sum(r[3] == str(r[2]) for r in rows) / len(rows) >= 0.9
        # nested in a plain SELECT: the PREDICT is a subquery like any other
        nested = db.execute(f"""
            SELECT p.label, count(*) FILTER (WHERE p.predict_result = p.label::text) AS right, count(*)
            FROM (PREDICT USING {model} OPTIONS (image_col='image')
                  AS SELECT image, label FROM {data['test']}) AS p
            GROUP BY p.label ORDER BY p.label""").fetchall()
        assert [r[0] for r in nested] == list(range(10))
        assert sum(r[1] for r in nested) / 360 >= 0.9  # bytea input gives the same quality
        saved = name("saved")
        db.execute(f"""
            PREDICT USING {model} OPTIONS (image_col='path', table_name='{saved}')
            AS SELECT id, path FROM {data['test']} WHERE id < 100""")
        got = db.execute(f"SELECT id, predict_result FROM {saved} ORDER BY id").fetchall()
        assert len(got) == 20 and all(g[1] in [str(i) for i in range(10)] for g in got)
        db.execute(f"DROP TABLE {saved}")


@pytest.mark.slow
def test_native_fit_keeps_accuracy(trained: dict[str, Any], proxy_dsn: str, data: dict[str, str]) -> None:
    model, fitted = trained["model"], name("fitted")
    before = trained["metrics"]["Accuracy"]
    with psycopg.connect(proxy_dsn, autocommit=True) as db:
        version = db.execute("SELECT version FROM thanosql.models WHERE name = %s", [model]).fetchone()[0]
        db.execute(f"""
            FIT MODEL {fitted} USING {model}
            OPTIONS (image_col='path', label_col='label', epochs=1, batch_size=32, learning_rate=0.0002)
            AS SELECT path, label FROM {data['train']} WHERE id % 2 = 0""")
        after = dict(db.execute(f"""
            EVALUATE USING {fitted} OPTIONS (image_col='path')
            AS SELECT path, label FROM {data['test']}""").fetchall())
        print(f"\nFIT: accuracy {before:.4f} -> {after['Accuracy']:.4f}")
        assert after["Accuracy"] >= max(0.9, before - 0.02)
        row = db.execute("SELECT version, labels, options->>'input_size' FROM thanosql.models"
                         " WHERE name = %s", [model]).fetchone()
        assert row[0] == version  # the base model is untouched
        new = db.execute("SELECT labels, options->>'input_size', options->>'weights' FROM thanosql.models"
                         " WHERE name = %s", [fitted]).fetchone()
        assert new[0] == row[1] and new[1] == "32" and model in new[2]


# --- every algorithm ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", [
    "ConvNeXt_Tiny",
    pytest.param("convnext_base", marks=pytest.mark.slow),  # names are case-insensitive
    "EFFICIENTNETV2S",
    pytest.param("EfficientNetV2M", marks=pytest.mark.slow),
])
def test_each_algorithm_builds_predicts_evaluates(conn: Conn, data: dict[str, str],
                                                  algo: str) -> None:
    model = name("algo_" + algo.lower())
    out = build(conn, model, algo, {**SMALL, "batch_size": 8}, f"SELECT path, label FROM {data['small']}")
    assert out["rows"] == 60 and out["epochs"] == 1
    rows = predict(conn, model, {"image_col": "path"}, f"SELECT id, path FROM {data['small_test']}")
    assert len(rows) == 20 and all(r[2] in [str(i) for i in range(10)] for r in rows)
    m = evaluate(conn, model, {"image_col": "image"}, f"SELECT image, label FROM {data['small_test']}")
    assert 0.0 <= m["Accuracy"] <= 1.0 and m["Rows"] == 20
    algorithm = conn.execute("SELECT algorithm, options->>'arch' FROM thanosql.models WHERE name = %s",
                             [model]).fetchone()
    from thanosql_pg.algorithms import registry

    canonical = registry.lookup(algo)
    assert algorithm == (canonical.name, canonical.params["timm_name"])
    conn.execute("SELECT thanosql.delete_model(%s)", [model])


def test_bytea_training_and_text_labels(conn: Conn, data: dict[str, str]) -> None:
    """bytea images in, a text label column: labels come back as that text, in text order."""
    model = name("bytea")
    query = (f"SELECT image, CASE WHEN label < 5 THEN 'low' ELSE 'high' END AS kind FROM {data['small']}")
    out = build(conn, model, "ConvNeXt_Tiny", {**SMALL, "image_col": "image", "label_col": "kind"}, query)
    assert out["rows"] == 60
    labels, label_type = conn.execute("SELECT labels, label_type FROM thanosql.models WHERE name = %s",
                                      [model]).fetchone()
    assert labels == ["high", "low"] and label_type == "text"
    rows = predict(conn, model, {"image_col": "image"}, f"SELECT id, image FROM {data['small_test']}")
    assert {r[2] for r in rows} <= {"high", "low"}


def test_numeric_labels_sort_numerically(conn: Conn, data: dict[str, str]) -> None:
    model = name("numeric")
    build(conn, model, "ConvNeXt_Tiny", SMALL,
          f"SELECT path, (label * 5)::numeric(4,1) AS label FROM {data['small']} WHERE label IN (1, 2, 9)")
    labels, label_type = conn.execute("SELECT labels, label_type FROM thanosql.models WHERE name = %s",
                                      [model]).fetchone()
    assert labels == ["5.0", "10.0", "45.0"] and label_type == "numeric(4,1)"


# --- weights: checkpoints and the local pretrained cache --------------------------------------------
def _payload(conn: Conn, model: str) -> bytes:
    rows = conn.execute("SELECT c.data FROM thanosql.model_chunks c"
                        " JOIN thanosql.models m ON m.id = c.model_id"
                        " WHERE m.name = %s ORDER BY c.seq", [model]).fetchall()
    return b"".join(bytes(r[0]) for r in rows)


@pytest.mark.slow
def test_checkpoint_file_as_base_model(conn: Conn, trained: dict[str, Any], data: dict[str, str],
                                       files: Path) -> None:
    """A checkpoint written by the test (a torch.save'd state dict) starts a new
    model: with a learning rate of ~0 the new model keeps its accuracy, while
    the same run from random weights is at chance."""
    import torch
    from safetensors.torch import load

    state = load(_payload(conn, trained["model"]))
    ckpt = files / f"{PREFIX}_ckpt.pth"
    torch.save({"state_dict": state}, ckpt)
    os.chmod(ckpt, 0o644)
    frozen = {**SMALL, "learning_rate": 1e-12, "batch_size": 16}
    test_q = f"SELECT path, label FROM {data['test']}"
    try:
        out = build(conn, name("from_ckpt"), "ConvNeXt_Tiny", {**frozen, "base_model": str(ckpt)},
                    f"SELECT path, label FROM {data['small']}")
        options = conn.execute("SELECT options FROM thanosql.models WHERE name = %s",
                               [name("from_ckpt")]).fetchone()[0]
        assert str(ckpt) in options["weights"] and out["rows"] == 60
        assert evaluate(conn, name("from_ckpt"), {"image_col": "path"}, test_q)["Accuracy"] >= 0.85
        build(conn, name("no_ckpt"), "ConvNeXt_Tiny", frozen, f"SELECT path, label FROM {data['small']}")
        assert evaluate(conn, name("no_ckpt"), {"image_col": "path"}, test_q)["Accuracy"] < 0.5
    finally:
        ckpt.unlink()


def test_pretrained_weights_from_local_directory(conn: Conn, data: dict[str, str],
                                                 files: Path) -> None:
    """pretrained=True (the default) finds weights in <thanosql.data_dir>/weights
    before trying the hub; the classifier head is replaced for the label set."""
    import timm
    from safetensors.torch import save_file

    weights = files / "weights"
    weights.mkdir(exist_ok=True)
    os.chmod(weights, 0o755)
    target = weights / "convnext_tiny.safetensors"
    assert not target.exists()
    save_file(timm.create_model("convnext_tiny", pretrained=False).state_dict(), target)  # 1000 classes
    os.chmod(target, 0o644)
    try:
        opts = {k: v for k, v in SMALL.items() if k != "pretrained"}
        build(conn, name("pretrained"), "ConvNeXt_Tiny", opts, f"SELECT path, label FROM {data['small']}")
        options = conn.execute("SELECT options FROM thanosql.models WHERE name = %s",
                               [name("pretrained")]).fetchone()[0]
        assert options["pretrained"] is True and str(target) in options["weights"]
    finally:
        target.unlink()


def test_pretrained_weights_unavailable(conn: Conn, data: dict[str, str]) -> None:
    """Weights that are neither local nor downloadable: 58000 with a hint, fast."""
    model = name("noweights")
    start = time.monotonic()
    err = fails(conn, "58000", lambda: build(conn, model, "EfficientNetV2S",
                                             {**SMALL, "base_model": "thanosql-tests/no-such-model"},
                                             f"SELECT path, label FROM {data['small']}"))
    assert "pretrained=False" in (err.diag.message_hint or "")
    assert time.monotonic() - start < 30
    assert not model_exists(conn, model)
    from thanosql_pg.algorithms.shared import weights

    if weights.hub_reachable(weights.hub_endpoint()):
        return  # plain pretrained=True would download the real weights here
    # the default pretrained=True without local weights: the hint says where to put them
    err = fails(conn, "58000", lambda: build(conn, model, "EfficientNetV2S",
                                             {k: v for k, v in SMALL.items() if k != "pretrained"},
                                             f"SELECT path, label FROM {data['small']}"))
    assert "tf_efficientnetv2_s" in str(err) and "weights/" in (err.diag.message_hint or "")
    assert time.monotonic() - start < 30


def test_checkpoint_errors(conn: Conn, data: dict[str, str], files: Path) -> None:
    q = f"SELECT path, label FROM {data['small']}"
    fails(conn, "58P01", lambda: build(conn, name("ck1"), "ConvNeXt_Tiny",
                                       {**SMALL, "base_model": "/nonexistent/ckpt.pth"}, q))
    junk = write_file(files / f"{PREFIX}_junk.pth", b"not a checkpoint")
    try:
        fails(conn, "22000", lambda: build(conn, name("ck2"), "ConvNeXt_Tiny",
                                           {**SMALL, "base_model": junk}, q))
    finally:
        os.unlink(junk)


# --- serving: cache invalidation -------------------------------------------------------------------
def test_session_cache_sees_overwrite(conn: Conn, server_dsn: str, data: dict[str, str]) -> None:
    """A session that cached a model predicts with the new one after another
    session overwrote it (the cache checks the catalog version per call)."""
    model = name("cache")
    q = f"SELECT path, label FROM {data['small']}"
    build(conn, model, "ConvNeXt_Tiny", SMALL, q + " WHERE label IN (0, 1)")
    test_q = f"SELECT id, path FROM {data['small_test']}"
    assert {r[2] for r in predict(conn, model, {"image_col": "path"}, test_q)} <= {"0", "1"}
    with psycopg.connect(server_dsn, autocommit=True) as other:
        build(other, model, "ConvNeXt_Tiny", {**SMALL, "overwrite": True}, q + " WHERE label IN (7, 8)")
    assert {r[2] for r in predict(conn, model, {"image_col": "path"}, test_q)} <= {"7", "8"}
    # FIT in place makes a third version; the metrics history keeps every statement's
    fit(conn, model, model, {"image_col": "path", "label_col": "label"}, q + " WHERE label IN (7, 8)")
    version, statements = conn.execute(
        "SELECT m.version, array_agg(h.statement || h.version ORDER BY h.at) FROM thanosql.models m"
        " JOIN thanosql.model_metrics h ON h.model_id = m.id WHERE m.name = %s GROUP BY m.version",
        [model]).fetchone()
    assert version == 3 and statements == ["BUILD1", "BUILD2", "FIT3"]
    kept = conn.execute("SELECT version, statement FROM thanosql.model_versions(%s)", [model]).fetchall()
    assert kept == [(3, "FIT"), (2, "BUILD"), (1, "BUILD")]


# --- bad input: clear errors, nothing half-written ----------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(files: Path) -> Iterator[dict[str, str]]:
    made = {"corrupt": write_file(files / f"{PREFIX}_corrupt.png", b"\x89PNG\r\n\x1a\n this is not an image")}
    yield made
    for p in made.values():
        os.unlink(p)


def test_missing_file(conn: Conn, data: dict[str, str]) -> None:
    model = name("missing")
    q = f"SELECT path, label FROM {data['small']} UNION ALL SELECT '/no/such/dir/x.png', 3"
    err = fails(conn, "58P01", lambda: build(conn, model, "ConvNeXt_Tiny", SMALL, q))
    assert "/no/such/dir/x.png" in str(err) and "row 61" in str(err)
    assert not model_exists(conn, model)


def test_missing_and_corrupt_files_in_predict_and_evaluate(conn: Conn, data: dict[str, str],
                                                           bad_files: dict[str, str]) -> None:
    model = name("victim")
    build(conn, model, "ConvNeXt_Tiny", SMALL, f"SELECT path, label FROM {data['small']}")
    err = fails(conn, "58P01", lambda: predict(conn, model, {"image_col": "path"},
                                               "SELECT 'relative/missing.png' AS path"))
    assert "relative/missing.png" in str(err)
    err = fails(conn, "22000", lambda: predict(conn, model, {"image_col": "path"},
                                               f"SELECT '{bad_files['corrupt']}' AS path"))
    assert "cannot decode image" in str(err) and bad_files["corrupt"] in str(err)
    fails(conn, "22000", lambda: evaluate(conn, model, {"image_col": "path"},
                                          f"SELECT '{bad_files['corrupt']}' AS path, 1 AS label"))
    fails(conn, "22004", lambda: predict(conn, model, {"image_col": "path"}, "SELECT NULL::text AS path"))


def test_corrupt_file(conn: Conn, data: dict[str, str], bad_files: dict[str, str]) -> None:
    model = name("corrupt")
    q = f"SELECT path, label FROM {data['small']} UNION ALL SELECT '{bad_files['corrupt']}', 3"
    err = fails(conn, "22000", lambda: build(conn, model, "ConvNeXt_Tiny", SMALL, q))
    assert bad_files["corrupt"] in str(err)
    assert not model_exists(conn, model)
    # corrupt bytea names its row
    q = f"SELECT image, label FROM {data['small']} UNION ALL SELECT '\\x0102'::bytea, 3"
    err = fails(conn, "22000", lambda: build(conn, model, "ConvNeXt_Tiny",
                                             {**SMALL, "image_col": "image"}, q))
    assert "row 61" in str(err)


def test_skip_unreadable_rows(conn: Conn, data: dict[str, str], bad_files: dict[str, str]) -> None:
    model = name("skip")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    q = (f"SELECT path, label FROM {data['small']} UNION ALL SELECT '{bad_files['corrupt']}', 3"
         " UNION ALL SELECT NULL, 4 UNION ALL SELECT '/no/such.png', 5")
    out = build(conn, model, "ConvNeXt_Tiny", {**SMALL, "on_error": "skip"}, q)
    assert out["rows"] == 63 and out["metrics"]["skipped_rows"] == 3
    assert any("skipped 3 unreadable rows" in n for n in notices)
    rows = predict(conn, model, {"image_col": "path", "on_error": "skip"},
                   f"SELECT * FROM (VALUES (1, '{bad_files['corrupt']}'), (2, NULL),"
                   f" (3, '{digits.digits(Path(bad_files['corrupt']).parent)[0]['path']}')) AS v(id, path)")
    assert [r[2] is None for r in rows] == [True, True, False]
    m = evaluate(conn, model, {"image_col": "path", "on_error": "skip"}, q)
    assert m["Skipped"] == 3 and m["Rows"] == 63


def test_null_path_and_null_label(conn: Conn, data: dict[str, str]) -> None:
    model = name("nulls")
    q = f"SELECT path, label FROM {data['small']}"
    err = fails(conn, "22004", lambda: build(conn, model, "ConvNeXt_Tiny", SMALL,
                                             q + " UNION ALL SELECT NULL, 1"))
    assert "row 61" in str(err) and '"path"' in str(err)
    err = fails(conn, "22004", lambda: build(conn, model, "ConvNeXt_Tiny", SMALL,
                                             q + " UNION ALL SELECT path, NULL FROM " + data["small"]))
    assert '"label"' in str(err)
    assert not model_exists(conn, model)


def test_column_that_does_not_exist(conn: Conn, data: dict[str, str]) -> None:
    model = name("nocol")
    q = f"SELECT * FROM {data['small']}"
    err = fails(conn, "42703", lambda: build(conn, model, "ConvNeXt_Tiny", {**SMALL, "image_col": "img"}, q))
    assert "img" in str(err) and "id, path, image, label" in (err.diag.message_detail or "")
    fails(conn, "42703", lambda: build(conn, model, "ConvNeXt_Tiny", {**SMALL, "label_col": "digit"}, q))
    assert not model_exists(conn, model)
    # column names match case-insensitively when unambiguous
    build(conn, model, "ConvNeXt_Tiny", {**SMALL, "image_col": "PATH", "label_col": "Label"}, q)
    fails(conn, "42703", lambda: predict(conn, model, {"image_col": "img"}, q))
    fails(conn, "42703", lambda: evaluate(conn, model, {"image_col": "path", "label_col": "digit"}, q))


def test_single_class_and_empty_query(conn: Conn, data: dict[str, str]) -> None:
    model = name("degenerate")
    err = fails(conn, "22023", lambda: build(conn, model, "ConvNeXt_Tiny", SMALL,
                                             f"SELECT path, label FROM {data['small']} WHERE label = 3"))
    assert "single class" in str(err)
    err = fails(conn, "22000", lambda: build(conn, model, "ConvNeXt_Tiny", SMALL,
                                             f"SELECT path, label FROM {data['small']} WHERE false"))
    assert "no rows" in str(err)
    assert not model_exists(conn, model)


def test_unknown_model_algorithm_and_family(conn: Conn, data: dict[str, str]) -> None:
    q = f"SELECT path, label FROM {data['small']}"
    fails(conn, "42704", lambda: predict(conn, name("nobody"), {"image_col": "path"}, q))
    fails(conn, "42704", lambda: evaluate(conn, name("nobody"), {"image_col": "path"}, q))
    fails(conn, "42704", lambda: fit(conn, name("x"), name("nobody"), {"image_col": "path"}, q))
    fails(conn, "42704", lambda: build(conn, name("x"), "ResNet9000", SMALL, q))
    # a model of another family (an image-embedding model) cannot PREDICT, and its EVALUATE
    # (retrieval precision: tests/test_evaluate_reports.py) has no per-class report
    other = name("embedding")
    add_model(conn, other, algorithm="SimCLR", family="image_embedding")
    err = fails(conn, "42809", lambda: predict(conn, other, {"image_col": "path"}, q))
    assert "SimCLR" in str(err)
    err = fails(conn, "22023", lambda: evaluate(conn, other, {"image_col": "path", "report": "per_class"}, q))
    assert 'option "report" must be one of summary' in str(err)


def test_cuda_without_a_gpu(conn: Conn, data: dict[str, str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    q = f"SELECT path, label FROM {data['small']}"
    err = fails(conn, "22023", lambda: build(conn, name("x"), "ConvNeXt_Tiny",
                                             {**SMALL, "device": "cuda"}, q))
    assert "cuda" in str(err)


def test_fit_with_unknown_labels(conn: Conn, data: dict[str, str]) -> None:
    base, target = name("fitbase"), name("fitnew")
    q = f"SELECT path, label FROM {data['small']}"
    build(conn, base, "ConvNeXt_Tiny", SMALL, q + " WHERE label IN (0, 1)")
    err = fails(conn, "22023", lambda: fit(conn, target, base, {"image_col": "path"}, q + " WHERE label < 4"))
    assert "2, 3" in str(err)
    assert not model_exists(conn, target)
    # a subset of the labels is fine, and the label set stays the base model's
    fit(conn, target, base, {"image_col": "path"}, q + " WHERE label = 1")
    labels = conn.execute("SELECT labels FROM thanosql.models WHERE name = %s", [target]).fetchone()[0]
    assert labels == ["0", "1"]


def test_non_superuser_reads_only_under_data_dir(conn: Conn, server_dsn: str,
                                                 data: dict[str, str]) -> None:
    role = PREFIX + "_user"
    conn.execute(f"CREATE ROLE {role}")
    conn.execute(f"GRANT SELECT ON {data['small']} TO {role}")
    try:
        with psycopg.connect(server_dsn, autocommit=True) as c:
            c.execute(f"SET ROLE {role}")
            q = f"SELECT path, label FROM {data['small']}"
            # paths under thanosql.data_dir are fine, relative ones resolve there
            relative = (f"SELECT 'digits8/' || split_part(path, '/digits8/', 2) AS path, label"
                        f" FROM {data['small']}")
            build(c, name("by_user"), "ConvNeXt_Tiny", SMALL, relative)
            err = fails(c, "42501", lambda: build(c, name("by_user2"), "ConvNeXt_Tiny", SMALL,
                                                  q + " UNION ALL SELECT '/etc/hostname', 1"))
            assert "/etc/hostname" in str(err)
            fails(c, "42501", lambda: build(c, name("by_user2"), "ConvNeXt_Tiny", SMALL,
                                            q + " UNION ALL SELECT 'digits8/../../../../etc/hostname', 1"))
            c.execute("SELECT thanosql.delete_model(%s)", [name("by_user")])
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


# --- transactions: rollback and cancel ----------------------------------------------------------
def test_rollback_leaves_no_model(server_dsn: str, data: dict[str, str]) -> None:
    model = name("rolled_back")
    with psycopg.connect(server_dsn) as c:  # not autocommit: an explicit transaction
        build(c, model, "ConvNeXt_Tiny", SMALL, f"SELECT path, label FROM {data['small']}")
        assert model_exists(c, model)
        c.rollback()
        assert not model_exists(c, model)


def test_statement_timeout_cancels_training(conn: Conn, data: dict[str, str]) -> None:
    model = name("timeout")
    conn.execute("SET statement_timeout = '3s'")
    start = time.monotonic()
    try:
        fails(conn, "57014", lambda: build(conn, model, "ConvNeXt_Tiny", {**SMALL, "epochs": 50},
                                           f"SELECT path, label FROM {data['train']}"))
    finally:
        conn.execute("RESET statement_timeout")
    assert time.monotonic() - start < 6  # stopped within a batch or so
    assert not model_exists(conn, model)


def test_pg_cancel_backend_stops_training(conn: Conn, server_dsn: str,
                                          data: dict[str, str]) -> None:
    model = name("cancelled")
    pid = conn.info.backend_pid
    errors: list[BaseException] = []

    def run() -> None:
        try:
            build(conn, model, "ConvNeXt_Tiny", {**SMALL, "epochs": 50},
                  f"SELECT path, label FROM {data['train']}")
        except psycopg.Error as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    with psycopg.connect(server_dsn, autocommit=True) as other:
        time.sleep(2)
        start = time.monotonic()
        other.execute("SELECT pg_cancel_backend(%s)", [pid])
        worker.join(30)
        took = time.monotonic() - start
        assert not worker.is_alive()
        assert errors and errors[0].sqlstate == "57014"
        assert took < 5, took
        assert not model_exists(other, model)


# --- images of every kind ------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_image_modes_become_rgb() -> None:
    from thanosql_pg.algorithms.shared.images import open_image

    base = Image.fromarray((np.arange(64, dtype=np.uint8).reshape(8, 8) * 4), mode="L")
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    samples = {
        "L png": _encode(base, "PNG"),
        "RGBA png": _encode(rgba, "PNG"),
        "P gif": _encode(base.convert("P"), "GIF"),
        "CMYK jpeg": _encode(base.convert("CMYK"), "JPEG"),
        "I;16 png": _encode(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000), "PNG"),
        "1 bmp": _encode(base.convert("1"), "BMP"),
        "webp": _encode(base.convert("RGB"), "WEBP"),
        "tiff": _encode(base, "TIFF"),
    }
    for what, blob in samples.items():
        img = open_image(blob)
        assert img.mode == "RGB" and img.size == (8, 8), what
    assert np.asarray(open_image(samples["RGBA png"])).min() == 255


def test_mixed_formats_predict(conn: Conn, trained_small: str, files: Path) -> None:
    src = Image.open(io.BytesIO(digits.digits(files)[0]["image"]))
    blobs = [_encode(src, "PNG"), _encode(src.convert("RGBA"), "PNG"), _encode(src.convert("P"), "GIF"),
             _encode(src.convert("RGB"), "JPEG")]
    rows = predict(conn, trained_small, {"image_col": "image"},
                   "SELECT * FROM unnest(%s::bytea[]) WITH ORDINALITY AS t(image, n)".replace(
                       "%s", "ARRAY[" + ",".join(f"'\\x{b.hex()}'::bytea" for b in blobs) + "]"))
    assert len(rows) == 4 and all(r[2] is not None for r in rows)


@pytest.fixture(scope="module")
def trained_small(conn: Conn, data: dict[str, str]) -> str:
    model = name("small")
    build(conn, model, "ConvNeXt_Tiny", SMALL, f"SELECT path, label FROM {data['small']}")
    return model


def test_metrics_match_scikit_learn() -> None:
    from collections import Counter

    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from thanosql_pg.algorithms.shared.metrics import classification_metrics

    rng = np.random.default_rng(0)
    truth = [str(v) for v in rng.integers(0, 5, 300)]
    pred = [t if rng.random() < 0.6 else str(rng.integers(0, 6)) for t in truth]
    ours = classification_metrics(Counter(zip(truth, pred, strict=True)))
    p, r, f, _ = precision_recall_fscore_support(truth, pred, average="macro", zero_division=0)
    assert ours["Accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert (ours["Precision"], ours["Recall"], ours["F1"]) == pytest.approx((p, r, f))
