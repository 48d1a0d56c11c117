"""The FolderFDW (thanosql_pg/fdw.py) in a real server, through multicorn2
(scripts/install-multicorn.sh): options, filters, PREDICT and CONVERT over a
foreign table, files that appear later, the access rule and bad options.

Skipped as a whole where multicorn is not installed into PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image

from thanosql_pg import fdw

PREFIX = "fdw_" + uuid.uuid4().hex[:6]
COLUMNS = ("path text, file_name text, size_bytes bigint, label text, split text, media_type text")
Conn = psycopg.Connection


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


SERVER = name("folders")


@pytest.fixture(scope="module", autouse=True)
def multicorn(conn: Conn) -> Iterator[None]:
    """CREATE EXTENSION multicorn and the module's server (as superuser); dropped at the end."""
    if not fdw.available(conn):
        print("skipping: multicorn is not installed here (bash scripts/install-multicorn.sh)")
        pytest.skip("multicorn is not installed in PostgreSQL and this virtualenv:"
                    " run bash scripts/install-multicorn.sh")
    created = not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'multicorn'").fetchone()
    conn.execute("CREATE EXTENSION IF NOT EXISTS multicorn")
    conn.execute(f"CREATE SERVER {SERVER} FOREIGN DATA WRAPPER multicorn"
                 " OPTIONS (wrapper 'thanosql_pg.fdw.FolderFDW')")
    try:
        yield
    finally:
        conn.execute(f"DROP SERVER IF EXISTS {SERVER} CASCADE")
        if created and not conn.execute("SELECT 1 FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w"
                                        " ON w.oid = s.srvfdw WHERE w.fdwname = 'multicorn'").fetchone():
            conn.execute("DROP EXTENSION IF EXISTS multicorn")


def image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


LABELS = [f"c{i}" for i in range(10)]  # tiny_net's head has 10 classes
IMAGES = 3 * len(LABELS)  # 2 per class in train/, 1 in test/


@pytest.fixture(scope="module")
def tree(files: Path) -> Iterator[Path]:
    """An ImageFolder tree the server may read: train/c0..c9 (2 images each), test/c0..c9
    (1 each), a wav, a text file and a hidden image."""
    root = files / name("tree")
    for split, n in (("train", 2), ("test", 1)):
        for k, label in enumerate(LABELS):
            for i in range(n):
                colour = (k * 25, 255 - k * 25, (k * 70 + i * 9) % 256)
                image(root / split / label / f"{label}_{i}.png", colour)
    (root / "sounds").mkdir()
    (root / "sounds" / "beep.wav").write_bytes(b"RIFF" + b"\0" * 40)
    (root / "notes.txt").write_text("not media\n")
    image(root / ".hidden" / "ghost.png", (0, 0, 0))
    for dirpath, _, names in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o644)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def foreign_table(conn: Conn, table: str, options: dict[str, Any], columns: str = COLUMNS) -> str:
    opts = ", ".join(f"{k} '{v}'" for k, v in options.items())
    conn.execute(f"CREATE FOREIGN TABLE {table} ({columns}) SERVER {SERVER}"
                 + (f" OPTIONS ({opts})" if opts else ""))
    return table


@pytest.fixture(scope="module")
def ft(conn: Conn, tree: Path) -> str:
    """The tree as a foreign table with the default options."""
    return foreign_table(conn, name("files"), {"root": tree})


def relpaths(conn: Conn, table: str, where: str = "true") -> set[str]:
    rows = conn.execute(f"SELECT path FROM {table} WHERE {where}").fetchall()
    return {r[0].split(f"{name('tree')}/", 1)[1] for r in rows}


# --- the table and its options ---------------------------------------------------------------
def test_rows_match_scan_folder(conn: Conn, ft: str, tree: Path) -> None:
    got = conn.execute(f"SELECT path, file_name, size_bytes, label, split, media_type FROM {ft}"
                       " ORDER BY path").fetchall()
    want = conn.execute("SELECT path, file_name, size_bytes, label, split, media_type"
                        " FROM thanosql.scan_folder(%s) ORDER BY path", [str(tree)]).fetchall()
    assert got == want and len(got) == IMAGES + 2  # the wav and the text file; not the hidden image
    assert {r[3] for r in got if r[5] == "image"} == set(LABELS)


def test_first_statement_of_a_session(server_dsn: str, ft: str) -> None:
    """A fresh session (no preload in the test cluster) whose first statement reads the
    foreign table: multicorn finds itself and thanosql_pg in the venv, and thanosql's
    own functions work afterwards in the same backend."""
    with psycopg.connect(server_dsn, autocommit=True) as c:
        assert c.execute(f"SELECT count(*) FROM {ft} WHERE media_type = 'image'").fetchone() == (IMAGES,)
        assert "list_models" in c.execute("SELECT thanosql.rewrite('LIST MODEL')").fetchone()[0]
        assert c.execute(f"SELECT count(*) FROM {ft}").fetchone() == (IMAGES + 2,)


