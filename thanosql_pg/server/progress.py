"""What a running statement shows other sessions (thanosql.progress): the C module's
slots in shared memory (src/progress.c), written in-process (server/native.py), never a
table: nothing is written in the statement's transaction, so a cancelled statement
leaves no trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def statement_progress(statement: str, model: str, phase: str) -> Iterator[None]:
    """Around a BUILD/FIT/EVALUATE/CONVERT: its row in thanosql.progress, in ``phase``
    until the statement reports another (training: 'train', 'validate')."""
    from thanosql_pg.server import native

    native.progress_begin(statement, model)
    report_progress(phase, 0, 0, 0, 0, None, None, None)
    try:
        yield
    finally:
        native.progress_finish()  # an error or cancel clears the slot at abort too


def report_progress(phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
                    samples_per_second: float | None, eta_seconds: float | None) -> None:
    from thanosql_pg.server import native

    native.progress_report(phase, epoch, epochs, step, steps, loss, samples_per_second, eta_seconds)
