"""Quick requests: the gateway's commonest request, served without aiohttp's server.

Most of what kubectl sends is a one-shot request without a body: get, list, describe,
discovery. aiohttp's request machinery (parser callbacks, payload streams, the
response writer) cost about a fifth of the gateway's CPU per such request, on the path
the user waits on. A *quick* request is one that is, beyond doubt:

- HTTP/1.1 in its plainest form (or an h2 stream without a body): a request line of
  token method, origin-form target of visible ASCII, `HTTP/1.1`; header lines of token
  names and values without control characters; CRLF only; no obs-fold;
- without a body (no Transfer-Encoding, Content-Length absent or 0), no `Expect`, no
  `Upgrade` (exec, attach, port-forward stay on aiohttp);
- not possibly a stream: no `watch` anywhere in its path, no `watch` or `follow` key in
  its query (a watch or `logs -f` is answered as it comes, by aiohttp).

Such a request becomes the very `web.BaseRequest` aiohttp would have built (same URL
parsing, same headers) and goes to the gateway's one `handle`, whose answer for it is
always a whole `web.Response`; this module writes that answer itself. Anything else, and
anything this module is not sure of, is not quick: the connection is handed to aiohttp
with its bytes untouched, and aiohttp's parser decides as it always did. So the policy
code exists once, and an odd request gets exactly the answer it got before.

Pure functions (no I/O): `parse_head`, `make_request`, `h1_answer`, `h2_answer`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from auditcast.collectors.kube.h1client import Answer

# A head longer than this is left to aiohttp (and the gateway's 431 for big headers).
MAX_QUICK_HEAD: Final = 64 * 1024

_TOKEN_CLASS: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"  # RFC 9110 tchar
_TARGET_CLASS: Final = rb"[\x21\x22\x24-\x7e]"  # visible ASCII, no '#'
_VALUE_CLASS: Final = rb"[\t\x20-\x7e\x80-\xff]"  # HTAB allowed, no CR/LF/NUL/DEL
_TOKEN: Final = re.compile(_TOKEN_CLASS + rb"+")
_METHOD: Final = re.compile(rb"[A-Z]+")
_TARGET: Final = re.compile(rb"/" + _TARGET_CLASS + rb"*")
_VALUE: Final = re.compile(_VALUE_CLASS + rb"*")
# A whole HTTP/1.1 request head of the forms above, checked in one pass.
_H1_HEAD: Final = re.compile(
    rb"[A-Z]+ /" + _TARGET_CLASS + rb"* HTTP/1\.1"
    rb"(?:\r\n" + _TOKEN_CLASS + rb"+:" + _VALUE_CLASS + rb"*)*"
)
# Header names that need a closer look (`_NOT_QUICK_HEADERS`, Content-Length, Connection).
_SPECIAL: Final = re.compile(
    rb"\r\n(?:transfer-encoding|upgrade|expect|http2-settings|content-length|connection):",
    re.IGNORECASE,
)
# Headers that make a request not quick, whatever their value.
_NOT_QUICK_HEADERS: Final = frozenset(
    {b"transfer-encoding", b"upgrade", b"expect", b"http2-settings"}
)
# Answers without a body (RFC 9110 §6.4.1) and without Content-Length (204, 1xx).
_EMPTY_CODES: Final = frozenset({204, 304})
# Per-hop headers an h2 message must not carry (RFC 9113 §8.2.2), nor a relayed answer.
HOP_BY_HOP_NAMES: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)
_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Head:
    """A quick request's head, decoded."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    raw_headers: tuple[tuple[bytes, bytes], ...]
    close: bool = False  # `Connection: close`: answer, then close
    url: URL | None = None  # the target parsed (`quick_url`)

    def header(self, name: str) -> str | None:
        """The first value of a header (`name` in lower case)."""
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class QuickService(Protocol):
    """What serves quick requests (the gateway)."""

    async def answer_quick(self, head: Head, conn: RequestConn, http_version: str) -> Answer | None:
        """The answer, or None: `handle` must decide (a refusal, anything unusual)."""

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The full request path, for a quick request that `answer_quick` declined."""


def header_bytes(raw_path: str, raw_headers: Iterable[tuple[bytes, bytes]]) -> int:
    """A request's header size, as the gateway limits it (request target and fields)."""
    return len(raw_path) + sum(len(k) + len(v) + 4 for k, v in raw_headers)


def parse_head(raw: bytes) -> Head | None:
    """The head of an HTTP/1.1 request (`raw`: up to, not including, the blank line's
    CRLF CRLF), or None when it is not quick in form (see the module docstring)."""
    if _H1_HEAD.fullmatch(raw) is None:
        return None
    lines = raw.split(b"\r\n")
    method, target, _ = lines[0].split(b" ")
    pairs = [(n, v.strip(b" \t")) for n, _, v in (line.partition(b":") for line in lines[1:])]
    if _SPECIAL.search(raw) is not None:  # a header that may make it not quick: look closer
        return _head(method, target, pairs)
    try:
        headers = [(n.decode(), v.decode()) for n, v in pairs]
    except UnicodeDecodeError:
        return None
    return Head(method.decode(), target.decode(), headers, tuple(pairs))


