"""SimCLR, CONVERT and SEARCH IMAGE end to end: real PostgreSQL, real extension,
a real timm ResNet on CPU (the small one, shared.small_nets, that SimCLR picks for
small inputs), native ThanoSQL through the proxy.

Data: scikit-learn's handwritten digits (tests/digits.py): the 1,437 training
digits are the searched table, held-out digits are the queries. Retrieval
quality is precision@10: the share of the 10 nearest rows whose label is the
query's. The trained model must clearly beat the same backbone untrained: a
model built with the same options but a learning rate of 1e-9, whose weights
stay at their random initialisation while BatchNorm's statistics adapt to the
data as the trained model's do (a fair baseline: same network, same data,
same preprocessing, only the learning differs).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import digits
import numpy as np
import psycopg
import pytest
from catalog_rows import add_model
from expect import fails

from thanosql_pg import datasets

PREFIX = "sc_" + uuid.uuid4().hex[:6]
# Chosen on two busy CPU cores: about 20 s to build (the small ResNet at 16 pixels). An untrained
# small ResNet keeps every pixel, so its random features already rank about as raw pixels do
# (~0.5; chance is 0.1): 4 epochs are what it takes to be clearly better.
TRAIN_OPTS = {"image_col": "'path'", "epochs": 4, "batch_size": 64, "input_size": 16, "learning_rate": 0.001}
UNTRAINED_OPTS = {**TRAIN_OPTS, "epochs": 1, "learning_rate": 1e-9}
MARGIN = 0.1  # precision@10 the training must add at least

Conn = psycopg.Connection


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


@pytest.fixture(scope="module")
def data(conn: Conn, files: Path) -> dict[str, Any]:
    train, test = digits.tables(conn, files, name("d"))
    queries = digits.per_class(digits.split(digits.digits(files))[1], 8)  # 80 held-out digits
    return {"train": train, "test": test, "queries": queries}



def search(db: Conn, model: str, table: str, value: str | bytes, *, emb: str = "emb", top_k: int | None = 10,
           query: str | None = None) -> list[tuple[Any, ...]]:
    """SEARCH IMAGE; a path goes into the statement, bytes go as parameter $1."""
    k = "None" if top_k is None else str(top_k)
    q = query or f"SELECT id, label FROM {table}"
    if isinstance(value, bytes):
        sql, params = "search_input=%s", [value]
    else:
        sql, params = "search_input='" + value.replace("'", "''") + "'", []
    return db.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_by='image', {sql}, emb_col='{emb}',"
                      f" top_k={k}) AS {q}", params).fetchall()


def precision_at_10(db: Conn, model: str, data: dict[str, Any], emb: str, *, exact: bool) -> float:
    """Mean precision@10 of SEARCH IMAGE over the held-out queries (half by path, half as bytea).
    ``exact``: without the HNSW index, so that the models are compared, not the index's recall."""
    hits = []
    if exact:
        db.execute("SET enable_indexscan = off")
    try:
        for i, q in enumerate(data["queries"]):
            value = q["image"] if i % 2 else q["path"]
            rows = search(db, model, data["train"], value, emb=emb,
                          query=f"SELECT id, label, {emb} FROM {data['train']}")
            assert len(rows) == 10
            hits.append(sum(r[1] == q["label"] for r in rows) / 10)
    finally:
        db.execute("RESET enable_indexscan")
    return float(np.mean(hits))


# --- the main flow ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(px: Conn, data: dict[str, Any]) -> dict[str, Any]:
    """The trained model and its untrained reference, each CONVERTed into the training table."""
    notices: list[str] = []
    px.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    px.execute("SET thanosql.progress_interval = 2")
    out: dict[str, Any] = {"notices": notices}
    for key, opts in (("trained", TRAIN_OPTS), ("untrained", UNTRAINED_OPTS)):
        model = name(key)
        start = time.monotonic()
        options = ", ".join(f"{k}={v}" for k, v in opts.items())
        built = px.execute(f"BUILD MODEL {model} USING SimCLR OPTIONS ({options}) AS"
                           f" SELECT path FROM {data['train']}").fetchone()
        out[f"{key}_build_s"] = time.monotonic() - start
        start = time.monotonic()
        col = "emb" if key == "trained" else "emb_ref"
        converted = px.execute(f"CONVERT USING {model} OPTIONS (image_col='image', result_col='{col}')"
                               f" AS SELECT * FROM {data['train']}").fetchall()
        out[f"{key}_convert_s"] = time.monotonic() - start
        assert converted == [(data["train"], 1437)]
        out[key] = {"model": model, "built": built, "col": col}
    return out