def test_where_filters(conn: Conn, ft: str) -> None:
    assert conn.execute(f"SELECT label, count(*) FROM {ft} WHERE split = 'train' GROUP BY label"
                        " ORDER BY label").fetchall() == [(label, 2) for label in LABELS]
    assert relpaths(conn, ft, "media_type = 'audio'") == {"sounds/beep.wav"}
    assert relpaths(conn, ft, "file_name LIKE 'c1\\_%' AND split = 'test'") == {"test/c1/c1_0.png"}
    assert relpaths(conn, ft, "size_bytes > 0 AND label IS NULL") == {"notes.txt"}


def test_options(conn: Conn, tree: Path) -> None:
    flat = foreign_table(conn, name("flat"), {"root": tree, "recursive": "false"})
    assert relpaths(conn, flat) == {"notes.txt"}
    images = foreign_table(conn, name("images"),
                           {"root": tree, "media_type": "image", "include_hidden": "on"})
    got = relpaths(conn, images)
    assert len(got) == IMAGES + 1 and ".hidden/ghost.png" in got and "sounds/beep.wav" not in got
    audio = foreign_table(conn, name("audio"), {"root": tree / "sounds", "media_type": "AUDIO",
                                                  "recursive": "yes", "include_hidden": "false"})
    assert conn.execute(f"SELECT file_name, media_type FROM {audio}").fetchall() == [("beep.wav", "audio")]
    # fewer columns, in another order
    some = foreign_table(conn, name("some"), {"root": tree / "test"}, "label text, file_name text")
    assert conn.execute(f"SELECT * FROM {some} ORDER BY 1").fetchall() == \
        [(label, f"{label}_0.png") for label in LABELS]


def test_files_added_later_show_up(conn: Conn, ft: str, tree: Path) -> None:
    before = conn.execute(f"SELECT count(*) FROM {ft}").fetchone()[0]
    new = tree / "train" / "green" / "g0.png"
    image(new, (20, 220, 20))
    os.chmod(new.parent, 0o755)
    try:
        assert conn.execute(f"SELECT count(*) FROM {ft}").fetchone()[0] == before + 1
        assert conn.execute(f"SELECT label, split FROM {ft} WHERE file_name = 'g0.png'").fetchone() == \
            ("green", "train")
    finally:
        shutil.rmtree(new.parent)
    assert conn.execute(f"SELECT count(*) FROM {ft}").fetchone()[0] == before


# --- PREDICT and CONVERT over the foreign table ---------------------------------------------
def test_build_and_predict_from_foreign_table(px: Conn, conn: Conn, ft: str, tiny_net: str) -> None:
    model = name("clf")
    out = px.execute(f"BUILD MODEL {model} USING ConvNeXt_Tiny OPTIONS (image_col='path', label_col='label',"
                     f" base_model='{tiny_net}', input_size=32, epochs=2, batch_size=12, learning_rate=0.005,"
                     f" device='cpu') AS SELECT path, label FROM {ft} WHERE split = 'train'").fetchall()
    assert out
    rows = px.execute(f"PREDICT USING {model} OPTIONS (image_col='path', result_col='guess')"
                      f" AS SELECT file_name, path, label FROM {ft} WHERE split = 'test'"
                      " ORDER BY file_name").fetchall()
    assert [r[0] for r in rows] == [f"{label}_0.png" for label in LABELS]
    assert len(rows[0]) == 4 and {r[3] for r in rows} <= set(LABELS)
    saved = name("predicted")
    px.execute(f"PREDICT USING {model} OPTIONS (image_col='path', table_name='{saved}')"
               f" AS SELECT path, label FROM {ft} WHERE media_type = 'image'")
    assert conn.execute(f"SELECT count(*) FROM {saved}").fetchone() == (IMAGES,)


def test_convert_from_foreign_table(px: Conn, conn: Conn, ft: str) -> None:
    model, target = name("simclr"), name("emb")
    px.execute(f"BUILD MODEL {model} USING SimCLR OPTIONS (image_col='path', epochs=1, batch_size=12,"
               f" input_size=32) AS SELECT path FROM {ft} WHERE media_type = 'image'")
    out = px.execute(f"CONVERT USING {model} OPTIONS (image_col='path', result_col='emb',"
                     f" table_name='{target}')"
                     f" AS SELECT path, label FROM {ft} WHERE split = 'train'").fetchall()
    assert out == [(target, 20)]
    assert conn.execute(f"SELECT count(*), count(emb) FROM {target}").fetchone() == (20, 20)
    # Without table_name, CONVERT adds a column to the query's table: not to a foreign table.
    with pytest.raises(psycopg.errors.WrongObjectType) as e:
        px.execute(f"CONVERT USING {model} OPTIONS (image_col='path', result_col='vec')"
                   f" AS SELECT file_name, path FROM {ft} WHERE split = 'test'")
    assert "foreign table" in str(e.value) and "table_name=" in (e.value.diag.message_hint or "")


