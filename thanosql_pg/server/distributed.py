"""A BUILD/FIT with ``workers`` > 1: the backend's side (thanosql_pg.workers.worker is a rank's).

The backend starts ``workers - remote_workers`` processes with the virtualenv's Python
(subprocess: fork and exec at once, no Python runs in a forked backend), each on one end
of a socket pair, and waits for ``remote_workers`` more to join from other machines
(``thanosql worker --join HOST:PORT --secret S``, the secret and address in a NOTICE,
made for this statement; anyone else is refused). Then it serves them until rank 0
sends the trained weights:

- the rows: the statement's rows stay in the backend's temporary table
  (server/rows.py), read as the statement's role; for every global batch the backend
  reads each row's bytes (its privilege checks, its limits) and gives each rank its
  share. Ranks pull (``next``), so at most a few global batches are held at once;
- what all ranks ask alike (a split, label counts, a pass over a part) is done once;
- rank 0's notices and progress become the statement's; a background job's
  checkpoints go to its store;
- a rank's error fails the statement with that error; a rank that dies fails it
  within a second, naming it; a cancel stops the loop at once. In every case the
  ``finally`` kills every worker it started and waits for them: none outlives the
  statement. The workers die with the backend too (PR_SET_PDEATHSIG).

The backend writes the model, as for one process, in the statement's transaction.
"""

from __future__ import annotations

import fcntl
import io
import ipaddress
import os
import secrets
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plpy

from thanosql_pg import progress_text
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import Row, RowSource, Trained
from thanosql_pg.errors import (
    FeatureNotAvailable,
    InternalError,
    InvalidParameterValue,
    ThanoSQLError,
    WorkerFailed,
    lookup,
)
from thanosql_pg.server import spi
from thanosql_pg.workers import wire

COLLECTIVE_TIMEOUT = 60.0  # seconds a collective (or the rendezvous) may wait for a rank
JOIN_TIMEOUT = 600.0  # seconds remote workers have to join
STOP_GRACE = 5.0  # seconds workers have to exit after their result, before they are killed
POLL = 0.2  # seconds between looks at cancels and at the processes
# seconds a worker of another machine may take to finish a message it started, or to take one
# (its requests are small; the backend waits for nothing else while it reads one)
REMOTE_TIMEOUT = 5.0
MAX_MESSAGE = 8192  # characters of a worker's error message that reach the client
_SETTINGS = ("SELECT s[1] AS max_workers, s[2] AS listen, s[3] AS lib FROM thanosql._settings(ARRAY["
             "'thanosql.max_workers', 'thanosql.worker_listen_address', 'thanosql.python_lib_dir']) AS s")


@dataclass
class Rank:
    number: int
    sock: socket.socket
    proc: subprocess.Popen[bytes] | None = None  # None: a remote worker
    address: str = ""  # where a remote worker connected from
    log: Any = None  # a local worker's stderr (an unlinked file)
    done: bool = False
    batches: int = 0  # requests of "batches" so far: the index of its next pass

    def describe(self, world: int) -> str:
        where = f"pid {self.proc.pid}" if self.proc is not None else f"from {self.address}"
        return f"worker {self.number} of {world} ({where})"

    def stderr_tail(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0, io.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - 2000))
        return str(self.log.read().decode(errors="replace").strip())


@dataclass
class Pass:
    """One pass over a part that every rank reads its share of."""

    rows: Iterator[list[Row]]
    request: tuple[Any, ...]
    held: dict[int, list[list[Any] | None]] = field(default_factory=dict)  # batch -> each rank's share
    position: dict[int, int] = field(default_factory=dict)  # rank -> its next batch
    fetched: int = 0
    ended: bool = False
    finished: set[int] = field(default_factory=set)  # the ranks told it ended


def check_workers(opts: registry.Options) -> None:
    """``workers`` against thanosql.max_workers, and the remote ones against it (22023)."""
    settings = plpy.execute(spi.plan(_SETTINGS))[0]
    limit = int(settings["max_workers"] or 4)
    if opts.workers > limit:
        raise InvalidParameterValue(
            f"workers={opts.workers} is over thanosql.max_workers ({limit})",
            hint="Use fewer workers, or ask a superuser to raise thanosql.max_workers.")
    if opts.remote_workers >= opts.workers:
        raise InvalidParameterValue(
            f"remote_workers={opts.remote_workers} leaves no worker on this server (workers={opts.workers})",
            hint="remote_workers counts the workers of other machines, within workers:"
                 " at least one runs here.")


