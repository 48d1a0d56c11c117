"""What ``thanosql.prepare`` decided, kept in the backend: the batch functions take
nothing else.

PREDICT and CONVERT call ``thanosql.prepare`` once per statement, then
``predict_batch``/``convert_batch`` once per batch of rows. The batch functions
used to take the whole configuration back as jsonb, so a caller could hand them
one that ``prepare`` never made (a batch size it had refused, another device or
modality). Now ``prepare`` keeps its result here, under a random handle that
only this backend knows, and returns the handle with the few fields the
rewritten SQL reads (the input column); the batch functions look the handle up
and use the stored configuration, whatever else their argument holds. A handle
is good for the role that prepared it, in this backend, until it is one of the
oldest ``MAX_HANDLES``.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict

import plpy

from thanosql_pg.algorithms.contract import Resolved
from thanosql_pg.algorithms.registry import Options
from thanosql_pg.errors import InvalidParameterValue
from thanosql_pg.server import spi

MAX_HANDLES = 64  # a statement needs one; nested and repeated statements a few

_issued: OrderedDict[str, tuple[int, Options, Resolved]] = OrderedDict()


def _role() -> int:
    """The current role's OID, as the server sees it (a handle is not for another role)."""
    rows = plpy.execute(spi.plan("SELECT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))::oid"
                                 " AS r"))
    return int(rows[0]["r"])


HANDLE = "handle"  # the key of prepare's jsonb that names what it kept
INPUT_COL = "input_col"  # the key the rewritten SQL reads (preprocessor/printer.py)


def issue(opts: Options, resolved: Resolved) -> str:
    """Keep what prepare decided (both frozen); the jsonb it returns: the handle and the
    input column."""
    handle = secrets.token_urlsafe(18)
    _issued[handle] = (_role(), opts, resolved)
    while len(_issued) > MAX_HANDLES:
        _issued.popitem(last=False)
    return json.dumps({INPUT_COL: resolved.input_col, HANDLE: handle})


def take(prepared: str, statement: str) -> tuple[Options, Resolved]:
    """What ``prepare`` kept for the handle in ``prepared``, for a batch function of
    ``statement`` ('predict' or 'convert')."""
    try:
        handle = dict(json.loads(prepared)).get(HANDLE)
    except (ValueError, TypeError):
        handle = None
    found = _issued.get(handle) if isinstance(handle, str) else None
    if found is None or found[0] != _role() or not isinstance(handle, str):
        raise InvalidParameterValue(
            "this configuration was not made by thanosql.prepare in this session",
            hint="Pass the result of thanosql.prepare(statement, model, options), called in the same"
                 " statement (as PREDICT and CONVERT do).")
    if found[2].statement != statement:
        raise InvalidParameterValue(
            f"thanosql.{statement}_batch takes the result of thanosql.prepare('{statement}', ...)")
    _issued.move_to_end(handle)
    return found[1], found[2]
