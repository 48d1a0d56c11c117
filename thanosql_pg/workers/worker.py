"""One rank of a BUILD/FIT with ``workers`` > 1: a plain Python process (never a forked
backend) that runs the family's own ``train`` with rows from the backend.

Started two ways:
- by the backend (thanosql_pg.server.distributed), for the workers of its own
  machine: ``python -m thanosql_pg.workers.worker --fd N --parent PID`` on one end of a
  socket pair. It dies with its backend (PR_SET_PDEATHSIG), whatever kills that;
- on another machine, by ``thanosql worker --join HOST:PORT --secret S``: it connects
  to the waiting BUILD and proves it knows the BUILD's secret (wire.admitted).

The backend stays the only reader and writer of the database: it runs the query as the
statement's role, reads each row's image or audio (its own privilege checks), and sends
each rank its share of every global batch as bytes (``RemoteSource``). A rank sends back
notices and progress (rank 0 only), checkpoints (rank 0), and rank 0 the trained
weights; the backend writes the model. Ranks find each other through a c10d TCPStore
that rank 0 opens, under a prefix only invited ranks learn, and train with gloo (CPU)
or NCCL (one GPU each); every collective has a timeout.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import io
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast

from thanosql_pg import errors, progress_text
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import CheckpointStore, Row, RowSource, Trained
from thanosql_pg.algorithms.shared import devices
from thanosql_pg.algorithms.shared.limits import MediaLimits
from thanosql_pg.progress_text import ProgressInfo
from thanosql_pg.workers import wire

PR_SET_PDEATHSIG = 1


class Channel:
    """This rank's connection to its backend: requests and their replies, one at a time."""

    def __init__(self, sock: socket.socket, rank: int) -> None:
        self.sock = sock
        self.rank = rank

    def tell(self, message: dict[str, Any], blob: bytes = b"") -> None:
        wire.send(self.sock, message, blob)

    def ask(self, message: dict[str, Any], blob: bytes = b"") -> tuple[dict[str, Any], bytes]:
        wire.send(self.sock, message, blob)
        reply, data = wire.receive(self.sock)
        if reply["t"] == "error":
            raise _error(reply)
        return reply, data


def _error(reply: dict[str, Any]) -> errors.ThanoSQLError:
    """The backend's error, as the class of its SQLSTATE."""
    try:
        cls = errors.lookup(str(reply.get("sqlstate")))
    except KeyError:
        cls = errors.InternalError
    return cls(str(reply.get("message")), hint=reply.get("hint"), detail=reply.get("detail"))


@dataclass
class Unreadable:
    """A row the backend could not read: reading it raises what the backend got."""

    sqlstate: str
    message: str


class RemoteReader:
    """contract.Reader over the bytes the backend sent."""

    def __init__(self, channel: Channel, column: str, limits: MediaLimits, leader: bool) -> None:
        self.channel = channel
        self.column = column
        self.limits = limits
        self.leader = leader
        self.descriptions: dict[int, str] = {}

    def read(self, row: Row) -> bytes:
        if isinstance(row.value, Unreadable):
            raise _error({"sqlstate": row.value.sqlstate, "message": row.value.message})
        if not isinstance(row.value, bytes):
            raise errors.DataError(f"row {row.rn}: no input")
        return row.value

    def describe(self, row: Row) -> str:
        return self.descriptions.get(row.rn, f"row {row.rn}")

    def resolve_path(self, path: str, *, expand_user: bool = False) -> str:
        reply, _ = self.channel.ask({"t": "resolve", "path": path, "expand_user": expand_user})
        return str(reply["path"])

    def notice(self, message: str, progress: ProgressInfo | None = None) -> None:
        if self.leader:
            fields = None if progress is None else progress_text.as_dict(progress)
            self.channel.tell({"t": "notice", "message": message, "progress": fields})


class RemoteCheckpoints:
    """A background job's checkpoints (contract.CheckpointStore), kept by the backend:
    every rank resumes from the same state; rank 0 alone saves."""

    def __init__(self, channel: Channel, leader: bool) -> None:
        self.channel = channel
        self.leader = leader

    def load(self) -> dict[str, Any] | None:
        import torch

        _, data = self.channel.ask({"t": "checkpoint_load"})
        if not data:
            return None
        state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return state

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        import torch

        if not self.leader:
            return
        buf = io.BytesIO()
        torch.save(state, buf)
        self.channel.ask({"t": "checkpoint_save", "epoch": epoch}, buf.getvalue())


