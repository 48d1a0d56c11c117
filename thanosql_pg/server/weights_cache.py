"""A model's weights, shared between sessions through a memory-mapped file.

Every session that used a model read its weights out of thanosql.model_chunks
into its own memory: eight connections PREDICTing with one model held eight
copies. Now the first session to load a version writes its weights once to a
file of the server's cache (named by the version's SHA-256, checked against
the catalog), and every session maps that file copy-on-write: the pages sit
once in the OS page cache, shared by all, and a session that writes to a
tensor (FIT trains its base model) gets private copies of just those pages.

The file is checked against the catalog's hash each time a session maps it, so a
damaged or stale file is never used: it is rewritten from the database. That
hash is the server's own (thanosql._model_seal computes it from the stored
chunks; no caller can write one), so a file is only ever used for the weights
whose bytes it holds. The
database stays the source of truth (dump/restore, replicas); the cache is
disposable.

Settings (superuser): thanosql.cache_dir (default: ``thanosql_cache`` in the
server's data directory, which is every backend's working directory; ``off``
disables the cache), thanosql.cache_size (MB kept; least recently used files
go first).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plpy

from thanosql_pg.errors import DataCorrupted
from thanosql_pg.server import spi

_SETTINGS = ("SELECT name, setting FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=)"
             " ANY (ARRAY['thanosql.cache_dir', 'thanosql.cache_size'])")


def settings() -> tuple[Path | None, int]:
    """(the cache folder or None when off, its size limit in bytes)."""
    values = {r["name"]: r["setting"] for r in plpy.execute(spi.plan(_SETTINGS))}
    where = values.get("thanosql.cache_dir", "")
    size_mb = int(values.get("thanosql.cache_size", "8192") or 0)
    if where == "off" or size_mb <= 0:
        return None, 0
    # a backend's working directory is the server's data directory
    return Path(where or "thanosql_cache").absolute(), size_mb << 20


PIECE = 1 << 20  # the chunk size the catalog's hash is made of (catalog.CHUNK_BYTES)


def weights_digest(data: bytes | memoryview) -> str:
    """The catalog's hash of weights (thanosql._weights_digest): SHA-256 over the SHA-256
    of each 1 MiB piece, in order."""
    view = memoryview(data)
    outer = hashlib.sha256()
    for start in range(0, len(view), PIECE):
        outer.update(hashlib.sha256(view[start:start + PIECE]).digest())
    return outer.hexdigest()


def payload(record: Any, read: Callable[[Any], bytes]) -> bytes | memoryview:
    """The weights of ``record``'s current version: a memoryview of the shared file,
    or (no cache) the bytes ``read(record)`` returns from the catalog."""
    folder, limit = settings()
    if folder is None:
        return read(record)
    expected = record.payload_sha256
    if expected:
        mapped = _map_checked(folder / f"{expected}.safetensors", expected)
        if mapped is not None:
            return mapped
    data = read(record)
    digest = weights_digest(data)
    if expected and digest != expected:
        raise DataCorrupted(f'the weights of model "{record.name}" do not match their recorded hash',
                            hint="The stored model is damaged: restore it from a backup, or BUILD it again.")
    path = folder / f"{digest}.safetensors"
    try:
        _write(folder, path, data, limit)
    except OSError as e:  # a full or read-only disk: the cache is an optimisation, go on without it
        plpy.notice(f"thanosql: cannot write the weights cache ({e.strerror or e}); using private memory")
        return data
    mapped = _map_checked(path, digest)
    return mapped if mapped is not None else data


def _map_checked(path: Path, sha256: str) -> memoryview | None:
    """``path`` mapped copy-on-write, if it exists and holds exactly the hashed bytes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    except OSError:
        return None
    view = memoryview(mapped)
    if weights_digest(view) != sha256:
        view.release()
        mapped.close()
        try:
            path.unlink()  # damaged: the next load writes it again
        except OSError:
            pass
        return None
    os.utime(path)  # recently used: evicted last
    return view


def _write(folder: Path, path: Path, data: bytes, limit: int) -> None:
    """Write ``path`` atomically (a temporary file renamed: a reader sees it whole or not
    at all; two writers of the same weights write the same bytes), then trim the cache."""
    folder.mkdir(mode=0o700, exist_ok=True)
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _trim(folder, limit, keep=path)


def _trim(folder: Path, limit: int, keep: Path) -> None:
    """Remove the least recently used files until the cache fits ``limit``. A file a
    session has mapped stays readable to it (the OS frees it when unmapped)."""
    files = []
    for p in folder.glob("*.safetensors"):
        if len(p.stem) != 64:  # another session's file being written (.tmp-...)
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files):
        if total <= limit:
            break
        if p == keep:
            continue
        try:
            p.unlink()
            total -= size
        except OSError:
            pass
