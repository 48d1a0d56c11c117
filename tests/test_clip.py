"""CLIP end to end: real PostgreSQL, real extension, native ThanoSQL through the proxy;
SEARCH IMAGE by text (search_by='text'), by image, and CONVERT of images and texts.

Data: scikit-learn's handwritten digits (tests/digits.py) with a caption per image
from a few templates ("a handwritten seven", "the digit 7", "a picture of the number
seven": datasets.caption_digits). CLIP is trained from scratch (pretrained=False, the
defaults otherwise) on the 1,437 training digits; the 360 held-out digits are
CONVERTed and searched by the text of each class. Precision@10 is the share of the 10
nearest images whose label is the query's (chance: 0.1).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import digits
import numpy as np
import psycopg
import pytest
import retrieval
from catalog_rows import add_model
from expect import fails

from thanosql_pg import datasets

PREFIX = "cl_" + uuid.uuid4().hex[:6]
WORDS = datasets.ENGLISH_DIGITS
TARGET = 0.6  # mean precision@10 over the 10 classes, searching by "a handwritten <word>"

Conn = psycopg.Connection


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def add_captions(conn: Conn, table: str, rows: list[dict[str, Any]]) -> None:
    conn.execute(f"ALTER TABLE {table} ADD COLUMN caption text")
    conn.execute(f"UPDATE {table} t SET caption = v.c FROM unnest(%s::int[], %s::text[]) AS v(id, c)"
                 " WHERE t.id = v.id", [[r["id"] for r in rows], datasets.caption_digits(rows)])


@pytest.fixture(scope="module")
def data(conn: Conn, files: Path) -> dict[str, Any]:
    """Training digits with captions, held-out digits, and a table of one text per class."""
    train_rows, test_rows = digits.split(digits.digits(files))
    train, test = digits.tables(conn, files, name("d"))
    add_captions(conn, train, train_rows)
    texts = name("texts")
    conn.execute(f"CREATE TABLE {texts} (label integer, text text)")
    conn.execute(f"INSERT INTO {texts} SELECT c - 1, t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, c)",
                 [[datasets.digit_caption(c) for c in range(10)]])
    conn.execute(f"INSERT INTO {texts} VALUES (10, NULL)")
    return {"train": train, "test": test, "texts": texts, "test_rows": test_rows}


@pytest.fixture(scope="module")
def model(px: Conn, data: dict[str, Any]) -> dict[str, Any]:
    """CLIP from scratch with its defaults, and the held-out digits CONVERTed with it."""
    notices: list[str] = []
    details: list[str | None] = []
    px.add_notice_handler(lambda d: (notices.append(d.message_primary or ""),
                                     details.append(d.message_detail)))
    px.execute("SET thanosql.progress_interval = 5")
    m = name("clip")
    start = time.monotonic()
    built = px.execute(f"BUILD MODEL {m} USING CLIP OPTIONS (image_col='path', text_col='caption',"
                       f" pretrained=False) AS SELECT path, caption FROM {data['train']}").fetchone()
    build_s = time.monotonic() - start
    converted = px.execute(f"CONVERT USING {m} OPTIONS (image_col='path', result_col='emb')"
                           f" AS SELECT * FROM {data['test']}").fetchall()
    assert converted == [(data["test"], 360)]
    return {"model": m, "built": built, "build_s": build_s, "notices": notices, "details": details}



def search(db: Conn, model: str, table: str, value: str | bytes, *, by: str = "text", param: bool = False,
           top_k: int | None = 10, columns: str = "id, label, emb") -> list[tuple[Any, ...]]:
    """SEARCH IMAGE; ``param``: search_input as parameter $1 (bytes always are)."""
    k = "None" if top_k is None else str(top_k)
    if param or isinstance(value, bytes):
        literal, params = "%s", [value]
    else:
        literal, params = "'" + value.replace("'", "''") + "'", []
    return db.execute(f"SEARCH IMAGE USING {model} OPTIONS (search_by='{by}', search_input={literal},"
                      f" emb_col='emb', top_k={k}) AS SELECT {columns} FROM {table}", params).fetchall()


def precision_at_10(db: Conn, model: str, table: str, template: int) -> list[float]:
    """Precision@10 of SEARCH IMAGE by each class's text (caption template ``template``),
    without the HNSW index (exact neighbours: the model is measured, not the index);
    the odd classes' texts go as parameter $1."""
    db.execute("SET enable_indexscan = off")
    try:
        out = []
        for c in range(10):
            rows = search(db, model, table, datasets.digit_caption(c, template), param=c % 2 == 1)
            assert len(rows) == 10
            out.append(sum(r[1] == c for r in rows) / 10)
        return out
    finally:
        db.execute("RESET enable_indexscan")


