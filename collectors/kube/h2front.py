"""HTTP/2 for the kube gateway: ALPN on the TLS listener, and each h2 stream served by
the gateway's one aiohttp request handler.

The listener offers `h2` and `http/1.1`. An http/1.1 connection goes to aiohttp as
before (WebSocket and SPDY upgrades for exec/attach/port-forward included: kubectl asks
for http/1.1 there). An h2 connection gets an `H2Front`, which runs the h2 state machine
(the `h2` package, no I/O of its own) and turns every stream into one in-memory
HTTP/1.1 exchange with a fresh aiohttp `RequestHandler`: the request is written to it
with h11, its answer is read back with h11 and sent as HEADERS and DATA on the stream.
The policy code (tokens, locks, labels, MFA, impersonation, events, streaming, Status
refusals) therefore exists once, in `KubeGateway.handle`; this module only moves bytes.
A quick stream (a request without a body that cannot be a watch: see `quick`) skips the
HTTP/1.1 round trip: its head goes to the gateway's `answer_quick` (or `handle`, for a
refusal) as it is, and the whole answer comes back as one HEADERS + DATA. The http/1.1
connections get an `H1Front`, which does the same for theirs (see h1front.py).

The in-memory exchange (`_StreamBridge`) is the aiohttp handler's transport, so:
- `request.remote` is the h2 client's real address (no header to trust: nothing else
  can reach this "connection");
- `request.get_extra_info(HTTP_VERSION)` is "2" (see `http_version`);
- back-pressure is per stream: DATA is sent only within the client's flow-control
  window; once more than `STREAM_HIGH_WATER` waits, the handler's writes block
  (`pause_writing`), so a watch nobody reads stops reading its upstream;
- RST_STREAM from the client is a lost connection to that handler only (aiohttp then
  cancels it, and a watch emits its end event); a lock ending a watch finishes the
  HTTP/1.1 answer, which becomes END_STREAM.

Connection errors (no preface, bad frames, HPACK bombs, too many streams) get a GOAWAY
from the h2 state machine and a log line; the listener keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11
import hpack.hpack
from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay
from h2.errors import ErrorCodes

from auditcast.collectors.kube.h1front import H1Front
from auditcast.collectors.kube.quick import (
    HOP_BY_HOP_NAMES,
    Head,
    QuickService,
    RequestConn,
    answer_of,
    h2_answer,
    h2_fields,
    h2_head,
    make_request,
    quick_url,
)

log = logging.getLogger("auditcast.kube.h2")

ALPN_PROTOCOLS: Final = ("h2", "http/1.1")
# The extra-info key under which a stream's transport says it came over HTTP/2.
HTTP_VERSION: Final = "auditcast_http_version"
# Go's http2 server allows 250 concurrent streams; kubectl opens a handful (discovery
# fans out to ~20). The h2 package's default is 100.
MAX_CONCURRENT_STREAMS: Final = 250
# More than this much of one stream's answer waiting for the client's window pauses the
# handler's writes (aiohttp's own writer drains at 64 KiB too).
STREAM_HIGH_WATER: Final = 64 * 1024
STREAM_LOW_WATER: Final = 16 * 1024
# An h2 connection without open streams for this long is closed with a GOAWAY (aiohttp's
# keep-alive timeout for HTTP/1.1 is 75 s; Go clients reconnect transparently).
IDLE_TIMEOUT: Final = 75.0
# The upstream's answer headers pass through h11 here; the apiserver itself allows 1 MiB.
MAX_ANSWER_HEADER_BYTES: Final = 1024 * 1024
# Headers that only mean something on one HTTP/1.1 hop (RFC 9113 §8.2.2).
HOP_BY_HOP: Final = frozenset(name.encode() for name in HOP_BY_HOP_NAMES)


# hpack decodes Huffman-coded strings in pure Python, at about 1 µs a byte. curl and the
# Python h2 clients send `authorization` as a never-indexed literal, so the same ~700-byte
# bearer token is decoded again on every request (0.7 ms, most of what h2 added to a
# GET). Decoding is a pure function of the bytes: remembering the long ones changes
# nothing but time. (Go's client, kubectl, indexes the token: one decode per connection.)
HUFFMAN_CACHE_ENTRIES: Final = 1024
HUFFMAN_CACHE_MIN_BYTES: Final = 64  # shorter strings decode in a few µs
HUFFMAN_CACHE_MAX_BYTES: Final = 8 * 1024  # big JWTs fit; the cache stays under 8 MiB


def cache_huffman_decoding() -> None:
    """Wrap hpack's Huffman decoder in a bounded cache (once per process)."""
    original = getattr(hpack.hpack, "decode_huffman", None)
    if original is None or getattr(original, "cached", False):
        return
    remembered = functools.lru_cache(maxsize=HUFFMAN_CACHE_ENTRIES)(original)

    def decode_huffman(huffman_string: bytes | bytearray | memoryview | None) -> bytes:
        if huffman_string is None or not (
            HUFFMAN_CACHE_MIN_BYTES <= len(huffman_string) <= HUFFMAN_CACHE_MAX_BYTES
        ):
            return original(huffman_string)
        return remembered(bytes(huffman_string))

    decode_huffman.cached = True  # type: ignore[attr-defined]
    hpack.hpack.decode_huffman = decode_huffman


