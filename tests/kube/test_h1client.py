"""The gateway's small HTTP/1.1 upstream client: answer heads parsed alone, and real
TLS exchanges with a raw upstream that answers the ways Go's net/http can (Content-
Length, chunked, close-delimited, idle connections dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from auditcast.broker import free_port
from auditcast.collectors.kube import h1client
from auditcast.collectors.kube.gateway import KubeGateway
from auditcast.collectors.kube.h1client import (
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
    parse_head,
    request_head,
)
from auditcast.collectors.kube.upstreams import UpstreamCluster
from tests.kube.conftest import CollectingSink, TokenMint
from tests.kubeapi.pki import TestCA

# -- parsing, alone --------------------------------------------------------------------


def test_answer_head_gives_status_headers_in_order_and_length() -> None:
    head = parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    )
    assert head.status == 200 and head.length == 12 and head.keep_alive and not head.chunked
    assert head.headers == [
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_chunked_coding_wins_over_a_content_length() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert head.chunked and head.length is None


def test_connection_close_and_http_1_0_end_keep_alive() -> None:
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive
    assert not parse_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n".encode(),  # a digit to isdigit()
    ],
)
def test_a_broken_answer_head_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        parse_head(raw)


def test_request_head_adds_host_and_a_body_length() -> None:
    head = request_head("POST", "/api/v1/x?a=b", "kube:6443", [("Impersonate-User", "al")], 3)
    assert head == (
        b"POST /api/v1/x?a=b HTTP/1.1\r\nHost: kube:6443\r\nImpersonate-User: al\r\n"
        b"Content-Length: 3\r\n\r\n"
    )
    assert b"Content-Length" not in request_head("GET", "/", "h:1", [], 0)


def test_a_header_with_a_line_break_is_refused_not_smuggled() -> None:
    with pytest.raises(UpstreamProtocolError, match="line break"):
        request_head("GET", "/", "h:1", [("Impersonate-User", "eve\r\nImpersonate-Group: x")], 0)


# -- real exchanges ----------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, ssl.SSLContext, ssl.SSLContext]:
    ca = TestCA.create("h1-ca")
    ca_path, crt, key = ca.write(tmp_path / "pki", "upstream")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(crt, key)
    return ca_path, server, ssl.create_default_context(cafile=ca_path)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            head += await reader.readexactly(int(line.split(b":")[1]))
    return head


@pytest.fixture
async def raw_upstream(
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
) -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=pki[1])
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()


async def test_chunked_and_close_delimited_answers_are_read_whole(
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext], raw_upstream: Callable[..., Awaitable[int]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await _read_request(reader)
        if b"/chunked" in req:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"
            )
            req = await _read_request(reader)  # same connection, next request
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2])
    a = await pool.request("GET", "/chunked", [], None)
    assert (a.status, a.body) == (200, b"hello, world")
    b = await pool.request("GET", "/close", [], None)
    assert b.body == b"until the end"
    pool.close()


@pytest.mark.parametrize("pause", [0.0, 0.05])  # hang-up seen before reuse, or on it
async def test_an_idle_connection_the_upstream_dropped_is_replaced_once(
    pause: float,
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
) -> None:
    """Like an apiserver's idle timeout: the first answer keeps the connection alive,
    then the upstream closes it; the next request goes out on a new connection."""
    connections = 0
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        requests.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # without saying Connection: close

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2])
    for _ in range(3):
        answer = await pool.request("DELETE", "/api/v1/namespaces/dev/pods/web-0", [], None)
        assert answer.body == b"ok"
        await asyncio.sleep(pause)
    assert connections == 3 and len(requests) == 3  # each request reached it once
    pool.close()


async def test_an_upstream_that_hangs_up_unanswered_is_a_connection_error(
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext], raw_upstream: Callable[..., Awaitable[int]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2])
    with pytest.raises(ConnectionResetError, match="closed the connection unanswered"):
        await pool.request("GET", "/", [], None)
    pool.close()


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"])
async def test_an_upstream_that_stops_answering_times_out_and_its_connection_is_dropped(
    answer: bytes,
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
) -> None:
    """Silent after the request, or after half an answer: the wait is bounded."""
    hold = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await hold.wait()
        writer.close()

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2], answer_timeout=0.3)
    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.3 s"):
        await pool.request("GET", "/api/v1/pods", [], None)
    assert not pool._idle  # never handed to the next request
    hold.set()
    pool.close()


DownGateway = tuple[str, CollectingSink, aiohttp.ClientSession, dict[str, str]]


async def request_events(sink: CollectingSink) -> list[Any]:
    """The kube.request events, once the gateway has written them (just after the answer)."""
    for _ in range(500):
        if found := sink.of_type("kube.request"):
            return found
        await asyncio.sleep(0.01)
    return []


@pytest.fixture
async def down_cluster_gateway(
    tmp_path: Path, pki: tuple[Path, ssl.SSLContext, ssl.SSLContext]
) -> AsyncIterator[DownGateway]:
    """A gateway whose one cluster, dev-cluster, is down: (its cluster URL, its event sink
    (complete once the session is closed), a client session trusting it, alice's auth)."""
    url = f"https://127.0.0.1:{free_port()}"
    async with gateway_to(url, tmp_path, pki) as down:
        yield down


@contextlib.asynccontextmanager
async def gateway_to(
    url: str, tmp_path: Path, pki: tuple[Path, ssl.SSLContext, ssl.SSLContext], **options: Any
) -> AsyncIterator[DownGateway]:
    """A gateway whose one cluster, dev-cluster, is at `url` (trusting `pki`'s CA)."""
    mint = TokenMint(tmp_path / "access-home")
    sink = CollectingSink()
    cluster = UpstreamCluster("dev-cluster", url, ca=pki[0])
    gw = KubeGateway({"dev-cluster": cluster}, mint.verify, sink, **options)
    gw_ca_path, crt, key = TestCA.create("gw-ca").write(tmp_path / "gw-pki", "gw")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    await gw.start("127.0.0.1", 0, tls)
    conn = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=gw_ca_path))
    session = aiohttp.ClientSession(connector=conn)
    auth = {"Authorization": f"Bearer {mint.mint('alice')}"}
    try:
        yield f"https://127.0.0.1:{gw.port}/cluster/dev-cluster", sink, session, auth
    finally:
        await session.close()
        await gw.stop()