# --- access -----------------------------------------------------------------------------------
@pytest.fixture
def roles(conn: Conn, server_dsn: str) -> Iterator[dict[str, Conn]]:
    """Two ordinary roles: ``granted`` gets SELECT on the foreign table, ``plain`` nothing."""
    made: dict[str, Conn] = {}
    names = {k: f"{PREFIX}_{k}_{uuid.uuid4().hex[:4]}" for k in ("plain", "granted")}
    try:
        for key, role in names.items():
            conn.execute(f"CREATE ROLE {role} LOGIN")
            made[key] = psycopg.connect(server_dsn, user=role, autocommit=True)
        yield made
    finally:
        for c in made.values():
            c.close()
        for role in names.values():
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_select_needs_a_grant(conn: Conn, ft: str, tree: Path, roles: dict[str, Conn]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        roles["plain"].execute(f"SELECT count(*) FROM {ft}")
    assert e.value.sqlstate == "42501" and "permission denied" in str(e.value)
    conn.execute(f"GRANT SELECT ON {ft} TO {roles['granted'].info.user}")
    assert roles["granted"].execute(f"SELECT count(*) FROM {ft}").fetchone() == (IMAGES + 2,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the grant is per table
        roles["plain"].execute(f"SELECT count(*) FROM {ft}")
    # Without USAGE on the server a role cannot make its own table over another folder.
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        roles["granted"].execute(f"CREATE FOREIGN TABLE {name('mine')} ({COLUMNS}) SERVER {SERVER}"
                               " OPTIONS (root '/etc')")
    assert e.value.sqlstate == "42501"


# --- bad options ------------------------------------------------------------------------------
# multicorn gives every error a wrapper reports SQLSTATE XX000 (internal_error): it has no
# way to pass another. The message and hint are the wrapper's own.
def fails(conn: Conn, table: str, message: str, hint: str | None = None) -> None:
    with pytest.raises(psycopg.errors.InternalError_) as e:
        conn.execute(f"SELECT * FROM {table}").fetchall()
    assert e.value.sqlstate == "XX000"
    assert e.value.diag.message_primary == message, e.value.diag.message_primary
    assert "Error in python" not in str(e.value)
    if hint is not None:
        assert hint in (e.value.diag.message_hint or "")


def test_missing_root(conn: Conn) -> None:
    fails(conn, foreign_table(conn, name("noroot"), {}), 'FolderFDW needs the table option "root"',
          "OPTIONS (root '/path/to/folder')")


def test_unknown_option_and_column(conn: Conn, tree: Path) -> None:
    fails(conn, foreign_table(conn, name("typo"), {"root": tree, "recursve": "false"}),
          "FolderFDW has no option recursve", "root, recursive, media_type, include_hidden")
    fails(conn, foreign_table(conn, name("badcol"), {"root": tree}, "path text, colour text"),
          "FolderFDW has no column colour", "Its columns: path, file_name")


def test_bad_boolean_and_media_type(conn: Conn, tree: Path) -> None:
    fails(conn, foreign_table(conn, name("badbool"), {"root": tree, "recursive": "maybe"}),
          "FolderFDW option \"recursive\" must be true or false, got 'maybe'")
    fails(conn, foreign_table(conn, name("badmedia"), {"root": tree, "media_type": "pictures"}),
          "media_type must be one of image, audio, video, other or NULL; got 'pictures'")


def test_missing_and_unreadable_folder(conn: Conn, files: Path, tree: Path) -> None:
    fails(conn, foreign_table(conn, name("gone"), {"root": tree / "nope"}),
          f'folder "{tree / "nope"}" does not exist', "database server's file system")
    fails(conn, foreign_table(conn, name("afile"), {"root": tree / "notes.txt"}),
          f'"{tree / "notes.txt"}" is not a folder')
    locked = files / name("locked")
    locked.mkdir()
    os.chmod(locked, 0o000)  # the server never runs as root, so it cannot list it
    try:
        table = foreign_table(conn, name("locked"), {"root": locked})
        fails(conn, table, f'could not open folder "{locked}": permission denied',
              "readable by the operating-system user the server runs as")
    finally:
        os.chmod(locked, 0o755)
        locked.rmdir()
