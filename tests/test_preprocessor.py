"""The ThanoSQL preprocessor: pure text in, text out (no database).

Table-driven, pglast style: SQL -> expected rewrite, SQL -> expected error
(SQLSTATE and position). In the error tables a ``¶`` marks where the error
position must point; it is removed from the SQL before the test runs.
Every rewrite is checked with PostgreSQL's own grammar (pglast.parse_sql).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pglast import ast as pg_ast
from pglast import parser as pg

from thanosql_pg.algorithms import registry
from thanosql_pg.errors import ThanoSQLError
from thanosql_pg.preprocessor import ast, parse, rewrite, rewrite_for_wire, split_statements
from thanosql_pg.preprocessor.literals import dollar_quote, quote_ident, quote_literal

# --- helpers -----------------------------------------------------------------------

# The PREDICT shape exactly as docs/ARCHITECTURE.md gives it.
ARCH_PREDICT = """\
WITH __thanosql_cfg AS MATERIALIZED (
  SELECT thanosql.prepare('predict', 'm', '{opts}'::jsonb) AS c
), __thanosql_in AS MATERIALIZED (
  SELECT __thanosql_q, row_number() OVER () AS __thanosql_rn FROM (<query>) AS __thanosql_q
)
SELECT (i.__thanosql_q).*, r.res AS "<result_col>"
FROM __thanosql_in AS i
JOIN (
  SELECT unnest(g.rns) AS rn,
         unnest(thanosql.predict_batch((SELECT c FROM __thanosql_cfg), g.vals)) AS res
  FROM (SELECT array_agg(__thanosql_rn ORDER BY __thanosql_rn) AS rns,
               array_agg(<value> ORDER BY __thanosql_rn) AS vals
        FROM __thanosql_in GROUP BY (__thanosql_rn - 1) / <batch_size>) AS g
) AS r ON r.rn = i.__thanosql_rn
ORDER BY i.__thanosql_rn"""

LIST_SQL = "SELECT name, class_name, last_updated_utc FROM thanosql.list_models()"


def convert_sql(
    model: str, opts: str, query: str, result_col: str = "convert_result", batch: int = 256
) -> str:
    """CONVERT that returns its rows: the PREDICT shape with thanosql.convert_batch."""
    return (
        predict_sql(model, opts, query, result_col, batch, statement="convert")
        .replace("thanosql.prepare('predict'", "thanosql.prepare('convert'")
        .replace("thanosql.predict_batch(", "thanosql.convert_batch(")
    )


def search_sql(
    args: str, query: str, emb: str, result_col: str = '"search_result"', top_k: int | None = 1000
) -> str:
    """SEARCH IMAGE: the query embedding once (a CTE read by two InitPlans), ORDER BY the
    distance so that an HNSW index can serve it. ``args`` are embed_query's arguments."""
    sql = (
        f"WITH __thanosql_e AS MATERIALIZED (SELECT thanosql.embed_query({args}) AS v) "
        f"SELECT s.*, 1 - (s.{emb} <=> (SELECT v FROM __thanosql_e)) AS {result_col} "
        f"FROM ({query}) AS s ORDER BY s.{emb} <=> (SELECT v FROM __thanosql_e)"
    )
    return sql if top_k is None else f"{sql} LIMIT {top_k}"


# Only the input column reaches the model when the options name it; else the model's
# column is found at run time (options that could belong to models of several families).
STATIC_VALUE = "COALESCE(to_jsonb((__thanosql_q).{col}), 'null'::jsonb)"
DYNAMIC_VALUE = "to_jsonb(__thanosql_q) -> (SELECT c->>'input_col' FROM __thanosql_cfg)"


def predict_sql(
    model: str, opts: str, query: str, result_col: str = "predict_result", batch: int = 16,
    statement: str = "predict",
) -> str:
    col = registry.input_column(statement, json.loads(opts))
    value = DYNAMIC_VALUE if col is None else STATIC_VALUE.format(col=quote_ident(col))
    return (
        ARCH_PREDICT.replace("<value>", value).replace("'m'", quote_literal(model))
        .replace("'{opts}'", quote_literal(opts))
        .replace("<query>", query)
        .replace('"<result_col>"', quote_ident(result_col))
        .replace("<batch_size>", str(batch))
    )


def marked(sql: str) -> tuple[str, int | None]:
    """Strip the ``¶`` marker; return the SQL and the 1-based position it marked."""
    if "¶" not in sql:
        return sql, None
    return sql.replace("¶", "", 1), sql.index("¶") + 1


def walk(node: Any) -> Iterator[pg_ast.Node]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from walk(item)
    elif isinstance(node, pg_ast.Node):
        yield node
        for name in node.__slots__:
            yield from walk(getattr(node, name))


def value_of(node: Any) -> Any:
    """A constant argument's Python value (through casts)."""
    if isinstance(node, pg_ast.TypeCast):
        return value_of(node.arg)
    if isinstance(node, pg_ast.A_Const):
        if node.isnull:
            return None
        v = node.val
        for attr in ("sval", "boolval", "ival", "fval"):
            if hasattr(v, attr):
                return getattr(v, attr)
    return node


def calls(sql: str, name: str) -> list[list[Any]]:
    """The argument values of every call of thanosql.<name> in ``sql``."""
    out = []
    for node in walk(pg.parse_sql(sql)):
        if isinstance(node, pg_ast.FuncCall):
            parts = [s.sval for s in node.funcname]
            if parts == ["thanosql", name]:
                out.append([value_of(a) for a in node.args or ()])
    return out


def one_statement(sql: str) -> pg_ast.Node:
    stmts = pg.parse_sql(sql)
    assert len(stmts) == 1, sql
    return stmts[0].stmt


def string_literals_are_scs_safe(sql: str) -> bool:
    """Every string constant holding a backslash is E'' or dollar-quoted, so it means
    the same under standard_conforming_strings on and off."""
    for t in pg.scan(sql):
        if t.name == "SCONST":
            text = sql[t.start : t.end + 1]
            if "\\" in text and text[0] not in "eE$":
                return False
    return True


def check_output(source: str, out: str) -> None:
    """The rewrite parses, with as many statements as the source had."""
    assert len(pg.parse_sql(out)) == len(split_statements(source)), out
    assert string_literals_are_scs_safe(out), out


# --- the spec pages' examples, verbatim (%%thanosql lines removed) ---------------------

SEED_BUILD_CONVNEXT = """\
BUILD MODEL my_product_classifier
USING ConvNeXt_Tiny
OPTIONS (
  image_col='image_path',
  label_col='div_l',
  epochs=1,
  overwrite=True
  )
AS
SELECT *
FROM product_image_train"""

SEED_PREDICT_CONVNEXT = """\
PREDICT USING my_product_classifier
OPTIONS (
    image_col='image_path'
    )
AS
SELECT *
FROM product_image_test"""

SEED_BUILD_WAV2VEC = """\
BUILD MODEL my_speech_recognition_model
USING Wav2Vec2En
OPTIONS (
  audio_col='audio_path',
  text_col='text',
  max_epochs=1,
  batch_size=4 ,
  overwrite=True
  )
AS
SELECT *
FROM librispeech_train"""

