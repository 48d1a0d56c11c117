"""Sharing the CPU cores between the sessions that run models.

Every backend used to give torch all the cores: N sessions running models ran
N x cores threads on the same cores, and four PREDICT sessions together got a
fifth of what one got alone. Now a session that starts running a model tells
the server (a slot in shared memory, written in-process: server/native.py) and
gets back how many sessions are running models right now; it takes its share of
thanosql.max_threads for this call. Without shared memory (the library not in
shared_preload_libraries) nobody can count, and each session takes them all,
as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import plpy

from thanosql_pg.errors import OutOfMemory
from thanosql_pg.server import native

_depth = 0  # nested entry points (CONVERT's CREATE TABLE AS calls convert_batch) count once


def cores() -> int:
    """The cores this backend may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def share(budget: int, busy: int) -> int:
    """Threads for one of ``busy`` sessions sharing ``budget`` threads (0 busy: nobody
    counts, take the budget)."""
    if busy <= 0:
        return max(1, budget)
    return max(1, budget // busy)


@contextmanager
def running_model() -> Iterator[int]:
    """Around a call that runs a model: register the session as busy, size torch's
    thread pool to its share, and unregister when done (an error or cancel clears
    the slot too: the C module does it at transaction abort). Yields the threads."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield -1
        finally:
            _depth -= 1
        return
    busy = native.busy(True)
    budget = int(native.setting("thanosql.max_threads") or 0)
    threads = share(budget or cores(), busy)
    set_threads(threads)
    _depth = 1
    try:
        with interruptible():
            yield threads
    finally:
        _depth = 0
        native.busy(False)  # the abort clears the slot too


# How often a running model lets a pending cancel through (seconds; each check is one SPI call).
INTERRUPT_CHECK_SECONDS = 0.025


@contextmanager
def interruptible() -> Iterator[None]:
    """While a model runs: a cancel (pg_cancel_backend, statement_timeout) stops it at the
    next layer, not at the next batch.

    PostgreSQL acts on a cancel only where its own code checks for one, and nothing does
    while torch computes: a forward pass used to run to its end. A global forward pre-hook
    (every module of every network, the families' code unaware) lets a pending cancel
    through on this thread, at most every INTERRUPT_CHECK_SECONDS: the check raises 57014
    out of the forward pass, and the statement's transaction rolls back. A cancel that code
    in between catches (``except Exception`` around a forward) or turns into another error
    is raised again at the next module and when the call ends, so no statement outlives its
    cancel. Modules that other threads run are not checked: SPI belongs to this thread.
    One check (spi.check_interrupts) costs a few microseconds."""
    import threading
    import time

    import torch

    from thanosql_pg.server import spi

    owner = threading.get_ident()
    last = time.monotonic()
    cancelled: list[BaseException] = []

    def check(module: Any, args: Any) -> None:
        nonlocal last
        if threading.get_ident() != owner:
            return
        if cancelled:
            raise cancelled[0]
        now = time.monotonic()
        if now - last < INTERRUPT_CHECK_SECONDS:
            return
        last = now
        try:
            spi.check_interrupts()
        except plpy.SPIError as e:
            cancelled.append(e)
            raise

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        yield
    except BaseException as e:
        if cancelled and e is not cancelled[0]:
            raise cancelled[0] from e  # turned into another error on the way: it is still a cancel
        raise
    finally:
        handle.remove()
    if cancelled:
        raise cancelled[0]  # swallowed on the way: the statement still ends with it


def set_threads(n: int) -> None:
    """torch's intra-op threads (the call is about to run a model: torch is needed anyway),
    through the one hook that sets them."""
    from thanosql_pg.algorithms.shared import devices

    devices.set_threads(n)


def memory_error(e: BaseException) -> OutOfMemory | None:
    """53200 for an out-of-memory error of the host (MemoryError) or of a GPU (torch's
    OutOfMemoryError, a RuntimeError), with the memory freed that a retry needs: a CUDA
    out-of-memory leaves the failed step's blocks in torch's cache. None for other errors."""
    import gc
    import sys

    cuda = type(e).__name__ == "OutOfMemoryError" and type(e).__module__.startswith("torch")
    if not (cuda or isinstance(e, MemoryError)):
        return None
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    first = (str(e).splitlines() or [""])[0][:200]
    where = "the GPU's memory" if cuda else "the server's memory"
    return OutOfMemory(f"the model does not fit in {where}" + (f": {first}" if first else ""),
                       hint="Use a smaller batch_size (or input_size), free the device from other sessions,"
                            " or run with device='cpu'.")
