"""Turning an input value (a path, or the content as bytea) into bytes.

Values arrive in two shapes: raw from an SPI cursor (str path, or bytes for
bytea), or decoded from jsonb in predict_batch (str path, or bytea rendered by
to_jsonb as a ``"\\x..."`` hex string).

File access follows PostgreSQL's rule for server files: superusers and members
of pg_read_server_files read anywhere the server's OS user can; everybody else
only below ``thanosql.data_dir`` (checked on the resolved real path, so ``..``
and symlinks cannot escape it). Relative paths resolve under thanosql.data_dir.

``MediaReader`` is built on the main thread (it asks the server for the
settings once) and is then pure Python: decoding threads call ``read``.
"""

from __future__ import annotations

import os
from typing import Any

from thanosql_pg.algorithms.base import Row
from thanosql_pg.errors import DataError, FileError, InsufficientPrivilege, NullValue

_SETTINGS_SQL = (
    "SELECT pg_catalog.current_setting('thanosql.data_dir') AS data_dir,"
    " pg_catalog.pg_has_role('pg_read_server_files', 'USAGE') AS unrestricted"
)
_plan: Any = None


class MediaReader:
    def __init__(self, data_dir: str, unrestricted: bool, *, column: str = "input",
                 from_json: bool = False) -> None:
        self.data_dir = data_dir or ""
        self.unrestricted = unrestricted
        self.column = column
        self.from_json = from_json
        self._real_base = os.path.realpath(self.data_dir) if self.data_dir else ""

    @classmethod
    def for_session(cls, *, column: str = "input", from_json: bool = False) -> MediaReader:
        import plpy

        global _plan
        if _plan is None:
            _plan = plpy.prepare(_SETTINGS_SQL)
        row = plpy.execute(_plan)[0]
        return cls(row["data_dir"] or "", bool(row["unrestricted"]), column=column, from_json=from_json)

    # -- thread-safe from here on: no plpy -----------------------------------------
    def describe(self, row: Row) -> str:
        where = f" (row {row.rn})" if row.rn > 0 else ""
        v = row.value
        if isinstance(v, str) and not self._is_hex(v):
            return f'file "{v}"{where}'
        return f'{self.column} value{where}'

    def _is_hex(self, v: str) -> bool:
        return self.from_json and v.startswith("\\x")

    def read(self, row: Row) -> bytes:
        v = row.value
        where = f" in row {row.rn}" if row.rn > 0 else ""
        if v is None:
            raise NullValue(
                f'column "{self.column}" is NULL{where}',
                hint=f'Filter NULLs out (WHERE "{self.column}" IS NOT NULL),'
                " or add on_error='skip' to OPTIONS.",
            )
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)
        if not isinstance(v, str):
            raise DataError(
                f'column "{self.column}" must hold a file path (text) or the content (bytea);'
                f" got {type(v).__name__}{where}",
                sqlstate="42804",  # datatype_mismatch
            )
        if self._is_hex(v):
            try:
                return bytes.fromhex(v[2:])
            except ValueError:
                pass  # not bytea after all: a path that starts with \x
        path = self.resolve_path(v)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileError(
                f'{self.describe(row)} does not exist',
                detail=f"resolved to {path}" if path != v else None,
                hint="Relative paths resolve under thanosql.data_dir"
                + (f" ({self.data_dir})." if self.data_dir else " (not set)."),
            ) from None
        except IsADirectoryError:
            raise FileError(f"{self.describe(row)} is a directory, not a file") from None
        except PermissionError:
            raise FileError(
                f"could not read {self.describe(row)}: permission denied",
                hint="The file must be readable by the operating-system user the PostgreSQL server runs as.",
                sqlstate="58030",  # io_error
            ) from None
        except OSError as e:
            raise FileError(f"could not read {self.describe(row)}: {e.strerror or e}",
                            sqlstate="58030") from None

    def resolve_path(self, path: str) -> str:
        """The file a path names, after the privilege check; raises when the
        caller may not read it."""
        if not os.path.isabs(path):
            if not self.data_dir:
                raise FileError(
                    f'relative path "{path}" cannot be resolved: thanosql.data_dir is not set',
                    hint="Use absolute paths, or ask a superuser to set thanosql.data_dir.",
                )
            path = os.path.join(self.data_dir, path)
        if self.unrestricted:
            return path
        real = os.path.realpath(path)
        if not self._real_base or os.path.commonpath([real, self._real_base]) != self._real_base:
            raise InsufficientPrivilege(
                f'permission denied to read file "{path}"',
                hint="Only superusers and members of pg_read_server_files may read files outside "
                f"thanosql.data_dir ({self.data_dir or 'not set'}).",
            )
        return real