def test_precision_at_10_beats_untrained(models: dict[str, Any], px: Conn, data: dict[str, Any]) -> None:
    start = time.monotonic()
    trained = precision_at_10(px, models["trained"]["model"], data, "emb", exact=True)
    untrained = precision_at_10(px, models["untrained"]["model"], data, "emb_ref", exact=True)
    took = time.monotonic() - start
    hnsw = precision_at_10(px, models["trained"]["model"], data, "emb", exact=False)
    print(f"\nSimCLR digits precision@10 (exact search): trained {trained:.3f}, untrained {untrained:.3f}"
          f" (chance 0.1); trained through the HNSW index {hnsw:.3f};"
          f" BUILD {models['trained_build_s']:.0f} s / {models['untrained_build_s']:.0f} s,"
          f" CONVERT {models['trained_convert_s']:.1f} s, {2 * len(data['queries'])} searches {took:.1f} s")
    assert trained >= untrained + MARGIN
    assert trained >= 0.25
    assert hnsw >= trained - 0.05  # the index finds (nearly) the same neighbours


def test_build_records_model(models: dict[str, Any], conn: Conn) -> None:
    model, algo, rows, epochs, _seconds, metrics = models["trained"]["built"]
    assert (model, algo, rows, epochs) == (models["trained"]["model"], "SimCLR", 1437, 4)
    assert {"train_loss", "contrastive_accuracy", "images_per_second"} <= set(metrics)
    opts, family, labels = conn.execute("SELECT options, family, labels FROM thanosql.models WHERE name = %s",
                                        [model]).fetchone()
    assert family == "image_embedding" and labels is None
    # the backbone SimCLR chose for 16 pixels, stored: FIT and CONVERT build it again
    assert opts["arch"] == opts["backbone"] == "thanosql_small_resnet"
    assert opts["embedding_dim"] == 128 and opts["input_size"] == 16
    progress = [n for n in models["notices"] if "SimCLR training: epoch" in n]
    assert progress and "loss" in progress[0] and "ETA" in progress[0]


def test_convert_into_source_table(models: dict[str, Any], conn: Conn, data: dict[str, Any]) -> None:
    t = data["train"]
    typ, nulls, norm = conn.execute(
        f"SELECT format_type(a.atttypid, a.atttypmod), (SELECT count(*) FROM {t} WHERE emb IS NULL),"
        f" (SELECT max(abs(vector_norm(emb) - 1)) FROM {t}) FROM pg_attribute a"
        f" WHERE a.attrelid = '{t}'::regclass AND a.attname = 'emb'").fetchone()
    assert typ == "vector(128)" and nulls == 0 and norm < 1e-5  # unit vectors
    indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                          [t]).fetchall()]
    for col in ("emb", "emb_ref"):
        assert any(f"USING hnsw ({col} vector_cosine_ops)" in i for i in indexes), indexes


def test_query_row_comes_first(models: dict[str, Any], px: Conn, conn: Conn, data: dict[str, Any]) -> None:
    model, t = models["trained"]["model"], data["train"]
    for row_id in (1, 777, 1796):
        path, image = conn.execute(f"SELECT path, image FROM {t} WHERE id = %s", [row_id]).fetchone()
        for value in (path, bytes(image)):
            rows = search(px, model, t, value, top_k=5, query=f"SELECT id, label, emb FROM {t}")
            sims = [r[-1] for r in rows]
            assert sims == sorted(sims, reverse=True)
            assert abs(sims[0] - 1.0) <= 1e-4, rows
            tied = [r[0] for r in rows if r[-1] >= 1 - 1e-4]
            assert rows[0][0] == row_id or (row_id in tied and len(tied) > 1), rows


