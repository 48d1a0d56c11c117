"""thanosql.scan_folder: list a server folder as rows (see thanosql_pg/scanner.py).

The file-access rule is MediaReader's, the one every statement that reads
files follows: superusers and members of pg_read_server_files list any folder
the server's OS user can; other roles only folders below thanosql.data_dir,
and then symlinks that lead outside it are not followed either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from thanosql_pg import scanner
from thanosql_pg.errors import NullValue
from thanosql_pg.server.media import MediaReader


def scan_folder(path: str | None, recursive: bool | None, media_type: str | None,
                include_hidden: bool | None) -> Iterator[tuple[Any, ...]]:
    """Check the caller's access and the root now (errors before the first row),
    then return a generator of rows; a NOTICE at the end counts what was skipped."""
    if not path:
        raise NullValue("scan_folder needs a folder path")
    reader = MediaReader.for_session(column="path")
    root = reader.resolve_path(path)  # raises InsufficientPrivilege (42501)
    confine = None if reader.unrestricted else os.path.realpath(reader.data_dir)
    scanner.check_root(root)
    scanner.check_media_filter(media_type)
    stats = scanner.ScanStats()
    entries = scanner.scan(root, recursive=recursive is not False, media_type=media_type,
                           include_hidden=bool(include_hidden), confine=confine, stats=stats)
    return _rows(entries, stats)


def _rows(entries: Iterator[scanner.Entry], stats: scanner.ScanStats) -> Iterator[tuple[Any, ...]]:
    import plpy

    for e in entries:
        yield e.as_tuple()
    if stats.skipped:
        plpy.notice(f"scan_folder {stats.summary()}")
