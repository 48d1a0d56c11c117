"""Assertions the test modules share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest


def fails(fn: Callable[[], Any], sqlstate: str, *words: str) -> psycopg.Error:
    """``fn()`` must fail with ``sqlstate``, its message or hint naming each of ``words``."""
    with pytest.raises(psycopg.Error) as ei:
        fn()
    err = ei.value
    assert err.sqlstate == sqlstate, (err.sqlstate, str(err))
    text = f"{err} {err.diag.message_hint or ''}"
    for w in words:
        assert w in text, text
    return err