def test_top_k_and_result_col(models: dict[str, Any], px: Conn, data: dict[str, Any]) -> None:
    model, t = models["trained"]["model"], data["train"]
    q = data["queries"][0]["path"]
    every = search(px, model, t, q, top_k=None, query=f"SELECT id, emb FROM {t}")
    assert len(every) == 1437  # top_k=None: the whole table
    assert [r[-1] for r in every] == sorted((r[-1] for r in every), reverse=True)
    # the default top_k is 1000: more than HNSW's ef_search, so the index scan must go on (iterative scan)
    rows = px.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_by='image', search_input='{q}',"
                      f" emb_col='emb', result_col='score') AS SELECT id, emb FROM {t}")
    assert [c.name for c in rows.description] == ["id", "emb", "score"]
    assert len(rows.fetchall()) == 1000
    # nested: a SEARCH is a subquery like any other. The label filtered on is the best match's, so
    # that the answer cannot be empty however (little) the model learned; it must be exactly the
    # rows of that label among the plain top 50.
    top = search(px, model, t, q, top_k=50, query=f"SELECT id, label, emb FROM {t}")
    label = top[0][1]
    nested = px.execute(f"""
        SELECT s.id, s.search_result FROM (
            SEARCH IMAGE USING {model}
            OPTIONS (search_by='image', search_input='{q}', emb_col='emb', top_k=50)
            AS SELECT id, label, emb FROM {t}) AS s
        WHERE s.label = %s ORDER BY s.search_result DESC""", [label]).fetchall()
    assert 0 < len(nested) <= 50
    assert sorted(r[0] for r in nested) == sorted(r[0] for r in top if r[1] == label)


def test_repeated_searches_keep_the_embedding_of_the_same_bytes(models: dict[str, Any], px: Conn,
                                                                data: dict[str, Any], files: Path) -> None:
    """A session keeps SEARCH's query embeddings (thanosql.query_cache_size), keyed by the
    model's version and the bytes searched with: a file rewritten under the same path is
    embedded anew, and the answers are those of the cache turned off."""
    model = models["trained"]["model"]
    first, second = (Path(q["path"]) for q in data["queries"][:2])

    def embed(path: Path) -> str:
        options = json.dumps({"search_by": "image", "search_input": str(path), "emb_col": "emb"})
        return px.execute("SELECT thanosql.embed_query(%s, %s)::text", [model, options]).fetchone()[0]

    a, b = embed(first), embed(second)
    assert a != b and embed(first) == a and embed(second) == b
    moving = files / f"{PREFIX}_moving.png"
    moving.write_bytes(first.read_bytes())
    moving.chmod(0o644)
    assert embed(moving) == a
    moving.write_bytes(second.read_bytes())  # the same path, other bytes: embedded anew
    assert embed(moving) == b
    px.execute("SET thanosql.query_cache_size = 0")
    try:
        assert embed(first) == a and embed(moving) == b
    finally:
        px.execute("RESET thanosql.query_cache_size")
        moving.unlink()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="query_cache_size"):
        px.execute("SET thanosql.query_cache_size = 1000000")


def test_search_plan_uses_hnsw_and_embeds_once(models: dict[str, Any], conn: Conn,
                                               data: dict[str, Any]) -> None:
    model, t = models["trained"]["model"], data["train"]
    q = data["queries"][0]["path"]
    sql = conn.execute("SELECT thanosql.rewrite(%s)", [
        f"SEARCH IMAGE USING {model} OPTIONS (search_by='image', search_input='{q}', emb_col='emb', top_k=10)"
        f" AS SELECT * FROM {t}"]).fetchone()[0]
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql).fetchall())
    assert f"Index Scan using {t}_emb_idx on {t}" in plan, plan
    assert "Order By: (emb <=> $" in plan, plan
    # the embedding: one CTE, evaluated once; the two InitPlans read its one row
    assert plan.count("CTE __thanosql_e") == 1, plan
    cte = plan.split("CTE __thanosql_e", 1)[1].splitlines()[1]
    assert "Result (actual rows=1 loops=1)" in cte, plan


def test_convert_where_updates_only_those_rows(models: dict[str, Any], px: Conn, conn: Conn,
                                               data: dict[str, Any]) -> None:
    model, t = models["trained"]["model"], name("where")
    digits.load_table(conn, t, _small_rows(conn, data["train"]))
    out = px.execute(f"CONVERT USING {model} OPTIONS (image_col='path', result_col='v', batch_size=7)"
                     f" AS SELECT path FROM {t} AS x WHERE x.label < 5").fetchall()
    assert out == [(t, 20)]
    counts = conn.execute(f"SELECT label < 5, count(v), count(*) FROM {t} GROUP BY 1 ORDER BY 1").fetchall()
    assert counts == [(False, 0, 20), (True, 20, 20)]
    # the same image gets the same vector, whichever statement embedded it
    same = conn.execute(f"SELECT max(t.v <=> s.emb) FROM {t} t JOIN {data['train']} s USING (path)"
                        " WHERE t.v IS NOT NULL").fetchone()[0]
    assert same is not None and same < 1e-4


