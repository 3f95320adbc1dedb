"""A small HTTP/1.1 client for the gateway's one-shot upstream requests.

GET pods and the like (everything that is answered once, not streamed) are most of
kubectl's traffic, and aiohttp's general-purpose client spent ~200 µs of Python per
request on them here (cookie jar, auto headers, tracing hooks, timeouts, connection
keys). This client does only what the gateway needs: one write of the request head (and
body) on a kept-alive TLS connection from a per-cluster pool, the answer read as its
bytes arrive (`AnswerReader`: head parsed by hand, body whole by Content-Length, chunked
coding or connection close), and the request's task woken once, when it is whole.
Watches, logs -f and upgrades stay on aiohttp.

A pooled connection the upstream has closed is dropped before use. One it closes just
as a request goes out fails without a byte of answer; an idempotent request (GET, HEAD,
OPTIONS, TRACE, PUT, DELETE) is then sent once more on a fresh connection, others fail
with ConnectionResetError (aiohttp's rule for persistent connections, and Go's).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

from yarl import URL

MAX_HEAD_BYTES: Final = 1024 * 1024  # the apiserver's own header limit
# One-shot answers are held whole: bounded, so a runaway answer cannot exhaust the
# gateway's memory. kubectl pages lists (--chunk-size, 500 items by default), so an
# answer this big is a sign of something wrong, and the client is told so.
MAX_BODY_BYTES: Final = 256 * 1024 * 1024
CONNECT_TIMEOUT: Final = 10.0
# How long a one-shot answer may take, head and body. The apiserver ends a request that
# is not long-running after 60 s itself (its --request-timeout) with a 504 the client
# should see; past this, the upstream has stopped answering and the client is told so.
ANSWER_TIMEOUT: Final = 90.0
MAX_IDLE: Final = 64  # idle connections kept per cluster
_NO_BODY_CODES: Final = frozenset({204, 304})
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamProtocolError(Exception):
    """The upstream's answer is not HTTP/1.1 we understand."""


