"""Quick requests: the gateway's one-shot, body-less requests served without aiohttp's
server, and everything else handed to aiohttp unchanged (quick.py, h1front.py).

The pure parts alone (what is quick, how an answer is written), then a raw TLS client
against the real gateway and the API-server double: pipelined requests, a connection
that turns to aiohttp half way, refusals, percent-encoded paths and idle connections.
The gateway counts the requests it answered quick (`stats.quick`).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import h11
import orjson
import pytest

from auditcast.collectors.kube import h1front
from auditcast.collectors.kube.h1client import Answer
from auditcast.collectors.kube.quick import (
    h1_answer,
    h2_answer,
    h2_head,
    parse_head,
    quick_url,
)
from tests.kube.conftest import KubeEnv, wait_until

GET = (
    b"GET /cluster/dev-cluster/api/v1/namespaces/dev/pods?limit=500 HTTP/1.1\r\n"
    b"Host: gw:3026\r\nUser-Agent: kubectl/v1.32.0 (linux/amd64)\r\n"
    b"Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json\r\n"
    b"Authorization: Bearer abc.def.ghi"
)

# -- what is quick, alone ----------------------------------------------------------------


def test_a_kubectl_get_is_quick_and_keeps_its_headers_in_order() -> None:
    head = parse_head(GET)
    assert head is not None
    assert (head.method, head.target, head.close) == (
        "GET",
        "/cluster/dev-cluster/api/v1/namespaces/dev/pods?limit=500",
        False,
    )
    assert [k for k, _ in head.headers] == ["Host", "User-Agent", "Accept", "Authorization"]
    assert head.header("authorization") == "Bearer abc.def.ghi"
    assert parse_head(GET + b"\r\nContent-Length: 0") is not None
    closing = parse_head(GET + b"\r\nConnection: close")
    assert closing is not None and closing.close


@pytest.mark.parametrize(
    "raw",
    [
        GET + b"\r\nContent-Length: 5",
        GET + b"\r\nTransfer-Encoding: chunked",
        GET + b"\r\nUpgrade: websocket\r\nConnection: Upgrade",
        GET + b"\r\nExpect: 100-continue",
        GET.replace(b"HTTP/1.1", b"HTTP/1.0"),
        GET + b"\r\n folded continuation",
        GET + b"\r\nX-Bare: a\nb",
        GET + b"\r\nX-Ctl: a\x01b",
        GET + b"\r\nX-Latin: \xff\xfe",
        GET + b"\r\nBad Name: x",
        GET.replace(b"GET /cluster", b"GET https://gw/cluster"),
        GET.replace(b"?limit=500", b"#frag"),
        GET.replace(b"GET ", b"get "),
    ],
    ids=[
        "body", "chunked", "upgrade", "expect", "http/1.0", "obs-fold", "bare-lf",
        "control-char", "not-utf8", "space-in-name", "absolute-form", "fragment", "lowercase",
    ],
)  # fmt: skip
def test_anything_unusual_is_not_quick_and_goes_to_aiohttp_untouched(raw: bytes) -> None:
    assert parse_head(raw) is None


@pytest.mark.parametrize(
    "target",
    [
        "/cluster/c/api/v1/pods?watch=true",
        "/cluster/c/api/v1/pods?watch=1&resourceVersion=5",
        "/cluster/c/api/v1/pods?w%61tch=true",  # the same key, percent-encoded
        "/cluster/c/api/v1/watch/pods",
        "/cluster/c/api/v1/%77atch/pods",
        "/cluster/c/api/v1/namespaces/dev/pods/web-0/log?follow=true",
        "/cluster/c/api/v1/namespaces/dev/pods/web-0/log?f%6Fllow=1",
    ],
)
def test_a_request_that_may_be_a_watch_or_logs_follow_is_not_quick(target: str) -> None:
    head = parse_head(GET.replace(b"/cluster/dev-cluster/api/v1/namespaces/dev/pods?limit=500",
                                  target.encode()))  # fmt: skip
    assert head is not None and quick_url(head) is None


def test_a_label_selector_is_decoded_as_aiohttp_decodes_it() -> None:
    head = parse_head(GET.replace(b"?limit=500", b"?labelSelector=app%3Dweb%2Ctier+x"))
    assert head is not None
    url = quick_url(head)
    assert url is not None and url.query["labelSelector"] == "app=web,tier x"


def test_an_h2_request_is_quick_only_without_a_body() -> None:
    headers = [
        (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"gw:3026"),
        (b":path", b"/cluster/c/api/v1/pods"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
        (b"authorization", b"Bearer t"),
    ]  # fmt: skip
    assert h2_head(headers, ended=False) is None  # a body follows
    head = h2_head(headers, ended=True)
    assert head is not None
    assert head.headers == [
        ("host", "gw:3026"),
        ("authorization", "Bearer t"),
        ("cookie", "a=1; b=2"),
    ]
    assert h2_head([*headers, (b"x-bad", b"a\x00b")], ended=True) is None
    assert h2_head(headers[1:], ended=True) is None  # no :method


# -- how an answer is written, alone -----------------------------------------------------


def _written(raw: bytes, method: str = "GET") -> tuple[h11.Response, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    response, body = conn.next_event(), b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    assert isinstance(response, h11.Response)
    return response, body


def test_an_answer_is_written_with_its_length_and_without_hop_by_hop_headers() -> None:
    answer = Answer(
        200,
        [("Content-Type", "application/json"), ("Connection", "keep-alive"), ("Warning", "a"),
         ("Warning", "b"), ("Content-Length", "999")],
        b'{"items":[]}',
    )  # fmt: skip
    response, body = _written(h1_answer("GET", answer, keep_alive=True))
    headers = [(k.decode(), v.decode()) for k, v in response.headers]
    assert response.status_code == 200 and response.reason == b"OK" and body == b'{"items":[]}'
    assert ("content-length", "12") in headers and ("connection", "keep-alive") not in headers
    assert [v for k, v in headers if k == "warning"] == ["a", "b"]
    assert any(k == "date" for k, _ in headers)  # added, as aiohttp does

    head_raw = h1_answer("HEAD", answer, keep_alive=False)
    assert head_raw.endswith(b"\r\n\r\n") and b"Content-Length: 12" in head_raw
    assert b"Connection: close" in head_raw
    no_content = h1_answer("DELETE", Answer(204, [], b""), keep_alive=True)
    assert b"Content-Length" not in no_content and no_content.endswith(b"\r\n\r\n")


def test_an_answer_header_with_a_line_break_is_refused_not_written() -> None:
    with pytest.raises(ValueError, match="newline"):
        h1_answer("GET", Answer(200, [("X-Evil", "a\r\nSet-Cookie: x")], b""), True)


def test_an_h2_answer_has_lowercase_names_and_no_connection_headers() -> None:
    block, body = h2_answer(
        "GET", Answer(403, [("Content-Type", "application/json"), ("Keep-Alive", "5")], b"{}")
    )
    assert block[0] == (b":status", b"403") and body == b"{}"
    names = [k for k, _ in block]
    assert b"content-type" in names and b"keep-alive" not in names
    assert (b"content-length", b"2") in block


# -- against the gateway ----------------------------------------------------------------


def _connect(env: KubeEnv) -> ssl.SSLSocket:
    """A TLS connection to the gateway that speaks http/1.1 (ALPN)."""
    ctx = ssl.create_default_context(cafile=str(env.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection(("127.0.0.1", env.gateway.gateway.port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


@pytest.fixture
def raw_client(kube_env: KubeEnv) -> Iterator[tuple[ssl.SSLSocket, KubeEnv]]:
    with _connect(kube_env) as tls:
        yield tls, kube_env


def _request(env: KubeEnv, method: str, target: str, extra: str = "") -> bytes:
    token = env.mint.mint("alice")
    return (
        f"{method} {target} HTTP/1.1\r\nHost: gw\r\nUser-Agent: raw-test\r\n"
        f"Authorization: Bearer {token}\r\n{extra}\r\n"
    ).encode()


def _answers(sock: ssl.SSLSocket, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    conn = h11.Connection(h11.CLIENT)
    out: list[tuple[int, dict[str, str], bytes]] = []
    for _ in range(n):
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                assert data, "the gateway closed the connection"
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        out.append((status, headers, body))
        conn.start_next_cycle()
    return out


PODS = "/cluster/dev-cluster/api/v1/namespaces/dev/pods"


def test_pipelined_gets_are_answered_in_order_each_with_its_event(
    raw_client: tuple[ssl.SSLSocket, KubeEnv],
) -> None:
    sock, env = raw_client
    sock.sendall(_request(env, "GET", PODS) + _request(env, "GET", PODS + "/web-0"))
    (s1, _, b1), (s2, _, b2) = _answers(sock, 2)
    assert (s1, s2) == (200, 200)
    assert orjson.loads(b1)["kind"] == "PodList" and orjson.loads(b2)["kind"] == "Pod"
    assert env.gateway.gateway.stats.quick == 2
    events = env.sink.wait_for("kube.request", lambda e: True, count=2)
    assert [(e.verb, getattr(e, "name", None)) for e in events] == [  # type: ignore[attr-defined]
        ("list", None), ("get", "web-0")
    ]  # fmt: skip
    assert all(e.http_version == "1.1" and e.user == "alice" for e in events)  # type: ignore[attr-defined]


def test_a_connection_turns_to_aiohttp_at_its_first_request_with_a_body(
    raw_client: tuple[ssl.SSLSocket, KubeEnv],
) -> None:
    """GET (quick), then a POST with a body (aiohttp's from there on), then GET again:
    all three answered in order on the one connection."""
    sock, env = raw_client
    body = b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"new"}}'
    post = _request(env, "POST", PODS, f"Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n") + body  # fmt: skip
    sock.sendall(_request(env, "GET", PODS))
    (first,) = _answers(sock, 1)
    sock.sendall(post + _request(env, "GET", PODS))
    _, third = _answers(sock, 2)
    assert first[0] == 200 and third[0] == 200
    assert orjson.loads(third[2])["kind"] == "PodList"
    stats = env.gateway.gateway.stats
    assert (stats.requests, stats.quick) == (3, 1)  # aiohttp's from the POST on
    posts = [s for s in env.upstream.seen if s.method == "POST"]
    assert len(posts) == 1 and posts[0].impersonated == "alice"


def test_a_refused_quick_request_gets_the_same_status_and_one_event(
    raw_client: tuple[ssl.SSLSocket, KubeEnv],
) -> None:
    sock, env = raw_client
    before = env.upstream_requests()
    forged = f"GET {PODS} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer forged\r\n\r\n"
    sock.sendall(forged.encode())
    ((status, _, body),) = _answers(sock, 1)
    assert status == 401 and orjson.loads(body)["kind"] == "Status"
    (failed,) = env.sink.wait_for("auth.failed", lambda e: True)
    assert failed.reason  # type: ignore[attr-defined]
    assert env.upstream_requests() == before  # nothing went upstream
    assert not wait_until(lambda: len(env.sink.of_type("auth.failed")) > 1, timeout=0.3)


def test_a_percent_encoded_path_is_answered_by_the_full_path_alike(
    raw_client: tuple[ssl.SSLSocket, KubeEnv],
) -> None:
    sock, env = raw_client
    sock.sendall(_request(env, "GET", "/cluster/dev-cluster/api/v1/namespaces/d%65v/pods"))
    ((status, _, body),) = _answers(sock, 1)
    assert status == 200 and orjson.loads(body)["kind"] == "PodList"
    (event,) = env.sink.wait_for("kube.request", lambda e: True)
    assert event.namespace == "dev"  # type: ignore[attr-defined]
    assert env.gateway.gateway.stats.quick == 0  # decided by `handle`, as before


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    kube_env: KubeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1front, "KEEPALIVE_TIMEOUT", 0.5)
    with _connect(kube_env) as sock:
        sock.sendall(_request(kube_env, "GET", PODS))
        assert _answers(sock, 1)[0][0] == 200  # served: the connection stays open a while
        sock.settimeout(10)
        assert sock.recv(1) == b""  # then the gateway closes it (well before our 10 s)