async def test_an_unreachable_cluster_gets_a_502_status_and_a_kube_request_event(
    down_cluster_gateway: DownGateway,
) -> None:
    gw, sink, s, auth = down_cluster_gateway
    async with s.get(f"{gw}/api/v1/namespaces/dev/pods", headers=auth) as r:
        assert r.status == 502
        doc = orjson.loads(await r.read())
    assert doc["kind"] == "Status" and doc["reason"] == "BadGateway"
    assert "cluster dev-cluster unreachable" in doc["message"]
    (event,) = await request_events(sink)
    assert event.user == "alice"
    assert event.response_code == 502  # type: ignore[attr-defined]
    assert event.resource == "pods"  # type: ignore[attr-defined]


async def test_a_cluster_that_stops_answering_gets_a_504_status_and_an_event(
    tmp_path: Path,
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
) -> None:
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await hold.wait()
        writer.close()

    url = f"https://127.0.0.1:{await raw_upstream(silent)}"
    async with gateway_to(url, tmp_path, pki, answer_timeout=0.3) as (gw, sink, s, auth):
        async with s.get(f"{gw}/api/v1/namespaces/dev/pods", headers=auth) as r:
            assert r.status == 504
            doc = orjson.loads(await r.read())
        hold.set()
    assert doc["kind"] == "Status" and doc["reason"] == "Timeout" and doc["code"] == 504
    assert "cluster dev-cluster stopped answering: no answer within 0.3 s" in doc["message"]
    (event,) = await request_events(sink)
    assert event.response_code == 504  # type: ignore[attr-defined]
    assert "no answer within" in event.error  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
async def test_a_connection_closed_as_a_request_goes_out_is_retried_only_if_idempotent(
    method: str,
    retried: bool,
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
) -> None:
    """The upstream answers on a kept-alive connection, then hangs up on the next request
    that arrives on it without answering (its idle timeout racing the request)."""
    got: list[tuple[int, bytes]] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        n = connections
        got.append((n, await _read_request(reader)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await writer.drain()
        if n == 1:
            got.append((n, await _read_request(reader)))
        writer.close()  # unanswered

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2])
    assert (await pool.request(method, "/one", [], b"{}")).body == b"first"
    if retried:
        assert (await pool.request(method, "/two", [], b"{}")).body == b"first"
        assert [(n, r.split(b" ")[1]) for n, r in got] == [(1, b"/one"), (1, b"/two"), (2, b"/two")]
    else:
        with pytest.raises(ConnectionResetError, match="kept-alive connection"):
            await pool.request(method, "/two", [], b"{}")
        assert [(n, r.split(b" ")[1]) for n, r in got] == [(1, b"/one"), (1, b"/two")]
    pool.close()


