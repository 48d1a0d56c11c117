"""What a progress NOTICE says, written and read in one place: the training loop writes
it (algorithms/shared/training.py), the notebook magic reads it to move a bar
(magic.py). Pure Python.

A progress notice has two parts: its message, prose for people (psql shows it), and,
when the session sets ``thanosql.progress_fields``, the same counters as JSON in its
DETAIL, for programs. Programs read the fields only, never the prose, so rewording a
message breaks no client."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

KEY = "thanosql_progress"  # DETAIL is {"thanosql_progress": {...}}: not mistaken for another detail
PHASES = ("train", "done")


@dataclass(frozen=True)
class ProgressInfo:
    """Where a training is: step ``step`` of ``steps`` in epoch ``epoch`` (1-based) of
    ``epochs``; phase 'done' on the last notice, after the last epoch."""

    label: str  # "ConvNeXt_Tiny training"
    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None
    metric: str  # the metric's name ("accuracy", "contrastive_accuracy", ...)
    score: float | None  # its running value
    samples_per_second: float
    speed: str  # the throughput as the message words it ("41.2 images/s", "3.1 s of audio/s")
    eta_seconds: float | None

    @property
    def done(self) -> int:
        """Training steps done, over all epochs."""
        if self.phase == "done":
            return self.total
        return min(self.total, (max(self.epoch, 1) - 1) * self.steps + self.step)

    @property
    def total(self) -> int:
        return max(1, self.epochs * self.steps)

    def summary(self) -> str:
        """The counters' companions, for a bar's postfix: loss, metric, throughput, ETA."""
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.score is not None:
            parts.append(f"{self.metric} {self.score:.4f}")
        parts.append(self.speed)
        if self.eta_seconds is not None and self.phase != "done":
            parts.append(f"ETA {duration(self.eta_seconds)}")
        return ", ".join(parts)


def training(label: str, epoch: int, epochs: int, step: int, steps: int, rest: str) -> str:
    """A training notice's prose (psql shows this): ``label``, the 1-based epoch of
    ``epochs``, the step of ``steps`` in it, then ``rest`` (loss, metric, throughput, ETA)."""
    return f"{label}: epoch {epoch}/{epochs}, step {step}/{steps}, {rest}"


def detail(info: ProgressInfo) -> str:
    """The notice's DETAIL: its fields as JSON."""
    return json.dumps({KEY: asdict(info)}, allow_nan=False, separators=(",", ":"))


def as_dict(info: ProgressInfo) -> dict[str, Any]:
    return asdict(info)


_TYPES = {f.name: f.type for f in fields(ProgressInfo)}


def from_dict(data: Any) -> ProgressInfo | None:
    """The fields back, checked (they may come from another process): None unless every
    field is there with its type."""
    if not isinstance(data, dict) or set(data) != set(_TYPES):
        return None
    for name, kind in _TYPES.items():
        v = data[name]
        nullable = "None" in str(kind)
        if v is None and nullable:
            continue
        if "float" in str(kind):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        elif "int" in str(kind):
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if not ok:
            return None
    if data["phase"] not in PHASES:
        return None
    return ProgressInfo(**data)


def read(detail_text: str | None) -> ProgressInfo | None:
    """A notice's fields, or None for a notice without them (any other notice)."""
    if not detail_text or not detail_text.startswith('{"' + KEY):
        return None
    try:
        data = json.loads(detail_text)
    except ValueError:
        return None
    return from_dict(data.get(KEY)) if isinstance(data, dict) else None


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
