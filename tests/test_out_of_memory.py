"""Out of memory is a clean 53200 error, never a dead backend.

No GPU here, so the errors are raised inside a real backend, through the real entry-point
wrapper that every thanosql function uses: torch's own OutOfMemoryError (what CUDA
raises) and Python's MemoryError. The session must survive and keep working.
"""

from __future__ import annotations

import psycopg
import pytest

RAISE = """
DO LANGUAGE plpython3u $$
import torch
from thanosql_pg.server.entry import entry_point

@entry_point
def step():
    raise {error}

step()
$$"""


@pytest.mark.parametrize(("error", "where"), [
    ('torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")', "the GPU's memory"),
    ("MemoryError()", "the server's memory"),
])
def test_out_of_memory_is_53200_and_the_session_lives_on(direct: psycopg.Connection, error: str,
                                                         where: str) -> None:
    direct.execute("SELECT thanosql._load()")
    pid = direct.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(psycopg.Error) as ei:
        direct.execute(RAISE.format(error=error))
    assert ei.value.sqlstate == "53200"
    assert ei.value.diag.message_primary.startswith(f"the model does not fit in {where}")
    assert "batch_size" in (ei.value.diag.message_hint or "")
    assert "Traceback" not in str(ei.value)
    assert direct.execute("SELECT pg_backend_pid()").fetchone()[0] == pid


def test_other_runtime_errors_are_not_taken_for_memory(direct: psycopg.Connection) -> None:
    direct.execute("SELECT thanosql._load()")
    with pytest.raises(psycopg.Error) as ei:
        direct.execute(RAISE.format(error='RuntimeError("shape mismatch")'))
    assert ei.value.sqlstate != "53200"