class RemoteSource:
    """contract.RowSource of one rank: its share of each global batch of a part of the
    statement's rows, which the backend holds (part 0: all of them)."""

    def __init__(self, channel: Channel, info: dict[str, Any], *, part: int = 0, leader: bool,
                 world: int) -> None:
        self.channel = channel
        self.part = part
        self.leader = leader
        self.world = world
        self.count = int(info["count"])
        self.skipped = int(info["skipped"])
        self.label_type = info.get("label_type")
        self._labels: list[str] | None = info.get("labels")
        self.progress_interval = float(info["progress_interval"])
        self.weights_dirs = list(info["weights_dirs"])
        limits = MediaLimits(**info["limits"])
        self.reader = RemoteReader(channel, str(info["column"]), limits, leader)
        self.checkpoints: CheckpointStore | None = (RemoteCheckpoints(channel, leader) if info["checkpoints"]
                                                    else None)
        self.info = info

    def labels(self) -> list[str]:
        if self._labels is None:
            reply, _ = self.channel.ask({"t": "labels", "part": self.part})
            self._labels = [str(x) for x in reply["labels"]]
        return self._labels

    def label_counts(self) -> dict[str, int]:
        reply, _ = self.channel.ask({"t": "label_counts", "part": self.part})
        return {str(k): int(v) for k, v in reply["counts"].items()}

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[list[Row]]:
        reply, _ = self.channel.ask({"t": "batches", "part": self.part, "batch_size": batch_size,
                                     "shuffle": shuffle, "seed": seed})
        it = int(reply["iter"])
        while True:
            reply, blob = self.channel.ask({"t": "next", "iter": it})
            if reply["t"] == "end":
                return
            rows = []
            for rn, kind, target, about, data in wire.unpack_rows(reply["rows"], blob):
                if about:
                    self.reader.descriptions[rn] = about
                if kind == "e":  # target: [sqlstate, message]
                    code, message = (target if isinstance(target, list) and len(target) == 2
                                     else ("XX000", "unreadable"))
                    rows.append(Row(rn, Unreadable(str(code), str(message)), None))
                else:
                    label = None if target is None else str(target)
                    rows.append(Row(rn, data if kind == "b" else None, label))
            if len(self.reader.descriptions) > 100_000:
                self.reader.descriptions.clear()
            yield rows

    def split(self, fraction: float, seed: int = 0) -> tuple[RowSource, RowSource]:
        reply, _ = self.channel.ask({"t": "split", "part": self.part, "fraction": fraction, "seed": seed})
        parts = []
        for p in reply["parts"]:
            info = {**self.info, "count": p["count"], "skipped": p["skipped"], "labels": None}
            part = RemoteSource(self.channel, info, part=int(p["part"]), leader=self.leader, world=self.world)
            part.reader, part.checkpoints = self.reader, self.checkpoints
            parts.append(part)
        return cast(RowSource, parts[0]), cast(RowSource, parts[1])

    def notice(self, message: str, progress: ProgressInfo | None = None) -> None:
        self.reader.notice(message, progress)

    def progress(self, phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
                 samples_per_second: float | None, eta_seconds: float | None) -> None:
        if self.leader:
            self.channel.tell({"t": "progress", "args": [phase, epoch, epochs, step, steps, loss,
                                                         samples_per_second, eta_seconds]})

    def check_interrupts(self) -> None:
        """A cancel is the backend's: it stops every worker itself."""


@dataclass
class StoredBase:
    """FIT's base model's catalog row, as the family's ``load`` reads it (contract.StoredModel)."""

    name: str
    options: dict[str, Any]
    labels: list[Any] | None
    label_type: str | None
    format: str


@dataclass
class LoadedBase:
    record: StoredBase
    model: Any