SEED_PREDICT_WAV2VEC = """\
PREDICT USING my_speech_recognition_model
OPTIONS (
    audio_col='audio_path',
    result_col='predict_result',
    table_name='librispeech_test'
    )
AS
SELECT *
FROM librispeech_test"""

SEED_BUILD_SIMCLR = """\
BUILD MODEL my_image_search_model
USING SimCLR
OPTIONS (
image_col='image_path',
max_epochs=1,
overwrite=True
)
AS
SELECT *
FROM mnist_train"""

SEED_CONVERT_SIMCLR = """\
CONVERT USING my_image_search_model
OPTIONS (
image_col='image_path',
result_col='convert_result'
)
AS
SELECT *
FROM mnist_test"""

SEED_SEARCH_SIMCLR = """\
SEARCH IMAGE
USING my_image_search_model
OPTIONS (
search_by='image',
search_input='thanosql-dataset/mnist_data/test/923.jpg',
emb_col='convert_result',
result_col='search_result'
)
AS
SELECT *
FROM mnist_test"""

# The older Korean Wav2Vec2 page (trailing blanks as on the page; `epochs`, not `max_epochs`).
SEED_BUILD_WAV2VEC_KO = (
    "BUILD MODEL my_speech_recognition_model\n"
    "USING Wav2Vec2En\n"
    "OPTIONS (\n"
    "  audio_col='audio_path',  \n"
    "  text_col='text',  \n"
    "  epochs=1,  \n"
    "  batch_size=4 ,\n"
    "  overwrite=True \n"
    "  )\n"
    "AS\n"
    "SELECT *\n"
    "FROM librispeech_train"
)

SEED_PREDICT_WAV2VEC_KO = """\
PREDICT USING my_speech_recognition_model
OPTIONS (
  audio_col='audio_path'
  )
AS
SELECT *
FROM librispeech_test"""

_WAV2VEC_BUILD_OUT = (
    "SELECT * FROM thanosql.build_model('my_speech_recognition_model', 'Wav2Vec2En', "
    """'{"audio_col": "audio_path", "text_col": "text", "epochs": 1, "batch_size": 4, "overwrite": true}'"""
    "::jsonb, $q$SELECT *\nFROM librispeech_train$q$)"
)