def http_version(request: web.BaseRequest) -> str:
    """ "2" for a request that came over an h2 stream, else the HTTP/1.x version."""
    over_h2 = request.get_extra_info(HTTP_VERSION)
    if over_h2:
        return str(over_h2)
    return f"{request.version.major}.{request.version.minor}"


def offer_h2(context: ssl.SSLContext) -> None:
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))


class AlpnSite(web.TCPSite):
    """aiohttp's TCPSite, with ALPN choosing between aiohttp (http/1.1) and `H2Front`.

    `ssl_context` gets `h2` and `http/1.1` as its ALPN protocols."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        backlog: int = 128,
        max_header_list_size: int,
        quick: QuickService | None = None,
    ) -> None:
        offer_h2(ssl_context)
        cache_huffman_decoding()
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self.max_header_list_size = max_header_list_size
        self.quick = quick
        self.fronts: set[H2Front] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AlpnDispatch(self),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]

    def protocol_for(self, alpn: str | None) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if alpn != "h2":
            return server() if self.quick is None else H1Front(server, self.quick)
        return H2Front(server, self.max_header_list_size, self.fronts, self.quick)

    async def stop(self) -> None:
        for front in list(self.fronts):
            front.shutdown()
        await super().stop()


class _AlpnDispatch(asyncio.Protocol):
    """Lives only until the TLS handshake is done, then hands the connection on."""

    def __init__(self, site: AlpnSite) -> None:
        self.site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol = self.site.protocol_for(alpn)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class H2Front(asyncio.Protocol):
    """One HTTP/2 connection: frames in, one `_StreamBridge` per stream."""

    def __init__(
        self,
        server: Callable[[], asyncio.Protocol],
        max_header_list_size: int,
        registry: set[H2Front] | None = None,
        quick: QuickService | None = None,
    ) -> None:
        self.server = server
        self.quick = quick
        self.max_header_list_size = max_header_list_size
        self.registry = registry if registry is not None else set()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # what we send is ours: lower-case names, no connection-specific fields,
                # :status first (quick.h2_answer, _h2_response_head); h2's checks of it
                # cost ~2 % of an h2 request. What we receive is checked as before.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.transport: asyncio.Transport | None = None
        self.request_conn: RequestConn | None = None  # what a quick request reads of us
        self.streams: dict[int, _StreamBridge] = {}
        self.frames = FrameGuard(self.conn.max_inbound_frame_size, max_header_list_size)
        self.write_paused = False
        self.goaway_received = False
        self.peer: Any = None
        self._idle: asyncio.TimerHandle | None = None
        self._send_scheduled = False

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a full transport (asyncio's, or uvloop's, which does not subclass asyncio's)
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.request_conn = RequestConn(_StreamInfo(self.transport))
        # HEADERS and DATA go out as separate small writes: without this, Nagle holds
        # the second one for the client's delayed ACK (aiohttp does the same for h1)
        tcp_nodelay(self.transport, True)
        self.registry.add(self)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
            },
        )
        # the settings above are what we announce; the decoder enforces the same limit
        # from the first HEADERS frame on, not only once the client acknowledged them
        self.conn.decoder.max_header_list_size = self.max_header_list_size
        self.conn.initiate_connection()
        self._send()
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # after our GOAWAY: whatever still comes is not read
        try:
            self.frames.feed(data)
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # a bad frame makes the state machine queue a GOAWAY itself; a bad client
            # preface is refused before it gets there, so that GOAWAY is ours
            if self.conn.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.close_connection(error_code=e.error_code)
            log.warning(
                "http/2 connection error: sent GOAWAY and closed it",
                extra={"fields": {"peer": _peer(self.peer), "error": str(e) or type(e).__name__}},
            )
            self._send()
            self._close()
            return
        for event in events:
            self._on_event(event)
        self._send()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.registry.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        for bridge in list(self.streams.values()):
            bridge.lost(
                exc if isinstance(exc, Exception) else ConnectionResetError("connection closed")
            )
        self.streams.clear()
        self.transport = None

    def pause_writing(self) -> None:
        # The client is not reading. Stop reading it too: the state machine answers
        # PINGs and SETTINGS by itself, so a client that floods them without reading
        # would otherwise grow our write buffer without bound.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None:
            self.transport.resume_reading()
        for bridge in list(self.streams.values()):
            self.flush(bridge)
        self._send()

    # h2 events --------------------------------------------------------------------------
    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._open(event)
        elif isinstance(event, h2.events.DataReceived):
            bridge = self.streams.get(event.stream_id or 0)
            if bridge is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                bridge.body(event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            bridge = self.streams.get(event.stream_id or 0)
            if bridge is not None:
                bridge.body_end()
        elif isinstance(event, h2.events.StreamReset):
            bridge = self.streams.get(event.stream_id or 0)
            if bridge is not None:
                self._done(bridge)
                bridge.lost(ConnectionResetError("stream reset by the client"))
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            stream_id = getattr(event, "stream_id", 0)
            targets = [self.streams[stream_id]] if stream_id in self.streams else []
            for bridge in targets or list(self.streams.values()):
                self.flush(bridge)
        elif isinstance(event, h2.events.ConnectionTerminated):
            # the client opens no more streams: let the open ones finish
            self.goaway_received = True
            if not self.streams:
                self._close()

    def _open(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id or 0
        bridge = _StreamBridge(self, stream_id)
        if self.quick is not None and self._open_quick(bridge, event):
            return
        try:
            head = bridge.h1.send(_h1_request(event.headers or [], event.stream_ended is not None))
        except (h11.LocalProtocolError, ValueError) as e:
            log.info(
                "http/2 request refused: %s",
                e,
                extra={"fields": {"peer": _peer(self.peer), "stream": stream_id}},
            )
            self.conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        self._opened(bridge)
        bridge.start(head or b"")  # the StreamEnded event that may follow ends the body

    def _opened(self, bridge: _StreamBridge) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.streams[bridge.stream_id] = bridge

    def _open_quick(self, bridge: _StreamBridge, event: h2.events.RequestReceived) -> bool:
        """Serve a quick request (see `quick`) with the gateway directly, not through an
        HTTP/1.1 exchange; False (nothing done) when it is not quick."""
        head = h2_head(event.headers or [], event.stream_ended is not None)
        if head is None:
            return False
        head.url = quick_url(head)
        if head.url is None:
            return False
        bridge.body_done = True
        self._opened(bridge)
        bridge.task = asyncio.ensure_future(self._answer_quick(bridge, head))
        return True

    async def _answer_quick(self, bridge: _StreamBridge, head: Head) -> None:
        service, conn = self.quick, self.request_conn
        assert service is not None and conn is not None
        try:
            answer = await service.answer_quick(head, conn, "2")
            if answer is None:  # a refusal or anything unusual: the full request path
                request = make_request(head, conn, asyncio.get_running_loop())
                answer = answer_of(await service.handle(request))
            block, body = h2_answer(head.method, answer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the gateway failed on an http/2 request")
            self.reset(bridge)
            return
        if bridge.closed:
            return
        bridge.head = block
        bridge.pending += body
        bridge.answered = True
        self.flush(bridge)
        self.send_soon()

    # sending ----------------------------------------------------------------------------
    def flush(self, bridge: _StreamBridge) -> None:
        """Send what the stream's and the connection's windows allow of its answer."""
        if self.transport is None or self.streams.get(bridge.stream_id) is not bridge:
            return
        sid = bridge.stream_id
        try:
            if bridge.head is not None:
                # an answer without a body ends with its HEADERS frame (no empty DATA)
                alone = bridge.answered and not bridge.pending
                self.conn.send_headers(sid, bridge.head, end_stream=alone)
                bridge.head = None
                ended = alone
            else:
                ended = False
            while bridge.pending and not self.write_paused:
                room = min(
                    self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
                )
                if room <= 0:
                    break
                chunk = bytes(bridge.pending[:room])
                del bridge.pending[:room]
                # the last of a whole answer carries END_STREAM itself
                ended = bridge.answered and not bridge.pending
                self.conn.send_data(sid, chunk, end_stream=ended)
            if bridge.answered and not bridge.pending:
                if not ended:
                    self.conn.end_stream(sid)
                self._done(bridge)
                if not bridge.body_done:
                    # answered before the request body ended (413, a refusal): tell the
                    # client to stop sending (RFC 9113 §8.1), and end the handler's
                    # wait for the rest of a body nobody will read
                    self.conn.reset_stream(sid, ErrorCodes.NO_ERROR)
                    bridge.lost(ConnectionResetError("answered before the request ended"))
        except h2.exceptions.StreamClosedError:
            self._done(bridge)
            bridge.lost(ConnectionResetError("stream closed by the client"))
        bridge.update_pressure()

    def reset(self, bridge: _StreamBridge, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        if self.streams.get(bridge.stream_id) is bridge:
            self._done(bridge)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.reset_stream(bridge.stream_id, code)
            self._send()

    def _done(self, bridge: _StreamBridge) -> None:
        self.streams.pop(bridge.stream_id, None)
        if self.goaway_received and not self.streams:
            self._close()
        self._arm_idle()

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def send_soon(self) -> None:
        """`_send` once the loop's current round of callbacks is done: answers that
        streams' tasks finish in the same round (their upstream replies came in one
        poll) leave in one TLS write instead of one each (measured at concurrency 32:
        ~20 of the ~300 µs of gateway CPU an h2 GET costs). Costs one loop round of latency."""
        if not self._send_scheduled:
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_scheduled_now)

    def _send_scheduled_now(self) -> None:
        self._send_scheduled = False
        self._send()

    def ack(self, stream_id: int, length: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.acknowledge_received_data(length, stream_id)
        self._send()

    # closing ----------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        if self.streams or self.transport is None:
            return
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.shutdown)

    def shutdown(self) -> None:
        """GOAWAY (no error) and close: the idle timeout and the gateway's stop."""
        if self.transport is None:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()
        self._send()
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FrameGuard:
    """Refuses, by their 9-byte frame headers, a frame longer than `max_frame` and a
    header block (HEADERS + CONTINUATION) longer than `max_header_block` bytes.

    The h2 state machine checks a frame's length only once the whole frame is in, and
    hpack decodes a header block (Huffman strings at ~1 µs a byte) before it sees that
    the list is too long: a client could make us hold 16 MiB, or burn a second of CPU on
    a 1 MiB header, before either says no. A header block is never longer than the
    header list it encodes, so the advertised SETTINGS_MAX_HEADER_LIST_SIZE bounds it."""

    PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    HEADER_BYTES: Final = 9
    HEADERS: Final = 0x1
    CONTINUATION: Final = 0x9
    END_HEADERS: Final = 0x4

    def __init__(self, max_frame: int, max_header_block: int) -> None:
        self.max_frame = max_frame
        self.max_header_block = max_header_block
        self._preface = len(self.PREFACE)  # preface bytes still to come
        self._skip = 0  # payload bytes until the next frame header
        self._header = b""
        self._block = 0  # bytes of the header block being received

    def feed(self, data: bytes) -> None:
        """Raises h2's ProtocolError (bad preface), FrameTooLargeError or
        DenialOfServiceError (header block too long)."""
        view = memoryview(data)
        if self._preface:
            n = min(self._preface, len(view))
            at = len(self.PREFACE) - self._preface
            if view[:n] != self.PREFACE[at : at + n]:
                raise h2.exceptions.ProtocolError("invalid HTTP/2 client preface")
            self._preface -= n
            view = view[n:]
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            need = self.HEADER_BYTES - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < self.HEADER_BYTES:
                return
            self._check(self._header)
            self._skip = int.from_bytes(self._header[:3], "big")
            self._header = b""

    def _check(self, header: bytes) -> None:
        length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
        if length > self.max_frame:
            raise h2.exceptions.FrameTooLargeError(
                f"a frame of {length} bytes announced, the limit is {self.max_frame}"
            )
        if kind in (self.HEADERS, self.CONTINUATION):
            self._block += length
            if self._block > self.max_header_block:
                raise h2.exceptions.DenialOfServiceError(
                    f"a header block of over {self.max_header_block} bytes"
                )
            if flags & self.END_HEADERS:
                self._block = 0


