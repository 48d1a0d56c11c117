"""What every ML statement guarantees, end to end through the proxy on a real
(small) model: the query after AS runs once, input order and columns are
kept, the extended protocol works, statements nest, names cannot inject SQL."""

from __future__ import annotations

from collections.abc import Iterator

import digits  # tests/digits.py
import psycopg
import pytest
from psycopg import errors

BUILD = ("BUILD MODEL {name} USING ConvNeXt_Tiny OPTIONS (image_col='path', label_col='label', epochs=1, "
         "input_size=32, pretrained=False, batch_size=32) AS SELECT path, label FROM stmt_train")


@pytest.fixture(scope="module")
def model(cluster: dict) -> Iterator[str]:
    with psycopg.connect(cluster["proxy"], autocommit=True) as conn:
        train, test = digits.split(digits.digits(cluster["files_dir"]))
        digits.load_table(conn, "stmt_train", digits.per_class(train, 4))
        digits.load_table(conn, "stmt_test", test[:30])
        conn.execute("DROP MODEL IF EXISTS stmt_model")
        conn.execute(BUILD.format(name="stmt_model"))
        yield "stmt_model"
        conn.execute("DROP MODEL IF EXISTS stmt_model")


def test_predict_keeps_columns_and_order(db: psycopg.Connection, model: str) -> None:
    cur = db.execute(f"PREDICT USING {model} OPTIONS (image_col='path', batch_size=7)"
                     " AS SELECT label, id, path FROM stmt_test ORDER BY id DESC")
    assert [c.name for c in cur.description] == ["label", "id", "path", "predict_result"]
    rows = cur.fetchall()
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert len(rows) == 30
    assert all(r[3] in {str(d) for d in range(10)} for r in rows)


def test_query_after_as_runs_once(db: psycopg.Connection, model: str) -> None:
    db.execute("DROP SEQUENCE IF EXISTS stmt_seq; CREATE SEQUENCE stmt_seq")
    rows = db.execute(f"PREDICT USING {model} OPTIONS (image_col='path', batch_size=4)"
                      " AS SELECT nextval('stmt_seq') AS n, path FROM stmt_test").fetchall()
    assert db.execute("SELECT last_value FROM stmt_seq").fetchone()[0] == len(rows) == 30
    assert sorted(r[0] for r in rows) == list(range(1, 31))


def test_result_col_and_nesting(db: psycopg.Connection, model: str) -> None:
    rows = db.execute(
        "SELECT p.id, p.guess FROM (PREDICT USING " + model + " OPTIONS (image_col='path',"
        " result_col='guess') AS SELECT id, path FROM stmt_test) AS p WHERE p.id < 50 ORDER BY p.id"
    ).fetchall()
    assert [r[0] for r in rows] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]


def test_extended_protocol_with_parameters(db: psycopg.Connection, model: str) -> None:
    sql = (f"PREDICT USING {model} OPTIONS (image_col='path') AS SELECT id, path FROM stmt_test"
           " WHERE id < %s ORDER BY id")
    for prepare in (False, True, True):  # the third run uses the server-side prepared statement
        rows = db.execute(sql, (20,), prepare=prepare).fetchall()
        assert [r[0] for r in rows] == [0, 5, 10, 15]


def test_predict_into_table_name(db: psycopg.Connection, model: str) -> None:
    for limit in (5, 3):  # a second run replaces the table
        res = db.execute(f"PREDICT USING {model} OPTIONS (image_col='path', table_name='stmt_out')"
                         f" AS SELECT id, path FROM stmt_test ORDER BY id LIMIT {limit}").fetchall()
        assert res == [("stmt_out", limit)]
        saved = db.execute("SELECT count(*) FROM stmt_out WHERE predict_result IS NOT NULL").fetchone()
        assert saved == (limit,)


def test_evaluate_returns_metric_rows(db: psycopg.Connection, model: str) -> None:
    cur = db.execute(f"EVALUATE USING {model} OPTIONS (image_col='path', label_col='label')"
                     " AS SELECT path, label FROM stmt_test")
    assert [c.name for c in cur.description] == ["metric", "score"]
    metrics = dict(cur.fetchall())
    assert set(metrics) == {"Accuracy", "Precision", "Recall", "F1", "Rows"}
    assert metrics["Rows"] == 30 and 0.0 <= metrics["Accuracy"] <= 1.0


@pytest.mark.parametrize("hostile", [
    "x'; DROP TABLE stmt_test; --",
    "a$q$b$$c",
    "back\\slash'",
    "semi;colon */ /* --",
])
def test_hostile_names_and_values_cannot_inject(db: psycopg.Connection, model: str, hostile: str) -> None:
    quoted = '"' + hostile.replace('"', '""') + '"'
    literal = "'" + hostile.replace("'", "''") + "'"
    # As an option value: a (missing) column name, never SQL.
    with pytest.raises(errors.UndefinedColumn):
        db.execute(f"PREDICT USING {model} OPTIONS (image_col={literal}) AS SELECT path FROM stmt_test")
    # As a model name.
    with pytest.raises(errors.UndefinedObject):
        db.execute(f"PREDICT USING {quoted} OPTIONS (image_col='path') AS SELECT path FROM stmt_test")
    db.execute(f"DROP MODEL IF EXISTS {quoted}")
    # As a result column name: a real (odd) column name.
    cur = db.execute(f"PREDICT USING {model} OPTIONS (image_col='path', result_col={literal})"
                     " AS SELECT path FROM stmt_test LIMIT 1")
    assert cur.description[-1].name == hostile
    assert db.execute("SELECT count(*) FROM stmt_test").fetchone() == (30,)


def test_overwrite_false_is_an_error_and_true_replaces(db: psycopg.Connection, model: str) -> None:
    with pytest.raises(errors.DuplicateObject, match="already exists"):
        db.execute(BUILD.format(name=model))
    before = db.execute("SELECT version FROM thanosql.models WHERE name = %s", (model,)).fetchone()[0]
    db.execute(BUILD.format(name=model).replace("epochs=1", "epochs=1, overwrite=True"))
    after = db.execute("SELECT version FROM thanosql.models WHERE name = %s", (model,)).fetchone()[0]
    assert after == before + 1
    # The session's cached copy is refreshed, not stale: predictions still come back.
    assert db.execute(f"PREDICT USING {model} OPTIONS (image_col='path') AS SELECT path FROM stmt_test"
                      " LIMIT 2").fetchall()


def test_user_columns_cannot_shadow_the_rewrite(db: psycopg.Connection, model: str) -> None:
    rows = db.execute(f"PREDICT USING {model} OPTIONS (image_col='path') AS SELECT id AS q, -id AS __rn,"
                      " 1 AS rn, path FROM stmt_test ORDER BY id LIMIT 3").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(0, 0, 1), (5, -5, 1), (10, -10, 1)]