REWRITES: list[tuple[str, str]] = [
    (
        SEED_BUILD_CONVNEXT,
        (
            "SELECT * FROM thanosql.build_model('my_product_classifier', 'ConvNeXt_Tiny', "
            """'{"image_col": "image_path", "label_col": "div_l", "epochs": 1, "overwrite": true}'::jsonb, """
            "$q$SELECT *\nFROM product_image_train$q$)"
        ),
    ),
    (
        SEED_PREDICT_CONVNEXT,
        predict_sql(
            "my_product_classifier", '{"image_col": "image_path"}', "SELECT *\nFROM product_image_test"
        ),
    ),
    (SEED_BUILD_WAV2VEC, _WAV2VEC_BUILD_OUT),
    (SEED_BUILD_WAV2VEC_KO, _WAV2VEC_BUILD_OUT),
    (
        SEED_PREDICT_WAV2VEC,
        "SELECT * FROM thanosql.save_table('librispeech_test', "
        + dollar_quote(
            predict_sql(
                "my_speech_recognition_model",
                '{"audio_col": "audio_path", "result_col": "predict_result"}',
                "SELECT *\nFROM librispeech_test",
            )
        )
        + ")",
    ),
    (
        SEED_PREDICT_WAV2VEC_KO,
        predict_sql(
            "my_speech_recognition_model", '{"audio_col": "audio_path"}', "SELECT *\nFROM librispeech_test"
        ),
    ),
    (
        SEED_BUILD_SIMCLR,
        (
            "SELECT * FROM thanosql.build_model('my_image_search_model', 'SimCLR', "
            """'{"image_col": "image_path", "epochs": 1, "overwrite": true}'::jsonb, """
            """$q$SELECT *\nFROM mnist_train$q$)"""
        ),
    ),
    (
        SEED_CONVERT_SIMCLR,
        (
            "SELECT * FROM thanosql.convert('my_image_search_model', "
            """'{"image_col": "image_path", "result_col": "convert_result"}'::jsonb, """
            "$q$SELECT *\nFROM mnist_test$q$, 'mnist_test')"
        ),
    ),
    (
        SEED_SEARCH_SIMCLR,
        search_sql(
            "'my_image_search_model', "
            """'{"search_by": "image", "search_input": "thanosql-dataset/mnist_data/test/923.jpg", """
            """"emb_col": "convert_result", "result_col": "search_result"}'::jsonb""",
            "SELECT *\nFROM mnist_test",
            '"convert_result"',
            '"search_result"',
        ),
    ),
    # --- the other statements
    (
        "FIT MODEL new_model USING base_model OPTIONS (image_col='p', max_epochs=2) AS SELECT * FROM t",
        (
            "SELECT * FROM thanosql.fit_model('new_model', 'base_model', "
            """'{"image_col": "p", "epochs": 2}'::jsonb, $q$SELECT * FROM t$q$)"""
        ),
    ),
    (
        "EVALUATE USING m OPTIONS (image_col='p', label_col='y') AS SELECT * FROM t",
        """SELECT * FROM thanosql.evaluate('m', '{"image_col": "p", """
        """"label_col": "y"}'::jsonb, $q$SELECT * FROM t$q$)""",
    ),
    (
        "EVALUATE USING m AS SELECT * FROM t",
        "SELECT * FROM thanosql.evaluate('m', '{}'::jsonb, $q$SELECT * FROM t$q$)",
    ),
    # EVALUATE's reports: each has its own columns, so its own function (registry.REPORTS)
    (
        "EVALUATE USING m OPTIONS (report='summary') AS SELECT * FROM t",
        """SELECT * FROM thanosql.evaluate('m', '{"report": "summary"}'::jsonb, $q$SELECT * FROM t$q$)""",
    ),
    (
        "EVALUATE USING m OPTIONS (image_col='p', label_col='y', report='per_class') AS SELECT * FROM t",
        """SELECT * FROM thanosql.evaluate_per_class('m', '{"image_col": "p", "label_col": "y", """
        """"report": "per_class"}'::jsonb, $q$SELECT * FROM t$q$)""",
    ),
    (
        "EVALUATE USING m OPTIONS ((REPORT = 'Confusion_Matrix')) AS SELECT * FROM t",
        """SELECT * FROM thanosql.evaluate_confusion_matrix('m', '{"report": "confusion_matrix"}'::jsonb, """
        "$q$SELECT * FROM t$q$)",
    ),
    (
        "EVALUATE USING m OPTIONS (audio_col='a', report='per_row') AS SELECT * FROM t",
        """SELECT * FROM thanosql.evaluate_per_row('m', '{"audio_col": "a", "report": "per_row"}'::jsonb, """
        "$q$SELECT * FROM t$q$)",
    ),
    (
        "SELECT * FROM (EVALUATE USING m OPTIONS (report='per_class') AS SELECT * FROM t) AS e"
        " WHERE class = '3'",
        """SELECT * FROM (SELECT * FROM thanosql.evaluate_per_class('m', '{"report": "per_class"}'::jsonb, """
        "$q$SELECT * FROM t$q$)) AS e WHERE class = '3'",
    ),
    (
        "EVALUATE USING m OPTIONS (image_col='p', label_col='y', top_k=10) AS SELECT * FROM t",
        """SELECT * FROM thanosql.evaluate('m', '{"image_col": "p", "label_col": "y", "top_k": 10}'::jsonb,"""
        " $q$SELECT * FROM t$q$)",
    ),
    (
        "CONVERT USING m AS SELECT a, b FROM t JOIN u USING (id)",
        convert_sql("m", "{}", "SELECT a, b FROM t JOIN u USING (id)"),
    ),
    (
        "CONVERT USING m OPTIONS (result_col='e', batch_size=8) AS SELECT * FROM t LIMIT 5",
        convert_sql("m", '{"result_col": "e", "batch_size": 8}', "SELECT * FROM t LIMIT 5", "e", 8),
    ),
    (
        "CONVERT USING m OPTIONS (table_name='out') AS SELECT a, b FROM t JOIN u USING (id)",
        """SELECT * FROM thanosql.convert('m', '{"table_name": "out"}'::jsonb, """
        "$q$SELECT a, b FROM t JOIN u USING (id)$q$, NULL)",
    ),
    (
        "CONVERT USING m OPTIONS (table_name='out', create_index=False) AS SELECT * FROM t WHERE a > 1",
        """SELECT * FROM thanosql.convert('m', '{"table_name": "out", "create_index": false}'::jsonb, """
        "$q$SELECT * FROM t WHERE a > 1$q$, 't')",
    ),
    ("PREDICT USING m AS SELECT 1", predict_sql("m", "{}", "SELECT 1")),
    (
        "PREDICT USING m OPTIONS (batch_size=4, result_col='Label', on_error='SKIP') AS SELECT * FROM t",
        predict_sql(
            "m", '{"batch_size": 4, "result_col": "Label", "on_error": "skip"}', "SELECT * FROM t", "Label", 4
        ),
    ),
    (
        (
            "SEARCH IMAGE USING m OPTIONS (search_input='q.jpg', emb_col='v', "
            "top_k=None, result_col='score') "
            "AS SELECT * FROM t"
        ),
        search_sql(
            """'m', '{"search_input": "q.jpg", "emb_col": "v", "top_k": null, "result_col": "score", """
            """"search_by": "image"}'::jsonb""",
            "SELECT * FROM t",
            '"v"',
            '"score"',
            None,
        ),
    ),
    (
        "SEARCH IMAGE USING m OPTIONS (search_input='q.jpg', emb_col=\"Emb\", top_k=5) AS SELECT * FROM t",
        search_sql(
            """'m', '{"search_input": "q.jpg", "emb_col": "Emb", "top_k": 5, "search_by": "image"}'::jsonb""",
            "SELECT * FROM t",
            '"Emb"',
            top_k=5,
        ),
    ),
    # --- search_input may be a parameter, bound by the client (a path or bytea)
    (
        "SEARCH IMAGE USING m OPTIONS (search_input=$1, emb_col='e', top_k=3) "
        "AS SELECT * FROM t WHERE c = $2",
        search_sql(
            """'m', '{"emb_col": "e", "top_k": 3, "search_by": "image"}'::jsonb, $1""",
            "SELECT * FROM t WHERE c = $2",
            '"e"',
            top_k=3,
        ),
    ),
    ("LIST MODEL", LIST_SQL),
    ("LIST MODELS", LIST_SQL),
    ("list models;", LIST_SQL + ";"),
    ("DELETE MODEL m", "SELECT thanosql.delete_model('m', false)"),
    ("DROP MODEL m", "SELECT thanosql.delete_model('m', false)"),
    ('drop model if exists "My Model"', "SELECT thanosql.delete_model('My Model', true)"),
    ("DESCRIBE MODEL MyModel", "SELECT * FROM thanosql.describe_model('mymodel')"),
    ('DESCRIBE MODEL "it\'s"', "SELECT * FROM thanosql.describe_model('it''s')"),
    ('DESCRIBE MODEL "a\\b"', "SELECT * FROM thanosql.describe_model(E'a\\\\b')"),
    ("describe model 모델", "SELECT * FROM thanosql.describe_model('모델')"),
    # --- keywords in any case, names folded unless quoted, algorithm resolved
    (
        "build model MyModel using convnext_tiny options (IMAGE_COL='p', Epochs=2) as select * from t",
        (
            "SELECT * FROM thanosql.build_model('mymodel', 'ConvNeXt_Tiny', "
            """'{"image_col": "p", "epochs": 2}'::jsonb, $q$select * from t$q$)"""
        ),
    ),
    (
        'Build Model "MyModel" Using "EFFICIENTNETV2S" As Select 1',
        """SELECT * FROM thanosql.build_model('MyModel', 'EfficientNetV2S', '{}'::jsonb, $q$Select 1$q$)""",
    ),
    (
        'FIT MODEL "New" USING "Old" AS SELECT 1',
        """SELECT * FROM thanosql.fit_model('New', 'Old', '{}'::jsonb, $q$SELECT 1$q$)""",
    ),
    # --- OPTIONS in both notations, mixed, aliases
    (
        "BUILD MODEL m USING ConvNeXt_Tiny OPTIONS ((image_col='p'), "
        "(label_col='y'), (max_epochs=1)) AS SELECT 1",
        (
            "SELECT * FROM thanosql.build_model('m', 'ConvNeXt_Tiny', "
            """'{"image_col": "p", "label_col": "y", "epochs": 1}'::jsonb, $q$SELECT 1$q$)"""
        ),
    ),
    (
        (
            "BUILD MODEL m USING ConvNeXt_Tiny OPTIONS ((image_col = 'p'), "
            "label_col = y, (learning_rate=1e-3)) "
            "AS SELECT 1"
        ),
        (
            "SELECT * FROM thanosql.build_model('m', 'ConvNeXt_Tiny', "
            """'{"image_col": "p", "label_col": "y", "learning_rate": 0.001}'::jsonb, $q$SELECT 1$q$)"""
        ),
    ),
    (
        (
            "BUILD MODEL m USING SimCLR OPTIONS (image_col=Path, learning_rate=1, pretrained=FALSE, "
            "base_model=None) AS SELECT 1"
        ),
        (
            "SELECT * FROM thanosql.build_model('m', 'SimCLR', "
            """'{"image_col": "path", "learning_rate": 1.0, "pretrained": """
            """false, "base_model": null}'::jsonb, """
            "$q$SELECT 1$q$)"
        ),
    ),
    ("PREDICT USING m OPTIONS () AS SELECT 1", predict_sql("m", "{}", "SELECT 1")),
    # --- comments everywhere; the query keeps its own, a trailing one stays outside
    (
        (
            "/* lead */ PREDICT /* c1 */ USING -- c2\n m OPTIONS (/* c3 */ "
            "image_col = 'p' -- c4\n) AS -- c5\n"
            "  SELECT * /* in query */ FROM t -- trailing\n;"
        ),
        "/* lead */ "
        + predict_sql("m", '{"image_col": "p"}', "SELECT * /* in query */ FROM t")
        + " -- trailing\n;",
    ),
    (
        "EVALUATE USING m AS SELECT 'a;b' AS \"x;\", $$;$$ -- ; PREDICT\n FROM t",
        (
            "SELECT * FROM thanosql.evaluate('m', '{}'::jsonb, "
            "$q$SELECT 'a;b' AS \"x;\", $$;$$ -- ; PREDICT\n FROM t$q$)"
        ),
    ),
    # --- several statements; plain SQL around kept byte for byte
    (
        "SELECT 1;\n-- next one\nLIST MODELS;  /* keep */ DELETE MODEL m "
        ";SELECT 'PREDICT USING m AS SELECT 1'",
        "SELECT 1;\n-- next one\n"
        + LIST_SQL
        + ";  /* keep */ SELECT thanosql.delete_model('m', false) ;SELECT 'PREDICT USING m AS SELECT 1'",
    ),
    (
        "  \n\tPREDICT USING m AS SELECT 1\n\n;\n\n  SELECT 2 ; ",
        "  \n\t" + predict_sql("m", "{}", "SELECT 1") + "\n\n;\n\n  SELECT 2 ; ",
    ),
    # --- nested: subquery, CTEs, inside another ML statement's query
    (
        "SELECT * FROM (PREDICT USING m OPTIONS (image_col='p') AS SELECT * FROM t) "
        "AS p WHERE p.predict_result = 'cat'",
        "SELECT * FROM ("
        + predict_sql("m", '{"image_col": "p"}', "SELECT * FROM t")
        + ") AS p WHERE p.predict_result = 'cat'",
    ),
    (
        "WITH x AS (PREDICT USING m AS SELECT * FROM t) SELECT * FROM x",
        "WITH x AS (" + predict_sql("m", "{}", "SELECT * FROM t") + ") SELECT * FROM x",
    ),
    (
        "WITH x AS MATERIALIZED ( evaluate using m as select 1 ), y AS (LIST MODELS) SELECT * FROM x, y",
        "WITH x AS MATERIALIZED ( SELECT * FROM thanosql.evaluate('m', '{}'::jsonb, $q$select 1$q$) ), "
        "y AS (" + LIST_SQL + ") SELECT * FROM x, y",
    ),
    (
        "SELECT * FROM t WHERE t.name IN (SELECT name FROM (LIST MODELS) AS l)",
        "SELECT * FROM t WHERE t.name IN (SELECT name FROM (" + LIST_SQL + ") AS l)",
    ),
    (
        "BUILD MODEL m2 USING ConvNeXt_Tiny AS SELECT * FROM (PREDICT USING m AS SELECT * FROM t) p",
        "SELECT * FROM thanosql.build_model('m2', 'ConvNeXt_Tiny', '{}'::jsonb, $q$SELECT * FROM ("
        + predict_sql("m", "{}", "SELECT * FROM t")
        + ") p$q$)",
    ),
    (
        (
            "PREDICT USING outer_m AS SELECT * FROM (PREDICT USING inner_m OPTIONS (result_col='r1') AS "
            "SELECT * FROM (SEARCH IMAGE USING s OPTIONS (search_input='x', "
            "emb_col='e') AS SELECT * FROM t) s) i"
        ),
        predict_sql(
            "outer_m",
            "{}",
            "SELECT * FROM ("
            + predict_sql(
                "inner_m",
                '{"result_col": "r1"}',
                "SELECT * FROM ("
                + search_sql(
                    """'s', '{"search_input": "x", "emb_col": "e", "search_by": "image"}'::jsonb""",
                    "SELECT * FROM t",
                    '"e"',
                )
                + ") s",
                "r1",
            )
            + ") i",
        ),
    ),
    (
        "SELECT count(*) FROM (PREDICT USING m OPTIONS (table_name='out') AS SELECT 1) AS x",
        "SELECT count(*) FROM (SELECT * FROM thanosql.save_table('out', "
        + dollar_quote(predict_sql("m", "{}", "SELECT 1"))
        + ")) AS x",
    ),
    # --- statement starts after comments of any kind, and in parentheses
    ("/*c*/LIST MODELS", "/*c*/" + LIST_SQL),
    ("--c\rLIST MODELS", "--c\r" + LIST_SQL),
    ("SELECT 1;LIST MODELS", "SELECT 1;" + LIST_SQL),
    ("(LIST MODELS)", "(" + LIST_SQL + ")"),
    (
        "SELECT * FROM (\n  -- the predictions\n  PREDICT USING m AS SELECT 1\n) AS p",
        "SELECT * FROM (\n  -- the predictions\n  " + predict_sql("m", "{}", "SELECT 1") + "\n) AS p",
    ),
    (
        "BUILD MODEL m2 USING SimCLR AS (PREDICT USING m AS SELECT 1)",
        "SELECT * FROM thanosql.build_model('m2', 'SimCLR', '{}'::jsonb, "
        + dollar_quote("(" + predict_sql("m", "{}", "SELECT 1") + ")")
        + ")",
    ),
    # --- the query may use $n parameters where it runs inline (PREDICT, SEARCH)
    (
        "PREDICT USING m AS SELECT * FROM t WHERE id = $1",
        predict_sql("m", "{}", "SELECT * FROM t WHERE id = $1"),
    ),
]


