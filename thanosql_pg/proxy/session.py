"""One client connection through the proxy: the startup handshake, then two relays.

Built on asyncio Protocols rather than streams: bytes are forwarded straight from
`data_received` with `transport.write`, which sends at once when the socket can take it.
That means no task switch and no await per message, which is what keeps the overhead low
for pgbench-style traffic of tiny round trips. Backpressure is the transport's own flow
control: when one side's write buffer passes its high-water mark, asyncio calls
`pause_writing` and reading from the other side stops until `resume_writing`; this is
what `drain()` does under the hood for streams.

client -> server: framed (type byte + int32 length) so Query and Parse messages can be
rewritten; every other message is forwarded as the bytes that arrived, many per write,
and a large message (COPY data) streams through without being buffered whole.
server -> client: an unframed byte pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from thanosql_pg.proxy import protocol as proto
from thanosql_pg.proxy.protocol import (
    HEADER,
    MAX_MESSAGE_LENGTH,
    MAX_STARTUP_LENGTH,
    ProtocolViolation,
)

if TYPE_CHECKING:
    from thanosql_pg.proxy.server import ProxyServer

log = logging.getLogger("thanosql_pg.proxy")

_unpack_header = HEADER.unpack_from
_CONNECT_TIMEOUT = 10.0
# Like the server's authentication_timeout: a client must send its startup packet in time.
STARTUP_TIMEOUT = 60.0
# How far from the end of a server chunk to look for ParameterStatus(client_encoding); room
# for every GUC_REPORT setting changing at once, plus ReadyForQuery.
_PARAMETER_STATUS_TAIL = 4096


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the socket may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class UpstreamSide(asyncio.Protocol):
    """The connection to PostgreSQL: everything it sends goes to the client unchanged."""

    __slots__ = ("client", "session", "transport")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.client = session.transport
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's isn't an asyncio.Transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.client.write(data)
        # Track `SET client_encoding` so Query/Parse text is decoded right. Since PostgreSQL 14
        # the server sends changed ParameterStatus values just before ReadyForQuery, i.e. at
        # the end of a burst, so searching the tail keeps this O(1) for big results.
        if data.find(b"client_encoding\x00", -_PARAMETER_STATUS_TAIL) >= 0:
            self.session.server_reported_encoding(data)

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

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: asyncio.Transport | None = None
        self.peer = "?"
        self.relaying = False
        self.closed = False
        self.encoding: str | None = "utf-8"
        self.rewriter = server.rewriter
        # Bytes of a message we cannot forward yet: a partial header, or a partial
        # Query/Parse (which must be whole to be rewritten). `need` = bytes that completes it.
        self.pending = bytearray()
        self.need = 0
        # Bytes of the current pass-through message still to come; forwarded as they arrive.
        self.skip = 0
        self.startup_timer: asyncio.TimerHandle | None = None

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
            if self.relaying:
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

        rewriter = self.rewriter if self.encoding is not None else None
        out_start = 0  # start of the run of bytes to forward verbatim
        while n - pos >= 5:
            type_byte = data[pos]
            (length,) = _unpack_header(data, pos + 1)
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                raise ProtocolViolation(f"invalid message length {length} (type {type_byte:#04x})")
            end = pos + 1 + length
            if rewriter is not None and (type_byte == 0x51 or type_byte == 0x50):  # 'Q', 'P'
                if end > n:
                    break  # wait for the whole message
                new = self.rewrite(type_byte, data, pos + 5, end)
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

    def rewrite(self, type_byte: int, data: bytes, start: int, end: int) -> bytes | None:
        try:
            return proto.rewrite_message(type_byte, data[start:end], self.encoding, self.rewriter)
        except Exception:
            # A preprocessor bug must not break plain SQL: send the text as the client wrote it.
            log.exception("client %s: rewriting failed; forwarding the statement unchanged", self.peer)
            return None

    def server_reported_encoding(self, data: bytes) -> None:
        name = proto.find_client_encoding(data)
        if name is not None:
            self.encoding = proto.python_encoding(name)
            if self.encoding is None:
                log.info("client %s: client_encoding %s has no codec; not rewriting", self.peer, name)

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
                self.server.forward_cancel(packet)
                self.transport.close()
                return
            self.start_session(code, packet)
            return

    def startup_timed_out(self) -> None:
        if not self.relaying and not self.closed:
            log.warning("client %s: no startup packet in %.0f s; closing", self.peer, STARTUP_TIMEOUT)
            self.abort()

    def start_session(self, version: int, packet: bytes) -> None:
        if self.startup_timer is not None:
            self.startup_timer.cancel()
            self.startup_timer = None
        if version >> 16 == 3:
            params = proto.parse_startup_params(packet[8:])
            # Until the server reports client_encoding this is what the client asked for.
            # The server's ParameterStatus (sent before any query can be) then takes over.
            requested = params.get("client_encoding")
            if requested and requested.lower() != "auto":
                self.encoding = proto.python_encoding(requested)
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
        try:
            transport = await asyncio.wait_for(
                self.server.open_upstream(lambda: UpstreamSide(self)), _CONNECT_TIMEOUT
            )
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
        self.upstream = transport
        transport.write(packet)
        self.relaying = True
        if self.pending:
            leftover = bytes(self.pending)
            self.pending.clear()
            self.data_received(leftover)
        if not self.closed:
            self.transport.resume_reading()

    # --- teardown ------------------------------------------------------------------------------

    def upstream_lost(self) -> None:
        if not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()