def _die_with_parent(parent: int) -> None:
    """Be killed when the backend that started this process ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # it ended before prctl took effect
        os._exit(1)


def _connect(address: str, secret: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"thanosql worker: --join takes HOST:PORT, not {address!r}")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
    hello, _ = wire.receive(sock, max_json=wire.MAX_HELLO, max_blob=0)
    if hello.get("t") != "challenge":
        raise SystemExit("thanosql worker: the server did not ask for the secret")
    wire.send(sock, {"t": "answer", "hmac": wire.answer(secret, bytes.fromhex(str(hello["nonce"])))})
    verdict, _ = wire.receive(sock, max_json=wire.MAX_HELLO, max_blob=0)
    if verdict.get("t") != "admitted":
        raise SystemExit(f"thanosql worker: refused: {verdict.get('message', 'wrong secret')}")
    sock.settimeout(None)
    return sock


def _process_group(channel: Channel, start: dict[str, Any]) -> None:
    """Join the BUILD's process group: rank 0 opens the rendezvous store and tells the
    backend its port; the others learn it from the backend."""
    import torch.distributed as dist
    from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]

    rank, world = int(start["rank"]), int(start["world"])
    timeout = timedelta(seconds=float(start["timeout"]))
    if rank == 0:
        store = TCPStore(str(start["store_bind"]), 0, world, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        channel.tell({"t": "store", "port": store.port})
    else:
        reply, _ = wire.receive(channel.sock)
        if reply["t"] != "store":
            raise wire.WireError("expected the rendezvous address")
        store = TCPStore(str(reply["host"]), int(reply["port"]), world, is_master=False, timeout=timeout)
    prefixed = PrefixStore(str(start["prefix"]), store)
    backend = "nccl" if start["device"] == "cuda" else "gloo"
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world, timeout=timeout)


def run(channel: Channel) -> int:
    """Wait for this rank's start, train, answer; the exit status."""
    start, base_payload = wire.receive(channel.sock)
    if start["t"] != "start":
        raise wire.WireError("expected the start of a training")
    rank, world = int(start["rank"]), int(start["world"])
    channel.rank = rank
    leader = rank == 0
    try:
        import torch
        import torch.distributed as dist

        # this rank's share of the statement's cores (devices.set_threads: the one place that sets
        # torch's threads, which the family's torch_device would otherwise set to every core)
        devices.set_threads(max(1, int(start["threads"])))
        if start["device"] == "cuda":
            torch.cuda.set_device(0)  # the backend gave this process one GPU (CUDA_VISIBLE_DEVICES)
        _process_group(channel, start)
        algo = registry.lookup(str(start["algorithm"]))
        family = algo.family
        if family.model is None:
            raise errors.FeatureNotAvailable(f"{family.name} models are not available")
        module = importlib.import_module(family.model)
        opts = registry.normalize_options(str(start["statement"]), start["options"], family)
        opts = replace(opts, device=str(start["device"]))
        source = RemoteSource(channel, start["source"], leader=leader, world=world)
        base = None
        if start.get("base") is not None:
            record = StoredBase(**start["base"])
            base = LoadedBase(record, module.load(record, base_payload, opts.device))
        del base_payload
        trained: Trained = module.train(algo, opts, source, base)
        if leader:
            channel.tell({"t": "result", "format": trained.format, "labels": trained.labels,
                          "label_type": trained.label_type, "options": trained.options,
                          "metrics": trained.metrics, "epochs": trained.epochs}, trained.payload)
        else:
            channel.tell({"t": "done"})
        dist.destroy_process_group()
        return 0
    except errors.ThanoSQLError as e:
        channel.tell({"t": "error", "sqlstate": e.sqlstate, "message": e.message, "hint": e.hint,
                      "detail": e.detail})
        return 1
    except Exception as e:  # every failure reaches the backend, with its kind
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            sqlstate, message = "53200", f"out of memory: {e}"
        else:
            sqlstate, message = "XX000", f"{type(e).__name__}: {e}"
        channel.tell({"t": "error", "sqlstate": sqlstate, "message": message,
                      "detail": "".join(traceback.format_exception(e)[-6:])[-2000:]})
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thanosql worker",
                                     description="One training process of a BUILD or FIT with workers.")
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # started by the backend
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--join", metavar="HOST:PORT", help="the address a BUILD's NOTICE gives")
    parser.add_argument("--secret", help="the BUILD's secret, from the same NOTICE"
                        " (or the environment variable THANOSQL_WORKER_SECRET)")
    args = parser.parse_args(argv)
    if args.fd is not None:
        if args.parent:
            _die_with_parent(args.parent)
        sock = socket.socket(fileno=args.fd)
    elif args.join:
        secret = args.secret or os.environ.get("THANOSQL_WORKER_SECRET")
        if not secret:
            parser.error("--join needs --secret (or THANOSQL_WORKER_SECRET)")
        sock = _connect(args.join, secret)
    else:
        parser.error("give --join HOST:PORT and --secret")
    channel = Channel(sock, -1)
    try:
        return run(channel)
    except (wire.WireError, OSError) as e:
        print(f"thanosql worker: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