@pytest.mark.parametrize(("sql", "expected"), REWRITES)
def test_rewrite(sql: str, expected: str) -> None:
    out = rewrite(sql)
    assert out == expected
    check_output(sql, out)
    assert rewrite_for_wire(sql) == expected


# --- plain SQL passes through untouched (the same object) -------------------------------

PLAIN = [
    "",
    "   \n",
    "-- just a comment about a model",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "SELECT 1; SELECT 2",
    "-- PREDICT USING m AS SELECT 1\nSELECT 1",
    "/* BUILD MODEL x USING ConvNeXt_Tiny AS SELECT 1 */ SELECT 1",
    "/* nested /* PREDICT USING m AS SELECT 1 */ still a comment; LIST MODELS */ SELECT 1",
    "SELECT 'BUILD MODEL m USING ConvNeXt_Tiny AS SELECT 1'",
    "SELECT 'x'; SELECT ';PREDICT USING m AS SELECT 1'",
    "SELECT E'it\\'s; PREDICT USING m AS SELECT 1'",
    "SELECT $$PREDICT USING m AS SELECT 1$$",
    "SELECT $tag$ ; PREDICT USING m AS SELECT 1; $tag$",
    "SELECT ($$ (PREDICT USING m AS SELECT 1) $$)",
    'SELECT "PREDICT" FROM t',
    'SELECT 1; "LIST" MODELS',
    "SELECT model, list, fit, build, search, describe, evaluate, convert FROM models",
    "SELECT count(predict), max(build) FROM t",
    "SELECT (predict) FROM t",
    "SELECT (list) FROM t; SELECT (search).x FROM t",
    "DELETE FROM model WHERE id = 1",
    "DROP TABLE model",
    "CREATE TABLE t (list model, search image, build model)",
    "CREATE TABLE options (fit model)",
    "UPDATE t SET model = 'BUILD MODEL' WHERE describe = 1",
    "SELECT 'it''s a model' AS \"LIST MODELS\"",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$; SELECT 'predict'",
    "SELECT 'unterminated model",
    "SELECT 'x; LIST MODELS",
    "SELECT E'\\x00' AS model",
    # Not valid with standard_conforming_strings=on, but maybe with it off: the server decides.
    "SELECT 'it\\'s'; PREDICT USING m AS SELECT 1",
    # Dollar-quote tags are compared as PostgreSQL compares them, non-ASCII letters included
    # (an ASCII stand-in for "ä" would make $ä$ ... $x$ one quote and hide LIST MODELS).
    "SELECT $ä$ $x$; LIST MODELS; SELECT $x$ $ä$",
    "SELECT $é$ $ä$; PREDICT USING m AS SELECT 1; $é$",
    "SELECT 1 AS \"ä\"\"; LIST MODELS; --\"",
    "/* ä /* ; */ LIST MODELS; */ SELECT 1",
    "SELECT U&'\\00e4; LIST MODELS'",
    "SELECT 'a'\n'; LIST MODELS'",
]


