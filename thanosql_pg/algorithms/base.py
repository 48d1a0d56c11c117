"""What every algorithm family shares: the row/batch interface it trains on,
what training returns, device selection, progress reporting and prefetching.

Family modules see rows only through ``RowSource`` and ``Reader``: they never
learn whether rows came from SQL, a file list or a test fixture. The server
side (thanosql_pg.server.data / media) implements both with SPI cursors and
checked file access.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from thanosql_pg.errors import DataCorrupted, InvalidOption, LimitExceeded

T = TypeVar("T")
U = TypeVar("U")


@dataclass
class Trained:
    """The result of BUILD/FIT, ready for the catalog."""

    payload: bytes  # serialized weights (model_chunks)
    format: str  # how ``payload`` is serialized, checked on load
    labels: list[Any] | None  # ordered label set; class index i predicts labels[i]
    label_type: str | None  # SQL type of the label column
    options: dict[str, Any] = field(default_factory=dict)  # extra options to store (resolved input_size ...)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One input row. ``rn`` is its 1-based position in the query result (or in
    the PREDICT batch) and names it in error messages."""

    rn: int
    value: Any  # a path (str) or the content itself (bytes)
    target: str | None = None  # the label as SQL text; None when predicting


def check_format(record: Any, expected: str) -> None:
    """A stored model's payload format must be the family's (XX001 otherwise)."""
    if record.format != expected:
        raise DataCorrupted(
            f'model "{record.name}" is stored as {record.format}, which this version cannot read')


# --- resource limits ----------------------------------------------------------------
# Sample rates thanosql decodes: below 4 kHz nothing intelligible is left (telephone
# audio is 8 kHz); 384 kHz is the highest rate audio interfaces record. A header
# outside says something absurd (a 1 Hz WAV of 500 samples is 500 s: 8 M samples at
# 16 kHz, and 23 GB once a Wav2Vec2 trained on it).
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
# libsndfile reports about this many frames (SF_COUNT_MAX) when a header holds no length
UNKNOWN_FRAMES = 1 << 62


_AUDIO_SETTING = "thanosql.max_audio_seconds"


@dataclass(frozen=True)
class MediaLimits:
    """The superuser settings that bound one input, checked from its header before
    it is decoded (54000): ``thanosql.max_image_pixels`` and ``thanosql.max_audio_seconds``.
    Read once per statement on the main thread (MediaReader.for_session); pure
    Python from then on, so decoding threads use it. The defaults are the settings'."""

    max_image_pixels: int = 40_000_000
    max_audio_seconds: int = 1800
    audio_limit: str = _AUDIO_SETTING  # what sets max_audio_seconds, for messages

    def check_image(self, width: int, height: int, what: str) -> None:
        if width * height > self.max_image_pixels:
            raise self.image_too_large(what, width * height, f"{width}x{height} = ")

    def image_too_large(self, what: str, pixels: int | None = None, dims: str = "") -> LimitExceeded:
        """The error for an image over thanosql.max_image_pixels (``pixels``: its size when known)."""
        size = f"is {dims}{pixels} pixels, over" if pixels is not None else "is over"
        return LimitExceeded(
            f"{what} {size} thanosql.max_image_pixels ({self.max_image_pixels})",
            hint="Resize the image, or ask a superuser to raise thanosql.max_image_pixels.",
        )

    def capped_audio(self, seconds: int, why: str) -> MediaLimits:
        """These limits with audio capped at ``seconds`` by a bound of a family's own, named ``why``."""
        if seconds >= self.max_audio_seconds:
            return self
        return replace(self, max_audio_seconds=seconds, audio_limit=why)

    def max_audio_frames(self, rate: int, frames: int, what: str) -> int:
        """Check an audio header (sample rate; length, when it has one) and return
        how many frames may be decoded: formats whose header holds no length are
        decoded in blocks and stopped past it (``audio_too_long``)."""
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            # a resource bound like the others: what resampling costs grows with the rate
            raise LimitExceeded(
                f"{what} declares a sample rate of {rate} Hz; thanosql decodes"
                f" {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz",
                hint="Resample the recording to a usual rate (16 kHz for speech).",
            )
        limit = self.max_audio_seconds * rate
        if limit < frames < UNKNOWN_FRAMES:
            raise self.audio_too_long(what, frames / rate)
        return limit

    def audio_too_long(self, what: str, seconds: float | None = None) -> LimitExceeded:
        """The error for audio over the limit (``seconds``: its length when the header says)."""
        length = f"is {seconds:.1f} s long, over" if seconds is not None else "is longer than"
        raise_it = (", or ask a superuser to raise thanosql.max_audio_seconds"
                    if self.audio_limit == _AUDIO_SETTING else "")
        return LimitExceeded(
            f"{what} {length} {self.audio_limit} ({self.max_audio_seconds} s)",
            hint=f"Cut the recording into shorter clips{raise_it}.",
        )


DEFAULT_LIMITS = MediaLimits()


class Reader(Protocol):
    """Turns a row's input value into bytes. ``read`` and ``describe`` must be
    thread-safe: decoding threads call them, and use ``limits``."""

    limits: MediaLimits

    def read(self, row: Row) -> bytes: ...

    def describe(self, row: Row) -> str: ...

    def resolve_path(self, path: str, *, expand_user: bool = False) -> str: ...


