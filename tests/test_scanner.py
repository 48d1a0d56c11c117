"""Folder datasets: thanosql_pg.scanner (pure Python), thanosql.scan_folder (SQL)
and the multicorn FolderFDW (skipped where multicorn is not installed).

The tests run as root, which can read anything: unreadable files are
simulated in the pure-Python tests, and made real for the SQL function, whose
server runs as the `postgres` OS user.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from thanosql_pg import scanner
from thanosql_pg.errors import FileError, InvalidOption, WrongObjectType


def make_tree(root: Path) -> Path:
    """An ImageFolder-style tree with splits, a file outside any split, hidden files
    and several kinds of media. Returns root."""
    files = {
        "train/cat/c1.png": b"x" * 10,
        "train/cat/c2.jpg": b"x" * 11,
        "train/dog/d1.png": b"x" * 12,
        "Validation/cat/c3.png": b"x" * 13,
        "test/dog/d2.webp": b"x" * 14,
        "test/loose.png": b"x" * 15,
        "audio/hello.wav": b"x" * 16,
        "clips/a/b/movie.mp4": b"x" * 17,
        "notes.txt": b"x" * 18,
        ".hidden/h.png": b"x",
        "train/cat/.DS_Store": b"x",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def rows(root: Path, **kw: object) -> dict[str, tuple]:
    """Scan results keyed by path relative to root: (label, split, media_type, size)."""
    return {os.path.relpath(e.path, root): (e.label, e.split, e.media_type, e.size_bytes)
            for e in scanner.scan(str(root), **kw)}  # type: ignore[arg-type]


# --- pure Python -------------------------------------------------------------------
def test_labels_splits_and_media_types(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    assert rows(root) == {
        "notes.txt": (None, None, "other", 18),
        "Validation/cat/c3.png": ("cat", "val", "image", 13),
        "audio/hello.wav": ("audio", None, "audio", 16),
        "clips/a/b/movie.mp4": ("b", None, "video", 17),
        "test/dog/d2.webp": ("dog", "test", "image", 14),
        "test/loose.png": (None, "test", "image", 15),  # directly in a split folder: no label
        "train/cat/c1.png": ("cat", "train", "image", 10),
        "train/cat/c2.jpg": ("cat", "train", "image", 11),
        "train/dog/d1.png": ("dog", "train", "image", 12),
    }


def test_order_is_stable_depth_first(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    paths = [os.path.relpath(e.path, root) for e in scanner.scan(str(root))]
    assert paths[0] == "notes.txt"  # a folder's files first, then its folders by name
    assert paths == [os.path.relpath(e.path, root) for e in scanner.scan(str(root) + "/")]
    assert paths.index("train/cat/c1.png") < paths.index("train/cat/c2.jpg") < paths.index("train/dog/d1.png")


def test_options(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    assert set(rows(root, recursive=False)) == {"notes.txt"}
    assert set(rows(root, media_type="AUDIO")) == {"audio/hello.wav"}
    hidden = rows(root, include_hidden=True)
    assert hidden[".hidden/h.png"] == (".hidden", None, "image", 1)
    assert hidden["train/cat/.DS_Store"] == ("cat", "train", "other", 1)
    with pytest.raises(InvalidOption):
        list(scanner.scan(str(root), media_type="pictures"))


def test_file_symlinks_are_followed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"y" * 99)
    (root / "train/dog/link.png").symlink_to(outside)
    (root / "train/dog/broken.png").symlink_to(tmp_path / "missing.png")
    stats = scanner.ScanStats()
    found = {os.path.relpath(e.path, root): e for e in scanner.scan(str(root), stats=stats)}
    link = found["train/dog/link.png"]
    # the target's size, the link's place
    assert (link.size_bytes, link.label, link.split) == (99, "dog", "train")
    assert "train/dog/broken.png" not in found
    assert [(os.path.relpath(p, root), why) for p, why in stats.skipped] == [
        ("train/dog/broken.png", "broken symbolic link")]


def test_directory_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    (root / "train/cat/loop").symlink_to(root)  # back up to the root: a loop
    (root / "train/again").symlink_to(root / "train/dog")  # a second way into a walked folder
    extra = tmp_path / "extra"
    (extra / "fox").mkdir(parents=True)
    (extra / "fox/f.png").write_bytes(b"z")
    (root / "train/linked").symlink_to(extra)  # a folder link that does not loop: followed
    found = [os.path.relpath(e.path, root) for e in scanner.scan(str(root))]
    assert len(found) == len(set(found)) == 10
    assert "train/linked/fox/f.png" in found
    assert not any(p.startswith(("train/cat/loop", "train/again")) for p in found)


def test_confine_keeps_links_inside(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.png").write_bytes(b"s")
    (root / "train/cat/outside.png").symlink_to(secret / "s.png")
    (root / "train/outside_dir").symlink_to(secret)
    (root / "train/cat/inside.png").symlink_to(root / "train/dog/d1.png")
    stats = scanner.ScanStats()
    found = {os.path.relpath(e.path, root) for e in scanner.scan(str(root), confine=str(root), stats=stats)}
    assert "train/cat/inside.png" in found
    assert not any("outside" in p for p in found)
    assert sorted(os.path.relpath(p, root) for p, _ in stats.skipped) == [
        "train/cat/outside.png", "train/outside_dir"]


def test_unreadable_entries_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "data")
    locked_dir, locked_file = root / "train/dog", root / "train/cat/c2.jpg"
    real_scandir, real_access = os.scandir, os.access

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if Path(path) == locked_dir:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def access(path: str, mode: int) -> bool:
        return Path(path) != locked_file and real_access(path, mode)

    monkeypatch.setattr(scanner.os, "scandir", scandir)
    monkeypatch.setattr(scanner.os, "access", access)
    stats = scanner.ScanStats()
    found = {os.path.relpath(e.path, root) for e in scanner.scan(str(root), stats=stats)}
    assert "train/cat/c1.png" in found and "train/cat/c2.jpg" not in found
    assert not any(p.startswith("train/dog") for p in found)
    assert sorted(stats.skipped) == sorted([(str(locked_dir), "Permission denied"),
                                            (str(locked_file), "permission denied")])
    assert stats.summary().startswith("skipped 2 unreadable files or folders: ")
    assert stats.files == len(found)


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="does not exist") as e:
        list(scanner.scan(str(tmp_path / "nope")))
    assert e.value.sqlstate == "58P01"
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(WrongObjectType, match="is not a folder") as e:
        list(scanner.scan(str(tmp_path / "f.png")))
    assert e.value.sqlstate == "42809"


def test_media_type_of() -> None:
    names = ("a.PNG", "b.jpeg", "c.flac", "d.m4a", "e.mkv", "f.csv", "g")
    kinds = {n: scanner.media_type_of(n) for n in names}
    assert kinds == {"a.PNG": "image", "b.jpeg": "image", "c.flac": "audio", "d.m4a": "audio",
                     "e.mkv": "video", "f.csv": "other", "g": "other"}


# --- the SQL function, through the cluster ------------------------------------------------
@pytest.fixture
def server_tree(cluster: dict) -> Iterator[Path]:
    """A tree under thanosql.data_dir (the cluster's files dir) that the server can read."""
    root = Path(cluster["files_dir"]) / f"scan_{uuid.uuid4().hex[:8]}"
    make_tree(root)
    for d, _, names in os.walk(root):
        os.chmod(d, 0o755)
        for n in names:
            os.chmod(os.path.join(d, n), 0o644)
    yield root
    for d, _, _ in os.walk(root):
        os.chmod(d, 0o755)
    shutil.rmtree(root)


def scan_sql(conn: psycopg.Connection, path: str, *args: object) -> list[tuple]:
    extra = "".join(f", {a}" for a in args)
    return conn.execute(f"SELECT * FROM thanosql.scan_folder(%s{extra})", (path,)).fetchall()


def test_sql_scan_folder(direct: psycopg.Connection, server_tree: Path) -> None:
    got = scan_sql(direct, str(server_tree))
    by_path = {os.path.relpath(r[0], server_tree): r[1:] for r in got}
    assert by_path["train/cat/c1.png"] == ("c1.png", 10, "cat", "train", "image")
    assert by_path["Validation/cat/c3.png"] == ("c3.png", 13, "cat", "val", "image")
    assert by_path["notes.txt"] == ("notes.txt", 18, None, None, "other")
    assert len(got) == 9
    # Named arguments, and a path relative to thanosql.data_dir.
    audio = direct.execute("SELECT path, media_type FROM thanosql.scan_folder(%s, media_type => 'audio')",
                           (server_tree.name,)).fetchall()
    assert audio == [(str(server_tree / "audio/hello.wav"), "audio")]
    assert len(scan_sql(direct, str(server_tree), "recursive => false")) == 1


def test_sql_skips_unreadable_entries_with_a_notice(direct: psycopg.Connection, server_tree: Path) -> None:
    os.chmod(server_tree / "train/dog", 0o000)  # owned by root: the postgres OS user cannot list it
    os.chmod(server_tree / "train/cat/c2.jpg", 0o000)
    notices: list[str] = []
    direct.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    got = {os.path.relpath(r[0], server_tree) for r in scan_sql(direct, str(server_tree))}
    assert "train/cat/c1.png" in got and "train/cat/c2.jpg" not in got
    assert not any(p.startswith("train/dog") for p in got)
    assert len(notices) == 1 and "skipped 2 unreadable files or folders" in notices[0], notices


def test_sql_missing_root(direct: psycopg.Connection, server_tree: Path) -> None:
    with pytest.raises(psycopg.errors.UndefinedFile, match="does not exist"):
        scan_sql(direct, str(server_tree / "nope"))
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        direct.execute("SELECT * FROM thanosql.scan_folder(NULL)")


@pytest.fixture
def plain_role(direct: psycopg.Connection, server_dsn: str) -> Iterator[psycopg.Connection]:
    """A connection as a role that is neither superuser nor in pg_read_server_files."""
    role = "scan_" + uuid.uuid4().hex[:8]
    direct.execute(f"CREATE ROLE {role} LOGIN")
    try:
        with psycopg.connect(server_dsn, user=role, autocommit=True) as conn:
            yield conn
    finally:
        direct.execute(f"DROP ROLE {role}")


def test_sql_permission_rule(plain_role: psycopg.Connection, server_tree: Path, tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside")
    os.chmod(tmp_path, 0o755)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        scan_sql(plain_role, str(outside))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        scan_sql(plain_role, str(server_tree / ".." / ".." / "data"))  # no escape with ..
    # Below thanosql.data_dir it may, but links out of it are not followed.
    (server_tree / "train/cat/escape.png").symlink_to(outside / "train/cat/c1.png")
    (server_tree / "escape_dir").symlink_to(outside)
    got = {os.path.relpath(r[0], server_tree) for r in scan_sql(plain_role, str(server_tree))}
    assert "train/cat/c1.png" in got
    assert not any("escape" in p for p in got)


# --- the multicorn foreign data wrapper --------------------------------------------------
def test_fdw_python(tmp_path: Path) -> None:
    try:
        import multicorn  # noqa: F401
    except ImportError:
        print("skipping: multicorn is not importable (build multicorn2 from source; see the Dockerfile)")
        pytest.skip("multicorn is not importable: build multicorn2 from source (Dockerfile WITH_MULTICORN=1)")
    from thanosql_pg.fdw import FolderFDW

    root = make_tree(tmp_path / "data")
    fdw = FolderFDW({"root": str(root)}, {c: None for c in scanner.COLUMNS})
    got = list(fdw.execute([], set(scanner.COLUMNS)))
    assert len(got) == 9 and {r["split"] for r in got} == {"train", "val", "test", None}


def test_fdw_sql(direct: psycopg.Connection, server_tree: Path) -> None:
    if not direct.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'multicorn'").fetchone():
        print("skipping: the multicorn extension is not installed in this PostgreSQL")
        pytest.skip("the multicorn extension is not installed (Dockerfile WITH_MULTICORN=1 builds it)")
    suffix = uuid.uuid4().hex[:8]
    direct.execute("CREATE EXTENSION IF NOT EXISTS multicorn")
    direct.execute(f"CREATE SERVER folders_{suffix} FOREIGN DATA WRAPPER multicorn"
                   " OPTIONS (wrapper 'thanosql_pg.fdw.FolderFDW')")
    try:
        direct.execute(f"CREATE FOREIGN TABLE files_{suffix} (path text, file_name text, size_bytes bigint,"
                       f" label text, split text, media_type text) SERVER folders_{suffix}"
                       f" OPTIONS (root '{server_tree}')")
        got = direct.execute(f"SELECT label, count(*) FROM files_{suffix} WHERE split = 'train'"
                             " GROUP BY label ORDER BY label").fetchall()
        assert got == [("cat", 2), ("dog", 1)]
    finally:
        direct.execute(f"DROP SERVER folders_{suffix} CASCADE")
