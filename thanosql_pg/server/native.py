"""The C module's in-process functions (src/progress.c), called directly.

The progress slots and the count of sessions running models live in shared
memory. Writing them through SQL functions let any session mark itself busy
(shrinking everyone's share of the cores) or write rows it was not running;
now only code running inside this backend can, through these symbols of the
extension's library, which PostgreSQL loads with RTLD_GLOBAL (thanosql._load
calls the library before thanosql_pg is imported). The C functions never raise
an error: nothing may longjmp through Python's frames.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import plpy

_lib: Any = None
_encoding: str | None = None

# The slots' sizes in src/progress.c, terminating NUL included.
STATEMENT_LEN, MODEL_LEN, PHASE_LEN = 16, 128, 32


def _library() -> Any:
    global _lib, _encoding
    if _lib is None:
        lib = ctypes.CDLL(None)  # the process's global symbols: the loaded thanosql.so among them
        lib.thanosql_progress_begin.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.thanosql_progress_begin.restype = None
        lib.thanosql_progress_report.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                                                 ctypes.c_double]
        lib.thanosql_progress_report.restype = None
        lib.thanosql_progress_finish.argtypes = []
        lib.thanosql_progress_finish.restype = None
        lib.thanosql_busy.argtypes = [ctypes.c_int]
        lib.thanosql_busy.restype = ctypes.c_int
        # PostgreSQL's own GetConfigOption(name, missing_ok, restrict_privileged)
        lib.GetConfigOption.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
        lib.GetConfigOption.restype = ctypes.c_char_p
        lib.thanosql_set_local.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.thanosql_set_local.restype = ctypes.c_bool
        lib.GetUserId.argtypes = []
        lib.GetUserId.restype = ctypes.c_uint  # an Oid
        setting = plpy.execute("SELECT pg_catalog.current_setting('server_encoding') AS e")[0]["e"]
        _encoding = _python_codec(setting)
        _lib = lib
    return _lib


def _python_codec(pg_name: str) -> str:
    import codecs

    name = {"SQL_ASCII": "ascii", "UTF8": "utf-8", "WIN1252": "cp1252"}.get(pg_name, pg_name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "ascii"


def _c(text: str | None, size: int) -> bytes:
    """``text`` in the server's encoding, cut at a character to fit ``size`` bytes with its NUL."""
    out = (text or "").encode(_encoding or "ascii", "replace")
    while len(out) >= size:
        text = (text or "")[:-1]
        out = text.encode(_encoding or "ascii", "replace")
    return out


def progress_begin(statement: str, model: str | None) -> None:
    lib = _library()
    lib.thanosql_progress_begin(_c(statement, STATEMENT_LEN), _c(model, MODEL_LEN))


def progress_report(phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
                    samples_per_second: float | None, eta_seconds: float | None) -> None:
    lib = _library()
    lib.thanosql_progress_report(_c(phase, PHASE_LEN), int(epoch or 0), int(epochs or 0), int(step or 0),
                                 int(steps or 0), math.nan if loss is None else float(loss),
                                 float(samples_per_second or 0.0),
                                 -1.0 if eta_seconds is None else float(eta_seconds))


def progress_finish() -> None:
    _library().thanosql_progress_finish()


def setting(name: str) -> str | None:
    """A setting's value as the server holds it, None when there is no such setting:
    GetConfigOption's text (integers in their base unit, booleans 'on'/'off'), as
    thanosql._settings gives it. No SPI: a few microseconds, where an SPI call costs about
    twenty, for what SEARCH IMAGE reads on every call. The calling thread only."""
    lib = _library()
    value = lib.GetConfigOption(name.encode(_encoding or "utf-8"), True, False)
    return None if value is None else bytes(value).decode(_encoding or "utf-8", "replace")


def set_local(name: str, value: str) -> bool:
    """set_config(name, value, true) without SPI (src/thanosql.c): for the rest of the
    transaction; False when the setting refuses the value. Only for a setting that exists
    (``setting`` gave its value). The calling thread only."""
    enc = _encoding or "utf-8"
    return bool(_library().thanosql_set_local(name.encode(enc), value.encode(enc)))


def user_id() -> int:
    """The role the server sees calling (GetUserId(): current_user), without SPI."""
    return int(_library().GetUserId())


def busy(running: bool) -> int:
    """Marks this session as running a model (or not); how many sessions are (0: nobody counts)."""
    return int(_library().thanosql_busy(1 if running else 0))