def h2_fields(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]], bytes]:
    """An h2 request head's pseudo-headers, its other fields (`cookie` crumbs joined into
    one, last: RFC 9113 §8.2.3) and its `host` field."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host = b""
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = host or value
        else:
            fields.append((name, value))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    return pseudo, fields, host


def h2_head(headers: Iterable[tuple[bytes, bytes]], ended: bool) -> Head | None:
    """The head of an h2 request (RFC 9113 §8.3.1: `:authority` as Host), or None when
    it is not quick: it has a body (`ended` False: the stream goes on after its HEADERS)
    or is not quick in form."""
    if not ended:
        return None
    pseudo, pairs, host = h2_fields(headers)
    authority = pseudo.get(b":authority") or host
    if authority:
        pairs.insert(0, (b"host", authority))
    method, target = pseudo.get(b":method"), pseudo.get(b":path")
    if method is None or target is None:
        return None
    return _head(method, target, pairs)


def _head(method: bytes, target: bytes, pairs: list[tuple[bytes, bytes]]) -> Head | None:
    if _METHOD.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        return None
    headers: list[tuple[str, str]] = []
    close = False
    try:
        for name, value in pairs:
            # a token name: no whitespace (obs-fold), no colon, nothing odd
            if _TOKEN.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
                return None
            lower = name.lower()
            if lower in _NOT_QUICK_HEADERS:
                return None
            if lower == b"content-length" and value != b"0":
                return None
            if lower == b"connection":
                options = {o.strip().lower() for o in value.split(b",")}
                if b"upgrade" in options:
                    return None
                close = close or b"close" in options
            headers.append((name.decode(), value.decode()))
    except UnicodeDecodeError:
        return None
    return Head(method.decode(), target.decode(), headers, tuple(pairs), close)


def quick_url(head: Head) -> URL | None:
    """The target as aiohttp's parser builds it (origin form), or None when the request
    may be answered as a stream (a superset of the gateway's own test, on the same
    decoded path and query) or yarl refuses the target: not quick."""
    path, _, query = head.target.partition("?")
    try:
        url = URL.build(path=path, query_string=query, encoded=True)
    except ValueError:
        return None
    q = url.query
    if "watch" in url.path.lower() or "watch" in q or "follow" in q:
        return None
    return url


class RequestConn:
    """What `web.BaseRequest` reads of the connection a request came on."""

    __slots__ = ("peername", "sockname", "ssl_context", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self.ssl_context = transport.get_extra_info("sslcontext")


def make_request(head: Head, conn: RequestConn, loop: Any) -> web.BaseRequest:
    """The `web.BaseRequest` aiohttp would have made for `head` (which has no body)."""
    assert head.url is not None
    message = RawRequestMessage(
        head.method,
        head.target,
        HttpVersion11,
        CIMultiDictProxy(CIMultiDict(head.headers)),
        head.raw_headers,
        head.close,
        None,
        False,
        False,
        head.url,
    )
    return web.BaseRequest(
        message,
        EMPTY_PAYLOAD,
        conn,  # type: ignore[arg-type]  # the attributes BaseRequest reads of a handler
        None,  # type: ignore[arg-type]  # no payload writer: the answer is ours to write
        None,  # type: ignore[arg-type]  # no task of aiohttp's
        loop,
    )


def answer_of(response: web.StreamResponse) -> Answer:
    """`handle`'s answer to a quick request: always a whole `web.Response`."""
    if not isinstance(response, web.Response):
        raise TypeError("a quick request was answered as a stream")
    body = response.body
    if body is not None and not isinstance(body, bytes | bytearray):
        raise TypeError(f"a quick answer's body must be bytes, not {type(body).__name__}")
    return Answer(response.status, list(response.headers.items()), bytes(body or b""))


def _check(headers: Iterable[tuple[str, str]]) -> None:
    for k, v in headers:
        if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
            raise ValueError(f"newline in the answer's header {k!r}")


def _body(method: str, status: int, data: bytes) -> tuple[bytes, str | None]:
    """The bytes that go out after the head, and the Content-Length to announce (None:
    no such header), by the rules aiohttp applies to a whole `web.Response`."""
    if status < 200 or status == 204:
        return b"", None
    announce = str(len(data)) if data or (status != 304 and method != "HEAD") else None
    if method == "HEAD" or status in _EMPTY_CODES:
        return b"", announce
    return data, announce


class _Clock:
    """The Date header, formatted once a second."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.second = -1
        self.text = ""

    def date(self) -> str:
        second = int(self.now())
        if second != self.second:
            self.second, self.text = second, formatdate(second, usegmt=True)
        return self.text


_CLOCK: Final = _Clock()


def _fields(method: str, answer: Answer) -> tuple[bytes, list[tuple[str, str]]]:
    """The body that goes out and the answer's header fields as sent: its own minus the
    hop-by-hop ones and Content-Length, then ours (Content-Length, Date if it had none)."""
    data, length = _body(method, answer.status, answer.body)
    _check(answer.headers)
    fields: list[tuple[str, str]] = []
    date = False
    for k, v in answer.headers:
        name = k.lower()
        if name not in HOP_BY_HOP_NAMES and name != "content-length":
            fields.append((k, v))
            date = date or name == "date"
    if length is not None:
        fields.append(("Content-Length", length))
    if not date:
        fields.append(("Date", _CLOCK.date()))
    return data, fields


def h1_answer(method: str, answer: Answer, keep_alive: bool) -> bytes:
    """An answer as HTTP/1.1 bytes: head and body (its Content-Length and hop-by-hop
    headers are ours to set, not the answer's)."""
    data, fields = _fields(method, answer)
    lines = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}"]
    lines += [f"{k}: {v}" for k, v in fields]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def h2_answer(method: str, answer: Answer) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """An answer as an h2 header block (lower-case names) and body."""
    data, fields = _fields(method, answer)
    head = [(b":status", str(answer.status).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in fields]
    return head, data
