"""The shared weights cache (thanosql_pg.server.weights_cache): sessions that use the
same model map one file of the server's cache instead of each reading the weights
into private memory; the file is checked against the catalog's hash every time it is
mapped, so a damaged file is rewritten from the database, never used.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import digits
import psycopg
import pytest

Conn = psycopg.Connection
PREFIX = "wc_" + uuid.uuid4().hex[:6]
SMALL = {"image_col": "path", "label_col": "label", "epochs": 1, "input_size": 32, "pretrained": False,
         "batch_size": 8}


@pytest.fixture(scope="module")
def model(conn: Conn, cluster: dict) -> Iterator[dict]:
    files = Path(cluster["files_dir"])
    train, test = digits.tables(conn, files, f"{PREFIX}_d", train_per_class=4, test_per_class=2)
    name = f"{PREFIX}_m"
    conn.execute("SELECT * FROM thanosql.build_model(%s, 'ConvNeXt_Tiny', %s, %s)",
                 [name, json.dumps(SMALL), f"SELECT path, label FROM {train}"])
    sha = conn.execute(
        "SELECT v.payload_sha256 FROM thanosql.models m JOIN thanosql.model_versions v"
        " ON v.model_id = m.id AND v.version = m.version WHERE m.name = %s", [name]).fetchone()[0]
    cache = Path(cluster["data_dir"]) / "thanosql_cache"
    yield {"name": name, "test": test, "sha": sha, "file": cache / f"{sha}.safetensors"}
    for t in (train, test):
        conn.execute(f"DROP TABLE IF EXISTS {t}")


def predict(dsn: str, m: dict) -> tuple[int, list[str], str]:
    """(the backend's pid, its predictions, its memory map) from a fresh session."""
    with psycopg.connect(dsn, autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        rows = c.execute(
            f"SELECT thanosql.predict_batch(thanosql.prepare('predict', %s, %s::jsonb),"
            f" (SELECT array_agg(to_jsonb(path) ORDER BY id) FROM {m['test']}))",
            [m["name"], json.dumps({"image_col": "path"})]).fetchone()[0]
        maps = Path(f"/proc/{pid}/maps").read_text() if Path(f"/proc/{pid}/maps").exists() else ""
        return pid, rows, maps


def digest(data: bytes) -> str:
    """The catalog's weights hash, computed here independently: SHA-256 over each 1 MiB
    piece's SHA-256."""
    return hashlib.sha256(b"".join(hashlib.sha256(data[i:i + (1 << 20)]).digest()
                                   for i in range(0, len(data), 1 << 20))).hexdigest()


def test_catalog_records_the_weights_hash(conn: Conn, model: dict) -> None:
    assert len(model["sha"]) == 64
    chunks = conn.execute(
        "SELECT string_agg(c.data, ''::bytea ORDER BY c.seq) FROM thanosql.model_chunks c"
        " JOIN thanosql.models m ON m.id = c.model_id AND m.version = c.version WHERE m.name = %s",
        [model["name"]]).fetchone()[0]
    assert len(chunks) > 1 << 20  # several chunks: the hash is over their hashes, in order
    assert digest(chunks) == model["sha"]


def test_sessions_share_one_mapped_file(server_dsn: str, model: dict) -> None:
    _, first, maps1 = predict(server_dsn, model)
    assert model["file"].exists(), "the first load writes the cache file"
    assert digest(model["file"].read_bytes()) == model["sha"]
    _, second, maps2 = predict(server_dsn, model)
    assert first == second and len(first) == 20
    # both backends mapped the same file (one copy in the page cache)
    assert str(model["file"]) in maps1 and str(model["file"]) in maps2


def test_damaged_file_is_rewritten_not_used(server_dsn: str, model: dict) -> None:
    _, before, _ = predict(server_dsn, model)
    data = bytearray(model["file"].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    model["file"].write_bytes(bytes(data))
    _, after, _ = predict(server_dsn, model)
    assert after == before
    assert digest(model["file"].read_bytes()) == model["sha"]


def test_cache_off_reads_the_catalog(server_dsn: str, model: dict) -> None:
    model["file"].unlink(missing_ok=True)
    with psycopg.connect(server_dsn, autocommit=True, options="-c thanosql.cache_dir=off") as c:
        rows = c.execute(
            f"SELECT thanosql.predict_batch(thanosql.prepare('predict', %s, %s::jsonb),"
            f" (SELECT array_agg(to_jsonb(path) ORDER BY id) FROM {model['test']}))",
            [model["name"], json.dumps({"image_col": "path"})]).fetchone()[0]
    assert len(rows) == 20
    assert not model["file"].exists()


def test_only_superusers_choose_the_cache_folder(conn: Conn, server_dsn: str) -> None:
    role = f"{PREFIX}_user"
    conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        dsn = server_dsn.replace("root@", f"{role}@")
        with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(psycopg.Error) as ei:
            c.execute("SET thanosql.cache_dir = '/tmp'")
        assert ei.value.sqlstate == "42501"
    finally:
        conn.execute(f"DROP ROLE {role}")
