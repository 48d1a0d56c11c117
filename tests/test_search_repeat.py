"""A repeated SEARCH IMAGE is answered from the session's memory of its query embedding
(server/embeddings.py repeated_query), and only while nothing it depends on has changed:
the model's version, the caller's right to use it, the settings, the file (its bytes, or
where a symlink leads). Each case compares with the cache turned off, which embeds anew."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import digits
import psycopg
import pytest

PREFIX = "sr_" + uuid.uuid4().hex[:6]
Conn = psycopg.Connection


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def aged(path: Path, seconds: float = 600) -> None:
    """Back-date a file: one written just now is never identified by its stat (racy)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture(scope="module")
def setup(conn: Conn, px: Conn, files: Path) -> dict[str, Any]:
    rows = digits.per_class(digits.digits(files), 10)  # 100 rows: more than HNSW's ef_search
    table = digits.load_table(conn, name("d"), rows)
    model = name("m")
    px.execute(f"BUILD MODEL {model} USING SimCLR OPTIONS (image_col='path', epochs=1, batch_size=15,"
               f" input_size=32) AS SELECT path FROM {table}")
    folder = files / PREFIX
    folder.mkdir(exist_ok=True)
    folder.chmod(0o755)
    sources = [Path(rows[i]["path"]) for i in (0, 10, 20)]  # a 0, a 1, a 2
    return {"model": model, "table": table, "folder": folder, "sources": sources}


@pytest.fixture
def query(setup: dict[str, Any]) -> Iterator[Path]:
    path = setup["folder"] / f"q_{uuid.uuid4().hex[:6]}.png"
    shutil.copy(setup["sources"][0], path)
    path.chmod(0o644)
    aged(path)
    yield path
    path.unlink(missing_ok=True)


def embed(c: Conn, model: str, path: Path | str, **extra: Any) -> str:
    options = json.dumps({"search_by": "image", "search_input": str(path), "emb_col": "emb", **extra})
    return c.execute("SELECT thanosql.embed_query(%s, %s)::text", [model, options]).fetchone()[0]


def fresh(c: Conn, model: str, path: Path | str) -> str:
    """The embedding with the cache off: computed now."""
    c.execute("SET thanosql.query_cache_size = 0")
    try:
        return embed(c, model, path)
    finally:
        c.execute("RESET thanosql.query_cache_size")


def test_a_repeat_gives_what_the_model_gives(setup: dict[str, Any], px: Conn, query: Path) -> None:
    model = setup["model"]
    first = embed(px, model, query)
    assert [embed(px, model, query) for _ in range(3)] == [first] * 3
    assert first == fresh(px, model, query)
    # other arguments are other calls: the same file under options that differ
    assert embed(px, model, query, top_k=3) == first


