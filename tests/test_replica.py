"""Models on read replicas. `thanosql start --replica` runs a hot standby
streaming from the embedded cluster, with its own proxy; models arrive by WAL.
On the standby, LIST/DESCRIBE MODEL, PREDICT (inline and nested), SEARCH IMAGE
and CONVERT's inline form answer as on the primary; a model rebuilt on the
primary reaches the standby's sessions (their cache follows the catalog); BUILD
and FIT get PostgreSQL's read-only error (25006) with a hint."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import digits  # tests/digits.py
import psycopg
import pytest
from psycopg import errors
from replicas import caught_up

ROOT = Path(__file__).resolve().parent.parent
THANOSQL = [sys.executable, "-m", "thanosql_pg.cli"]
IMAGE = ("BUILD MODEL {name} USING ConvNeXt_Tiny OPTIONS (image_col='path', label_col='label', epochs=1,"
         " input_size=32, pretrained=False, batch_size=32{extra})"
         " AS SELECT path, label FROM rep_train{where}")
SIMCLR = ("BUILD MODEL rep_simclr USING SimCLR OPTIONS (image_col='path', epochs=1, batch_size=32,"
          " input_size=32, overwrite=True) AS SELECT path FROM rep_train")


@pytest.fixture(scope="module")
def models(replica: dict, cluster: dict) -> Iterator[dict]:
    with psycopg.connect(cluster["proxy"], autocommit=True) as p:
        train, test = digits.split(digits.digits(cluster["files_dir"]))
        digits.load_table(p, "rep_train", digits.per_class(train, 4))
        digits.load_table(p, "rep_test", test[:30])
        p.execute(IMAGE.format(name="rep_image", extra=", overwrite=True", where=" WHERE label IN (0, 1)"))
        p.execute(SIMCLR)
        p.execute("CONVERT USING rep_simclr OPTIONS (image_col='path', result_col='emb')"
                  " AS SELECT * FROM rep_train")
        yield {"image": "rep_image", "simclr": "rep_simclr"}
        p.execute("DROP MODEL IF EXISTS rep_image")
        p.execute("DROP MODEL IF EXISTS rep_simclr")


PREDICT = "PREDICT USING rep_image OPTIONS (image_col='path') AS SELECT id, path FROM rep_test ORDER BY id"
NESTED = ("SELECT p.id, p.predict_result FROM (PREDICT USING rep_image OPTIONS (image_col='path')"
          " AS SELECT id, path FROM rep_test) AS p WHERE p.id < 60 ORDER BY p.id")
SEARCH = ("SEARCH IMAGE USING rep_simclr OPTIONS (search_by='image', search_input=%s, emb_col='emb', top_k=5)"
          " AS SELECT id, emb FROM rep_train")
EVALUATE = ("EVALUATE USING rep_image OPTIONS (image_col='path', label_col='label'{report})"
            " AS SELECT path, label FROM rep_test")
CONVERT_INLINE = ("CONVERT USING rep_simclr OPTIONS (image_col='path') AS SELECT t.id, t.path FROM rep_test t"
                  " JOIN rep_test u USING (id) WHERE t.id < 40 ORDER BY t.id")


def answers(conn: psycopg.Connection, query_image: str) -> dict:
    return {
        "list": [r[0] for r in conn.execute("LIST MODEL").fetchall() if r[0].startswith("rep_")],
        "describe": conn.execute("SELECT name, algorithm, version FROM (DESCRIBE MODEL rep_image) d"
                                 ).fetchall(),
        "predict": [(r[0], r[2]) for r in conn.execute(PREDICT).fetchall()],
        "nested": conn.execute(NESTED).fetchall(),
        "search": [(r[0], round(r[2], 5)) for r in conn.execute(SEARCH, (query_image,)).fetchall()],
        "convert": [(r[0], [round(float(x), 5) for x in r[2].strip("[]").split(",")])
                    for r in conn.execute(CONVERT_INLINE).fetchall()],
        # no temporary table on a standby: EVALUATE reads its rows into memory there
        "evaluate": [(m, round(v, 6)) for m, v in conn.execute(EVALUATE.format(report="")).fetchall()],
        "confusion": conn.execute(EVALUATE.format(report=", report='confusion_matrix'")).fetchall(),
    }


def test_the_standby_answers_as_the_primary(replica: dict, models: dict, cluster: dict) -> None:
    with psycopg.connect(cluster["proxy"], autocommit=True) as p, \
         psycopg.connect(replica["replica_proxy"], autocommit=True) as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        caught_up(p, s)
        query_image = p.execute("SELECT path FROM rep_test ORDER BY id LIMIT 1").fetchone()[0]
        primary, standby = answers(p, query_image), answers(s, query_image)
        assert standby == primary
        assert len(standby["predict"]) == 30 and len(standby["search"]) == 5
        assert dict(standby["evaluate"])["Rows"] == 30 and sum(c for _, _, c in standby["confusion"]) == 30
        # EXPLAIN on the standby: the HNSW index drives the search there too
        from thanosql_pg.preprocessor import rewrite

        literal = psycopg.sql.Literal(query_image).as_string(s)
        s.execute("SET enable_seqscan = off")  # 40 rows: the planner would rather scan them all
        plan = "\n".join(r[0] for r in s.execute("EXPLAIN " + rewrite(SEARCH.replace("%s", literal))))
        assert "Index Scan" in plan


def test_writes_on_the_standby_are_refused_with_a_hint(replica: dict, models: dict) -> None:
    with psycopg.connect(replica["replica_proxy"], autocommit=True) as s:
        for statement in (IMAGE.format(name="rep_other", extra="", where=""),
                          "FIT MODEL rep_image USING rep_image OPTIONS (image_col='path', label_col='label')"
                          " AS SELECT path, label FROM rep_train",
                          "CONVERT USING rep_simclr OPTIONS (image_col='path', result_col='emb2')"
                          " AS SELECT * FROM rep_train",
                          "DELETE MODEL rep_image",
                          # a background job: refused at submission, before the query runs
                          "FIT MODEL rep_image USING rep_image OPTIONS (image_col='path', label_col='label',"
                          " background=True) AS SELECT path, label FROM rep_train",
                          "PREDICT USING rep_image OPTIONS (image_col='path', table_name='rep_p',"
                          " background=True) AS SELECT path FROM rep_train"):
            with pytest.raises(errors.ReadOnlySqlTransaction) as e:
                s.execute(statement)
            assert "primary" in (e.value.diag.message_hint or ""), statement


def test_a_model_rebuilt_on_the_primary_reaches_standby_sessions(replica: dict, models: dict,
                                                                  cluster: dict) -> None:
    with psycopg.connect(cluster["proxy"], autocommit=True) as p, \
         psycopg.connect(replica["replica_proxy"], autocommit=True) as s:
        caught_up(p, s)
        before = {r[2] for r in s.execute(PREDICT).fetchall()}  # this session caches the model
        assert before <= {"0", "1"}
        p.execute(IMAGE.format(name="rep_image", extra=", overwrite=True", where=" WHERE label IN (7, 8)"))
        caught_up(p, s)
        after = {r[2] for r in s.execute(PREDICT).fetchall()}
        assert after <= {"7", "8"}