class UpstreamTimeout(TimeoutError):
    """The upstream took the request and did not finish answering in time."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Head:
    status: int
    headers: list[tuple[str, str]]
    length: int | None  # Content-Length, if given
    chunked: bool
    keep_alive: bool


def parse_head(raw: bytes) -> Head:
    """Parse `HTTP/1.1 200 OK\\r\\nName: value\\r\\n...\\r\\n\\r\\n`."""
    try:
        text = raw.decode("utf-8", "surrogateescape")
        status_line, *lines = text[: text.index("\r\n\r\n")].split("\r\n")
        version, _, rest = status_line.partition(" ")
        status = int(rest[:3])
    except ValueError as e:
        raise UpstreamProtocolError(f"bad status line: {raw[:80]!r}") from e
    if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
        raise UpstreamProtocolError(f"bad status line: {status_line[:80]!r}")
    headers: list[tuple[str, str]] = []
    length: int | None = None
    chunked = False
    keep_alive = version == "HTTP/1.1"
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise UpstreamProtocolError(f"bad header line: {line[:80]!r}")
        value = value.strip()
        lname = name.lower()
        if lname == "content-length":
            # ASCII digits only: str.isdigit() also takes '²', which int() refuses
            if not (value.isascii() and value.isdigit()) or (
                length is not None and int(value) != length
            ):
                raise UpstreamProtocolError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif lname == "transfer-encoding":
            chunked = value.lower().endswith("chunked")
        elif lname == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                keep_alive = False
            elif "keep-alive" in tokens:
                keep_alive = True
        headers.append((name, value))
    if chunked:
        length = None  # RFC 9112 §6.3: chunked wins over Content-Length
    return Head(status, headers, length, chunked, keep_alive)


def request_head(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body_len: int
) -> bytes:
    """The request line and headers, ready to write (raises UpstreamProtocolError for a
    line break inside a header, which would smuggle a header or a request)."""
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for k, v in headers:
        if "\n" in v or "\r" in v or "\n" in k or "\r" in k:
            raise UpstreamProtocolError(f"header {k[:40]!r} holds a line break")
        parts.append(f"{k}: {v}\r\n")
    if body_len or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        parts.append(f"Content-Length: {body_len}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


class AnswerReader:
    """Reads one answer off a connection's bytes as they come (no I/O of its own):
    `feed` returns the `Answer` once it is whole, `ended` when the connection ends.
    Raises UpstreamProtocolError (an answer we cannot parse, or over the size limits),
    asyncio.IncompleteReadError (the connection ended inside the answer) and
    `_FreshConnectionFailed` (it ended before the first byte of one)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.buffer = bytearray()
        self.head: Head | None = None
        self.started = False  # a byte of the answer came
        self.parts: list[bytes] = []  # chunked / close-delimited body so far
        self.size = 0
        self.chunk = -1  # chunked: bytes of the current chunk still to come (-1: a size line)
        self.trailers = False  # chunked: after the last chunk, reading trailer lines
        self.leftover = False  # bytes after the answer: the connection is out of step

    def feed(self, data: bytes) -> Answer | None:
        self.started = True
        self.buffer += data
        while self.head is None:  # (again after a 1xx answer)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise UpstreamProtocolError("answer head over 1 MiB")
                return None
            head = parse_head(bytes(self.buffer[: end + 4]))
            del self.buffer[: end + 4]
            if not 100 <= head.status < 200:  # 100 Continue and friends: skipped
                self.head = head
                if head.length is not None and not head.chunked:
                    _check_size(head.length)
        head = self.head
        if self.method == "HEAD" or head.status in _NO_BODY_CODES:
            return self._answer(b"")
        if head.chunked:
            return self._chunked()
        if head.length is not None:
            if len(self.buffer) < head.length:
                return None
            with memoryview(self.buffer) as view:
                body = bytes(view[: head.length])
            return self._answer(body, head.length)
        self.size += len(self.buffer)  # close-delimited: everything until the end
        _check_size(self.size)
        self.parts.append(bytes(self.buffer))
        self.buffer.clear()
        return None

    def ended(self) -> Answer:
        """The connection ended (EOF or lost): the answer, if it was close-delimited."""
        head = self.head
        if head is None:
            if not self.started:
                raise _FreshConnectionFailed()
            raise asyncio.IncompleteReadError(bytes(self.buffer), None)
        if head.chunked or head.length is not None:
            raise asyncio.IncompleteReadError(bytes(self.buffer), head.length)
        head.keep_alive = False
        return Answer(head.status, head.headers, b"".join(self.parts))

    def _answer(self, body: bytes, used: int = 0) -> Answer:
        assert self.head is not None
        self.leftover = len(self.buffer) > used
        return Answer(self.head.status, self.head.headers, body)

    def reusable(self) -> bool:
        """After a whole answer: whether the connection may carry the next request."""
        return self.head is not None and self.head.keep_alive and not self.leftover

    def _chunked(self) -> Answer | None:
        buf = self.buffer
        while True:
            if self.chunk < 0:  # a size line, or (after the last chunk) a trailer line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise UpstreamProtocolError("answer head over 1 MiB")
                    return None
                line = bytes(buf[:end])
                del buf[: end + 2]
                if self.trailers:
                    if not line:  # the blank line after the trailers (dropped)
                        return self._answer(b"".join(self.parts))
                    continue
                size = _chunk_size(line)
                self.size += size
                _check_size(self.size)
                if size == 0:
                    self.trailers = True
                else:
                    self.chunk = size
            else:
                if len(buf) < self.chunk + 2:
                    return None
                if buf[self.chunk : self.chunk + 2] != b"\r\n":
                    raise UpstreamProtocolError("chunk not followed by CRLF")
                self.parts.append(bytes(buf[: self.chunk]))
                del buf[: self.chunk + 2]
                self.chunk = -1


def _chunk_size(line: bytes) -> int:
    size_text = line.split(b";", 1)[0].strip()
    try:
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise ValueError(size_text)
        return int(size_text, 16)
    except ValueError as e:
        raise UpstreamProtocolError(f"bad chunk size {size_text[:20]!r}") from e