def test_changed_bytes_are_embedded_anew_even_with_an_old_timestamp(setup: dict[str, Any], px: Conn,
                                                                    query: Path) -> None:
    model = setup["model"]
    first = embed(px, model, query)
    before = query.stat()
    shutil.copy(setup["sources"][1], query)
    os.utime(query, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: the ctime moved
    changed = embed(px, model, query)
    assert changed != first and changed == fresh(px, model, query)


def test_a_symlink_pointed_elsewhere_is_followed(setup: dict[str, Any], px: Conn) -> None:
    model, folder = setup["model"], setup["folder"]
    targets = []
    for i in (1, 2):
        t = folder / f"target{i}.png"
        shutil.copy(setup["sources"][i], t)
        t.chmod(0o644)
        aged(t)
        targets.append(t)
    link = folder / "link.png"
    link.unlink(missing_ok=True)
    link.symlink_to(targets[0])
    try:
        one = embed(px, model, link)
        assert embed(px, model, link) == one
        link.unlink()
        link.symlink_to(targets[1])
        two = embed(px, model, link)
        assert two != one and two == fresh(px, model, targets[1])
    finally:
        link.unlink(missing_ok=True)


def test_a_new_version_and_a_rollback_change_the_answer(setup: dict[str, Any], px: Conn, query: Path) -> None:
    model, table = setup["model"], setup["table"]
    v1 = embed(px, model, query)
    px.execute(f"FIT MODEL {model} USING {model} OPTIONS (image_col='path', epochs=1, batch_size=15,"
               f" learning_rate=0.01) AS SELECT path FROM {table}")
    v2 = embed(px, model, query)
    assert v2 != v1 and v2 == fresh(px, model, query)
    first = px.execute("SELECT min(version) FROM thanosql.model_versions(%s)", [model]).fetchone()[0]
    px.execute("SELECT thanosql.rollback_model(%s, %s)", [model, first])
    assert embed(px, model, query) == v1


def test_settings_are_checked_again(setup: dict[str, Any], px: Conn, query: Path, files: Path) -> None:
    """A relative path resolves under thanosql.data_dir: moved, it names another file."""
    model, relative = setup["model"], str(query.relative_to(files))
    first = embed(px, model, relative)
    assert embed(px, model, relative) == first
    px.execute("SELECT set_config('thanosql.data_dir', %s, false)", [str(setup["folder"])])
    try:
        with pytest.raises(psycopg.Error) as e:
            embed(px, model, relative)
        assert e.value.sqlstate == "58P01", e.value  # the file does not exist there
    finally:
        px.execute("RESET thanosql.data_dir")
    assert embed(px, model, relative) == first


def test_a_revoked_grant_ends_the_repeats(setup: dict[str, Any], conn: Conn, server_dsn: str,
                                          query: Path) -> None:
    model, role = setup["model"], name("reader")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        conn.execute("SELECT thanosql.grant_model(%s, %s, 'USE')", [model, role])
        with psycopg.connect(server_dsn, user=role, autocommit=True) as other:
            seen = embed(other, model, query)
            assert embed(other, model, query) == seen
            conn.execute("SELECT thanosql.revoke_model(%s, %s, 'USE')", [model, role])
            with pytest.raises(psycopg.Error) as e:
                embed(other, model, query)
            assert e.value.sqlstate == "42704", e.value  # the model is not there for it any more
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_bytea_input_is_keyed_by_its_bytes(setup: dict[str, Any], px: Conn) -> None:
    model = setup["model"]
    options = json.dumps({"search_by": "image", "emb_col": "emb"})
    zero, one = (p.read_bytes() for p in setup["sources"][:2])

    def embed_bytes(data: bytes) -> str:
        return px.execute("SELECT thanosql.embed_query(%s, %s, %s::bytea)::text",
                          [model, options, data]).fetchone()[0]

    a = embed_bytes(zero)
    b = embed_bytes(one)
    assert a != b and embed_bytes(zero) == a and embed_bytes(one) == b


def test_a_repeat_still_scans_past_ef_search(setup: dict[str, Any], px: Conn, query: Path) -> None:
    """top_k above hnsw.ef_search (40) needs pgvector's iterative scans, which the embedding
    turns on for the statement: the remembered answer too."""
    model, table = setup["model"], setup["table"]
    px.execute(f"CONVERT USING {model} OPTIONS (image_col='path', result_col='emb')"
               f" AS SELECT path FROM {table}")
    sql = (f"SEARCH IMAGE USING {model} OPTIONS (search_by='image', search_input='{query}', emb_col='emb',"
           f" top_k=90) AS SELECT id, emb FROM {table}")
    px.execute("SET enable_seqscan = off")  # 100 rows: the planner would rather not use the index
    try:
        plan = "\n".join(r[0] for r in px.execute("EXPLAIN " + px.execute(
            "SELECT thanosql.rewrite(%s)", [sql]).fetchone()[0]).fetchall())
        assert f"Index Scan using {table}_emb_idx" in plan, plan
        first, again = (px.execute(sql).fetchall() for _ in range(2))
    finally:
        px.execute("RESET enable_seqscan")
    assert len(first) == 90 and [r[0] for r in again] == [r[0] for r in first]