def _small_rows(conn: Conn, table: str) -> list[dict[str, Any]]:
    """Four rows of each digit from ``table``."""
    rows = conn.execute(f"SELECT id, path, image, label FROM {table} ORDER BY id").fetchall()
    return digits.per_class([{"id": r[0], "path": r[1], "image": bytes(r[2]), "label": r[3]} for r in rows],
                            4)


def test_convert_into_table_name(models: dict[str, Any], px: Conn, conn: Conn, data: dict[str, Any]) -> None:
    model, target = models["trained"]["model"], name("out")
    query = f"SELECT s.id, s.image, s.label, s.emb FROM {data['train']} s JOIN {data['train']} u USING (id)" \
            " WHERE s.id < 50"
    for _ in range(2):  # the second run replaces the table
        out = px.execute(f"CONVERT USING {model} OPTIONS (image_col='image', result_col='emb',"
                         f" table_name='{target}') AS {query}").fetchall()
        assert out == [(target, 40)]
    cols = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum", [target]).fetchall()
    assert cols == [("id", "integer"), ("image", "bytea"), ("label", "integer"), ("emb", "vector(128)")]
    assert conn.execute(f"SELECT count(*) FROM {target}").fetchone()[0] == 40
    diff = conn.execute(f"SELECT max(o.emb <=> s.emb) FROM {target} o JOIN {data['train']} s USING (id)")
    assert diff.fetchone()[0] < 1e-4  # bytea and path inputs embed alike
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%hnsw%%'",
                        [target]).fetchone()[0] == 1
    px.execute(f"CONVERT USING {model} OPTIONS (image_col='image', table_name='{target}', create_index=False)"
               f" AS SELECT id, image FROM {data['train']} WHERE id < 10")
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s", [target]).fetchone()[0] == 0


def test_convert_returns_rows(models: dict[str, Any], px: Conn, data: dict[str, Any]) -> None:
    """A query on no single table: the rows come back with their vectors (PREDICT's shape)."""
    model, t = models["trained"]["model"], data["train"]
    cur = px.execute(f"CONVERT USING {model} OPTIONS (image_col='path', result_col='vec', batch_size=4)"
                     f" AS SELECT id, path, emb FROM {t} WHERE id < 30 ORDER BY id DESC LIMIT 10")
    assert [c.name for c in cur.description] == ["id", "path", "emb", "vec"]
    rows = cur.fetchall()
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True) and len(rows) == 10
    for r in rows:
        got, stored = _vec(r[3]), _vec(r[2])
        assert got.shape == (128,) and float(got @ stored) > 1 - 1e-4


def _vec(v: Any) -> np.ndarray:
    return np.asarray(json.loads(v) if isinstance(v, str) else v, dtype=np.float32)


def test_fit_then_reconvert_updates_vectors(models: dict[str, Any], px: Conn, conn: Conn,
                                            data: dict[str, Any]) -> None:
    base, fitted, t = models["trained"]["model"], name("fitted"), name("refit")
    conn.execute(f"CREATE TABLE {t} AS SELECT id, path, label FROM {data['train']} WHERE id < 200")
    px.execute(f"CONVERT USING {base} OPTIONS (image_col='path', result_col='v') AS SELECT * FROM {t}")
    before = dict(conn.execute(f"SELECT id, v::text FROM {t}").fetchall())
    out = px.execute(f"FIT MODEL {fitted} USING {base} OPTIONS (image_col='path', epochs=1, batch_size=32)"
                     f" AS SELECT path FROM {t}").fetchone()
    assert out[1:4] == ("SimCLR", 160, 1)
    opts = conn.execute("SELECT options FROM thanosql.models WHERE name = %s", [fitted]).fetchone()[0]
    assert opts["input_size"] == 16 and opts["embedding_dim"] == 128 and base in opts["weights"]
    px.execute(f"CONVERT USING {fitted} OPTIONS (image_col='path', result_col='v') AS SELECT * FROM {t}")
    after = dict(conn.execute(f"SELECT id, v::text FROM {t}").fetchall())
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)
    # FIT keeps the embedding dimension: asking for another one is an error
    fails(lambda: px.execute(f"FIT MODEL {name('fit64')} USING {base} OPTIONS (image_col='path',"
                             f" embedding_dim=64) AS SELECT path FROM {t}"), "22023", "embedding_dim")