@pytest.mark.parametrize("sql", PLAIN)
def test_plain_sql_is_untouched(sql: str) -> None:
    assert rewrite(sql) is sql
    assert rewrite_for_wire(sql) is None
    assert parse(sql) == []


# The session's standard_conforming_strings decides where '...' ends: SQL -> what a rewrite
# finds with it on, and with it off (None: plain SQL, left alone).
SCS: list[tuple[str, str | None, str | None]] = [
    ("SELECT 'it\\'s; LIST MODELS; --'", "SELECT 'it\\'s; " + LIST_SQL + "; --'", None),
    ("SELECT 'a\\\\'; LIST MODELS", "SELECT 'a\\\\'; " + LIST_SQL, "SELECT 'a\\\\'; " + LIST_SQL),
    ("SELECT E'\\''; LIST MODELS", "SELECT E'\\''; " + LIST_SQL, "SELECT E'\\''; " + LIST_SQL),
    ("SELECT '\\'; LIST MODELS; ' '", "SELECT '\\'; " + LIST_SQL + "; ' '", None),
    ("SELECT x$a$; LIST MODELS; $a$$a$", "SELECT x$a$; " + LIST_SQL + "; $a$$a$",
     "SELECT x$a$; " + LIST_SQL + "; $a$$a$"),  # x$a$ is a name, not a dollar quote
]


@pytest.mark.parametrize(("sql", "on", "off"), SCS)
def test_standard_conforming_strings(sql: str, on: str | None, off: str | None) -> None:
    for scs, expected in ((True, on), (False, off)):
        assert rewrite_for_wire(sql, standard_conforming_strings=scs) == expected
        assert rewrite(sql, standard_conforming_strings=scs) == (sql if expected is None else expected)


# --- errors: SQLSTATE and position ------------------------------------------------------

