"""The `thanosql-proxy` server: listener, upstream connections, CLI entry point.

Use it from code in one of three ways:

* ``await serve(config)`` runs until cancelled;
* ``ProxyServer(config)`` with ``await start()`` / ``await stop()`` inside a running loop;
* ``BackgroundProxy(config)`` runs a proxy on its own thread (for synchronous callers
  such as tests): ``with BackgroundProxy(config) as p: connect(port=p.port)``.

From the command line, ``--workers N`` runs N such proxies as processes sharing the port
(SO_REUSEPORT), for many busy clients on several cores: one Python process relays on one
core at a time, whatever its threads. A worker that dies (the OOM killer, a crash) is
started again, sooner or later as it keeps dying; the others and their sessions go on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from thanosql_pg.proxy.protocol import DEFAULT_MAX_REWRITE_BYTES, DEFAULT_MAX_REWRITE_TOKENS, Rewriter
from thanosql_pg.proxy.session import ClientSession, set_nodelay

log = logging.getLogger("thanosql_pg.proxy")

MAX_REWRITE_BYTES_ENV = "THANOSQL_PROXY_MAX_REWRITE_BYTES"
MAX_REWRITE_TOKENS_ENV = "THANOSQL_PROXY_MAX_REWRITE_TOKENS"
RELAY_MODES = ("threads", "python-threads", "loop")
_CANCEL_TIMEOUT = 10.0


@dataclass
class ProxyConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0: pick a free port; ProxyServer.port tells which
    upstream_host: str = "127.0.0.1"  # a path starting with '/' is a Unix socket directory
    upstream_port: int = 5432
    # Query/Parse messages longer than this are relayed untouched instead of being buffered
    # whole and rewritten (protocol.DEFAULT_MAX_REWRITE_BYTES).
    max_rewrite_bytes: int = DEFAULT_MAX_REWRITE_BYTES
    # The most tokens the default rewriter reads of one of them (protocol.DEFAULT_MAX_REWRITE_TOKENS):
    # past it, SQLSTATE 54000 for a ThanoSQL statement, plain SQL untouched.
    max_rewrite_tokens: int = DEFAULT_MAX_REWRITE_TOKENS
    # How a session is relayed once its startup packet is in (session.py's docstring):
    # "threads", two threads with blocking sockets per session (fastest per round trip),
    # relaying in C once the client is authenticated (session.py, relay.c); "python-threads",
    # the same in Python (what "threads" falls back to when the C module was not built);
    # or "loop", the event loop (least CPU per message with many busy sessions).
    relay: str = "threads"
    # Listen with SO_REUSEPORT: set for the processes of `--workers N`, which share a port.
    reuse_port: bool = False

    @property
    def upstream_is_unix(self) -> bool:
        return self.upstream_host.startswith("/")

    @property
    def upstream_description(self) -> str:
        if self.upstream_is_unix:
            return os.path.join(self.upstream_host, f".s.PGSQL.{self.upstream_port}")
        return f"{self.upstream_host}:{self.upstream_port}"


def default_rewriter() -> Rewriter:
    # Imported here, not at module top, so the proxy's protocol code stays importable on
    # its own; the preprocessor pulls in pglast.
    from thanosql_pg.preprocessor import rewrite_for_wire

    return rewrite_for_wire


def default_trigger_words() -> tuple[bytes, ...]:
    """The words without which the default rewriter returns None (the preprocessor's
    ML_WORDS): the C relay calls it only for a Query/Parse whose bytes hold one."""
    from thanosql_pg.preprocessor import ML_WORDS

    return tuple(word.encode("ascii") for word in ML_WORDS)


def accepts_keyword(func: Callable[..., object], name: str) -> bool:
    """Whether `func` takes keyword argument `name` (or **kwargs). Checked once per server,
    so the proxy works with preprocessors from before and after the argument existed."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    if name in params and params[name].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class ProxyServer:
    """Accepts clients and gives each a `ClientSession` with its own upstream connection.

    `rewriter` defaults to the preprocessor's `rewrite_for_wire`; tests may pass another.
    """

    def __init__(self, config: ProxyConfig, rewriter: Rewriter | None = None) -> None:
        self.config = config
        self.rewriter: Rewriter = rewriter if rewriter is not None else default_rewriter()
        # Only the default rewriter's trigger words are known; another rewriter sees every
        # Query/Parse (session.py).
        self.trigger_words: tuple[bytes, ...] | None = default_trigger_words() if rewriter is None else None
        if config.max_rewrite_bytes < 5:
            raise ValueError(f"max_rewrite_bytes must be at least 5, not {config.max_rewrite_bytes}")
        if config.max_rewrite_tokens < 1:
            raise ValueError(f"max_rewrite_tokens must be at least 1, not {config.max_rewrite_tokens}")
        if config.relay not in RELAY_MODES:
            raise ValueError(f"relay must be one of {', '.join(RELAY_MODES)}, not {config.relay!r}")
        # One callable per value of standard_conforming_strings, made once: sessions switch
        # between them when the server reports a change. The token bound goes to rewriters
        # that take it (the preprocessor's).
        bound: dict[str, Any] = {}
        if accepts_keyword(self.rewriter, "max_tokens"):
            bound["max_tokens"] = config.max_rewrite_tokens
        if accepts_keyword(self.rewriter, "standard_conforming_strings"):
            self._rewriters = {
                scs: functools.partial(self.rewriter, standard_conforming_strings=scs, **bound)
                for scs in (True, False)
            }
        else:
            rewriter = functools.partial(self.rewriter, **bound) if bound else self.rewriter
            self._rewriters = {True: rewriter, False: rewriter}
        self.upstream_description = config.upstream_description
        self.sessions: set[ClientSession] = set()
        # Held while a session rewrites a large Query/Parse (session.LARGE_REWRITE): one at a
        # time, so that rewrites hold the memory of one, and one thread wants the GIL for them.
        self.large_rewrites = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port: int = config.listen_port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientSession(self),
            self.config.listen_host,
            self.config.listen_port,
            reuse_address=True,
            reuse_port=self.config.reuse_port or None,
            backlog=512,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "thanosql-proxy listening on %s:%d, upstream %s",
            self.config.listen_host,
            self.port,
            self.upstream_description,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Sessions relayed on threads end on those threads, soon after the shutdown above.
        for _ in range(200):
            if not self.sessions:
                break
            await asyncio.sleep(0.01)
        log.info("thanosql-proxy stopped")

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.stop()

    # --- used by sessions ----------------------------------------------------------------------

    def session_rewriter(self, standard_conforming_strings: bool) -> Rewriter:
        """The rewriter for a session in this state of standard_conforming_strings."""
        return self._rewriters[standard_conforming_strings]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task, keeping a reference so it isn't garbage-collected."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open_upstream(self, protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        if self.config.upstream_is_unix:
            transport, _ = await loop.create_unix_connection(protocol_factory, self.upstream_description)
        else:
            transport, _ = await loop.create_connection(
                protocol_factory, self.config.upstream_host, self.config.upstream_port
            )
        return transport

    async def forward_cancel(self, packet: bytes) -> None:
        """Relay a CancelRequest verbatim on a new upstream connection, and return once the
        server has closed that connection: PostgreSQL closes it only after signalling the
        backend, so the caller may then tell the client the cancel was delivered.

        The client's BackendKeyData came from the server untouched, so the pid/key in the
        packet name the right backend.
        """
        transport: asyncio.Transport | None = None
        done = asyncio.get_running_loop().create_future()

        class _Cancel(asyncio.Protocol):
            def connection_made(self, t: asyncio.BaseTransport) -> None:
                set_nodelay(t)

            def connection_lost(self, exc: Exception | None) -> None:
                if not done.done():
                    done.set_result(None)

        try:
            transport = await asyncio.wait_for(self.open_upstream(_Cancel), _CANCEL_TIMEOUT)
            transport.write(packet)
            await asyncio.wait_for(done, _CANCEL_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("forwarding a cancel request failed: %s", exc)
        finally:
            if transport is not None:
                transport.close()


async def serve(
    config: ProxyConfig,
    rewriter: Rewriter | None = None,
    ready: Callable[[ProxyServer], None] | None = None,
) -> None:
    """Run a proxy until this coroutine is cancelled."""
    server = ProxyServer(config, rewriter)
    await server.start()
    if ready is not None:
        ready(server)
    await server.serve_forever()


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (it halves the proxy's per-message overhead), else asyncio's."""
    if use_uvloop:
        try:
            import uvloop  # type: ignore[import-not-found]  # optional: absent where the type check runs
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class BackgroundProxy:
    """A proxy on its own thread and event loop, for synchronous code such as tests."""

    def __init__(
        self, config: ProxyConfig, rewriter: Rewriter | None = None, use_uvloop: bool = True
    ) -> None:
        self.config = config
        self.rewriter = rewriter
        self.use_uvloop = use_uvloop
        self.server: ProxyServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def start(self) -> BackgroundProxy:
        self._thread = threading.Thread(target=self._run, name="thanosql-proxy", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = new_event_loop(self.use_uvloop)
        self._loop = loop
        try:
            self.server = ProxyServer(self.config, self.rewriter)
            loop.run_until_complete(self.server.start())
        except BaseException as exc:  # re-raised in the starting thread
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> BackgroundProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="thanosql-proxy",
        description="PostgreSQL wire-protocol proxy that rewrites ThanoSQL statements to SQL.",
    )
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=5433)
    parser.add_argument(
        "--upstream-host",
        default="127.0.0.1",
        help="host name/address, or a Unix socket directory (starting with '/')",
    )
    parser.add_argument("--upstream-port", type=int, default=5432)
    parser.add_argument(
        "--max-rewrite-bytes",
        type=_rewrite_limit,
        default=_env_setting(MAX_REWRITE_BYTES_ENV, DEFAULT_MAX_REWRITE_BYTES, _rewrite_limit),
        help="Query/Parse messages longer than this are relayed untouched, not buffered and "
        f"rewritten (default ${MAX_REWRITE_BYTES_ENV}, else {DEFAULT_MAX_REWRITE_BYTES})",
    )
    parser.add_argument(
        "--max-rewrite-tokens",
        type=_positive,
        default=_env_setting(MAX_REWRITE_TOKENS_ENV, DEFAULT_MAX_REWRITE_TOKENS, _positive),
        help="the most tokens read of a Query/Parse to rewrite: past it, a ThanoSQL statement gets "
        "SQLSTATE 54000 and plain SQL is relayed untouched; bounds the rewrite's memory (about 400 "
        f"bytes a token) (default ${MAX_REWRITE_TOKENS_ENV}, else {DEFAULT_MAX_REWRITE_TOKENS})",
    )
    parser.add_argument(
        "--relay",
        choices=RELAY_MODES,
        default="threads",
        help="relay each session on two threads with blocking sockets, in C (default: the "
        "fastest round trips) or in Python, or on the event loop (less CPU per message with "
        "many busy sessions)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes sharing the listening port (SO_REUSEPORT: the kernel spreads new "
        "connections over them), each with its own event loop; one that dies is started again "
        "(after a pause growing to 30 s while it keeps dying young); default 1",
    )
    parser.add_argument("--log-file", help="append log lines here instead of stderr")
    parser.add_argument("--pid-file", help="write the process id here while running")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="use asyncio's default event loop even if uvloop is installed",
    )
    return parser.parse_args(argv)


def _rewrite_limit(text: str) -> int:
    value = int(text)
    if value < 5:
        raise argparse.ArgumentTypeError(f"must be at least 5 bytes, not {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _env_setting(name: str, default: int, parse: Callable[[str], int]) -> int:
    """An option's default from the environment variable ``name``, read by ``parse`` (the
    option's own argparse type); a bad value stops the proxy, naming the variable."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return parse(text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        sys.exit(f"thanosql-proxy: {name}={text!r}: {exc}")


def _ready_line(config: ProxyConfig, port: int) -> str:
    # The one line that tells whoever started us that we're ready to accept connections.
    return (
        f"thanosql-proxy ready: listening on {config.listen_host}:{port}, "
        f"upstream {config.upstream_description}"
    )


async def _amain(config: ProxyConfig, ready: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ProxyServer(config)
    await server.start()
    ready(server.port)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _run(config: ProxyConfig, use_uvloop: bool, ready: Callable[[int], None]) -> None:
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        runner.run(_amain(config, ready))


class _Stop(Exception):
    """SIGTERM or SIGINT reached the parent of the workers."""


# A dead worker is started again at once, and again after a pause if the new one dies
# young (before _STABLE_AFTER seconds): _FIRST_BACKOFF, doubling up to _MAX_BACKOFF while
# they keep dying young. A crash loop costs little then, and each death is in the log.
_STABLE_AFTER = 30.0
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_POLL = 0.2  # how often the parent looks for dead workers


def _run_workers(config: ProxyConfig, workers: int, use_uvloop: bool) -> int:
    """`--workers N`: N forked processes, each a whole proxy with its own event loop,
    listening on one port with SO_REUSEPORT, so the kernel spreads connections over them.
    The parent starts them, prints the ready line once all are listening, starts again
    any that dies (the kernel sends new connections to the others meanwhile; the others'
    sessions are untouched), and stops them all on SIGTERM/SIGINT. It fails only if a
    worker fails to start at first."""
    # Reserve the port first (bound, never listening: only listening sockets get
    # connections), so that `--listen-port 0` gives every worker the same one.
    family = socket.getaddrinfo(config.listen_host, config.listen_port, type=socket.SOCK_STREAM)[0][0]
    placeholder = socket.socket(family, socket.SOCK_STREAM)
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    placeholder.bind((config.listen_host, config.listen_port))
    port = placeholder.getsockname()[1]
    worker_config = dataclasses.replace(config, listen_port=port, reuse_port=True)
    # Loaded once here, shared copy-on-write by the workers.
    default_rewriter()
    children: dict[int, int] = {}  # pid -> its slot (0 .. workers - 1)
    born = [0.0] * workers  # when each slot's worker was started
    deaths = [0] * workers  # each slot's deaths in a row, all but the first before _STABLE_AFTER
    due: dict[int, float] = {}  # slot -> when to start it again
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    for sig in stop_signals:
        signal.signal(sig, _raise_stop)

    def fork(slot: int, ready_end: int | None, close: list[int]) -> int:
        # Stop signals blocked across the fork, so that _Stop is never raised in a new
        # worker, and the parent records it before it can be stopped.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            pid = os.fork()
            if pid == 0:  # the worker: never back into the parent's code
                try:
                    for fd in close:
                        os.close(fd)
                    placeholder.close()
                    for sig in stop_signals:
                        signal.signal(sig, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                    _worker(worker_config, use_uvloop, ready_end)
                finally:
                    os._exit(1)
            children[pid] = slot
            born[slot] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        return pid

    try:
        pipes: list[int] = []
        for slot in range(workers):
            read_end, write_end = os.pipe()
            fork(slot, write_end, [read_end, *pipes])
            os.close(write_end)
            pipes.append(read_end)
        for read_end in pipes:
            with os.fdopen(read_end) as pipe:
                if pipe.read() != "ready":
                    raise OSError("a worker failed to start (see the log)")
        print(_ready_line(config, port), flush=True)
        while True:
            time.sleep(_POLL)
            while children:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                slot = children.pop(pid)
                lived = time.monotonic() - born[slot]
                deaths[slot] = 1 if lived >= _STABLE_AFTER else deaths[slot] + 1
                pause = _backoff(deaths[slot])
                due[slot] = time.monotonic() + pause
                log.error("thanosql-proxy: worker %d (pid %d) %s after %.1f s; starting another in %.1f s",
                          slot, pid, _describe_exit(wait_status), lived, pause)
            now = time.monotonic()
            for slot, when in list(due.items()):
                if when <= now:
                    del due[slot]
                    pid = fork(slot, None, [])
                    log.warning("thanosql-proxy: worker %d started again (pid %d)", slot, pid)
    except _Stop:
        pass
    finally:
        placeholder.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


def _backoff(deaths: int) -> float:
    """The pause before starting a worker again after `deaths` deaths in a row."""
    return 0.0 if deaths <= 1 else min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (deaths - 2))


def _describe_exit(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(wait_status)}"


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _die_with_parent() -> None:
    """Have Linux send this worker SIGTERM when its parent dies, so that a parent killed
    with SIGKILL leaves no orphan worker listening on the port."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


def _worker(config: ProxyConfig, use_uvloop: bool, ready_fd: int | None) -> None:
    """A forked worker's whole life: never returns into the parent's code. It writes
    "ready" to `ready_fd` once listening (none for a worker started again)."""
    code = 0
    _die_with_parent()
    pipe = os.fdopen(ready_fd, "w") if ready_fd is not None else None
    try:
        def ready(port: int) -> None:
            if pipe is not None:
                pipe.write("ready")
                pipe.close()

        _run(config, use_uvloop, ready)
    except BaseException as exc:  # reported, then the process ends
        log.error("thanosql-proxy worker: %s", exc)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        filename=args.log_file,
    )
    config = ProxyConfig(
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        upstream_host=args.upstream_host,
        upstream_port=args.upstream_port,
        max_rewrite_bytes=args.max_rewrite_bytes,
        max_rewrite_tokens=args.max_rewrite_tokens,
        relay=args.relay,
    )
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        if args.workers > 1:
            return _run_workers(config, args.workers, not args.no_uvloop)
        _run(config, not args.no_uvloop, lambda port: print(_ready_line(config, port), flush=True))
    except OSError as exc:
        log.error("thanosql-proxy: %s", exc)
        print(f"thanosql-proxy: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(args.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
