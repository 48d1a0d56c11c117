"""What every server module asks of SPI the same way: one cache of prepared plans, and
the session's standard_conforming_strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plpy

# Prepared once per backend and reused: by their text and argument types, so two modules
# that ask the same thing share a plan.
_plans: dict[tuple[str, tuple[str, ...]], Any] = {}


def plan(sql: str, types: Sequence[str] = ()) -> Any:
    """``sql`` prepared with argument ``types``, once per backend."""
    key = (sql, tuple(types))
    found = _plans.get(key)
    if found is None:
        found = _plans[key] = plpy.prepare(sql, list(types))
    return found


def standard_conforming_strings() -> bool:
    """The session's setting, which decides where its strings end ('it\\'s' when off)."""
    rows = plpy.execute(plan("SELECT pg_catalog.current_setting('standard_conforming_strings') AS s"))
    return bool(rows[0]["s"] == "on")


def check_interrupts() -> None:
    """Let a pending cancel (statement_timeout, pg_cancel_backend) through.

    PL/Python code never reaches CHECK_FOR_INTERRUPTS by itself; pg_sleep(0)
    calls it unconditionally, so a pending cancel raises here (57014) and the
    statement's transaction rolls back."""
    plpy.execute(plan("SELECT pg_catalog.pg_sleep(0)"))