ERRORS: list[tuple[str, str]] = [
    # the statement grammar
    ("PREDICT ¶my_model OPTIONS (image_col='p') AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col='p') ¶SELECT * FROM t", "42601"),
    ("PREDICT USING m¶", "42601"),
    ("BUILD ¶my_model USING ConvNeXt_Tiny AS SELECT 1", "42601"),
    ("BUILD MODEL m ¶ConvNeXt_Tiny AS SELECT 1", "42601"),
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (image_col='p')¶", "42601"),
    ("FIT MODEL m ¶AS SELECT 1", "42601"),
    ("BUILD MODEL ¶select USING ConvNeXt_Tiny AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS ¶image_col='p' AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col ¶'p') AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col=¶) AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col='p',¶) AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col='p' ¶batch_size=2) AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS ((image_col='p'), (batch_size=2) ¶AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col=t¶.p) AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col=-¶'x') AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col=¶X'1F') AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col=¶$1) AS SELECT 1", "0A000"),
    ("SEARCH IMAGE USING m OPTIONS (search_input=$1, emb_col=¶$2) AS SELECT 1", "0A000"),
    ("SEARCH IMAGE USING m OPTIONS (search_input=-¶$1, emb_col='e') AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col='p'¶", "42601"),
    ("SEARCH ¶IMAGES USING m AS SELECT 1", "42601"),
    ("SEARCH ¶TEXT USING m OPTIONS (search_input='a', emb_col='e') AS SELECT 1", "0A000"),
    ("LIST ¶MODELZ", "42601"),
    ("LIST MODELS ¶now", "42601"),
    ("LIST¶", "42601"),
    ("DESCRIBE MODEL¶", "42601"),
    ("DESCRIBE MODEL ¶select", "42601"),
    ("DELETE MODEL a ¶b", "42601"),
    ("DROP MODEL IF EXISTS¶", "42601"),
    ("SELECT 1; DROP MODEL IF EXISTS m ¶CASCADE", "42601"),
    # the query after AS
    ("PREDICT USING m AS¶", "42601"),
    ("PREDICT USING m AS ¶;", "42601"),
    ("SELECT * FROM (PREDICT USING m AS ¶) AS p", "42601"),
    ("PREDICT USING m AS SELECT * FROM ¶WHERE", "42601"),
    ("PREDICT USING m AS SELECT * FROM t WHERE¶", "42601"),
    ("PREDICT USING m AS SELECT * FROM t WHERE¶ ; SELECT 1", "42601"),
    ("PREDICT USING m AS ¶INSERT INTO t VALUES (1)", "42601"),
    ("SELECT * FROM (PREDICT USING m AS SELECT 1¶; SELECT 2) AS p", "42601"),
    ("SELECT * FROM (PREDICT USING m AS SELECT 1¶", "42601"),
    ("PREDICT USING m AS SELECT ¶'abc", "42601"),
    ("LIST MODELS; SELECT ¶'x", "42601"),
    ("PREDICT USING m AS SELECT 1 ¶/* never closed", "42601"),
    ("PREDICT USING m AS SELECT * FROM (LIST MODELS) l WHERE x ¶WHERE", "42601"),
    ("WITH x AS (PREDICT USING m AS SELECT 1 FROM t WHERE¶) SELECT * FROM x", "42601"),
    (
        "BUILD MODEL m USING SimCLR AS SELECT * FROM (PREDICT USING n AS SELECT 1 FROM t WHERE ¶WHERE) p",
        "42601",
    ),
    # positions count characters, not UTF-8 bytes
    ("/* 한국어 주석 */ PREDICT USING m AS SELECT 한국어 FROM ¶WHERE", "42601"),
    ("-- 모델 예측\nPREDICT USING 모델 OPTIONS (image_col='경로') AS SELECT '값' FROM t WHERE (¶", "42601"),
    ("SELECT '한국어'; PREDICT USING m OPTIONS (¶이미지=1) AS SELECT 1", "22023"),
    ("SELECT '한국어' AS 이름; PREDICT USING m AS SELECT ¶/* 닫히지 않은 주석", "42601"),
    ("SELECT '😀😀'; PREDICT ¶모델 AS SELECT 1", "42601"),
    ("PREDICT USING m AS SELECT \"é\" FROM t WHERE é = 'ü' AND¶", "42601"),
    # options: unknown, wrong type, out of range, duplicate
    ("PREDICT USING m OPTIONS (¶foo=1) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (image_col='p', ¶\"Foo\"=1) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶image_col=1) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶batch_size='16') AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶batch_size=0) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶batch_size=1.5) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶batch_size=True) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (batch_size=2, ¶batch_size=3) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶result_col='') AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶table_name='') AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (image_col=¶1e999) AS SELECT 1", "22003"),
    ("PREDICT USING m OPTIONS (image_col=E'\\x00') AS SELECT 1", "22021"),
    ("PREDICT USING m OPTIONS (image_col=E'\\xff') AS SELECT 1", "22021"),
    ("PREDICT USING m OPTIONS (image_col=E'¶\\u0000') AS SELECT 1", "42601"),
    ("PREDICT USING m OPTIONS (image_col='a¶\x00') AS SELECT 1", "22021"),
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochs=1, ¶max_epochs=2) AS SELECT 1", "22023"),
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (¶audio_col='a') AS SELECT 1", "22023"),
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (¶overwrite='yes') AS SELECT 1", "22023"),
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (¶device='tpu') AS SELECT 1", "22023"),
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (¶learning_rate=-0.1) AS SELECT 1", "22023"),
    ("BUILD MODEL m USING ¶NoSuchAlgo AS SELECT 1", "42704"),
    ("FIT MODEL m USING base OPTIONS (¶emb_col='x') AS SELECT 1", "22023"),
    ("EVALUATE USING m OPTIONS (¶result_col='x') AS SELECT 1", "22023"),
    ("EVALUATE USING m OPTIONS (image_col='p', ¶report='retrieval') AS SELECT 1", "22023"),
    ("EVALUATE USING m OPTIONS (¶report=1) AS SELECT 1", "22023"),
    ("EVALUATE USING m OPTIONS (¶top_k=0) AS SELECT 1", "22023"),
    ("PREDICT USING m OPTIONS (¶report='per_class') AS SELECT 1", "22023"),
    ("CONVERT USING m OPTIONS (¶label_col='x') AS SELECT 1", "22023"),
    ("SEARCH IMAGE USING m ¶OPTIONS (search_input='a.jpg') AS SELECT 1", "22023"),
    ("¶SEARCH IMAGE USING m AS SELECT 1", "22023"),
    ("SEARCH IMAGE USING m OPTIONS (search_input='a', emb_col='e', ¶top_k=0) AS SELECT 1", "22023"),
    ("SEARCH IMAGE USING m OPTIONS (search_input='a', ¶emb_col='') AS SELECT 1", "22023"),
    ("SEARCH IMAGE USING m OPTIONS (¶search_by='smell', search_input='a', emb_col='e') AS SELECT 1", "22023"),
    # errors inside nested statements point into the whole text
    (
        "SELECT * FROM (PREDICT USING m AS SELECT * FROM (EVALUATE USING n "
        "OPTIONS (¶bogus=1) AS SELECT 1) e) p",
        "22023",
    ),
    ("WITH x AS (PREDICT USING m AS SELECT 한 FROM t WHERE¶) SELECT * FROM x", "42601"),
    # parameters cannot reach a query that runs later inside the server
    ("BUILD MODEL m USING ConvNeXt_Tiny AS SELECT * FROM t WHERE id = ¶$1", "0A000"),
    ("EVALUATE USING m AS SELECT * FROM t WHERE id = ¶$2", "0A000"),
    ("PREDICT USING m OPTIONS (table_name='out') AS SELECT * FROM t WHERE id = ¶$1", "0A000"),
    ("BUILD MODEL m USING SimCLR AS SELECT * FROM (PREDICT USING n AS SELECT ¶$1) p", "0A000"),
]


@pytest.mark.parametrize(("sql", "sqlstate"), ERRORS)
def test_error(sql: str, sqlstate: str) -> None:
    text, position = marked(sql)
    with pytest.raises(ThanoSQLError) as info:
        rewrite(text)
    err = info.value
    assert (err.sqlstate, err.position) == (sqlstate, position), err.message
    assert err.message
    # The wire variant turns the same error into one statement that raises it.
    replacement = rewrite_for_wire(text)
    assert replacement is not None
    assert calls(replacement, "raise_error") == [[sqlstate, err.message, err.detail, err.hint, position]]


def test_error_messages_name_the_problem() -> None:
    def message(sql: str) -> ThanoSQLError:
        with pytest.raises(ThanoSQLError) as info:
            rewrite(sql)
        return info.value

    err = message("PREDICT USING m OPTIONS (colour=1) AS SELECT 1")
    assert 'unknown option "colour"' in err.message
    assert err.hint is not None and "image_col" in err.hint and "batch_size" in err.hint
    err = message("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochs='many') AS SELECT 1")
    assert '"epochs"' in err.message and "int" in err.message
    err = message("PREDICT m AS SELECT 1")
    assert err.message == 'syntax error at or near "m"'
    assert err.hint is not None and "USING" in err.hint
    err = message("PREDICT USING m AS SELECT 한국어 FROM WHERE")
    assert err.message == 'syntax error at or near "WHERE"'
    err = message("PREDICT USING m AS SELECT 1 FROM 표 WHERE 열 = ㄱ ㄴ")
    assert err.message == 'syntax error at or near "ㄴ"'
    err = message("SEARCH IMAGE USING m OPTIONS (search_input='a') AS SELECT 1")
    assert 'option "emb_col" is required' in err.message
    err = message("BUILD MODEL m USING ResNet999 AS SELECT 1")
    assert err.message == 'unknown algorithm "ResNet999"'


# --- option values ------------------------------------------------------------------------

VALUES: list[tuple[str, Any]] = [
    ("'path'", "path"),
    ("'it''s'", "it's"),
    ("''", ""),
    ("E'a\\nb\\t\\\\'", "a\nb\t\\"),
    ("e'\\x41\\101\\u00e9\\U0001F600\\''", "AAé😀'"),
    ("E'\\xc3\\xa9\\303\\251\\ud83d\\ude00'", "éé😀"),
    ("$$x'y$$", "x'y"),
    ("$t$a$$b$t$", "a$$b"),
    ("'a'\n  'b'", "ab"),
    ("N'x'", "x"),
    ("'경로/사진.jpg'", "경로/사진.jpg"),
    ("1", 1),
    ("-1", -1),
    ("+2", 2),
    ("- 3", -3),
    ("1e-4", 1e-4),
    ("0.0001", 0.0001),
    ("-1.5", -1.5),
    (".5", 0.5),
    ("1_000", 1000),
    ("0x10", 16),
    ("99999999999", 99999999999),
    ("True", True),
    ("FALSE", False),
    ("tRuE", True),
    ("None", None),
    ("NULL", None),
    ('"Path"', "Path"),
    ('"a""b"', 'a"b'),
    ("path", "path"),
    ("Path", "path"),
    ("text", "text"),
    ("image", "image"),
]