_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\nnot that much", "limit"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\nx", "limit"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
            "bad chunk",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            "bad chunk",
        ),
    ],
    ids=["content-length", "chunk", "negative-chunk", "0x-chunk"],
)
async def test_an_oversized_or_malformed_body_is_refused_before_it_is_buffered(
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
    answer: bytes,
    error: str,
) -> None:
    """A one-shot answer is held whole, so its size is checked first: a huge (or
    nonsensical) length is a protocol error, never a 1 TB read into memory."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2])
    with pytest.raises(UpstreamProtocolError, match=error):
        await pool.request("GET", "/big", [], None)
    pool.close()


async def test_a_close_delimited_answer_over_the_limit_is_refused(
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h1client, "MAX_BODY_BYTES", 100_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(50):
            writer.write(b"x" * 10_000)
            await writer.drain()
        writer.close()

    port = await raw_upstream(handler)
    pool = UpstreamPool(f"https://127.0.0.1:{port}", pki[2])
    with pytest.raises(UpstreamProtocolError, match="100000-byte limit"):
        await pool.request("GET", "/endless", [], None)
    pool.close()


@pytest.mark.parametrize(
    ("url", "host_header"),
    [
        ("https://[::1]:6443", "[::1]:6443"),
        ("https://[fd00::10]/prefix", "[fd00::10]:443"),
        ("https://kube.example:6443", "kube.example:6443"),
        ("http://10.0.0.5", "10.0.0.5:80"),
    ],
)
def test_the_host_header_names_the_upstream_with_an_ipv6_literal_in_brackets(
    url: str, host_header: str
) -> None:
    assert UpstreamPool(url, None).host_header == host_header


EXEC_PATH = "/api/v1/namespaces/dev/pods/web-0/exec?command=sh&stdin=true&stdout=true&tty=true"


@pytest.mark.parametrize("upgrade", ["websocket", "SPDY/3.1"])
async def test_an_exec_upgrade_to_an_unreachable_cluster_gets_a_502_and_an_event(
    upgrade: str, down_cluster_gateway: DownGateway
) -> None:
    """kubectl exec (WebSocket, or SPDY from an older kubectl) while the cluster is down:
    the same 502 Status as any request, and the attempt is in the audit log."""
    gw, sink, s, auth = down_cluster_gateway
    url = gw + EXEC_PATH
    if upgrade == "websocket":
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(url, protocols=("v5.channel.k8s.io",), headers=auth)
        assert err.value.status == 502
    else:
        headers = {**auth, "Connection": "Upgrade", "Upgrade": upgrade}
        async with s.post(url, headers=headers) as r:
            assert r.status == 502
            doc = orjson.loads(await r.read())
        assert doc["reason"] == "BadGateway"
        assert "cluster dev-cluster unreachable" in doc["message"]
    (event,) = await request_events(sink)
    assert event.user == "alice"
    assert event.response_code == 502  # type: ignore[attr-defined]
    assert event.subresource == "exec"  # type: ignore[attr-defined]


async def test_a_client_that_hangs_up_ends_the_upstream_request_and_it_is_recorded(
    tmp_path: Path,
    pki: tuple[Path, ssl.SSLContext, ssl.SSLContext],
    raw_upstream: Callable[..., Awaitable[int]],
) -> None:
    """kubectl interrupted (Ctrl-C) while the cluster works on its request: the gateway
    drops its upstream connection too, and the request, which the cluster did get, is
    in the audit log as unanswered."""
    got_request, upstream_saw_close = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        got_request.set()
        if not await reader.read(1):  # EOF: the gateway hung up on us
            upstream_saw_close.set()
        writer.close()

    url = f"https://127.0.0.1:{await raw_upstream(slow)}"
    async with gateway_to(url, tmp_path, pki) as (gw, sink, s, auth):
        call = asyncio.ensure_future(s.get(f"{gw}/api/v1/namespaces/dev/pods", headers=auth))
        await asyncio.wait_for(got_request.wait(), 10)
        call.cancel()  # the client gives up: aiohttp closes its connection
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await asyncio.wait_for(upstream_saw_close.wait(), 10)
        (event,) = await request_events(sink)
    assert event.user == "alice" and event.verb == "list"  # type: ignore[attr-defined]
    assert "closed the connection before the answer" in event.error  # type: ignore[attr-defined]
    assert getattr(event, "response_code", None) is None