# --- the main flow ------------------------------------------------------------------------------
def test_search_by_text(model: dict[str, Any], px: Conn, data: dict[str, Any]) -> None:
    m, test = model["model"], data["test"]
    start = time.monotonic()
    per_class = precision_at_10(px, m, test, 0)  # "a handwritten seven"
    took = time.monotonic() - start
    p = float(np.mean(per_class))
    p_digit = float(np.mean(precision_at_10(px, m, test, 1)))  # "the digit 7"
    print(f"\nCLIP from scratch on digits: precision@10 searching by text {p:.3f} ('a handwritten seven';"
          f" per class {per_class}), {p_digit:.3f} ('the digit 7'); chance 0.1;"
          f" BUILD {model['build_s']:.0f} s, 10 searches {took:.1f} s")
    assert p >= TARGET and p_digit >= TARGET
    # through the HNSW index CONVERT built: (nearly) the same neighbours
    rows = search(px, m, test, datasets.digit_caption(7))
    assert sum(r[1] == 7 for r in rows) >= 10 * per_class[7] - 2
    scores = [r[-1] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


def test_build_records_model(model: dict[str, Any], conn: Conn) -> None:
    m, algo, rows, epochs, _seconds, metrics = model["built"]
    assert (m, algo, rows, epochs) == (model["model"], "CLIP", 1437, 20)  # the from-scratch defaults
    assert {"train_loss", "contrastive_accuracy", "images_per_second"} <= set(metrics)
    opts, family, labels = conn.execute("SELECT options, family, labels FROM thanosql.models WHERE name = %s",
                                        [m]).fetchone()
    assert family == "clip" and labels is None
    assert (opts["input_size"], opts["embedding_dim"], opts["batch_size"], opts["learning_rate"]) == \
        (32, 128, 128, 0.002)
    assert opts["from_scratch"] is True and opts["weights"] == "random initialisation"
    assert opts["tokenizer"] == {"kind": "bytes"} and opts["context_length"] == 256
    progress = [n for n in model["notices"] if n.startswith("CLIP training: epoch")]
    assert progress and "contrastive loss" in progress[0] and "ETA" in progress[0]
    assert any(n.startswith("CLIP training done: 20 epochs") for n in model["notices"])
    # thanosql.progress_fields is off by default: psql users see no JSON
    assert model["details"] and all(d is None for d in model["details"])


def test_evaluate_retrieval_precision(model: dict[str, Any], px: Conn, conn: Conn,
                                      data: dict[str, Any]) -> None:
    """EVALUATE with a label column: how often an image's nearest other images (image tower)
    share its label, as for SimCLR; the same as ranking CONVERT's embeddings here."""
    m, test = model["model"], data["test"]
    metrics = dict(px.execute(f"EVALUATE USING {m} OPTIONS (image_col='path', label_col='label', top_k=10)"
                              f" AS SELECT path, label FROM {test}").fetchall())
    print(f"\nCLIP from scratch, image-to-image retrieval on 360 held-out digits: {metrics}")
    assert list(metrics) == ["Precision@1", "Precision@10", "Median similarity@10, same label",
                             "Median similarity@10, other label", "Rows"] and metrics["Rows"] == 360
    assert metrics["Precision@10"] > 0.1  # chance
    emb = conn.execute(f"SELECT label, emb::real[] FROM {test} ORDER BY id").fetchall()
    x = np.stack([np.asarray(e, dtype=np.float32) for _, e in emb])
    labels = [lab for lab, _ in emb]
    for k in (1, 10):
        assert metrics[f"Precision@{k}"] == pytest.approx(retrieval.precision_at(x, labels, k), abs=0.02)
    fails(lambda: px.execute(f"EVALUATE USING {m} OPTIONS (image_col='path', report='per_class')"
                             f" AS SELECT path, label FROM {test}"), "22023", "must be one of summary")


def test_search_by_image(model: dict[str, Any], px: Conn, conn: Conn, data: dict[str, Any]) -> None:
    """CLIP searches by image too: the query image itself comes first, by path or as bytea."""
    m, test = model["model"], data["test"]
    for row_id in (5, 900):
        path, image = conn.execute(f"SELECT path, image FROM {test} WHERE id = %s", [row_id]).fetchone()
        for value in (path, bytes(image)):
            rows = search(px, m, test, value, by="image", top_k=3)
            assert abs(rows[0][-1] - 1.0) <= 1e-4, rows
            tied = [r[0] for r in rows if r[-1] >= 1 - 1e-4]
            assert row_id in tied, rows


def test_several_texts_at_once(model: dict[str, Any], px: Conn, data: dict[str, Any]) -> None:
    """A list of texts as one search_input is not taken (42601): a SEARCH ranks its rows by one
    similarity, the one an HNSW index can serve, and the rewrite is one static statement whose
    columns are known before the texts are. One score per text is a join of SEARCHes, each a
    subquery like any other."""
    m, test = model["model"], data["test"]
    fails(lambda: px.execute(f"SEARCH IMAGE USING {m} OPTIONS (search_by='text',"
                             f" search_input=['a handwritten seven', 'a handwritten one'], emb_col='emb')"
                             f" AS SELECT * FROM {test}"), "42601")
    rows = px.execute(f"""
        SELECT s.id, s.label, s.search_result AS seven, o.search_result AS one
        FROM (SEARCH IMAGE USING {m} OPTIONS (search_by='text', search_input='a handwritten seven',
              emb_col='emb', top_k=None) AS SELECT id, label, emb FROM {test}) AS s
        JOIN (SEARCH IMAGE USING {m} OPTIONS (search_by='text', search_input=%s,
              emb_col='emb', top_k=None) AS SELECT id, emb FROM {test}) AS o USING (id)
        ORDER BY s.id""", ["a handwritten one"]).fetchall()
    assert len(rows) == 360
    sevens = [r for r in rows if r[1] == 7]
    ones = [r for r in rows if r[1] == 1]
    assert np.mean([r[2] > r[3] for r in sevens]) > 0.7 and np.mean([r[3] > r[2] for r in ones]) > 0.7


def test_convert_texts(model: dict[str, Any], px: Conn, conn: Conn, data: dict[str, Any]) -> None:
    """convert_type='text' embeds a text column into the images' space: a text's vector is
    the one SEARCH IMAGE searches with, so ordering by it finds the same images."""
    m, texts, test = model["model"], data["texts"], data["test"]
    out = px.execute(f"CONVERT USING {m} OPTIONS (convert_type='text', text_col='text', result_col='temb')"
                     f" AS SELECT * FROM {texts}").fetchall()
    assert out == [(texts, 11)]
    typ, nulls, norm = conn.execute(
        f"SELECT format_type(a.atttypid, a.atttypmod), (SELECT count(*) FROM {texts} WHERE temb IS NULL),"
        f" (SELECT max(abs(vector_norm(temb) - 1)) FROM {texts}) FROM pg_attribute a"
        f" WHERE a.attrelid = '{texts}'::regclass AND a.attname = 'temb'").fetchone()
    assert typ == "vector(128)" and nulls == 1 and norm < 1e-5  # the NULL text's vector is NULL
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%hnsw%%'",
                        [texts]).fetchone()[0] == 1
    conn.execute("SET enable_indexscan = off")
    try:
        for c in (0, 7):
            by_sql = [r[0] for r in conn.execute(
                f"SELECT id FROM {test} ORDER BY emb <=> (SELECT temb FROM {texts} WHERE label = %s), id"
                " LIMIT 10", [c]).fetchall()]
            px.execute("SET enable_indexscan = off")
            by_search = [r[0] for r in search(px, m, test, datasets.digit_caption(c))]
            px.execute("RESET enable_indexscan")
            assert by_search == by_sql
    finally:
        conn.execute("RESET enable_indexscan")
    # the rows-returning form (a query on no single table) and table_name give the same vectors
    rows = px.execute(f"CONVERT USING {m} OPTIONS (convert_type='text', text_col='text', result_col='v')"
                      f" AS SELECT label, text, temb FROM {texts} WHERE label < 3 ORDER BY label LIMIT 3"
                      ).fetchall()
    assert [r[0] for r in rows] == [0, 1, 2]
    for r in rows:
        assert float(_vec(r[3]) @ _vec(r[2])) > 1 - 1e-5
    target = name("text_out")
    px.execute(f"CONVERT USING {m} OPTIONS (convert_type='text', text_col='text', result_col='v',"
               f" table_name='{target}') AS SELECT label, text FROM {texts}")
    diff = conn.execute(f"SELECT max(o.v <=> t.temb) FROM {target} o JOIN {texts} t USING (label)")
    assert diff.fetchone()[0] < 1e-5


