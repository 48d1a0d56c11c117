"""Devices, threads, mixed precision, and the decode pool that prefetches inputs.

Threads are the server's business: it calls ``set_threads`` (the one place that sets
torch's intra-op thread count) before a statement runs a model. A process in which
nobody has called it uses every core, as PostgreSQL backends always did.

Every thread started here has the process's asynchronous signals blocked: inside
PostgreSQL they are the server's (cancel, statement_timeout, terminate, reload), and
its handlers must run on the backend's main thread only. The kernel hands a signal
sent to the process to any thread that does not block it; a handler that ran on
torch's threads raced the main thread on the server's bookkeeping. torch's intra-op
(OpenMP) threads are started by a warm-up with the signals blocked, which the
threads inherit; the decode pool's threads block them first thing. (The C module
also routes any handler that still runs elsewhere back to the main thread:
src/signals.c.)
"""

from __future__ import annotations

import math
import os
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import Any, TypeVar

from thanosql_pg.errors import InvalidOption

T = TypeVar("T")
U = TypeVar("U")

_threads: int | None = None  # what set_threads last set
_started: int | None = None  # the thread count torch's pool was last started at, signals blocked

# Signals that report a fault of the thread that gets them (or that no handler takes): they
# must stay deliverable to every thread.
_THREAD_DIRECTED = frozenset({
    signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGSEGV,
    signal.SIGSYS, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGKILL, signal.SIGSTOP,
})


def process_signals() -> set[signal.Signals]:
    """The asynchronous signals (those sent to the process: SIGINT, SIGTERM, SIGALRM, SIGUSR1,
    SIGHUP ...): the ones a worker thread blocks. Realtime signals are left alone."""
    return {s for s in signal.valid_signals()
            if isinstance(s, signal.Signals) and s < signal.SIGRTMIN and s not in _THREAD_DIRECTED}


@contextmanager
def signals_blocked() -> Iterator[None]:
    """The process's asynchronous signals blocked on this thread meanwhile: a thread started
    here inherits the mask. A signal that arrives meanwhile waits, and is handled when the
    mask is restored."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, process_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def set_threads(n: int) -> None:
    """torch's intra-op threads for what this process runs next (the server's hook,
    called per statement). Imports torch: call it when a model is about to run.

    torch's thread pool is (re)started here, with the signals blocked (module docstring):
    OpenMP starts its threads on the first parallel region that needs them, and stops
    and starts threads when the count changes, so a warm-up op that needs all ``n``
    runs whenever the count differs from the one the pool was last started at."""
    global _threads, _started
    import torch

    n = max(1, int(n))
    if torch.get_num_threads() != n or _started != n:
        with signals_blocked():
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
            _start_pool(torch, n)
        _started = n
    _threads = n


# at::internal::GRAIN_SIZE: the elements per thread below which torch's element-wise ops
# stay on fewer threads
_GRAIN = 32768


def _start_pool(torch: Any, n: int) -> None:
    """An element-wise op large enough that every one of the ``n`` intra-op threads takes
    part (one byte per element: ``n`` x 32 KB, freed at once)."""
    if n > 1:
        torch.empty(n * _GRAIN + 1, dtype=torch.uint8).fill_(1)


def torch_device(name: str) -> Any:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) → torch.device."""
    import torch

    if _threads is None:
        set_threads(os.cpu_count() or 1)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidOption(
            "device 'cuda' was requested but no CUDA device is available to the server",
            hint="Use device='cpu' or device='auto' (or SET thanosql.device = 'auto').",
        )
    return torch.device(name)


def autocast(device: Any) -> Any:
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on CPU."""
    import torch

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def cuda_indices(device: Any) -> list[int]:
    """The CUDA devices whose random state a statement on ``device`` uses."""
    return [device.index or 0] if device.type == "cuda" else []


# --- the decode pool -----------------------------------------------------------------------
_pool: ThreadPoolExecutor | None = None


def decode_pool() -> ThreadPoolExecutor:
    """One pool per process for decoding inputs. Its threads never call plpy:
    they only get bytes via a thread-safe Reader and run pure-Python/C code."""
    global _pool
    if _pool is None:
        workers = max(2, os.cpu_count() or 1)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thanosql-decode",
                                   initializer=_block_signals)
    return _pool


def _block_signals() -> None:
    """A decode thread's first act: the process's signals are the main thread's
    (module docstring). Threads that torch starts from here inherit the mask."""
    signal.pthread_sigmask(signal.SIG_BLOCK, process_signals())


def chunks(items: Sequence[T], n: int) -> list[Sequence[T]]:
    size = max(1, math.ceil(len(items) / max(1, n)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def numbered(rows: Sequence[T]) -> list[tuple[int, T]]:
    """(position in the batch, row) pairs: what decoders take, so results find their row."""
    return list(enumerate(rows))


def decode_now(rows: Sequence[T], work: Callable[[Sequence[tuple[int, T]]], U],
               combine: Callable[[list[U]], Any]) -> Any:
    """``combine`` of ``work`` over ``numbered(rows)``, split over the pool's threads."""
    parts = [decode_pool().submit(work, c) for c in chunks(numbered(rows), os.cpu_count() or 1)]
    return combine([f.result() for f in parts])


def prefetch(batches: Iterable[Sequence[T]], work: Callable[[Sequence[T]], U],
             combine: Callable[[list[U]], Any], *, depth: int = 1,
             split: int | None = None) -> Generator[Any, None, None]:
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


class Skipped:
    """Rows skipped as unreadable (on_error='skip'): how many, and the first one's error."""

    def __init__(self, before: int = 0) -> None:
        self.count = before  # rows the source dropped already (NULL inputs)
        self.first: str | None = None

    def add(self, errors: Sequence[tuple[int, Any]]) -> None:
        """A decoded batch's (position, ThanoSQLError) pairs."""
        if errors:
            self.count += len(errors)
            self.first = self.first or errors[0][1].message

    def notice(self, notice: Callable[[str], None], what: str) -> None:
        """``<what> skipped N unreadable rows; first: ...``, when rows were skipped."""
        if self.count:
            first = f"; first: {self.first}" if self.first else ""
            notice(f"{what} skipped {self.count} unreadable rows{first}")


def evaluation_batches(source: Any, batch_size: int, work: Callable[[Sequence[Any]], U],
                       combine: Callable[[list[U]], Any], skipped: Skipped) -> Generator[Any, None, None]:
    """EVALUATE's one pass over ``source`` (a RowSource): each batch decoded in the pool
    (the next one meanwhile), a pending cancel let through before each, the rows skipped
    as unreadable counted in ``skipped``. Close it (contextlib.closing) so that decoding
    stops and the cursor closes inside the statement on an error."""
    batches = (numbered(b) for b in source.batches(batch_size, shuffle=False))
    with closing(prefetch(batches, work, combine)) as decoded:
        for dec in decoded:
            source.check_interrupts()
            skipped.add(dec.errors)
            yield dec