def python_executable(lib_dir: str | None) -> str:
    """The Python that runs workers: the virtualenv's (thanosql.python_lib_dir), else the
    one PL/Python embeds. Never the server's own executable (sys.executable here)."""
    if lib_dir:
        for name in ("bin/python3", "bin/python"):
            candidate = Path(lib_dir) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    v = sys.version_info
    return str(Path(sys.base_exec_prefix) / "bin" / f"python{v.major}.{v.minor}")


def interface_of(address: str) -> str | None:
    """The network interface that holds ``address`` (gloo's GLOO_SOCKET_IFNAME), None for a
    wildcard address or one no interface holds."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_unspecified or ip.version != 4:
        return None
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == str(ip):
                return name
    return None


class Coordinator:
    """Serves one BUILD/FIT's ranks (see the module's docstring)."""

    def __init__(self, algo: registry.Algorithm, opts: registry.Options, source: RowSource,
                 base: Any, threads: int) -> None:
        self.algo, self.opts, self.source, self.base = algo, opts, source, base
        self.world = opts.workers
        self.local = opts.workers - opts.remote_workers
        self.threads = max(1, threads // self.local)
        settings = plpy.execute(spi.plan(_SETTINGS))[0]
        self.listen = str(settings["listen"] or "127.0.0.1")
        self.python = python_executable(settings["lib"])
        self.secret = secrets.token_hex(16)
        self.prefix = "thanosql-" + secrets.token_hex(16)  # the store's keys: only invited ranks know it
        self.ranks: dict[int, Rank] = {}
        self.parts: dict[int, RowSource] = {0: source}
        self.splits: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self.passes: list[Pass] = []
        self.store_port: int | None = None
        self.result: Trained | None = None
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self._start: tuple[dict[str, Any], bytes] | None = None

    # -- starting ------------------------------------------------------------------------
    def _env(self, rank: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        if self.opts.device == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = visible.split(",") if visible else [str(i) for i in range(self.local)]
            env["CUDA_VISIBLE_DEVICES"] = gpus[rank]
        interface = interface_of(self.listen)
        if interface is not None:
            env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = interface
        return env

    def _spawn(self, rank: int) -> None:
        ours, theirs = socket.socketpair()
        log = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "thanosql_pg.workers.worker", "--fd", str(theirs.fileno()),
                 "--parent", str(os.getpid())],
                pass_fds=(theirs.fileno(),), env=self._env(rank), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True, close_fds=True)
        except OSError as e:
            ours.close()
            log.close()
            raise FeatureNotAvailable(
                f"cannot start a training worker with {self.python}: {e}",
                hint="Check thanosql.python_lib_dir: its bin/python runs the workers.") from e
        finally:
            theirs.close()
        self.ranks[rank] = Rank(rank, ours, proc, log=log)
        self.selector.register(ours, selectors.EVENT_READ, rank)

    def _check_gpus(self) -> None:
        if self.opts.device != "cuda":
            return
        import torch

        have = torch.cuda.device_count()
        if self.local > have:
            raise InvalidParameterValue(
                f"{self.local} workers on this server with device='cuda' need {self.local} GPUs;"
                f" it has {have}",
                hint="One worker runs on each GPU: lower workers, or use device='cpu'.")

    def _start_message(self) -> tuple[dict[str, Any], bytes]:
        """What every rank starts from (the source's description, FIT's base model and its
        weights): the same for all, so read once."""
        if self._start is not None:
            return self._start
        src = self.source
        limits = src.reader.limits
        info = {"count": src.count, "skipped": src.skipped, "label_type": src.label_type,
                "labels": src.labels(), "progress_interval": src.progress_interval,
                "weights_dirs": list(src.weights_dirs), "column": src.reader.column,
                "checkpoints": src.checkpoints is not None,
                "limits": {"max_image_pixels": limits.max_image_pixels,
                           "max_audio_seconds": limits.max_audio_seconds,
                           "max_text_bytes": limits.max_text_bytes, "audio_limit": limits.audio_limit}}
        base, payload = None, b""
        if self.base is not None:
            from thanosql_pg.server import catalog

            rec = self.base.record
            base = {"name": rec.name, "options": rec.options, "labels": rec.labels,
                    "label_type": rec.label_type, "format": rec.format}
            payload = bytes(catalog.load_payload(rec))
        bind = self.listen if self.opts.remote_workers else "127.0.0.1"
        self._start = ({"t": "start", "world": self.world, "algorithm": self.algo.name,
                        "statement": self.opts.statement, "options": self.opts.declared(),
                        "device": self.opts.device, "threads": self.threads, "timeout": COLLECTIVE_TIMEOUT,
                        "prefix": self.prefix, "store_bind": bind, "source": info, "base": base}, payload)
        return self._start

    def _open_listener(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.listen, 0))
        self.listener.listen(8)
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        port = self.listener.getsockname()[1]
        host = self.listen if ":" not in self.listen else f"[{self.listen}]"
        plpy.notice(f"waiting for {self.opts.remote_workers} remote worker(s) to join: on each machine, run"
                    f"  thanosql worker --join {host}:{port} --secret {self.secret}")

    def _admit(self) -> None:
        """A worker from another machine: admitted only with this statement's secret."""
        assert self.listener is not None
        conn, addr = self.listener.accept()
        who = f"{addr[0]}:{addr[1]}"
        try:
            # kept after admission too: a peer that stalls mid-message must not keep the
            # backend from a cancel for long
            conn.settimeout(REMOTE_TIMEOUT)
            nonce = wire.challenge()
            wire.send(conn, {"t": "challenge", "nonce": nonce.hex()})
            reply, _ = wire.receive(conn, max_json=wire.MAX_HELLO, max_blob=0)
            if reply.get("t") != "answer" or not wire.admitted(self.secret, nonce, str(reply.get("hmac"))):
                wire.send(conn, {"t": "refused", "message": "not invited: wrong secret"})
                plpy.warning(f"refused a worker from {who}: it did not prove it has this statement's secret")
                conn.close()
                return
            joined = [r for r in self.ranks.values() if r.proc is None]
            if len(joined) >= self.opts.remote_workers:
                wire.send(conn, {"t": "refused", "message": "every remote worker has joined"})
                conn.close()
                return
            wire.send(conn, {"t": "admitted"})
        except (OSError, wire.WireError):
            conn.close()
            plpy.warning(f"refused a worker from {who}: it broke off the handshake")
            return
        number = self.local + len(joined)
        rank = Rank(number, conn, None, address=who)
        self.ranks[number] = rank
        self.selector.register(conn, selectors.EVENT_READ, number)
        plpy.notice(f"worker {number} of {self.world} joined from {who}")
        self._send_start(rank)

    def _send_start(self, rank: Rank) -> None:
        message, payload = self._start_message()
        wire.send(rank.sock, {**message, "rank": rank.number}, payload)
        if rank.number != 0 and self.store_port is not None:
            self._send_store(rank)

    def _send_store(self, rank: Rank) -> None:
        host = "127.0.0.1" if rank.proc is not None else rank.sock.getsockname()[0]
        wire.send(rank.sock, {"t": "store", "host": host, "port": self.store_port})

    # -- serving ---------------------------------------------------------------------------
    def run(self) -> Trained:
        self._check_gpus()
        try:
            for number in range(self.local):
                self._spawn(number)
            if self.opts.remote_workers:
                self._open_listener()
            for number in range(self.local):
                self._send_start(self.ranks[number])
            joined_by = time.monotonic() + JOIN_TIMEOUT
            while self.result is None or not all(r.done for r in self.ranks.values()):
                if len(self.ranks) < self.world and time.monotonic() > joined_by:
                    raise WorkerFailed(
                        f"{self.world - len(self.ranks)} remote worker(s) did not join"
                        f" within {JOIN_TIMEOUT:.0f} s",
                        hint="Run thanosql worker --join on each machine, or lower remote_workers.")
                for key, _ in self.selector.select(POLL):
                    if key.data == "listen":
                        self._admit()
                    else:
                        self._serve(self.ranks[key.data])
                spi.check_interrupts()  # a cancel: the finally stops every worker
                self._check_processes()
            self._reap()
            return self.result
        finally:
            self._stop()

    def _check_processes(self) -> None:
        for rank in list(self.ranks.values()):
            if rank.proc is None or rank.done:
                continue
            code = rank.proc.poll()
            if code is None:
                continue
            # its last messages first (its error, its result): they say more than its exit
            while not rank.done and select.select([rank.sock], [], [], 0)[0]:
                self._serve(rank)
            if not rank.done:
                self._died(rank, code)

    def _died(self, rank: Rank, code: int | None) -> None:
        if code is not None and code < 0:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = "closed its connection or stalled mid-message"
        tail = rank.stderr_tail()
        raise WorkerFailed(f"{rank.describe(self.world)} {how} before the training ended",
                           detail=tail[-1500:] or None,
                           hint="No model was written. The worker's last output is in the detail.")

    def _serve(self, rank: Rank) -> None:
        try:
            # only rank 0 (always one of this server's) sends weights and checkpoints
            message, blob = wire.receive(rank.sock, max_blob=wire.MAX_BLOB if rank.number == 0 else 0)
        except (OSError, wire.WireError):
            code = rank.proc.wait(timeout=2) if rank.proc is not None else None
            if rank.done:
                self.selector.unregister(rank.sock)
                return
            self._died(rank, code)
            return
        kind = message["t"]
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            raise WorkerFailed(f"{rank.describe(self.world)} sent an unknown message {kind!r}")
        try:
            handler(rank, message, blob)
        except ThanoSQLError as e:
            if kind in ("error", "result", "done"):
                raise
            # a request the backend could not serve (a file it may not read...): the rank raises it
            wire.send(rank.sock, {"t": "error", "sqlstate": e.sqlstate, "message": e.message, "hint": e.hint,
                                  "detail": e.detail})

    def _on_error(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        try:
            cls = lookup(str(message.get("sqlstate")))
        except KeyError:
            cls = InternalError
        detail = str(message.get("detail") or "")[:MAX_MESSAGE]
        hint = message.get("hint")
        raise cls(str(message.get("message"))[:MAX_MESSAGE], hint=str(hint)[:MAX_MESSAGE] if hint else None,
                  detail=(f"in {rank.describe(self.world)}" + (f": {detail}" if detail else "")))

    def _on_store(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        if rank.number != 0 or self.store_port is not None:
            raise WorkerFailed(f"{rank.describe(self.world)} opened a second rendezvous")
        self.store_port = int(message["port"])
        for other in self.ranks.values():
            if other.number != 0:
                self._send_store(other)

    def _on_notice(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        if rank.number == 0:
            # the fields are checked like any input from another process
            fields = progress_text.from_dict(message.get("progress"))
            self.source.notice(str(message["message"])[:10_000], fields)

    def _on_progress(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        args = message.get("args")
        if rank.number == 0 and isinstance(args, list) and len(args) == 8:
            self.source.progress(*args)

    def _on_resolve(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        path = self.source.reader.resolve_path(str(message["path"]),
                                               expand_user=bool(message.get("expand_user")))
        wire.send(rank.sock, {"t": "path", "path": path})

    def _part(self, message: dict[str, Any]) -> RowSource:
        part = self.parts.get(int(message.get("part", -1)))
        if part is None:
            raise WorkerFailed("a worker asked for a part of the rows that does not exist")
        return part

    def _on_labels(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        wire.send(rank.sock, {"t": "labels", "labels": self._part(message).labels()})

    def _on_label_counts(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        wire.send(rank.sock, {"t": "counts", "counts": self._part(message).label_counts()})

    def _on_split(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        key = (int(message["part"]), float(message["fraction"]), int(message["seed"]))
        if key not in self.splits:
            train, validation = self._part(message).split(key[1], key[2])
            described = []
            for part in (train, validation):
                number = len(self.parts)
                self.parts[number] = part
                described.append({"part": number, "count": part.count, "skipped": part.skipped})
            self.splits[key] = described
        wire.send(rank.sock, {"t": "parts", "parts": self.splits[key]})

    def _on_batches(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        """A rank starts a pass: its n-th pass is every rank's n-th (they run alike)."""
        request = (int(message["part"]), int(message["batch_size"]), bool(message["shuffle"]),
                   int(message["seed"]))
        if request[1] != self.opts.batch_size:  # the statement's global batch, and no other
            raise WorkerFailed(f"{rank.describe(self.world)} asked for batches of {request[1]} rows;"
                               f" the statement's batch_size is {self.opts.batch_size}")
        index = rank.batches
        rank.batches += 1
        if index == len(self.passes):
            rows = self._part(message).batches(request[1], shuffle=request[2], seed=request[3])
            self.passes.append(Pass(rows, request))
        elif index > len(self.passes) or self.passes[index].request != request:
            raise WorkerFailed(f"{rank.describe(self.world)} asked for another pass over the rows"
                               " than the others")
        self.passes[index].position[rank.number] = 0
        wire.send(rank.sock, {"t": "iter", "iter": index})

    def _on_next(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        index = int(message["iter"])
        if not 0 <= index < len(self.passes):
            raise WorkerFailed(f"{rank.describe(self.world)} asked for a pass that was not started")
        p = self.passes[index]
        at = p.position.get(rank.number, 0)
        if at >= p.fetched and not p.ended:
            self._fetch(p)
        if at >= p.fetched:
            wire.send(rank.sock, {"t": "end"})
            p.finished.add(rank.number)
            if len(p.finished) == self.world:  # every rank is through: let the cursor go
                _close(p.rows)
            return
        shares = p.held[at]
        share = shares[rank.number]
        shares[rank.number] = None
        p.position[rank.number] = at + 1
        if all(s is None for s in shares):
            del p.held[at]
        assert share is not None
        listing, data = share
        wire.send(rank.sock, {"t": "rows", "rows": listing}, data)

    def _fetch(self, p: Pass) -> None:
        """The next global batch of a pass, read, in one share per rank."""
        try:
            batch = next(p.rows)
        except StopIteration:
            p.ended = True
            return
        reader = self.source.reader
        packed: list[wire.Packed] = []
        for row in batch:
            about = reader.describe(row)
            if row.value is None:
                packed.append((row.rn, "n", row.target, about, b""))
                continue
            try:
                data = row.value if isinstance(row.value, bytes) else reader.read(row)
            except ThanoSQLError as e:
                packed.append((row.rn, "e", [e.sqlstate, e.message], about, b""))
                continue
            packed.append((row.rn, "b", row.target, about, bytes(data)))
        shares: list[Any] = [wire.pack_rows(packed[r::self.world]) for r in range(self.world)]
        p.held[p.fetched] = shares
        p.fetched += 1

    def _on_checkpoint_load(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        import torch

        store = self.source.checkpoints
        state = store.load() if store is not None else None
        data = b""
        if state is not None:
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
        wire.send(rank.sock, {"t": "checkpoint"}, data)

    def _on_checkpoint_save(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        import torch

        store = self.source.checkpoints
        if rank.number == 0 and store is not None:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            store.save(int(message["epoch"]), state)
        wire.send(rank.sock, {"t": "ok"})

    def _on_result(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        if rank.number != 0:
            raise WorkerFailed(f"{rank.describe(self.world)} sent a result; rank 0 does")
        metrics = dict(message.get("metrics") or {})
        metrics["workers"] = self.world
        self.result = Trained(payload=blob, format=str(message["format"]), labels=message.get("labels"),
                              label_type=message.get("label_type"),
                              options=dict(message.get("options") or {}),
                              metrics=metrics, epochs=list(message.get("epochs") or []))
        rank.done = True

    def _on_done(self, rank: Rank, message: dict[str, Any], blob: bytes) -> None:
        rank.done = True

    # -- stopping ----------------------------------------------------------------------------
    def _reap(self) -> None:
        """After the result: the workers exit by themselves (or are killed after STOP_GRACE)."""
        deadline = time.monotonic() + STOP_GRACE
        for rank in self.ranks.values():
            if rank.proc is not None:
                try:
                    rank.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass

    def _stop(self) -> None:
        """Kill every worker still running and wait for it; close every socket."""
        for rank in self.ranks.values():
            if rank.proc is not None and rank.proc.poll() is None:
                try:
                    os.killpg(rank.proc.pid, signal.SIGKILL)  # its own session: any child of it too
                except ProcessLookupError:
                    pass
        for rank in self.ranks.values():
            if rank.proc is not None:
                try:
                    rank.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            rank.sock.close()
            if rank.log is not None:
                rank.log.close()
        if self.listener is not None:
            self.listener.close()
        self.selector.close()
        for p in self.passes:
            _close(p.rows)


def _close(rows: Iterator[Any]) -> None:
    close = getattr(rows, "close", None)
    if close is not None:
        close()


def train(algo: registry.Algorithm, opts: registry.Options, source: RowSource, base: Any) -> Trained:
    """BUILD/FIT with ``opts.workers`` processes; the family's ``train`` runs in each.
    ``opts`` passed ``check_workers`` in the statement's setup."""
    import torch

    return Coordinator(algo, opts, source, base, torch.get_num_threads()).run()