class RowSource(Protocol):
    """Labelled rows to train on or evaluate against.

    ``batches`` and ``notice``/``check_interrupts`` belong to the calling
    thread only (on the server they use SPI); ``reader`` may be used from any
    thread.
    """

    count: int  # rows in the source, NULL inputs included
    label_type: str | None
    skipped: int  # rows dropped before reaching the model (NULL input with on_error='skip')
    progress_interval: float  # seconds between progress notices
    reader: Reader
    weights_dirs: list[str]  # where pretrained weights may be found locally, first match wins

    def labels(self) -> list[str]: ...

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[list[Row]]: ...

    def notice(self, message: str) -> None: ...

    def check_interrupts(self) -> None: ...


# --- devices ---------------------------------------------------------------------
_threads_set = False


def setup_torch() -> None:
    """Once per process: use every core for intra-op parallelism. PostgreSQL
    backends are separate processes, so each training statement gets the
    machine; torch's default can be lower than the core count in containers."""
    global _threads_set
    if not _threads_set:
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        _threads_set = True


def optimizer_schedule(param_groups: Any, lr: float, total_steps: int, warmup_fraction: float,
                       device: Any) -> tuple[Any, Any, Any]:
    """AdamW with a linear warm-up then cosine decay (stepped once per batch),
    and a GradScaler only where fp16 autocast needs one (CUDA without bf16).
    Returns (optimizer, scheduler, scaler or None)."""
    import torch

    total_steps = max(1, total_steps)
    warmup = max(1, int(warmup_fraction * total_steps))
    opt = torch.optim.AdamW(param_groups, lr=lr)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return opt, sched, (torch.amp.GradScaler("cuda") if use_scaler else None)


def torch_device(name: str) -> Any:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) → torch.device."""
    import torch

    setup_torch()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidOption(
            "device 'cuda' was requested but no CUDA device is available to the server",
            hint="Use device='cpu' or device='auto' (or SET thanosql.device = 'auto').",
        )
    return torch.device(name)


# --- prefetching -------------------------------------------------------------------
_pool: ThreadPoolExecutor | None = None


def decode_pool() -> ThreadPoolExecutor:
    """One pool per process for decoding inputs. Its threads never call plpy:
    they only get bytes via a thread-safe Reader and run pure-Python/C code."""
    global _pool
    if _pool is None:
        workers = max(2, os.cpu_count() or 1)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thanosql-decode")
    return _pool


def chunks(items: Sequence[T], n: int) -> list[Sequence[T]]:
    size = max(1, math.ceil(len(items) / max(1, n)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def prefetch(batches: Iterable[Sequence[T]], work: Callable[[Sequence[T]], U],
             combine: Callable[[list[U]], Any], *, depth: int = 1, split: int | None = None) -> Iterator[Any]:
    """Yield ``combine([work(chunk) for chunk in batch])`` for each batch, with
    the next ``depth`` batches already being worked on in the pool.

    ``batches`` is pulled on the calling thread (it may use SPI); ``work`` runs
    in pool threads, each batch split into ``split`` chunks so that decoding a
    batch uses several cores. While the caller trains on batch k, batch k+1 is
    decoded. On exit (error, cancel, generator closed) outstanding work is
    cancelled or waited for, so no thread outlives the statement with work,
    and ``batches`` is closed. Close this generator explicitly (contextlib.closing)
    so that this happens inside the statement, not at garbage collection.
    """
    pool = decode_pool()
    n = split or max(1, os.cpu_count() or 1)
    pending: deque[list[Future[U]]] = deque()
    try:
        for batch in batches:
            pending.append([pool.submit(work, c) for c in chunks(batch, n)])
            if len(pending) > depth:
                yield combine([f.result() for f in pending.popleft()])
        while pending:
            yield combine([f.result() for f in pending.popleft()])
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # a generator over a cursor: closes the cursor now
        for futures in pending:
            for f in futures:
                f.cancel()
        for futures in pending:
            for f in futures:
                if not f.cancelled():
                    try:
                        f.result()
                    except Exception:  # the statement is already failing or done: keep its error
                        pass


# --- progress --------------------------------------------------------------------
class Progress:
    """Progress NOTICEs at most every ``interval`` seconds: epoch, step, loss,
    accuracy, throughput and ETA."""

    def __init__(self, notice: Callable[[str], None], interval: float, *, label: str, epochs: int,
                 steps_per_epoch: int) -> None:
        self.notice = notice
        self.interval = interval
        self.label = label
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.start = self.last = time.monotonic()
        self.images = 0
        self.steps_done = 0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval

    def step(self, images: int) -> None:
        self.images += images
        self.steps_done += 1

    def report(self, epoch: int, step: int, loss: float, accuracy: float) -> None:
        now = time.monotonic()
        self.last = now
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        total = self.epochs * self.steps_per_epoch
        left = max(0, total - self.steps_done)
        eta = elapsed / self.steps_done * left if self.steps_done else float("nan")
        self.notice(
            f"{self.label}: epoch {epoch + 1}/{self.epochs}, step {step}/{self.steps_per_epoch},"
            f" loss {loss:.4f}, accuracy {accuracy:.4f}, {rate:.1f} images/s, ETA {_duration(eta)}"
        )

    def images_per_second(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0


def _duration(seconds: float) -> str:
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