class _Conn(asyncio.Protocol):
    """One kept-alive upstream connection. The answer to the request in flight is read
    as its bytes arrive (`AnswerReader`); the request's task wakes once, when it is
    whole (no stream reader, no wake-up per read)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader: AnswerReader | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.done = False  # ended (EOF, lost, or bytes nobody asked for): not reusable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:  # nothing asked: the connection is out of step
            self.done = True
            return
        try:
            answer = reader.feed(data)
        except Exception as e:
            self._finish(None, e)
        else:
            if answer is not None:
                self.done = self.done or not reader.reusable()
                self._finish(answer, None)

    def eof_received(self) -> bool | None:
        self._ended()
        return None  # the transport closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self._ended(exc)

    def _ended(self, exc: BaseException | None = None) -> None:
        self.done = True
        reader = self.reader
        if reader is None:
            return
        try:
            answer = reader.ended()
        except _FreshConnectionFailed as e:
            if exc is not None:  # lost with an error before any answer: say which
                e.__cause__ = exc
            self._finish(None, e)
        except Exception as e:
            self._finish(None, e)
        else:
            self._finish(answer, None)

    def _finish(self, answer: Answer | None, error: BaseException | None) -> None:
        self.reader = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(cast(Answer, answer))

    def usable(self) -> bool:
        return not self.done and self.transport is not None and not self.transport.is_closing()

    async def exchange(self, method: str, data: bytes, timeout: float) -> Answer:
        """Send a request and wait (at most `timeout` s) for its whole answer."""
        assert self.transport is not None and self.reader is None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        self.waiter = waiter
        self.reader = AnswerReader(method)
        expire = loop.call_later(timeout, self._expire, waiter, timeout)
        try:
            self.transport.write(data)
            return await waiter
        finally:
            expire.cancel()
            self.waiter = None

    def _expire(self, waiter: asyncio.Future[Answer], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(
                UpstreamTimeout(f"no answer within {timeout:g} s of sending the request")
            )

    def close(self) -> None:
        self.done = True
        self.reader = None
        if self.transport is not None:
            self.transport.close()


class _FreshConnectionFailed(Exception):
    """The connection ended before a byte of the answer came."""


class UpstreamPool:
    """Kept-alive HTTP/1.1 connections to one upstream, and one-shot requests on them."""

    def __init__(
        self, url: str, ssl_context: ssl.SSLContext | None, answer_timeout: float = ANSWER_TIMEOUT
    ) -> None:
        u = URL(url)
        self.answer_timeout = answer_timeout
        self.host = u.host or ""
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl_context if u.scheme == "https" else None
        # an IPv6 literal goes in brackets (RFC 9110 §7.2: Host is uri-host [":" port])
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = f"{bracketed}:{self.port}"
        self.base_path = u.raw_path.rstrip("/")
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                _Conn,
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            ),
            CONNECT_TIMEOUT,
        )
        return conn

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> Answer:
        """Raises OSError / TimeoutError (cannot connect, connection lost),
        UpstreamTimeout (no whole answer within `answer_timeout`) and
        UpstreamProtocolError (an answer we cannot parse)."""
        data = request_head(method, target, self.host_header, headers, len(body or b""))
        if body:
            data += body
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._exchange(conn, method, data)
            except _FreshConnectionFailed as e:
                if method not in IDEMPOTENT:
                    raise ConnectionResetError(
                        "the upstream closed a kept-alive connection as the request went out"
                    ) from e
                # closed by the upstream as we reused it: on to the next (or a new) one
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, data)
        except _FreshConnectionFailed as e:
            cause = e.__cause__
            if isinstance(cause, OSError):  # lost with an error (reset): that one
                raise cause from None
            raise ConnectionResetError("the upstream closed the connection unanswered") from e

    async def _exchange(self, conn: _Conn, method: str, data: bytes) -> Answer:
        try:
            answer = await conn.exchange(method, data, self.answer_timeout)
        except BaseException:
            conn.close()
            raise
        if conn.usable() and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()


def _check_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise UpstreamProtocolError(
            f"answer of {size} bytes or more is over the gateway's {MAX_BODY_BYTES}-byte "
            "limit for one-shot answers; ask for less (kubectl --chunk-size, a selector)"
        )
