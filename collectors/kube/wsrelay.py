"""The byte relay of an upgraded stream (exec, attach, port-forward) and its session tap.

`WsRelay` carries a WebSocket between kubectl and the API server untouched: kubectl's
bytes come from aiohttp's connection (`RawReader` takes its parser slot after the 101),
the server's from an `UpstreamConn` of ours. Nothing is decoded and re-encoded on the
way, which is what a stream of 200 MB of `cat` output mostly cost a proxy:

- kubectl's frames pass a `FrameScanner` (wsframes.py): only whole frames go on, each
  checked, and a message the channel tap finds broken is not sent to the cluster.
- The server's bytes are forwarded as they arrive; a `StreamScanner` follows their
  frames, and the tap streams stdout/stderr into the recording piece by piece. A frame
  the gateway writes itself (a lock's Status and close) waits for a frame boundary.

Both directions apply backpressure: kubectl's bytes wait in a bounded queue (its reads
are paused beyond `RawReader.PAUSE_AT` chunks), and the cluster's connection is paused
while kubectl's is not draining.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import orjson

from auditcast.collectors.kube.channels import Channel, ChannelCodec, ChannelEvent, MalformedFrame
from auditcast.collectors.kube.policy import status_doc
from auditcast.collectors.kube.wsframes import (
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    FrameError,
    FrameScanner,
    Message,
    Piece,
    StreamError,
    StreamScanner,
    close_frame,
    encode_frame,
)
from auditcast.errors import MalformedMessage

# An upgrade answer's head larger than this is not one.
MAX_HEAD_BYTES: Final = 64 * 1024
# A peer that does not answer a close within this time is dropped: the end of a stream
# (and its event) must not wait on it.
CLOSE_TIMEOUT: Final = 2.0


class RawReader:
    """Takes the client's bytes after an upgrade (aiohttp's payload-parser slot)."""

    PAUSE_AT: Final = 64
    RESUME_AT: Final = 16

    def __init__(self, queue: asyncio.Queue[bytes | None], transport: asyncio.Transport) -> None:
        self.queue = queue
        self.transport = transport

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.queue.put_nowait(bytes(data))
        if self.queue.qsize() >= self.PAUSE_AT:
            self.transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        self.queue.put_nowait(None)

    async def get(self) -> bytes | None:
        """The next chunk (None at the end), resuming the client's reads as the queue
        empties."""
        data = await self.queue.get()
        if self.queue.qsize() < self.RESUME_AT:
            self.transport.resume_reading()
        return data


class Sink(Protocol):
    def data(self, data: bytes) -> None: ...

    def eof(self) -> None: ...


class UpstreamConn(asyncio.Protocol):
    """The gateway's own connection to the cluster for an upgrade: it reads the answer's
    head (and a refusal's body), then hands every byte, as it arrives, to a `Sink`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._eof = False
        self._wake: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.data(data)
            return
        self._buf += data
        if len(self._buf) > MAX_HEAD_BYTES and self.transport is not None:
            self.transport.pause_reading()  # nobody reads on: read_until will give up
        self._notify()

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _ended(self) -> None:
        if self._eof:
            return
        self._eof = True
        if self._sink is not None:
            self._sink.eof()
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _more(self) -> None:
        if self._eof:
            raise asyncio.IncompleteReadError(bytes(self._buf), None)
        self._wake = asyncio.get_running_loop().create_future()
        await self._wake

    async def read_until(self, separator: bytes) -> bytes:
        """The bytes up to and including `separator` (the answer's head)."""
        while (at := self._buf.find(separator)) < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise asyncio.LimitOverrunError("upgrade answer head too large", len(self._buf))
            await self._more()
        end = at + len(separator)
        head = bytes(self._buf[:end])
        del self._buf[:end]
        return head

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._more()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def attach(self, sink: Sink) -> None:
        """From now on every byte goes to `sink` (first what is already here)."""
        self._sink = sink
        rest, self._buf = bytes(self._buf), bytearray()
        if rest:
            sink.data(rest)
        if self._eof:
            sink.eof()
        elif self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ClientSide:
    """Writing to kubectl's connection (aiohttp's after the 101): `write`, and
    `throttle`, which pauses `source` while kubectl's connection is not draining."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        paused: Callable[[], bool],
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        self.write, self.paused, self.drain = write, paused, drain
        self._resuming: asyncio.Task[None] | None = None

    def throttle(self, source: UpstreamConn) -> None:
        if self._resuming is None and self.paused():
            source.pause()
            self._resuming = asyncio.ensure_future(self._resume(source))

    async def _resume(self, source: UpstreamConn) -> None:
        try:
            await self.drain()
        finally:
            self._resuming = None
            source.resume()

    def stop(self) -> None:
        if self._resuming is not None:
            self._resuming.cancel()


class ChannelTap:
    """Decodes the messages of a channel stream (both directions) into the recording;
    with no codec (port-forward) it has nothing to decode. The cluster's stdout and
    stderr are recorded as their pieces arrive; other messages are decoded whole."""

    def __init__(self, codec: ChannelCodec | None, recorder: Any) -> None:
        self.codec = codec
        self.recorder = recorder
        self.exit_code: int | None = None
        self.error = ""
        self._streamed = False  # the message in progress is stdout/stderr, streamed
        self._parts: list[bytes] = []

    def from_client(self, data: bytes | str) -> None:
        """Raises MalformedFrame: a broken client message ends the stream."""
        if self.codec is None:
            return
        ev = self.codec.decode(data)
        if self.recorder is None:
            return
        if ev.channel is Channel.STDIN and ev.data:
            self.recorder.input(ev.data)
        elif ev.channel is Channel.RESIZE:
            self.recorder.resize(ev.width, ev.height)

    def upstream_piece(self, piece: Piece) -> None:
        """A piece of a data message from the cluster."""
        codec = self.codec
        if codec is None:
            return
        data = piece.data
        if piece.first:
            self._parts = []
            self._streamed = (
                piece.opcode == OP_BINARY
                and not codec.base64
                and len(data) > 0
                and data[0] in (Channel.STDOUT, Channel.STDERR)
            )
            if self._streamed:
                data = data[1:]
        if self._streamed:
            if self.recorder is not None and data:
                self.recorder.output(bytes(data))
            return
        self._parts.append(bytes(data))
        if piece.last:
            whole = b"".join(self._parts)
            self._parts = []
            try:
                self.from_upstream(whole if piece.opcode != OP_TEXT else whole.decode())
            except UnicodeDecodeError:
                self.error = "malformed frame from upstream: a text message that is not UTF-8"

    def from_upstream(self, data: bytes | str) -> None:
        if self.codec is None:
            return
        try:
            ev = self.codec.decode(data)
        except MalformedFrame as e:
            self.error = f"malformed frame from upstream: {e.message}"
            return
        if ev.channel in (Channel.STDOUT, Channel.STDERR):
            if self.recorder is not None and ev.data:
                self.recorder.output(ev.data)
        elif ev.channel is Channel.ERROR:
            try:
                self.exit_code = ev.exit_code
            except MalformedFrame as e:
                self.error = e.message
            if self.exit_code is None:
                self.error = ev.data.decode("utf-8", "replace")[:500]


def _data(message: Message) -> bytes | str:
    """A data message as the channel codec takes it (text as str)."""
    if message.opcode != OP_TEXT:
        return message.payload
    try:
        return message.payload.decode()
    except UnicodeDecodeError:
        raise FrameError("a text message that is not UTF-8", CLOSE_INVALID_DATA) from None


class ByteRelay:
    """An upgraded stream relayed byte for byte both ways (SPDY), counted: `run()` until
    either side ends it."""

    # After one side ended, how long the other may go on (a WebSocket's close answer).
    LINGER: float = 0.0

    def __init__(self, client: RawReader, to_client: ClientSide, up: UpstreamConn) -> None:
        self.client = client
        self.to_client = to_client
        self.up = up
        self.bytes_in = 0
        self.bytes_out = 0
        loop = asyncio.get_running_loop()
        self._up_done: asyncio.Future[None] = loop.create_future()
        self._ended: asyncio.Future[None] = loop.create_future()

    async def run(self) -> None:
        self.up.attach(self)
        a = asyncio.ensure_future(self._client_to_up())
        b = self._up_done
        try:
            await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
            if self.LINGER:
                await asyncio.wait({a, b}, timeout=self.LINGER)
        finally:
            a.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await a
            self.to_client.stop()
            if not self._ended.done():
                self._ended.set_result(None)

    async def ended(self, timeout: float) -> None:
        """Wait (at most `timeout`) for `run()` to return."""
        await asyncio.wait({self._ended}, timeout=timeout)

    async def _client_to_up(self) -> None:
        while (data := await self.client.get()) is not None:
            self.bytes_in += len(data)
            self.up.write(data)
            await self.up.drain()

    def data(self, data: bytes) -> None:
        """UpstreamConn's sink: the cluster's bytes."""
        self.bytes_out += len(data)
        self.to_client.write(data)
        self.to_client.throttle(self.up)

    def eof(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._up_done.done():
            self._up_done.set_result(None)


class WsRelay(ByteRelay):
    """One relayed WebSocket (see the module's text); `close_for(reason)` ends it from
    outside (a lock) with a Status on the error channel and a close."""

    LINGER = CLOSE_TIMEOUT

    def __init__(
        self,
        client: RawReader,
        to_client: ClientSide,
        up: UpstreamConn,
        tap: ChannelTap,
        max_message: int,
    ) -> None:
        super().__init__(client, to_client, up)
        self.tap = tap
        self.from_client = FrameScanner(
            masked=True, max_message=max_message, tap=tap.codec is not None
        )
        self.from_up = StreamScanner(max_message=max_message)
        self.closing = False  # the gateway closes: no peer frame may follow its close
        self._pending: tuple[str, int, bytes | None] | None = None  # a close to write

    # kubectl -> cluster ------------------------------------------------------------
    async def _client_to_up(self) -> None:
        while (data := await self.client.get()) is not None:
            try:
                forward, messages = self.from_client.feed(data)
                if self.closing:  # our close is out: only kubectl's answer matters now
                    forward = b""
                for i, m in enumerate(messages):
                    if m.opcode in (OP_TEXT, OP_BINARY) and not self.closing:
                        try:
                            self.tap.from_client(_data(m))
                        except MalformedMessage:
                            # what came before the broken message still goes through
                            self._to_up(forward[: messages[i - 1].end if i else 0])
                            raise
            except FrameError as e:  # the connection itself is broken: no answer to wait for
                self._client_broke(e, e.close_code)
                return
            except MalformedMessage as e:
                self._client_broke(e, CLOSE_INVALID_DATA)
                continue
            self.bytes_in = self.from_client.data_bytes
            self._to_up(forward)
            await self.up.drain()
            if any(m.opcode == OP_CLOSE for m in messages):
                return  # kubectl closed (or answered ours)

    def _client_broke(self, e: MalformedMessage, code: int) -> None:
        if not self.closing:
            self.tap.error = f"malformed frame from client: {e.message}"
            self._end(self.tap.error, code)

    def _to_up(self, data: bytes) -> None:
        if data and not self.closing:
            self.up.write(data)

    # cluster -> kubectl (UpstreamConn's sink) --------------------------------------
    def data(self, data: bytes) -> None:
        if self._up_done.done():
            return
        try:
            pieces = self.from_up.feed(data)
            self.bytes_out = self.from_up.data_bytes
        except StreamError as e:
            # The cluster broke the protocol: what came before the refused frame goes on,
            # then, if that ends at a frame boundary, our Status and close (1002); if not,
            # no frame of ours can follow and kubectl just sees the connection close.
            self.tap.error = f"malformed frame from upstream: {e.message}"
            whole = not self.closing and e.offset is not None
            if whole:
                for p in e.pieces:
                    self._tap(p)
                self.to_client.write(data[: e.offset])
            self.closing = True
            with contextlib.suppress(Exception):
                self.up.write(close_frame(CLOSE_PROTOCOL_ERROR, self.tap.error, mask=True))
            if whole:
                self._write_close(self.tap.error, CLOSE_PROTOCOL_ERROR, None)
            self._finish()
            return
        if self.closing:  # a close of ours waits for the frame in progress to end
            if self._pending is not None:
                for p in pieces:
                    self._tap(p)
                    if p.boundary:
                        self.to_client.write(data[: p.end])
                        self._write_close(*self._pending)
                        return
                self.to_client.write(data)
            return
        for p in pieces:
            self._tap(p)
        self.to_client.write(data)
        self.to_client.throttle(self.up)
        if any(p.opcode == OP_CLOSE for p in pieces):
            self._finish()  # the cluster closed; kubectl's answer passes in _client_to_up

    def _tap(self, piece: Piece) -> None:
        if piece.opcode in (OP_TEXT, OP_BINARY):
            self.tap.upstream_piece(piece)

    # the gateway's own close ----------------------------------------------------------
    def close_for(self, reason: str, status: bytes) -> None:
        """End the stream from the gateway's side: `status` (a Status JSON) on the
        error channel if the stream has channels, then a close (1008) to both peers."""
        self._end(reason, CLOSE_POLICY, status)

    def _end(self, reason: str, code: int, status: bytes | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            self.up.write(close_frame(code, reason, mask=True))
        if self.from_up.boundary:
            self._write_close(reason, code, status)
        else:  # in the middle of the cluster's frame: after its last byte
            self._pending = (reason, code, status)

    def _write_close(self, reason: str, code: int, status: bytes | None) -> None:
        self._pending = None
        codec = self.tap.codec
        if codec is not None:
            if status is None:
                status = orjson.dumps(status_doc(400, "BadRequest", f"auditcast: {reason}"))
            message = codec.encode(ChannelEvent(Channel.ERROR, status))
            opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
            payload = message.encode() if isinstance(message, str) else message
            self.to_client.write(encode_frame(opcode, payload, mask=False))
        self.to_client.write(close_frame(code, reason, mask=False))
        self._finish()