def _vec(v: Any) -> np.ndarray:
    import json

    return np.asarray(json.loads(v) if isinstance(v, str) else v, dtype=np.float32)


def test_fit_continues_training(model: dict[str, Any], px: Conn, conn: Conn, data: dict[str, Any]) -> None:
    base, fitted = model["model"], name("fitted")
    out = px.execute(f"FIT MODEL {fitted} USING {base} OPTIONS (image_col='path', text_col='caption',"
                     f" epochs=1, batch_size=64) AS SELECT path, caption FROM {data['train']} WHERE id < 300"
                     ).fetchone()
    assert out[1:4] == ("CLIP", 240, 1)
    opts = conn.execute("SELECT options FROM thanosql.models WHERE name = %s", [fitted]).fetchone()[0]
    assert (opts["input_size"], opts["embedding_dim"], opts["from_scratch"]) == (32, 128, True)
    assert base in opts["weights"] and opts["learning_rate"] == 0.002  # the from-scratch kind's rate
    rows = search(px, fitted, data["test"], "a handwritten seven", top_k=5)
    assert len(rows) == 5
    # FIT keeps the embedding space
    fails(lambda: px.execute(f"FIT MODEL {name('fit64')} USING {base} OPTIONS (image_col='path',"
                             f" text_col='caption', embedding_dim=64) AS SELECT path, caption FROM"
                             f" {data['train']}"), "22023", "embedding_dim")


