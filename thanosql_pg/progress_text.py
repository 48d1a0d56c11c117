"""What a progress NOTICE says, written and read in one place: the training loop writes
it (algorithms/shared/training.py), the notebook magic reads it to move a bar
(magic.py). Rewording it here changes both. Pure Python."""

from __future__ import annotations

import re
from dataclasses import dataclass

_EPOCH = re.compile(r"\bepochs?\s+(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_STEP = re.compile(r"\b(?:step|batch)\s+(\d+)\s*/\s*(\d+)", re.IGNORECASE)


def training(label: str, epoch: int, epochs: int, step: int, steps: int, rest: str) -> str:
    """A training notice: ``label``, the 1-based epoch of ``epochs``, the step of ``steps``
    in it, then ``rest`` (loss, metric, throughput, ETA)."""
    return f"{label}: epoch {epoch}/{epochs}, step {step}/{steps}, {rest}"


@dataclass(frozen=True)
class ProgressInfo:
    label: str
    done: int
    total: int
    rest: str  # what follows the counters: loss, accuracy, throughput, ETA


def parse(message: str) -> ProgressInfo | None:
    """Read "epoch e/E" and/or "step i/n" from a NOTICE (``training``'s, or another
    statement's counters in any wording around them); None for a notice without counters."""
    epoch, step = _EPOCH.search(message), _STEP.search(message)
    if not epoch and not step:
        return None
    if epoch and step:
        e, n_epochs = int(epoch[1]), int(epoch[2])
        i, n_steps = int(step[1]), int(step[2])
        done, total = (max(e, 1) - 1) * n_steps + i, n_epochs * n_steps
    else:
        m = epoch or step
        assert m is not None
        done, total = int(m[1]), int(m[2])
    first = min(m.start() for m in (epoch, step) if m)
    last = max(m.end() for m in (epoch, step) if m)
    head = message[:first].strip().rstrip(":,;").strip()
    return ProgressInfo(label=head or "progress", done=min(done, total), total=max(total, 1),
                        rest=message[last:].strip().lstrip(":,;").strip())
