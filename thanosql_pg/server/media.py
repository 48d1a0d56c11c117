"""Turning an input value (a path, or the content as bytea) into bytes.

Values arrive in two shapes: raw from an SPI cursor (str path, or bytes for
bytea), or decoded from jsonb in predict_batch (str path, or bytea rendered by
to_jsonb as a ``"\\x..."`` hex string).

File access follows PostgreSQL's rule for server files: superusers and members
of pg_read_server_files read anywhere the server's OS user can; everybody else
only below ``thanosql.data_dir`` (checked on the resolved real path, so ``..``
and symlinks cannot escape it). Relative paths resolve under thanosql.data_dir.

Paths are checked before anything looks at them: a path a role may not read
gets the same error (42501) whether or not the file exists, so the error tells
nothing about the rest of the file system.

``MediaReader`` is built on the main thread (it asks the server for the
settings once per statement) and is then pure Python: decoding threads call
``read`` and use ``limits`` (thanosql.max_image_pixels, thanosql.max_audio_seconds,
thanosql.max_text_bytes).
"""

from __future__ import annotations

import os

from thanosql_pg.algorithms.contract import Row
from thanosql_pg.algorithms.shared.limits import DEFAULT_LIMITS, MediaLimits
from thanosql_pg.errors import FileError, InsufficientPrivilege, IoError, NullValue, ValueTypeMismatch

# thanosql._settings gives integers in their base unit (seconds), whatever unit they were
# set in (current_setting() would format them: '30min'), without building pg_settings.
_SETTINGS_SQL = (
    "SELECT s[1] AS data_dir, pg_catalog.pg_has_role('pg_read_server_files', 'USAGE') AS unrestricted,"
    " s[2] AS max_image_pixels, s[3] AS max_audio_seconds, s[4] AS max_text_bytes"
    " FROM thanosql._settings(ARRAY['thanosql.data_dir', 'thanosql.max_image_pixels',"
    " 'thanosql.max_audio_seconds', 'thanosql.max_text_bytes']) AS s"
)


class MediaReader:
    def __init__(self, data_dir: str, unrestricted: bool, *, column: str = "input",
                 from_json: bool = False, limits: MediaLimits = DEFAULT_LIMITS) -> None:
        self.data_dir = data_dir or ""
        self.unrestricted = unrestricted
        self.column = column
        self.from_json = from_json
        self.limits = limits
        self._real_base = os.path.realpath(self.data_dir) if self.data_dir else ""

    @classmethod
    def for_session(cls, *, column: str = "input", from_json: bool = False) -> MediaReader:
        import plpy

        from thanosql_pg.server import spi

        row = plpy.execute(spi.plan(_SETTINGS_SQL))[0]
        limits = MediaLimits(
            max_image_pixels=int(row["max_image_pixels"] or DEFAULT_LIMITS.max_image_pixels),
            max_audio_seconds=int(row["max_audio_seconds"] or DEFAULT_LIMITS.max_audio_seconds),
            max_text_bytes=int(row["max_text_bytes"] or DEFAULT_LIMITS.max_text_bytes),
        )
        return cls(row["data_dir"] or "", bool(row["unrestricted"]), column=column, from_json=from_json,
                   limits=limits)

    def notice(self, message: str) -> None:
        """A NOTICE to the client (contract.Reader.notice): the calling thread only."""
        import plpy

        plpy.notice(message)

    # -- thread-safe from here on: no plpy -----------------------------------------
    def describe(self, row: Row) -> str:
        where = f" (row {row.rn})" if row.rn > 0 else ""
        v = row.value
        if isinstance(v, str) and not self.is_hex(v):
            return f'file "{v}"{where}'
        return f'{self.column} value{where}'

    def is_hex(self, v: str) -> bool:
        """Whether ``v`` is bytea as hex (\\x...) rather than a path: only in values read from JSON."""
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
            raise ValueTypeMismatch(
                f'column "{self.column}" must hold a file path (text) or the content (bytea);'
                f" got {type(v).__name__}{where}",
            )
        if self.is_hex(v):
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
            raise IoError(
                f"could not read {self.describe(row)}: permission denied",
                hint="The file must be readable by the operating-system user the PostgreSQL server runs as.",
            ) from None
        except OSError as e:
            raise IoError(f"could not read {self.describe(row)}: {e.strerror or e}") from None

    def resolve_path(self, path: str, *, expand_user: bool = False) -> str:
        """The file a path names, after the privilege check; raises when the
        caller may not read it, before and whatever the file system holds there.

        A restricted caller gets the real path (symlinks and ``..`` resolved),
        checked to lie below thanosql.data_dir. ``expand_user``: ``~`` means the
        server's home directory, for callers who may read it; for the others it is
        refused without being looked up (which OS users exist is none of theirs).
        """
        if expand_user and path.startswith("~"):
            if not self.unrestricted:
                raise self._denied(path)
            path = os.path.expanduser(path)
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
            raise self._denied(path)
        return real

    def _denied(self, path: str) -> InsufficientPrivilege:
        # names only what the caller wrote: nothing about what exists there
        return InsufficientPrivilege(
            f'permission denied to read file "{path}"',
            hint="Only superusers and members of pg_read_server_files may read files outside "
            f"thanosql.data_dir ({self.data_dir or 'not set'}).",
        )