# --- bad input -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad(conn: Conn, data: dict[str, Any]) -> dict[str, str]:
    """Tables for error cases, and a classification model (catalog row only: the family check
    comes before any weights are read)."""
    t = name("bad")
    small = "[" + ",".join(["0.1"] * 64) + "]"
    conn.execute(f"CREATE TABLE {t} AS SELECT id, path, label, emb, emb::text AS emb_text,"
                 f" '{small}'::vector(64) AS small FROM {data['train']} WHERE id < 40")
    conn.execute(f"CREATE VIEW {t}_view AS SELECT * FROM {t}")
    add_model(conn, name("classifier"))  # a catalog row is enough: the family is checked first
    return {"table": t, "view": f"{t}_view", "classifier": name("classifier")}


def test_search_bad_input(models: dict[str, Any], px: Conn, bad: dict[str, str],
                          data: dict[str, Any]) -> None:
    model, t = models["trained"]["model"], bad["table"]
    q = data["queries"][0]["path"]
    fails(lambda: search(px, model, t, q, emb="nope", query=f"SELECT * FROM {t}"), "42703", "nope")
    fails(lambda: search(px, model, t, q, emb="label", query=f"SELECT * FROM {t}"), "42883")
    fails(lambda: search(px, model, t, q, emb="emb_text", query=f"SELECT * FROM {t}"), "42883")
    fails(lambda: search(px, model, t, q, emb="small", query=f"SELECT * FROM {t}"), "22000", "dimensions")
    fails(lambda: search(px, model, t, "/nonexistent/query.png", emb="emb", query=f"SELECT * FROM {t}"),
          "58P01", "does not exist")
    fails(lambda: search(px, name("nosuch"), t, q, emb="emb", query=f"SELECT * FROM {t}"), "42704",
          "does not exist")
    fails(lambda: search(px, bad["classifier"], t, q, emb="emb", query=f"SELECT * FROM {t}"), "42809")
    # by text: another algorithm embeds texts (42809, naming it); by audio or video: none does (0A000)
    for by, state in (("text", "42809"), ("audio", "0A000"), ("video", "0A000")):
        fails(lambda by=by: px.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_by='{by}',"
                                       f" search_input='a cat', emb_col='emb') AS SELECT * FROM {t}"),
              state, "images only")
    fails(lambda: px.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_by='text', search_input='a cat',"
                             f" emb_col='emb') AS SELECT * FROM {t}"), "42809",
          "Algorithms that search by text: CLIP")
    fails(lambda: px.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_input=%s, emb_col='emb')"
                             f" AS SELECT * FROM {t}", [None]), "22004")
    # a parameter is only for search_input
    fails(lambda: px.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_input='{q}', emb_col=%s)"
                             f" AS SELECT * FROM {t}", ["emb"]), "0A000", "search_input")


def test_convert_bad_input(models: dict[str, Any], px: Conn, conn: Conn, bad: dict[str, str]) -> None:
    model, t = models["trained"]["model"], bad["table"]

    def convert(opts: str, query: str | None = None) -> Any:
        query = query or f"SELECT * FROM {t}"
        return px.execute(f"CONVERT USING {model} OPTIONS ({opts}) AS {query}").fetchall()

    fails(lambda: convert("image_col='path', result_col='small'"), "42804", "vector(64)", "128")
    fails(lambda: convert("image_col='path', result_col='emb_text'"), "42804", "text")
    fails(lambda: convert("image_col='nope', result_col='x'"), "42703", "nope")
    fails(lambda: convert("image_col='path'", f"SELECT * FROM {bad['view']}"), "42809", "view", "table_name")
    missing = f"SELECT id, CASE WHEN id = 7 THEN '/nonexistent/x.png' ELSE path END AS p FROM {t}"
    fails(lambda: convert("image_col='p', result_col='x'", missing), "58P01", "does not exist")  # in place
    fails(lambda: convert("image_col='p'", missing + " LIMIT 20"), "58P01", "does not exist")  # rows back
    fails(lambda: px.execute(f"CONVERT USING {name('nosuch')} OPTIONS (image_col='path')"
                             f" AS SELECT * FROM {t}"), "42704")
    fails(lambda: px.execute(f"CONVERT USING {bad['classifier']} OPTIONS (image_col='path')"
                             f" AS SELECT * FROM {t}"), "42809", "CONVERT")
    # nothing was added by the failed statements
    cols = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                       " AND attnum > 0", [t]).fetchall()}
    assert "x" not in cols and "convert_result" not in cols