@pytest.mark.parametrize(("written", "value"), VALUES)
def test_option_values(written: str, value: Any) -> None:
    # search_input takes any type, so every value reaches the statement as written.
    sql = f"SEARCH IMAGE USING m OPTIONS (emb_col='e', search_input={written}) AS SELECT 1"
    (stmt,) = parse(sql)
    assert isinstance(stmt, ast.SearchImage)
    got = stmt.normalized["search_input"]
    assert got == value and type(got) is type(value)
    out = rewrite(sql)
    check_output(sql, out)
    (args,) = calls(out, "embed_query")
    assert json.loads(args[1])["search_input"] == value


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("epochs=2", {"epochs": 2}),
        ("max_epochs=2", {"epochs": 2}),
        ("MAX_EPOCHS=2", {"epochs": 2}),
        ("(max_epochs=2), (batch_size=8)", {"epochs": 2, "batch_size": 8}),
        ("((max_epochs=2), batch_size=8)", {"epochs": 2, "batch_size": 8}),
        ("learning_rate=1", {"learning_rate": 1.0}),
        ("batch_size=8.0", {"batch_size": 8}),
        ("device=CUDA", {"device": "cuda"}),
    ],
)
def test_option_aliases_and_coercion(options: str, expected: dict[str, Any]) -> None:
    for algo in ("Wav2Vec2Ko", "SimCLR"):
        (stmt,) = parse(f"BUILD MODEL m USING {algo} OPTIONS ({options}) AS SELECT 1")
        assert isinstance(stmt, ast.BuildModel)
        assert stmt.normalized == expected
        assert all(type(stmt.normalized[k]) is type(v) for k, v in expected.items())


# --- the AST --------------------------------------------------------------------------------


def test_parse_returns_the_statements() -> None:
    sql = "SELECT 1; " + SEED_BUILD_CONVNEXT + ";\nSELECT * FROM (LIST MODELS) l"
    build, listing = parse(sql)
    assert isinstance(build, ast.BuildModel)
    assert (build.model, build.algorithm) == ("my_product_classifier", "ConvNeXt_Tiny")
    assert build.normalized == {
        "image_col": "image_path",
        "label_col": "div_l",
        "epochs": 1,
        "overwrite": True,
    }
    assert [(o.name, o.value) for o in build.options] == [
        ("image_col", "image_path"),
        ("label_col", "div_l"),
        ("epochs", 1),
        ("overwrite", True),
    ]
    assert sql[build.options[2].position - 1 :].startswith("epochs=1")
    assert sql[build.start : build.end] == SEED_BUILD_CONVNEXT
    assert build.position == build.start + 1 and not build.nested_in_parens
    assert build.query.text == "SELECT *\nFROM product_image_train"
    assert sql[build.query.start : build.query.end] == build.query.text
    assert isinstance(listing, ast.ListModels) and listing.nested_in_parens
    assert sql[listing.start : listing.end] == "LIST MODELS"


def test_parse_nested() -> None:
    sql = "PREDICT USING a AS SELECT * FROM (PREDICT USING b AS SELECT * FROM (DESCRIBE MODEL c) x) y"
    (outer,) = parse(sql)
    assert isinstance(outer, ast.Predict)
    (inner,) = outer.query.nested
    assert isinstance(inner, ast.Predict) and inner.model == "b" and inner.nested_in_parens
    (innermost,) = inner.query.nested
    assert isinstance(innermost, ast.DescribeModel) and innermost.model == "c"
    assert sql[innermost.start : innermost.end] == "DESCRIBE MODEL c"


def test_fit_keeps_both_names() -> None:
    (stmt,) = parse('FIT MODEL "New_Model" USING Old_Model OPTIONS (epochs=1) AS SELECT 1')
    assert isinstance(stmt, ast.FitModel)
    assert (stmt.model, stmt.base_model, stmt.normalized) == ("New_Model", "old_model", {"epochs": 1})


# --- CONVERT's source table -----------------------------------------------------------------

SOURCES: list[tuple[str, str | None]] = [
    ("SELECT * FROM mnist_test", "mnist_test"),
    ("SELECT image_path FROM public.mnist_test WHERE id < 10", "public.mnist_test"),
    ("SELECT * FROM Mnist_Test", "mnist_test"),
    ('SELECT * FROM "MyTable"', '"MyTable"'),
    ('SELECT * FROM "my schema"."t"', '"my schema".t'),
    ('SELECT * FROM "select"', '"select"'),
    ('SELECT * FROM "a""b"', '"a""b"'),
    ("SELECT * FROM 한국어표", '"한국어표"'),
    ("SELECT * FROM ONLY t AS x WHERE x.a IS NOT NULL ORDER BY a", "t"),
    ("TABLE t", "t"),
    ("SELECT * FROM a JOIN b USING (id)", None),
    ("SELECT * FROM a, b", None),
    ("SELECT DISTINCT * FROM t", None),
    ("SELECT * FROM t LIMIT 5", None),
    ("SELECT * FROM t OFFSET 1", None),
    ("SELECT c FROM t GROUP BY c", None),
    ("SELECT * FROM t UNION SELECT * FROM u", None),
    ("WITH w AS (SELECT 1) SELECT * FROM w", None),
    ("VALUES (1)", None),
    ("SELECT 1", None),
    ("SELECT * FROM (SELECT * FROM t) s", None),
    ("SELECT * FROM f()", None),
    ("SELECT * FROM (LIST MODELS) l", None),
]


@pytest.mark.parametrize(("query", "source"), SOURCES)
def test_convert_source_table(query: str, source: str | None) -> None:
    sql = f"CONVERT USING m AS {query}"
    (stmt,) = parse(sql)
    assert stmt.query.source_table == source  # type: ignore[attr-defined]
    out = rewrite(sql)
    check_output(sql, out)
    if source is None:  # the rows come back: the PREDICT shape, with convert_batch
        assert [a[0] for a in calls(out, "prepare")] == ["convert"]
        assert len(calls(out, "convert_batch")) == 1 and not calls(out, "convert")
        return
    (args,) = calls(out, "convert")
    assert args[3] == source
    if source is not None:  # the name, read back by PostgreSQL's parser, is the table
        target = one_statement(f"SELECT * FROM {source}")
        assert isinstance(target, pg_ast.SelectStmt)
        assert isinstance(target.fromClause[0], pg_ast.RangeVar)


# --- injection safety -----------------------------------------------------------------------