class _StreamBridge(asyncio.Transport):
    """One h2 stream as the transport of one aiohttp RequestHandler, spoken in HTTP/1.1."""

    def __init__(self, front: H2Front, stream_id: int) -> None:
        super().__init__()
        self.front = front
        self.stream_id = stream_id
        self.h1 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_HEADER_BYTES)
        self.handler: asyncio.Protocol | None = None
        self.task: asyncio.Future[None] | None = None  # a quick request's handler
        self.head: list[tuple[bytes, bytes]] | None = None
        self.pending = bytearray()
        self.answered = False  # the whole answer is in `pending` (then END_STREAM)
        self.body_done = False  # the client ended its side of the stream
        self.closed = False
        self.handler_paused = False
        self.reading_paused = False
        self.unacked = 0

    # the request, from the h2 client to the handler ------------------------------------
    def start(self, head: bytes) -> None:
        handler = self.front.server()
        self.handler = handler
        handler.connection_made(self)
        handler.data_received(head)

    def body(self, data: bytes, flow_controlled_length: int) -> None:
        if self.closed or self.handler is None:
            self.front.ack(self.stream_id, flow_controlled_length)
            return
        try:
            chunk = self.h1.send(h11.Data(data=data)) if data else b""
        except h11.LocalProtocolError as e:  # more than its content-length said
            self.front.reset(self, ErrorCodes.PROTOCOL_ERROR)
            self.lost(ConnectionResetError(str(e)))
            return
        if chunk:
            self.handler.data_received(chunk)
        # the window reopens as the handler takes the body, not before (its reader
        # pauses us once it holds too much)
        if self.reading_paused:
            self.unacked += flow_controlled_length
        else:
            self.front.ack(self.stream_id, flow_controlled_length)

    def body_end(self) -> None:
        self.body_done = True
        if self.closed or self.handler is None:
            return
        with contextlib.suppress(h11.LocalProtocolError):
            tail = self.h1.send(h11.EndOfMessage())
            if tail:
                self.handler.data_received(tail)

    def lost(self, exc: Exception) -> None:
        """The client or the connection went away: the handler sees a lost connection."""
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()  # as aiohttp cancels the handler of a lost connection
        if self.handler is not None:
            self.handler.connection_lost(exc)

    # asyncio.Transport, as aiohttp's handler uses it -------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.answered:
            return
        try:
            self.h1.receive_data(bytes(data))
            while True:
                event = self.h1.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Response):
                    self.head = _h2_response_head(event)
                elif isinstance(event, h11.Data):
                    self.pending += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.answered = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
                # h11.InformationalResponse (100 Continue): nothing to forward
        except h11.RemoteProtocolError as e:
            log.warning("http/2: the handler's answer is not valid HTTP/1.1: %s", e)
            self.front.reset(self)
            self.lost(ConnectionResetError(str(e)))
            return
        self.front.flush(self)
        self.front.send_soon()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """The handler is done with this exchange (it sent `Connection: close`)."""
        if self.closed:
            return
        if not self.answered:
            # ended without a complete answer: the client must not wait for one
            self.front.reset(self)
        self.closed = True
        handler = self.handler
        if handler is not None:
            asyncio.get_running_loop().call_soon(handler.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == HTTP_VERSION:
            return "2"
        if name == "socket":
            return None  # socket options are the connection's, not a stream's
        transport = self.front.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.unacked:
            length, self.unacked = self.unacked, 0
            self.front.ack(self.stream_id, length)

    def is_reading(self) -> bool:
        return not self.reading_paused

    def get_write_buffer_size(self) -> int:
        return len(self.pending)

    def can_write_eof(self) -> bool:
        return False

    def update_pressure(self) -> None:
        """Pause the handler's writes while the client's window holds the answer back."""
        handler = self.handler
        if handler is None or self.closed:
            return
        if not self.handler_paused and len(self.pending) > STREAM_HIGH_WATER:
            self.handler_paused = True
            handler.pause_writing()
        elif self.handler_paused and len(self.pending) <= STREAM_LOW_WATER:
            self.handler_paused = False
            handler.resume_writing()


class _StreamInfo:
    """A quick h2 request's view of its connection: the transport's extra info, and
    `HTTP_VERSION` "2" (see `http_version`)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == HTTP_VERSION:
            return "2"
        return self.transport.get_extra_info(name, default)


def _h1_request(headers: list[tuple[bytes, bytes]], ended: bool) -> h11.Request:
    """The HTTP/1.1 request for an h2 request head (RFC 9113 §8.3.1)."""
    pseudo, all_fields, host = h2_fields(headers)
    fields = [(name, value) for name, value in all_fields if name not in HOP_BY_HOP]
    length = any(name == b"content-length" for name, _ in fields)
    if not ended and not length:
        fields.append((b"transfer-encoding", b"chunked"))
    fields.append((b"connection", b"close"))
    authority = pseudo.get(b":authority") or host or b"localhost"
    if b":method" not in pseudo or b":path" not in pseudo:
        raise ValueError("no :method or :path")
    return h11.Request(
        method=pseudo[b":method"], target=pseudo[b":path"], headers=[(b"host", authority), *fields]
    )


def _h2_response_head(response: h11.Response) -> list[tuple[bytes, bytes]]:
    head = [(b":status", str(response.status_code).encode())]
    head += [(k, v) for k, v in response.headers if k not in HOP_BY_HOP]
    return head


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")