@pytest.fixture
def tiny_clip(files: Path) -> Iterator[str]:
    folder = files / f"{PREFIX}_tiny_clip"
    yield datasets.write_tiny_clip(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_checkpoint_as_base_model(px: Conn, conn: Conn, data: dict[str, Any], files: Path,
                                  tiny_clip: str) -> None:
    """A transformers CLIPModel folder (save_pretrained, with CLIP's tokenizer) as base_model."""
    folder = tiny_clip
    m, small = name("ckpt"), name("small")
    conn.execute(f"CREATE TABLE {small} AS SELECT * FROM {data['train']} WHERE id < 100")
    out = px.execute(f"BUILD MODEL {m} USING CLIP OPTIONS (image_col='image', text_col='caption',"
                     f" base_model='{folder}', epochs=1, batch_size=32) AS SELECT * FROM {small}").fetchone()
    assert out[1:4] == ("CLIP", 80, 1)
    opts = conn.execute("SELECT options FROM thanosql.models WHERE name = %s", [m]).fetchone()[0]
    assert opts["weights"] == f"checkpoint {folder}" and opts["from_scratch"] is False
    assert (opts["embedding_dim"], opts["input_size"], opts["learning_rate"]) == (16, 16, 1e-5)
    assert opts["tokenizer"]["kind"] == "tokenizers"
    px.execute(f"CONVERT USING {m} OPTIONS (image_col='path', result_col='emb') AS SELECT * FROM {small}")
    rows = search(px, m, small, "a handwritten seven", top_k=5)
    assert len(rows) == 5 and all(len(_vec(r[2])) == 16 for r in rows)
    px.execute(f"CONVERT USING {m} OPTIONS (convert_type='text', text_col='caption', result_col='temb')"
               f" AS SELECT * FROM {small}")
    assert conn.execute(f"SELECT count(temb) FROM {small}").fetchone()[0] == 80
    # a folder that is not a checkpoint; one that does not exist
    fails(lambda: px.execute(f"BUILD MODEL {name('notckpt')} USING CLIP OPTIONS (image_col='image',"
                             f" text_col='caption', base_model='{files}') AS SELECT * FROM {small}"),
          "22000", "config.json")
    fails(lambda: px.execute(f"BUILD MODEL {name('nockpt')} USING CLIP OPTIONS (image_col='image',"
                             f" text_col='caption', base_model='{files}/nonexistent_clip') AS SELECT * FROM"
                             f" {small}"), "58P01", "does not exist")


# --- bad input --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad(conn: Conn, data: dict[str, Any]) -> dict[str, str]:
    t = name("bad")
    conn.execute(f"CREATE TABLE {t} AS SELECT id, path, image, label, caption FROM {data['train']}"
                 " WHERE id < 40")
    add_model(conn, name("simclr"), algorithm="SimCLR", family="image_embedding")  # a catalog row is enough
    return {"table": t, "simclr": name("simclr")}


def test_build_bad_captions(px: Conn, conn: Conn, bad: dict[str, str]) -> None:
    t = bad["table"]

    def build(query: str, text_col: str = "caption") -> Any:
        return px.execute(f"BUILD MODEL {name('bad_build')} USING CLIP OPTIONS (image_col='path',"
                          f" text_col='{text_col}', pretrained=False, epochs=1) AS {query}").fetchall()

    fails(lambda: build(f"SELECT * FROM {t}", "label"), "42804", "integer", "text_col")
    fails(lambda: build(f"SELECT path, CASE WHEN id = 7 THEN ' ' ELSE caption END AS caption FROM {t}"),
          "22000", "empty caption in row")
    fails(lambda: build(f"SELECT path, CASE WHEN id = 7 THEN NULL ELSE caption END AS caption FROM {t}"),
          "22004", "caption")
    fails(lambda: build(f"SELECT * FROM {t}", "nope"), "42703", "nope")
    assert conn.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", [name("bad_build")]
                        ).fetchone()[0] == 0