HOSTILE = [
    "'",
    "''",
    "\\",
    "\\'",
    "'; DROP TABLE t; --",
    "$$",
    "$q$",
    "$q",
    "q$",
    "$q1$ $q$ $q2$",
    "$q$ || pg_sleep(1) || $q$",
    "*/",
    "/*",
    "--",
    '"',
    '""; DROP TABLE t; --',
    "a\nb\r\tc",
    "\x01\x02\x1f\x7f",
    "\\x00",
    "\\u0000",
    "E'",
    "); SELECT 1; --",
    "🙂 한국어",
    "\u2028\u00a0",
]


def user_literal(value: str) -> str:
    """How a user writes ``value`` as a standard string constant."""
    return "'" + value.replace("'", "''") + "'"


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_literals(value: str) -> None:
    lit, ident = user_literal(value), quote_ident(value)

    sql = f"PREDICT USING {ident} OPTIONS (image_col={lit}, result_col={lit}) AS SELECT * FROM t"
    out = rewrite(sql)
    check_output(sql, out)
    one_statement(out)
    (args,) = calls(out, "prepare")
    assert args[:2] == ["predict", value]
    assert json.loads(args[2]) == {"image_col": value, "result_col": value}
    names = [n.name for n in walk(pg.parse_sql(out)) if isinstance(n, pg_ast.ResTarget)]
    assert value in names

    query = f"SELECT {lit} AS c, * FROM t WHERE c <> {lit}"
    sql = f"PREDICT USING m OPTIONS (table_name={lit}) AS {query}"
    out = rewrite(sql)
    check_output(sql, out)
    (args,) = calls(out, "save_table")
    assert args[0] == value
    inner = args[1]
    one_statement(inner)
    assert query in inner
    assert [a[1] for a in calls(inner, "prepare")] == ["m"]

    comment = value.replace("\n", " ").replace("\r", " ")
    query = f"SELECT {lit} AS c, $x${value}$x$ AS d FROM t -- {comment}\n"
    sql = f"BUILD MODEL {ident} USING ConvNeXt_Tiny OPTIONS (image_col={lit}, label_col={ident}) AS {query}"
    out = rewrite(sql)
    check_output(sql, out)
    (args,) = calls(out, "build_model")
    assert args[0] == value and args[1] == "ConvNeXt_Tiny"
    assert json.loads(args[2]) == {"image_col": value, "label_col": value}
    assert args[3] == query.rstrip("\n").rsplit(" -- ", 1)[0]  # trailing comment kept outside

    options = f"search_input={lit}, emb_col={lit}, result_col={ident}"
    sql = f"SEARCH IMAGE USING {ident} OPTIONS ({options}) AS TABLE t"
    out = rewrite(sql)
    check_output(sql, out)
    (args,) = calls(out, "embed_query")
    assert args[0] == value
    assert json.loads(args[1])["search_input"] == value
    nodes = list(walk(pg.parse_sql(out)))
    assert ("s", value) in [
        tuple(getattr(f, "sval", "*") for f in n.fields) for n in nodes if isinstance(n, pg_ast.ColumnRef)
    ]
    assert value in [n.name for n in nodes if isinstance(n, pg_ast.ResTarget)]

    sql = f"CONVERT USING {ident} AS SELECT * FROM {ident}"
    out = rewrite(sql)
    check_output(sql, out)
    (args,) = calls(out, "convert")
    assert args[0] == value
    target = one_statement(f"SELECT * FROM {args[3]}")
    assert isinstance(target, pg_ast.SelectStmt) and target.fromClause[0].relname == value

    for sql, fn in (
        (f"DESCRIBE MODEL {ident}", "describe_model"),
        (f"DROP MODEL IF EXISTS {ident}", "delete_model"),
    ):
        out = rewrite(sql)
        check_output(sql, out)
        assert calls(out, fn)[0][0] == value

    # An error message quoting the value is a literal too.
    out = rewrite_for_wire(f"PREDICT USING m OPTIONS ({ident}=1) AS SELECT 1", n_params=2)
    assert out is not None
    check_output("SELECT 1", out)
    ((sqlstate, message, _detail, _hint, position),) = calls(out, "raise_error")
    assert sqlstate == "22023" and value in message and position == 26


@pytest.mark.parametrize(
    ("body", "tag"),
    [("SELECT 1", "$q$"), ("SELECT '$q$'", "$q1$"), ("x $q", "$q1$"), ("$q$ $q1$", "$q2$"), ("a$", "$q$")],
)
def test_dollar_quote_tags(body: str, tag: str) -> None:
    quoted = dollar_quote(body)
    assert quoted == f"{tag}{body}{tag}"
    assert value_of(one_statement(f"SELECT {quoted}").targetList[0].val) == body


# --- the wire variant --------------------------------------------------------------------------

PGBENCH = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "BEGIN",
    "END",
]


@pytest.mark.parametrize("sql", PGBENCH)
def test_wire_fast_path(sql: str) -> None:
    assert rewrite_for_wire(sql, 2) is None
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(200):
            rewrite_for_wire(sql, 2)
        samples.append((time.perf_counter() - t0) / 200)
    assert statistics.median(samples) < 20e-6  # a few microseconds; generous for slow CI


def test_wire_error_takes_the_parameters() -> None:
    sql = "PREDICT USING m OPTIONS (colour='red') AS SELECT * FROM t WHERE a = $1 AND b = $2"
    out = rewrite_for_wire(sql, n_params=3)
    assert out is not None
    assert out.startswith(
        "SELECT thanosql.raise_error('22023', 'unknown option \"colour\" for PREDICT', NULL, "
    )
    assert out.endswith(", 26) FROM (SELECT $1::text, $2::text, $3::text) AS _p")
    check_output("SELECT 1", out)
    no_params = rewrite_for_wire(sql)
    assert no_params is not None and "_p" not in no_params and "$1" not in no_params


def test_wire_rewrite_keeps_parameters_of_inline_queries() -> None:
    out = rewrite_for_wire("PREDICT USING m AS SELECT * FROM t WHERE id = $1", n_params=1)
    assert out == predict_sql("m", "{}", "SELECT * FROM t WHERE id = $1")


def test_wire_internal_error_becomes_an_error_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    from thanosql_pg.preprocessor import rewriter

    def broken(sql: str, **settings: bool) -> list[ast.Statement]:
        raise RuntimeError("boom")

    monkeypatch.setattr(rewriter, "parse", broken)
    out = rewrite_for_wire("LIST MODELS", 1)
    assert out is not None
    ((sqlstate, message, _, _, position),) = calls(out, "raise_error")
    assert sqlstate == "XX000" and "boom" in message and position is None
    assert out.endswith(" FROM (SELECT $1::text) AS _p")


# --- splitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "parts"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1; SELECT ';' ; /* c */ ; -- d\n", ["SELECT 1", "SELECT ';'"]),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; LIST MODELS",
            ["CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", "LIST MODELS"],
        ),
        ("-- only a comment", []),
    ],
)
def test_split_statements(sql: str, parts: list[str]) -> None:
    assert split_statements(sql) == parts
