"""The family contract: what a family's model module gives the server, and what it gets.

A family's ``model`` module (``Family.model`` in its spec) is a ``FamilyModule``: two
functions, ``train`` for BUILD/FIT and ``load`` for a stored model. The model objects
``load`` returns are ``Predictor``s (PREDICT, EVALUATE) or ``Embedder``s (CONVERT,
SEARCH IMAGE), as the family's spec says (the statements it supports, its modalities).

Options arrive typed: ``registry.Options`` (the conventions) of the family's own
subclass (``Family.typed``, its extras as fields); a family reads attributes, never
string keys. ``Resolved`` is what the server decided beside them (which model,
version, input column, device), for the server's own use.

Models see rows only through ``RowSource`` and ``Reader``: they never learn whether
rows came from SQL, a file list or a test fixture. The server side
(thanosql_pg.server.rows / media) implements both with SPI cursors and checked file
access. Pure Python: no torch import (type annotations name no torch types).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from thanosql_pg import shapes
from thanosql_pg.algorithms.registry import Algorithm, Options
from thanosql_pg.algorithms.shared.limits import MediaLimits
from thanosql_pg.errors import DataCorrupted
from thanosql_pg.progress_text import ProgressInfo


@dataclass
class Trained:
    """The result of BUILD/FIT, ready for the catalog."""

    payload: bytes  # serialized weights (model_chunks)
    format: str  # how ``payload`` is serialized, checked on load
    labels: list[Any] | None  # ordered label set; class index i predicts labels[i]
    label_type: str | None  # SQL type of the label column
    options: dict[str, Any] = field(default_factory=dict)  # extra options to store (resolved input_size ...)
    metrics: dict[str, float] = field(default_factory=dict)
    # One row per epoch run (thanosql.model_epochs): keys ``EPOCH_KEYS``; shared.training makes them
    epochs: list[dict[str, Any]] = field(default_factory=list)


# The keys of a Trained.epochs row: thanosql.training_info's columns (thanosql_pg.shapes.EPOCH,
# where they are defined once).
EPOCH_KEYS = shapes.names(shapes.EPOCH)


@dataclass
class Evaluation:
    """EVALUATE's result in a form other than the summary (its option ``report``, one of
    the family's choices): rows with the columns of ``registry.REPORTS[report]``, in
    order, and the summary metrics, which the model's metrics history records.
    ``shared.metrics`` makes them."""

    report: str
    rows: list[tuple[Any, ...]]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """What ``thanosql.prepare`` (and EVALUATE, SEARCH IMAGE) decided beside the options:
    the model and version the statement runs, the input column and the option that names
    it, what the input holds, and the device."""

    model: str
    model_id: int
    version: int
    statement: str
    input_col: str
    input_option: str
    modality: str | None
    device: str


@dataclass(frozen=True)
class Row:
    """One input row. ``rn`` is its 1-based position in the query result (or in
    the PREDICT batch) and names it in error messages."""

    rn: int
    value: Any  # a path (str) or the content itself (bytes); a text for text inputs
    target: str | None = None  # the label as SQL text; None when predicting


class Reader(Protocol):
    """Turns a row's input value into bytes. ``read`` and ``describe`` must be
    thread-safe: decoding threads call them, and use ``limits``."""

    limits: MediaLimits

    def read(self, row: Row) -> bytes: ...

    def describe(self, row: Row) -> str: ...

    def resolve_path(self, path: str, *, expand_user: bool = False) -> str: ...

    column: str  # the column (or option: search_input) the values come from, for messages

    def notice(self, message: str) -> None:
        """Tell the user something about the inputs (a NOTICE on the server): a text cut to
        the model's context, say. The calling thread only, never a decoding thread."""
        ...