def test_search_bad_input(model: dict[str, Any], px: Conn, bad: dict[str, str],
                          data: dict[str, Any]) -> None:
    m, test = model["model"], data["test"]
    for empty in ("", "   "):
        fails(lambda empty=empty: search(px, m, test, empty), "22000", "empty text")
    fails(lambda: search(px, m, test, b"\x89PNG not text", by="text"), "42804", "search_input", "bytea")
    # too long: cut to the model's context, with a NOTICE, and still searched
    notices: list[str] = []
    with psycopg.connect(px.info.dsn, autocommit=True) as db:
        db.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        rows = search(db, m, test, "a handwritten seven " * 40, top_k=3)
    assert len(rows) == 3
    assert any("longer than the model's context of 256 tokens and were cut" in n for n in notices), notices
    # audio and video: no algorithm embeds them
    for by in ("audio", "video"):
        fails(lambda by=by: search(px, m, test, "x.wav", by=by), "0A000",
              f"no algorithm in this version searches by {by}", "CLIP models embed images and texts only")
    # a model that cannot embed texts: which algorithms can
    fails(lambda: search(px, bad["simclr"], test, "a handwritten seven"), "42809",
          "cannot search by text", "Algorithms that search by text: CLIP")


def test_convert_bad_input(model: dict[str, Any], px: Conn, conn: Conn, bad: dict[str, str]) -> None:
    m, t = model["model"], bad["table"]

    def convert(opts: str, query: str | None = None) -> Any:
        return px.execute(f"CONVERT USING {m} OPTIONS ({opts}) AS {query or f'SELECT * FROM {t}'}").fetchall()

    fails(lambda: convert("convert_type='text', text_col='label', result_col='x'"), "42804", "label", "int")
    fails(lambda: convert("convert_type='text', text_col='image', result_col='x'"), "42804", "bytea")
    fails(lambda: convert("convert_type='text', text_col='c'",
                          f"SELECT id, CASE WHEN id = 9 THEN '' ELSE caption END AS c FROM {t} LIMIT 20"),
          "22000", "empty text")
    fails(lambda: convert("convert_type='video', image_col='path'"), "22023", "convert_type")
    cols = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                       " AND attnum > 0", [t]).fetchall()}
    assert "x" not in cols and "convert_result" not in cols
