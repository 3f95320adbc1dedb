"""The gateway's HTTP/1.1 connections: quick requests served here, the rest by aiohttp.

`H1Front` reads requests off a kept-alive connection and serves each quick one (see
`quick`) itself: one task per request, the answer written whole. At the first request
that is not quick (a body, an upgrade for exec, a watch, anything odd), it hands the
connection to aiohttp's `RequestHandler` with every byte it has not served, and is out
of the way for good. Requests are answered in order (pipelined ones wait their turn);
a client that hangs up cancels its request's handler, as aiohttp's
`handler_cancellation` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, cast

import orjson
from aiohttp.tcp_helpers import tcp_nodelay

from auditcast.collectors.kube.policy import status_doc
from auditcast.collectors.kube.quick import (
    MAX_QUICK_HEAD,
    Head,
    QuickService,
    RequestConn,
    answer_of,
    h1_answer,
    make_request,
    parse_head,
    quick_url,
)

log = logging.getLogger("auditcast.kube.h1")

# aiohttp's keep-alive timeout: an idle connection is closed after this long.
KEEPALIVE_TIMEOUT: Final = 75.0
# Unserved bytes (pipelined requests) beyond this pause reading the client.
READ_HIGH_WATER: Final = 256 * 1024


class H1Front(asyncio.Protocol):
    """One HTTP/1.1 connection, until it is handed to aiohttp."""

    def __init__(self, handoff: Callable[[], asyncio.Protocol], service: QuickService) -> None:
        self.handoff = handoff
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.conn: RequestConn | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None  # the request being served
        self.write_paused = False
        self.read_paused = False
        self.handed_off = False
        self.eof = False  # the client sends no more: close once its request is answered
        self._last = time.monotonic()  # when the connection last went idle
        self._idle: asyncio.TimerHandle | None = None

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn = RequestConn(transport)
        tcp_nodelay(self.transport, True)  # the answer must not wait for the client's ACK
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.handed_off:  # (a write from the loop's buffer after the hand-off)
            return
        self.buffer += data
        if self.task is None and not self.write_paused:
            self._next()
        elif len(self.buffer) > READ_HIGH_WATER and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.task is None:
            return None  # nothing being served: the transport closes
        self.eof = True  # answer the request being served, then close
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None:
            self.task.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None:
            self._next()

    # serving ----------------------------------------------------------------------------
    def _next(self) -> None:
        """Serve the next whole request in the buffer, or hand the connection over."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_QUICK_HEAD:
                self._hand_off()
            elif self.read_paused:
                self.read_paused = False
                transport.resume_reading()
            return
        head = parse_head(bytes(self.buffer[:end])) if end <= MAX_QUICK_HEAD else None
        if head is not None:
            head.url = quick_url(head)
        if head is None or head.url is None:  # not quick (or may be a stream): aiohttp's
            self._hand_off()
            return
        del self.buffer[: end + 4]
        self.task = asyncio.ensure_future(self._serve(head))

    async def _serve(self, head: Head) -> None:
        try:
            answer = await self.service.answer_quick(head, cast(RequestConn, self.conn), "1.1")
            if answer is None:  # a refusal or anything unusual: the full request path
                request = make_request(
                    head, cast(RequestConn, self.conn), asyncio.get_running_loop()
                )
                answer = answer_of(await self.service.handle(request))
            data = h1_answer(head.method, answer, keep_alive=not head.close)
        except asyncio.CancelledError:
            self.task = None
            raise
        except Exception:
            log.exception("the gateway failed on a request", extra={"path": head.target[:200]})
            head.close = True
            data = _internal_error()
        self.task = None
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if head.close or self.eof:
            transport.close()
            return
        self._last = time.monotonic()
        if not self.write_paused:
            self._next()

    def _hand_off(self) -> None:
        """aiohttp's from here on: it gets the connection and every unserved byte."""
        transport = self.transport
        if transport is None:
            return
        self.handed_off = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        handler = self.handoff()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.read_paused:
            transport.resume_reading()
        if self.write_paused:
            handler.pause_writing()
        data, self.buffer = bytes(self.buffer), bytearray()
        if data:
            handler.data_received(data)

    def _arm_idle(self, delay: float | None = None) -> None:
        delay = KEEPALIVE_TIMEOUT if delay is None else delay
        self._idle = asyncio.get_running_loop().call_later(delay, self._idle_out)

    def _idle_out(self) -> None:
        """Close a connection idle for KEEPALIVE_TIMEOUT (one timer, not one a request)."""
        self._idle = None
        if self.transport is None:
            return
        left = self._last + KEEPALIVE_TIMEOUT - time.monotonic()
        if self.task is not None or left > 0:
            self._arm_idle(max(left, KEEPALIVE_TIMEOUT / 75))
        else:
            self.transport.close()


def _internal_error() -> bytes:
    body = orjson.dumps(
        status_doc(500, "InternalError", "auditcast: the gateway failed on this request")
    )
    return (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


__all__ = ["KEEPALIVE_TIMEOUT", "H1Front"]
