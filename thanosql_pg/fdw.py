"""FolderFDW: a folder's files as a foreign table, through multicorn2.

    CREATE EXTENSION multicorn;
    CREATE SERVER folders FOREIGN DATA WRAPPER multicorn
        OPTIONS (wrapper 'thanosql_pg.fdw.FolderFDW');
    CREATE FOREIGN TABLE digit_files (path text, file_name text, size_bytes bigint,
                                      label text, split text, media_type text)
        SERVER folders OPTIONS (root '/data/digits');

Table options: ``root`` (required), ``recursive`` (default true), ``media_type``
(image/audio/video/other; default all), ``include_hidden`` (default false).
The rows are thanosql.scan_folder's, from the same scanner (thanosql_pg/scanner.py);
every query walks the folder again, so new files show up at once.

Access: a multicorn server can only be created by a superuser, who decides
with GRANT who may read the foreign table, as with file_fdw.

multicorn2 is not on PyPI: it is built from source (the Dockerfile does that
with WITH_MULTICORN=1). Without it this module still imports, so that the
scanner logic stays testable, but the wrapper cannot be used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from thanosql_pg import scanner
from thanosql_pg.errors import InvalidOption

try:
    from multicorn import ForeignDataWrapper
    from multicorn.utils import log_to_postgres
except ImportError:  # not installed: see the module docstring
    ForeignDataWrapper = object

    def log_to_postgres(message: str, level: int = logging.INFO, hint: str | None = None) -> None:
        logging.getLogger(__name__).log(level, message)


_TRUE = {"true", "t", "yes", "on", "1"}
_FALSE = {"false", "f", "no", "off", "0"}


def _flag(options: dict[str, str], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise InvalidOption(f'option "{name}" must be true or false, got {value!r}')


class FolderFDW(ForeignDataWrapper):  # type: ignore[misc, valid-type]  # multicorn: only in the server
    def __init__(self, options: dict[str, str], columns: dict[str, Any]) -> None:
        if ForeignDataWrapper is not object:
            super().__init__(options, columns)
        if not options.get("root"):
            log_to_postgres('FolderFDW needs the table option "root"', logging.ERROR,
                            hint="CREATE FOREIGN TABLE ... SERVER ... OPTIONS (root '/path/to/folder')")
        unknown = set(columns) - set(scanner.COLUMNS)
        if unknown:
            log_to_postgres(f"FolderFDW has no column {', '.join(sorted(unknown))}", logging.ERROR,
                            hint="Its columns: " + ", ".join(scanner.COLUMNS))
        self.root = options.get("root", "")
        self.recursive = _flag(options, "recursive", True)
        self.include_hidden = _flag(options, "include_hidden", False)
        self.media_type = scanner.check_media_filter(options.get("media_type"))
        self.columns = columns

    def execute(self, quals: list[Any], columns: set[str], sortkeys: Any = None) -> Iterator[dict[str, Any]]:
        # Quals are not pushed down: PostgreSQL re-checks them, and the walk
        # itself is the cost whatever the filter.
        stats = scanner.ScanStats()
        wanted = [c for c in scanner.COLUMNS if c in columns] or list(scanner.COLUMNS)
        for entry in scanner.scan(self.root, recursive=self.recursive, media_type=self.media_type,
                                  include_hidden=self.include_hidden, stats=stats):
            values = dict(zip(scanner.COLUMNS, entry.as_tuple(), strict=True))
            yield {c: values[c] for c in wanted}
        if stats.skipped:
            log_to_postgres(f"FolderFDW {stats.summary()}", logging.WARNING)