class CheckpointStore(Protocol):
    """Where a training keeps its newest checkpoint: a background job's (server/jobs.py),
    so that a job interrupted by a crash or a restart resumes where it was. ``state``
    holds tensors, numbers, strings, lists and dicts only (torch.load(weights_only=True)
    reads it back)."""

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint's state, or None before the first one."""
        ...

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Replace the checkpoint by ``state`` (after epoch ``epoch``, 1-based), durably."""
        ...


class RowSource(Protocol):
    """Labelled rows to train on or evaluate against.

    ``batches``, ``split``, ``notice``, ``progress`` and ``check_interrupts`` belong
    to the calling thread only (on the server they use SPI); ``reader`` may be used
    from any thread.
    """

    count: int  # rows in the source, NULL inputs included
    label_type: str | None
    skipped: int  # rows dropped before reaching the model (NULL input with on_error='skip')
    progress_interval: float  # seconds between progress notices
    reader: Reader
    weights_dirs: list[str]  # where pretrained weights may be found locally, first match wins
    checkpoints: CheckpointStore | None  # a background job's: the training checkpoints every epoch

    def labels(self) -> list[str]: ...

    def label_counts(self) -> dict[str, int]:
        """Rows per label (as text) among the rows a model reads (class weights)."""
        ...

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[list[Row]]: ...

    def split(self, fraction: float, seed: int = 0) -> tuple[RowSource, RowSource]:
        """(training, validation): a deterministic hold-out of about ``fraction`` of the rows
        (at least one; the training part keeps at least one), stratified by target where
        rows have one. Both parts read the same rows as this source, none twice."""
        ...

    def notice(self, message: str, progress: ProgressInfo | None = None) -> None:
        """A NOTICE to the user; ``progress``: a training notice's counters as data, which
        clients that ask for them (thanosql.progress_fields) read instead of the prose."""
        ...

    def progress(self, phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
                 samples_per_second: float | None, eta_seconds: float | None) -> None:
        """Where the statement is, for other sessions to see (thanosql.progress): ``epoch``
        1-based, 0 outside the epochs. Cheap, but meant for a few calls a second at most."""
        ...

    def check_interrupts(self) -> None: ...


class StoredModel(Protocol):
    """A catalog row, as ``load`` and FIT's ``base`` see it (server.catalog.ModelRecord):
    its name, the options BUILD/FIT stored, its label set and type, its payload's format."""

    name: str
    options: dict[str, Any]
    labels: list[Any] | None
    label_type: str | None
    format: str


class Base(Protocol):
    """FIT's starting point: a stored model, loaded (server.models.LoadedModel)."""

    record: StoredModel
    model: Any  # what the family's ``load`` returned


@runtime_checkable
class Predictor(Protocol):
    """A loaded model that PREDICT and EVALUATE use."""

    def predict(self, rows: Sequence[Row], reader: Reader,
                opts: Options) -> tuple[list[str | None], list[str]]:
        """One result per row (None for a row skipped with on_error='skip') and a
        message per skipped row."""
        ...

    def evaluate(self, source: RowSource, opts: Options) -> dict[str, float] | Evaluation:
        """The summary metrics (report 'summary', or a family without reports), or the
        ``Evaluation`` of the report that ``opts.report`` names."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """A loaded model that CONVERT and SEARCH IMAGE use: unit vectors of ``dim`` floats
    (numpy arrays), None for a row whose value is None. ``modality`` is one of the
    family's ``modalities`` (the spec's; "image" for SimCLR)."""

    dim: int

    def embed(self, rows: Sequence[Row], reader: Reader, modality: str = "image") -> list[Any]: ...

    def embed_batches(self, batches: Iterable[Sequence[Row]], reader: Reader,
                      modality: str = "image") -> Iterator[list[Any]]:
        """``embed`` for each batch (the next one decoded meanwhile); ``batches`` is
        pulled on the calling thread."""
        ...


class FamilyModule(Protocol):
    """A family's model module."""

    def train(self, algo: Algorithm, opts: Options, source: RowSource,
              base: Base | None = None) -> Trained:
        """BUILD (``base`` None) or FIT (from ``base``), with the options the spec
        declares for the statement, all filled in (``opts`` is the family's
        ``Family.typed``; ``opts.device`` is resolved: 'cpu' or 'cuda')."""
        ...

    def load(self, record: StoredModel, payload: bytes | memoryview, device: str) -> Any:
        """A stored model, on ``device`` ('cpu' or 'cuda'): a Predictor or an Embedder.
        ``payload`` is bytes, except for a format whose name contains "safetensors": then
        it may be a read-only view of the server's shared, memory-mapped copy
        (``shared.weights.state_dict`` turns either into tensors without copying a view).
        The record is input like any other (its owner can edit it): check it."""
        ...


def check_format(record: StoredModel, expected: str) -> None:
    """A stored model's payload format must be the family's (XX001 otherwise)."""
    if record.format != expected:
        raise DataCorrupted(
            f'model "{record.name}" is stored as {record.format}, which this version cannot read')


StoredT = TypeVar("StoredT")


def stored_fields(cls: type[StoredT], record: StoredModel) -> StoredT:
    """What a family keeps in its models' stored options beyond the declared options
    (``Trained.options``: a resolved architecture, a tokenizer, the normalization...),
    as the frozen dataclass ``cls``: each field read from the stored options by its
    name, its default when absent. The row is its owner's to edit, so a value of another
    type than the field's is XX001, before anything uses it."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    for f in dataclasses.fields(cls):
        if f.name not in record.options:
            continue
        value = record.options[f.name]
        if not _holds(hints[f.name], value):
            raise DataCorrupted(f'model "{record.name}" has an invalid stored {f.name}:'
                                f" {type(value).__name__}", hint="BUILD the model again.")
        values[f.name] = value
    return cls(**values)


def _holds(hint: Any, value: Any) -> bool:
    """Whether ``value`` (decoded JSON) is of the annotated type, shallowly."""
    if hint is Any or hint is object:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_holds(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence):
        return isinstance(value, list)
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    return isinstance(origin, type) and isinstance(value, origin)
