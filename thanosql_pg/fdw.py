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
with GRANT who may read the foreign table, as with file_fdw. The wrapper reads
the folder as the server's OS user, so the GRANT is the whole access rule.

multicorn2 is neither in Debian nor on PyPI: scripts/install-multicorn.sh (part
of ``make setup``, and of the Docker image) builds it from source, installs its
C extension into PostgreSQL and its Python package into the project's
virtualenv, next to thanosql_pg. The backend's embedded Python finds both
through a small path hook that script installs (see its comments): on the first
import of ``multicorn`` or ``thanosql_pg`` that the ordinary path cannot
satisfy, it adds the server's thanosql.python_lib_dir as thanosql._load does,
so a session may read a foreign table before any thanosql function.
Without multicorn this module still imports, so that the scanner logic stays
testable, but the wrapper cannot be used.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from thanosql_pg import scanner
from thanosql_pg.errors import InvalidOption, ThanoSQLError


def _bind_pglast_in_backend() -> None:
    """In a backend where this module is the first to load thanosql_pg (a foreign
    table read before any thanosql function), load pglast's parser as
    thanosql._load does, with RTLD_DEEPBIND: _load skips that once thanosql_pg is
    loaded, and bound to the backend's own symbols pglast's copy of the parser crashes."""
    if "pglast.parser" in sys.modules:
        return
    try:
        if os.path.basename(os.path.realpath("/proc/self/exe")) != "postgres":
            return
    except OSError:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
    try:
        import pglast.parser  # noqa: F401
    except ImportError:
        pass  # thanosql._load reports it, with a hint
    finally:
        sys.setdlopenflags(flags)


_bind_pglast_in_backend()

try:
    from multicorn import ForeignDataWrapper
    from multicorn.utils import log_to_postgres
except ImportError:  # not installed: see the module docstring
    ForeignDataWrapper = object

    def log_to_postgres(message: str, level: int = logging.INFO, hint: str | None = None,
                        detail: str | None = None) -> None:
        logging.getLogger(__name__).log(level, message)


def available(conn: Any) -> bool:
    """Whether the FolderFDW can be used with ``conn``'s server (for clients on the server's
    machine and virtualenv: the tour, the tests): multicorn's extension installed in
    PostgreSQL *and* its Python package in this virtualenv. Either without the other
    happens (a new clone on a machine that built multicorn for another one, with no
    source at hand): the wrapper then fails on its first import."""
    import importlib.util

    installed = conn.execute("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'multicorn'")
    return installed.fetchone() is not None and importlib.util.find_spec("multicorn") is not None


_TRUE = {"true", "t", "yes", "on", "1"}
_FALSE = {"false", "f", "no", "off", "0"}
_OPTIONS = ("root", "recursive", "media_type", "include_hidden")


def _flag(options: dict[str, str], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise InvalidOption(f'FolderFDW option "{name}" must be true or false, got {value!r}')


def _fail(error: ThanoSQLError) -> None:
    """Report ``error`` as a PostgreSQL ERROR with its own message, hint and detail
    (raised by multicorn once the wrapper's method returns). multicorn cannot pass
    a SQLSTATE: every error of a wrapper is XX000 (internal_error)."""
    log_to_postgres(error.message, logging.ERROR, hint=error.hint, detail=error.detail)


class FolderFDW(ForeignDataWrapper):  # type: ignore[misc, valid-type, unused-ignore]  # multicorn: only in the server
    def __init__(self, options: dict[str, str], columns: dict[str, Any]) -> None:
        if ForeignDataWrapper is not object:
            super().__init__(options, columns)
        try:
            self._configure(options, columns)
        except ThanoSQLError as e:
            _fail(e)

    def _configure(self, options: dict[str, str], columns: dict[str, Any]) -> None:
        if not options.get("root"):
            raise InvalidOption('FolderFDW needs the table option "root"',
                                hint="CREATE FOREIGN TABLE ... SERVER ... OPTIONS (root '/path/to/folder')")
        unknown = set(options) - set(_OPTIONS) - {"wrapper"}  # multicorn passes the server's options too
        if unknown:
            raise InvalidOption(f"FolderFDW has no option {', '.join(sorted(unknown))}",
                                hint="Its options: " + ", ".join(_OPTIONS))
        extra = set(columns) - set(scanner.COLUMNS)
        if extra:
            raise InvalidOption(f"FolderFDW has no column {', '.join(sorted(extra))}",
                                hint="Its columns: " + ", ".join(scanner.COLUMNS))
        self.root = options["root"]
        self.recursive = _flag(options, "recursive", True)
        self.include_hidden = _flag(options, "include_hidden", False)
        self.media_type = scanner.check_media_filter(options.get("media_type"))
        self.columns = columns

    def execute(self, quals: list[Any], columns: set[str], sortkeys: Any = None) -> Iterator[dict[str, Any]]:
        # Quals are not pushed down: PostgreSQL re-checks them, and the walk
        # itself is the cost whatever the filter.
        stats = scanner.ScanStats()
        wanted = [c for c in scanner.COLUMNS if c in columns] or list(scanner.COLUMNS)
        rows = scanner.scan(self.root, recursive=self.recursive, media_type=self.media_type,
                            include_hidden=self.include_hidden, stats=stats)
        try:
            first = next(rows, None)  # errors about the root come before the first row
        except ThanoSQLError as e:
            _fail(e)
            return
        if first is not None:
            for entry in itertools.chain((first,), rows):
                values = dict(zip(scanner.COLUMNS, entry.as_tuple(), strict=True))
                yield {c: values[c] for c in wanted}
        if stats.skipped:
            log_to_postgres(f"FolderFDW {stats.summary()}", logging.WARNING)
