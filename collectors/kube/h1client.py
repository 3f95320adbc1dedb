"""A small HTTP/1.1 client for the gateway's one-shot upstream requests.

GET pods and the like (everything that is answered once, not streamed) are most of
kubectl's traffic, and aiohttp's general-purpose client spent ~200 µs of Python per
request on them here (cookie jar, auto headers, tracing hooks, timeouts, connection
keys). This client does only what the gateway needs: one write of the request head (and
body) on a kept-alive TLS connection from a per-cluster pool, the answer's head parsed
by hand, its body read whole by Content-Length, chunked coding or connection close.
Watches, logs -f and upgrades stay on aiohttp.

A pooled connection the upstream has closed is dropped before use. One it closes just
as a request goes out fails without a byte of answer; an idempotent request (GET, HEAD,
OPTIONS, TRACE, PUT, DELETE) is then sent once more on a fresh connection, others fail
with ConnectionResetError (aiohttp's rule for persistent connections, and Go's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from yarl import URL

MAX_HEAD_BYTES: Final = 1024 * 1024  # the apiserver's own header limit
# One-shot answers are held whole: bounded, so a runaway answer cannot exhaust the
# gateway's memory. kubectl pages lists (--chunk-size, 500 items by default), so an
# answer this big is a sign of something wrong, and the client is told so.
MAX_BODY_BYTES: Final = 256 * 1024 * 1024
_READ_SIZE: Final = 256 * 1024
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


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _FreshConnectionFailed(Exception):
    pass


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
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
                limit=MAX_HEAD_BYTES,
            ),
            CONNECT_TIMEOUT,
        )
        return _Conn(reader, writer)

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
            if conn.writer.is_closing() or conn.reader.at_eof():
                conn.close()
                continue
            try:
                return await self._exchange(conn, method, data, reused=True)
            except _FreshConnectionFailed as e:
                if method not in IDEMPOTENT:
                    raise ConnectionResetError(
                        "the upstream closed a kept-alive connection as the request went out"
                    ) from e
                # closed by the upstream as we reused it: on to the next (or a new) one
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, data, reused=False)
        except _FreshConnectionFailed as e:
            raise ConnectionResetError("the upstream closed the connection unanswered") from e

    async def _exchange(self, conn: _Conn, method: str, data: bytes, reused: bool) -> Answer:
        deadline = asyncio.timeout(self.answer_timeout)
        try:
            async with deadline:
                return await self._answer(conn, method, data, reused)
        except TimeoutError:
            if not deadline.expired():  # a socket's own ETIMEDOUT: connection lost
                raise
            raise UpstreamTimeout(
                f"no answer within {self.answer_timeout:g} s of sending the request"
            ) from None

    async def _answer(self, conn: _Conn, method: str, data: bytes, reused: bool) -> Answer:
        reader = conn.reader
        try:
            conn.writer.write(data)
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _FreshConnectionFailed() from e
                raise
            except (ConnectionError, OSError) as e:
                if reused:
                    raise _FreshConnectionFailed() from e
                raise
            head = parse_head(raw)
            while 100 <= head.status < 200:  # 100 Continue and friends: skip
                head = parse_head(await reader.readuntil(b"\r\n\r\n"))
            if method == "HEAD" or head.status in _NO_BODY_CODES:
                body = b""
            elif head.chunked:
                body = await _read_chunked(reader)
            elif head.length is not None:
                _check_size(head.length)
                body = await reader.readexactly(head.length)
            else:
                body = await _read_to_close(reader)
                head.keep_alive = False
        except asyncio.LimitOverrunError as e:
            conn.close()
            raise UpstreamProtocolError("answer head over 1 MiB") from e
        except BaseException:
            conn.close()
            raise
        if head.keep_alive and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return Answer(head.status, head.headers, body)

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


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await reader.read(_READ_SIZE):
        size += len(chunk)
        _check_size(size)
        parts.append(chunk)
    return b"".join(parts)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                raise ValueError(size_text)
            size = int(size_text, 16)
        except ValueError as e:
            raise UpstreamProtocolError(f"bad chunk size {size_text[:20]!r}") from e
        total += size
        _check_size(total)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers: dropped
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise UpstreamProtocolError("chunk not followed by CRLF")
