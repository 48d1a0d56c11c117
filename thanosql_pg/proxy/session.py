"""One client connection through the proxy: the startup handshake, then two relays.

The startup phase (SSL/GSS refusals, CancelRequest, the startup packet, connecting
upstream) runs on the event loop, as asyncio Protocols. Then the session is relayed in one
of two ways (ProxyConfig.relay, `--relay`):

* "threads", the default: both connections are handed over to two threads with blocking
  sockets, one per direction. A blocking recv() wakes its thread straight from the kernel
  with the data: no epoll_wait and no event-loop iteration per message. Once the client is
  authenticated, both threads relay in C without the GIL (relay.c: the same framing as
  below, message for message), calling back into Python only for a Query/Parse to rewrite
  and for the server's Authentication/ParameterStatus messages: a message that needs no
  Python costs a recv and a send (bench/proxy_overhead.py). "python-threads" relays the
  same way in Python, which is also what "threads" does when the C module was not built.
  Backpressure: a write returns once the kernel has taken every byte, so a slow reader
  holds up the thread that feeds it, which then reads nothing more from the other side.
* "loop": bytes are forwarded straight from `data_received` with `transport.write`, which
  sends at once when the socket can take it: no task switch and no await per message.
  Backpressure is the transport's own flow control: when one side's write buffer passes
  its high-water mark, asyncio calls `pause_writing` and reading from the other side stops
  until `resume_writing`. With many busy sessions on few cores one thread multiplexing
  them all costs less CPU per message than two threads per session contending for the GIL.

Either way the same code (`from_client`, `UpstreamSide.data_received`) frames both streams:

client -> server: framed (type byte + int32 length) so Query and Parse messages can be
rewritten; every other message is forwarded as the bytes that arrived, many per write,
and a large message (COPY data) streams through without being buffered whole. Nothing is
rewritten before the server's AuthenticationOk, and a Query/Parse longer than
`max_rewrite_bytes` streams through untouched like any other message. A Query/Parse
longer than LARGE_REWRITE is rewritten by one thread of the process at a time (the
server's `large_rewrites` lock), so that what rewrites hold, and how many threads want
the GIL for it, stays that of one whatever the number of clients sending them; relaying
on the loop, it is rewritten on another thread, the client's stream held back meanwhile.

server -> client: framed by reading only the 5-byte headers, then forwarded as it arrived;
only ParameterStatus and Authentication messages are looked inside. That is how the
session learns, from the server itself, that authentication succeeded and what
client_encoding and standard_conforming_strings are; bytes inside other messages (a bytea
value, COPY data) can never be mistaken for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from thanosql_pg.proxy import protocol as proto
from thanosql_pg.proxy.protocol import (
    HEADER,
    MAX_MESSAGE_LENGTH,
    MAX_PRE_AUTH_MESSAGE_LENGTH,
    MAX_STARTUP_LENGTH,
    ProtocolViolation,
    Rewriter,
)

try:  # the relay loops in C (relay.c), built by the package's install; optional
    from thanosql_pg.proxy import relay as native_relay
except ImportError:  # no compiler at install time: the same relay in Python
    native_relay = None

log = logging.getLogger("thanosql_pg.proxy")


class HostConfig(Protocol):
    relay: str  # 'threads' (the C relay), 'python-threads' or 'loop'


class SessionHost(Protocol):
    """What a session needs of the proxy that accepted it, as psycopg's pq/abc.py states
    what it needs of libpq: ``server.ProxyServer`` is one. The session calls its host
    through this and never imports the server module, which imports this one."""

    config: HostConfig
    sessions: set[ClientSession]  # the open sessions, for a clean shutdown
    large_rewrites: threading.Lock  # rewrites of large statements, one at a time per process
    trigger_words: tuple[bytes, ...] | None  # the words that make a statement worth rewriting
    upstream_description: str  # the server, for messages

    def session_rewriter(self, standard_conforming_strings: bool) -> Rewriter: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    async def open_upstream(self, protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport: ...

    async def forward_cancel(self, packet: bytes) -> None: ...

_unpack_header = HEADER.unpack_from
_unpack_type_length = struct.Struct("!BI").unpack_from  # a message header: type byte, int32 length
_CONNECT_TIMEOUT = 10.0
# Like the server's authentication_timeout: a client must send its startup packet in time.
STARTUP_TIMEOUT = 60.0
# Server messages the proxy looks inside ('R', 'S') are gathered whole when they straddle
# reads, up to this size; real ones are tiny. A bigger one is only framed, never buffered.
_MAX_INSPECTED_LENGTH = 1 << 16
# What one read takes at most when relaying on threads (a COPY arrives in 8 KiB sends).
_READ_SIZE = 1 << 16
# A Query/Parse longer than this is rewritten under the server's large_rewrites lock (and off
# the event loop when relaying on it): such a rewrite may take a good part of a second.
LARGE_REWRITE = 1 << 16


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the socket may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def detach_socket(transport: asyncio.BaseTransport) -> socket.socket:
    """The transport's connection as a blocking socket of our own; the transport is closed.

    abort() makes the event loop stop watching its descriptor and close it; the connection
    lives on in the duplicate, which the loop never saw.
    """
    fd = os.dup(transport.get_extra_info("socket").fileno())
    transport.abort()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    return sock


class SocketTransport:
    """A blocking socket with the transport methods a relaying session calls.

    write() returns once the kernel has taken every byte. A slow reader on this side thus
    holds up the thread writing to it, and that thread reads nothing more from the other
    side meanwhile: that is the relay's backpressure, and nothing queues up in the proxy.
    close() and abort() shut the connection down (FIN after the data already written),
    which also wakes the thread blocked reading it; `release` closes the descriptor once
    no thread uses it. `lock` is shared by both sides of a session, so no shutdown can hit
    a descriptor number that was closed and reused.
    """

    __slots__ = ("closing", "lock", "sock", "write")

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self.sock = sock
        self.lock = lock
        self.closing = False
        self.write = sock.sendall

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        with self.lock:
            if not self.closing:
                self.closing = True
                with contextlib.suppress(OSError):  # already reset by the peer
                    self.sock.shutdown(socket.SHUT_RDWR)

    abort = close

    def release(self) -> None:
        with self.lock:
            self.closing = True
            self.sock.close()


def pump(
    sock: socket.socket, handle: Callable[[memoryview], None], until: Callable[[], bool] | None = None
) -> bool:
    """Read `sock` until its peer closes (returns True), or until `until()` holds after a
    read (returns False), handing each read to `handle` as a view of one reused buffer: no
    allocation per read, and handlers copy whatever they keep."""
    buf = bytearray(_READ_SIZE)
    view = memoryview(buf)
    recv_into = sock.recv_into
    while n := recv_into(buf):
        handle(view[:n])
        if until is not None and until():
            return False
    return True


class UpstreamSide(asyncio.Protocol):
    """The connection to PostgreSQL: everything it sends goes to the client unchanged.
    Relaying on the loop, this is that connection's Protocol; on threads, the server's
    thread only calls `data_received`.

    The stream is framed on the way through (see the module docstring): `skip` counts the
    bytes of the current message's body still to come, which are forwarded without being
    looked at; `partial` holds an incomplete header (< 5 bytes), or an incomplete 'R'/'S'
    message, across reads.
    """

    __slots__ = ("client", "partial", "session", "skip", "transport")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.client = session.transport
        self.transport: asyncio.Transport | None = None
        self.skip = 0
        self.partial = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's isn't an asyncio.Transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        # Framed before it is forwarded: the session must know what these bytes say
        # (AuthenticationOk, client_encoding) before the client can answer them, which on
        # threads it does on another thread the moment it has them.
        n = len(data)
        skip = self.skip
        if skip:
            if skip >= n:  # inside a big message (a wide row, COPY data): nothing to frame
                self.skip = skip - n
                self.client.write(data)
                return
            self.skip = 0
            pos = skip
        elif self.partial:
            pos = self.finish_partial(data)
        else:
            pos = 0
        # Headers only: this loop runs for every result row, so it does the least it can
        # (one struct call per message; measured fastest of the variants tried).
        unpack = _unpack_type_length
        last = n - 5  # the last position where a whole header fits
        while pos <= last:
            type_byte, length = unpack(data, pos)
            end = pos + 1 + length
            if type_byte == 0x53 or type_byte == 0x52:  # 'S' ParameterStatus, 'R' Authentication
                if end <= n:
                    self.session.server_message(type_byte, data[pos + 5 : end])
                elif end - pos <= _MAX_INSPECTED_LENGTH:
                    break  # gather the rest in `partial`
            pos = end
        if pos > n:
            self.skip = pos - n
        elif pos < n:
            self.partial = bytearray(data[pos:])
        self.client.write(data)

    def finish_partial(self, data: bytes) -> int:
        """Complete `partial` from the start of `data`; returns where the next message
        starts in `data` (past its end while the current message's body continues)."""
        buf = self.partial
        n = len(data)
        taken = 0
        if len(buf) < 5:
            taken = 5 - len(buf)
            buf += data[:taken]
            if len(buf) < 5:
                return n
            length = _unpack_header(buf, 1)[0]
            if (buf[0] != 0x53 and buf[0] != 0x52) or length + 1 > _MAX_INSPECTED_LENGTH:
                buf.clear()
                return taken + max(length - 4, 0)  # this message's body is not looked at
        need = 1 + _unpack_header(buf, 1)[0]
        more = need - len(buf)
        buf += data[taken : taken + more]
        if len(buf) < need:
            return n
        self.session.server_message(buf[0], bytes(buf[5:]))
        buf.clear()
        return taken + more

    def connection_lost(self, exc: Exception | None) -> None:
        # close() (not abort) so the server's last words (e.g. a FATAL error) still reach the client.
        self.session.upstream_lost()

    # PostgreSQL is slow to read (e.g. a big COPY FROM STDIN): stop reading from the client.
    def pause_writing(self) -> None:
        if not self.client.is_closing():
            self.client.pause_reading()

    def resume_writing(self) -> None:
        if not self.client.is_closing():
            self.client.resume_reading()


class ClientSession(asyncio.Protocol):
    """The client's connection, and the state of its whole session."""

    def __init__(self, server: SessionHost) -> None:
        self.server = server
        # Transports while on the event loop; SocketTransports once relayed on threads.
        self.transport: asyncio.Transport | SocketTransport = None  # type: ignore[assignment]  # set by connection_made
        self.upstream: asyncio.Transport | SocketTransport | None = None
        self.peer = "?"
        self.relaying = False
        self.closed = False
        # Session state, learnt only from the server's own messages (UpstreamSide frames them).
        self.authenticated = False
        self.encoding: str | None = None  # Python codec of client_encoding; None: not rewriting
        self.standard_conforming_strings = True
        # What from_client calls: None until the server has authenticated the client and
        # reported an encoding with a codec; then the rewriter with the session's settings.
        self.active_rewriter: Rewriter | None = None
        self.max_rewrite_bytes = server.config.max_rewrite_bytes
        # Messages longer than this are a protocol violation; tiny until AuthenticationOk.
        self.max_message_length = MAX_PRE_AUTH_MESSAGE_LENGTH
        # Bytes of a message we cannot forward yet: a partial header, or a partial
        # Query/Parse (which must be whole to be rewritten). `need` = bytes that completes it.
        self.pending = bytearray()
        self.need = 0
        # Bytes of the current pass-through message still to come; forwarded as they arrive.
        self.skip = 0
        self.startup_timer: asyncio.TimerHandle | None = None
        # Relaying on threads (relay_on_threads): how many of the two are still running.
        self.threaded = False
        self.running = 0
        # Relaying on the loop, while a large Query/Parse is rewritten on another thread
        # (rewrite_later): what the client sent after it, relayed once it is done.
        self.held: bytearray | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's isn't an asyncio.Transport
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        self.server.sessions.add(self)
        self.startup_timer = asyncio.get_running_loop().call_later(STARTUP_TIMEOUT, self.startup_timed_out)

    def data_received(self, data: bytes) -> None:
        try:
            if self.held is not None:  # a large rewrite is under way: after it
                self.held += data
                self.transport.pause_reading()
            elif self.relaying:
                self.from_client(data)
            else:
                self.startup_data(data)
        except ProtocolViolation as exc:
            log.warning("client %s: protocol violation: %s; closing its session", self.peer, exc)
            self.abort()
        except Exception:  # never let one client's bytes take the server down
            log.exception("client %s: unexpected error; closing its session", self.peer)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.threaded:
            return  # detached: the relay threads own the connection now
        self.closed = True
        if self.startup_timer is not None:
            self.startup_timer.cancel()
        self.server.sessions.discard(self)
        if self.upstream is not None:
            self.upstream.close()
        log.debug("client %s disconnected", self.peer)

    # The client is slow to read: stop reading from the server until its buffer drains.
    def pause_writing(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.resume_reading()

    # --- relay: client -> server ---------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        """Forward client bytes, rewriting complete Query/Parse messages on the way."""
        upstream = self.upstream
        assert upstream is not None
        if self.pending:
            pending = self.pending
            pending += data
            if len(pending) < self.need:
                return
            data = bytes(pending)
            pending.clear()
        n = len(data)
        pos = 0
        if self.skip:
            # Rest of a pass-through message (typically CopyData): stream it out.
            if self.skip >= n:
                self.skip -= n
                upstream.write(data)
                return
            pos = self.skip
            self.skip = 0

        rewriter = self.active_rewriter
        max_rewrite = self.max_rewrite_bytes
        max_length = self.max_message_length
        out_start = 0  # start of the run of bytes to forward verbatim
        while n - pos >= 5:
            type_byte = data[pos]
            (length,) = _unpack_header(data, pos + 1)
            if length < 4 or length > max_length:
                raise ProtocolViolation(f"invalid message length {length} (type {type_byte:#04x})")
            end = pos + 1 + length
            if (
                rewriter is not None
                and (type_byte == 0x51 or type_byte == 0x50)  # 'Q', 'P'
                and length <= max_rewrite
            ):
                if end > n:
                    break  # wait for the whole message (at most max_rewrite bytes)
                if length > LARGE_REWRITE and not self.threaded:
                    # On the event loop: rewritten on another thread, the rest after it.
                    if pos > out_start:
                        upstream.write(data[out_start:pos])
                    self.rewrite_later(rewriter, data[pos:end], data[end:])
                    return
                new = self.rewrite(rewriter, type_byte, data, pos + 5, end)
                if new is not None:
                    if pos > out_start:
                        upstream.write(data[out_start:pos])
                    upstream.write(new)
                    out_start = end
            elif end > n:
                # Partial pass-through message: forward what we have, skip the rest later.
                self.skip = end - n
                pos = n
                break
            pos = end

        if pos > out_start:
            upstream.write(data if out_start == 0 and pos == n else data[out_start:pos])
        if pos < n:
            self.pending += memoryview(data)[pos:]
            if n - pos < 5:
                self.need = 5
            else:
                self.need = 1 + _unpack_header(data, pos + 1)[0]

    def rewrite_body(self, type_byte: int, body: bytes) -> bytes | None:
        """What the C relay calls for each whole Query/Parse: the replacement or None."""
        rewriter = self.active_rewriter
        if rewriter is None:
            return None
        return self.rewrite(rewriter, type_byte, body, 0, len(body))

    def rewrite(self, rewriter: Rewriter, type_byte: int, data: bytes, start: int, end: int) -> bytes | None:
        assert self.encoding is not None  # active_rewriter is None otherwise
        try:
            if end - start > LARGE_REWRITE:
                with self.server.large_rewrites:
                    return proto.rewrite_message(type_byte, data[start:end], self.encoding, rewriter)
            return proto.rewrite_message(type_byte, data[start:end], self.encoding, rewriter)
        except Exception:
            # A preprocessor bug must not break plain SQL: send the text as the client wrote it.
            log.exception("client %s: rewriting failed; forwarding the statement unchanged", self.peer)
            return None

    def rewrite_later(self, rewriter: Rewriter, message: bytes, rest: bytes) -> None:
        """Relaying on the loop: rewrite the whole Query/Parse `message` on another thread,
        then relay it and `rest` (what followed it), holding back what the client sends
        meanwhile (`held`)."""
        self.held = bytearray(rest)
        self.transport.pause_reading()
        self.server.spawn(self._rewrite_later(rewriter, message))

    async def _rewrite_later(self, rewriter: Rewriter, message: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(
                None, self.rewrite, rewriter, message[0], message, 5, len(message))
        finally:
            held = self.held
            self.held = None
        if self.closed or self.upstream is None or held is None:
            return
        self.upstream.write(message if new is None else new)
        if held:
            self.data_received(bytes(held))  # may hold back again
        if not self.closed and self.held is None:
            self.transport.resume_reading()

    # --- what the server tells us (framed by UpstreamSide) -------------------------------------

    def server_message(self, type_byte: int, body: bytes) -> None:
        """A whole Authentication ('R') or ParameterStatus ('S') message from the server."""
        if type_byte == proto.AUTHENTICATION:
            if not self.authenticated and proto.is_authentication_ok(body):
                self.authenticated = True
                self.max_message_length = MAX_MESSAGE_LENGTH
                self.update_rewriter()
            return
        status = proto.parse_parameter_status(body)
        if status is None:
            return
        name, value = status
        if name == b"client_encoding":
            text = value.decode("latin-1")
            self.encoding = proto.python_encoding(text)
            if self.encoding is None:
                log.info("client %s: client_encoding %s has no codec; not rewriting", self.peer, text)
            self.update_rewriter()
        elif name == b"standard_conforming_strings":
            self.standard_conforming_strings = value == b"on"
            self.update_rewriter()

    def update_rewriter(self) -> None:
        if not self.authenticated or self.encoding is None:
            self.active_rewriter = None
        else:
            self.active_rewriter = self.server.session_rewriter(self.standard_conforming_strings)

    # --- startup phase -------------------------------------------------------------------------

    def startup_data(self, data: bytes) -> None:
        buf = self.pending
        buf += data
        while len(buf) >= 8:
            (length,) = _unpack_header(buf, 0)
            if length < 8 or length > MAX_STARTUP_LENGTH:
                raise ProtocolViolation(f"invalid startup packet length {length}")
            if len(buf) < length:
                return
            (code,) = _unpack_header(buf, 4)
            packet = bytes(buf[:length])
            del buf[:length]
            if code == proto.SSL_REQUEST_CODE or code == proto.GSSENC_REQUEST_CODE:
                if buf:
                    # Like the server: data after the request, before our answer, is an attack
                    # (CVE-2021-23222 style injection) or a bug.
                    raise ProtocolViolation("data received after an encryption request")
                self.transport.write(b"N")  # no TLS/GSS here: the client continues in clear
                continue
            if code == proto.CANCEL_REQUEST_CODE:
                if length != 16:
                    raise ProtocolViolation("malformed CancelRequest")
                self.relay_cancel(packet)
                return
            self.start_session(code, packet)
            return

    def relay_cancel(self, packet: bytes) -> None:
        """Forward a CancelRequest; close the client's connection only once the server has
        closed the upstream one, i.e. has signalled the backend. libpq waits for that close
        and then sends its next statement: closing earlier let the cancel land on it."""
        self.cancel_startup_timer()
        self.transport.pause_reading()
        self.server.spawn(self._relay_cancel(packet))

    async def _relay_cancel(self, packet: bytes) -> None:
        try:
            await self.server.forward_cancel(packet)
        finally:
            if not self.closed:
                self.transport.close()

    def cancel_startup_timer(self) -> None:
        if self.startup_timer is not None:
            self.startup_timer.cancel()
            self.startup_timer = None

    def startup_timed_out(self) -> None:
        if not self.relaying and not self.closed:
            log.warning("client %s: no startup packet in %.0f s; closing", self.peer, STARTUP_TIMEOUT)
            self.abort()

    def start_session(self, version: int, packet: bytes) -> None:
        self.cancel_startup_timer()
        if version >> 16 == 3:
            params = proto.parse_startup_params(packet[8:])
            log.debug(
                "client %s: startup user=%s database=%s",
                self.peer,
                params.get("user"),
                params.get("database", params.get("user")),
            )
        # Other protocol versions: relay and let the server refuse them.
        self.transport.pause_reading()
        self.server.spawn(self.connect_upstream(packet))

    async def connect_upstream(self, packet: bytes) -> None:
        threads = self.server.config.relay != "loop"
        factory = asyncio.Protocol if threads else (lambda: UpstreamSide(self))
        try:
            transport = await asyncio.wait_for(self.server.open_upstream(factory), _CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.error(
                "client %s: cannot connect to upstream %s: %s",
                self.peer,
                self.server.upstream_description,
                exc,
            )
            if not self.closed:
                self.transport.write(
                    proto.error_response(
                        f"thanosql-proxy could not connect to the PostgreSQL server at "
                        f"{self.server.upstream_description}: {exc}"
                    )
                )
                self.transport.close()
            return
        if self.closed:
            transport.close()
            return
        if threads:
            self.relay_on_threads(packet, transport)
            return
        self.upstream = transport
        transport.write(packet)
        self.relaying = True
        if self.pending:
            leftover = bytes(self.pending)
            self.pending.clear()
            self.data_received(leftover)
        if not self.closed and self.held is None:
            self.transport.resume_reading()

    # --- relaying on threads -------------------------------------------------------------------

    def relay_on_threads(self, packet: bytes, upstream: asyncio.BaseTransport) -> None:
        """Hand both connections over to two threads with blocking sockets, one per direction
        (see the module docstring); the first thing the client's thread sends is `packet`."""
        if self.transport.get_write_buffer_size():
            # Only a refusal 'N' can be queued, and a client that sent its startup packet
            # has read it: one that has not is not a client to keep.
            upstream.close()
            self.abort()
            return
        self.threaded = True
        lock = threading.Lock()
        try:
            client_sock = detach_socket(self.transport)
        except OSError as exc:  # out of descriptors (os.dup)
            log.error("client %s: cannot take over its connection: %s; closing it", self.peer, exc)
            upstream.close()
            self.threaded = False
            self.abort()
            return
        try:
            server_sock = detach_socket(upstream)
        except OSError as exc:
            log.error("client %s: cannot take over its upstream connection: %s; closing it", self.peer, exc)
            upstream.close()
            client_sock.close()
            self.closed = True
            self.server.sessions.discard(self)
            return
        client = SocketTransport(client_sock, lock)
        server = SocketTransport(server_sock, lock)
        self.transport, self.upstream = client, server  # what from_client and UpstreamSide write to
        self.relaying = True
        leftover = bytes(self.pending)
        self.pending.clear()
        side = UpstreamSide(self)
        self.running = 2
        for name, target, args in (
            ("client", self.client_thread, (client, server, packet, leftover)),
            ("server", self.server_thread, (client, server, side)),
        ):
            try:
                threading.Thread(
                    target=target, args=args, name=f"thanosql-proxy {self.peer} {name}", daemon=True
                ).start()
            except RuntimeError as exc:  # no more threads: this session ends, the others go on
                log.error("client %s: cannot start a relay thread: %s; closing its session", self.peer, exc)
                self.thread_done(client, server)

    def native(self) -> bool:
        return native_relay is not None and self.server.config.relay == "threads"

    def at_native_boundary(self) -> bool:
        """The client's stream may go over to the C relay: authenticated, and between
        messages (nothing pending, no message body still to come)."""
        return self.authenticated and not self.pending and not self.skip

    def client_thread(
        self, client: SocketTransport, server: SocketTransport, packet: bytes, leftover: bytes
    ) -> None:
        try:
            server.write(packet)
            if leftover:
                self.from_client(leftover)
            if not self.native():
                pump(client.sock, self.from_client)
            # The startup and authentication in Python (they are framed with the pre-auth
            # limits), then the rest of the session in C.
            elif self.at_native_boundary() or not pump(
                client.sock, self.from_client, until=self.at_native_boundary
            ):
                assert native_relay is not None
                violation = native_relay.relay_client(
                    client.sock.fileno(),
                    server.sock.fileno(),
                    self.max_message_length,
                    self.max_rewrite_bytes,
                    self.rewrite_body,
                    self.server.trigger_words,
                )
                if violation is not None:
                    raise ProtocolViolation(violation)
        except ProtocolViolation as exc:
            log.warning("client %s: protocol violation: %s; closing its session", self.peer, exc)
        except OSError:
            pass  # reset by either side, or shut down by the other thread or by stop()
        except Exception:  # never let one client's bytes take the proxy down
            log.exception("client %s: unexpected error; closing its session", self.peer)
        finally:
            self.thread_done(client, server)

    def server_thread(self, client: SocketTransport, server: SocketTransport, side: UpstreamSide) -> None:
        try:
            if self.native():
                assert native_relay is not None
                native_relay.relay_server(server.sock.fileno(), client.sock.fileno(), self.server_message)
            else:
                pump(server.sock, side.data_received)
        except OSError:
            pass
        except Exception:
            log.exception("client %s: unexpected error; closing its session", self.peer)
        finally:
            self.thread_done(client, server)

    def thread_done(self, client: SocketTransport, server: SocketTransport) -> None:
        """One direction has ended: end the other (the shutdown wakes its thread) and, once
        both have, close the sockets. The client's side is shut down after everything
        already relayed to it, so the server's last words (a FATAL error) still reach it."""
        self.closed = True
        client.close()
        server.close()
        with client.lock:
            self.running -= 1
            last = self.running == 0
        if last:
            client.release()
            server.release()
            self.server.sessions.discard(self)
            log.debug("client %s disconnected", self.peer)

    # --- teardown ------------------------------------------------------------------------------

    def upstream_lost(self) -> None:
        if not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()