def test_cancel_leaves_nothing(models: dict[str, Any], px: Conn, conn: Conn, data: dict[str, Any]) -> None:
    """A cancelled BUILD saves no model; a cancelled CONVERT adds no column (one transaction each)."""
    model, t = name("cancelled"), name("cancel")
    # four times the training digits: several seconds of CONVERT even on a fast machine
    conn.execute(f"CREATE TABLE {t} AS SELECT id, path FROM {data['train']}, generate_series(1, 4)")
    px.execute("SET statement_timeout = '3s'")
    try:
        start = time.monotonic()
        fails(lambda: px.execute(f"BUILD MODEL {model} USING SimCLR OPTIONS (image_col='path', epochs=1000,"
                                 f" batch_size=16, input_size=32) AS SELECT path FROM {t}"), "57014")
        assert time.monotonic() - start < 30
        fails(lambda: px.execute(f"CONVERT USING {models['trained']['model']} OPTIONS (image_col='path',"
                                 f" result_col='v', batch_size=16) AS SELECT * FROM {t}"), "57014")
    finally:
        px.execute("RESET statement_timeout")
    assert conn.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", [model]).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'v'",
                        [t]).fetchone()[0] == 0


# --- the recipe: the defaults rank well (issue 21) -----------------------------------------------------
# The demo's input size (16: the digits are 8x8 at heart); everything else is SimCLR's default recipe
# (the small ResNet for 15 epochs at learning rate 2e-3, temperature 0.2, batch 64, grayscale views with
# an affine transform, an elastic warp and intensity). Measured on two CPU cores
# (bench/simclr_recipe.py): precision@10 0.92 (raw pixels: 0.85; the recipe before issue 21: 0.37;
# other random seeds 0.93-0.94) in under two minutes; the same-label neighbours' median similarity
# ~0.13 above the other-label ones' (the old recipe's: 0.997-1.000 for all). The bound is issue 21's
# target; the model must also beat comparing the raw pixels, computed here on the same digits.
RECIPE_OPTS = {"image_col": "'path'", "input_size": 16}
RECIPE_P10 = 0.9
RECIPE_OVER_RAW = 0.02
RECIPE_SPREAD = 0.08


def test_default_recipe_ranks_held_out_digits(px: Conn, conn: Conn, files: Path) -> None:
    """BUILD with the defaults on the 1,437 training digits; EVALUATE on the 360 held-out ones:
    each one's 10 nearest others mostly share its label (precision@10 >= RECIPE_P10), and
    the similarities spread out: a neighbour of the same label is clearly closer than one of
    another label (the old recipe's were all 0.997-1.000)."""
    rows = datasets.write_digits(files / "digits32")  # the demo's 32x32 PNGs
    for p in (files, files / "digits32"):
        p.chmod(p.stat().st_mode | 0o755)
    train, test = datasets.split(rows)
    train_t, test_t = name("recipe_train"), name("recipe_test")
    datasets.load_table(conn, train_t, train)
    datasets.load_table(conn, test_t, test)
    model = name("recipe")
    options = ", ".join(f"{k}={v}" for k, v in RECIPE_OPTS.items())
    start = time.monotonic()
    px.execute(f"BUILD MODEL {model} USING SimCLR OPTIONS ({options}) AS SELECT path FROM {train_t}")
    took = time.monotonic() - start
    metrics = dict(px.execute(f"EVALUATE USING {model} OPTIONS (image_col='path', label_col='label',"
                              f" top_k=10) AS SELECT path, label FROM {test_t}").fetchall())
    same = metrics["Median similarity@10, same label"]
    other = metrics["Median similarity@10, other label"]
    raw = datasets.raw_pixel_precision(test)
    print(f"\nSimCLR default recipe on held-out digits: precision@10 {metrics['Precision@10']:.3f}"
          f" (raw pixels {raw:.3f}), median similarity same label {same:.3f}, other label {other:.3f};"
          f" BUILD {took:.0f} s")
    assert metrics["Precision@10"] >= RECIPE_P10
    assert metrics["Precision@10"] >= raw + RECIPE_OVER_RAW
    assert same - other >= RECIPE_SPREAD
