"""HTTP/2 through the kube gateway: real kubectl (Go's net/http negotiates h2 when the
listener offers it) and a real h2 client (the `h2` package over a TLS socket) for what
kubectl cannot be made to do: many streams on one connection, resets, tiny flow-control
windows, broken frames. The same handler serves both protocols, so the answers, the
refusals and the events are the ones HTTP/1.1 clients get."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import httpx
import hyperframe.frame
import orjson
import pytest
from aiohttp import web
from h2.errors import ErrorCodes
from h2.exceptions import DenialOfServiceError, FrameTooLargeError, ProtocolError

from auditcast.collectors.kube.h2front import STREAM_HIGH_WATER, AlpnSite, FrameGuard
from tests.kube.conftest import KubeEnv, wait_until
from tests.kube.test_gateway import kubectl
from tests.kubeapi.pki import TestCA

PODS_DEV = "/cluster/dev-cluster/api/v1/namespaces/dev/pods"
PODS_DEFAULT = "/cluster/dev-cluster/api/v1/namespaces/default/pods"


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False

    def json(self) -> dict:
        return orjson.loads(bytes(self.body))


class H2Client:
    """A minimal blocking HTTP/2 client on one TLS connection (ALPN h2)."""

    def __init__(
        self, port: int, *, settings: dict[int, int] | None = None, auto_ack: bool = True
    ) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.port = port
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str, token: str = "", **headers: str) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [
            (":method", "GET"),
            (":path", path),
            (":scheme", "https"),
            (":authority", f"127.0.0.1:{self.port}"),
            ("user-agent", "h2-test-client"),
        ]
        if token:
            head.append(("authorization", f"Bearer {token}"))
        head += [(k.replace("_", "-").lower(), v) for k, v in headers.items()]
        self.conn.send_headers(sid, head, end_stream=True)
        self._flush()
        self.answers[sid] = Answer()
        return sid

    def post(self, path: str, token: str, body: bytes) -> int:
        """POST `body` in DATA frames, as the gateway's flow-control windows allow."""
        sid = self.conn.get_next_available_stream_id()
        head = [
            (":method", "POST"),
            (":path", path),
            (":scheme", "https"),
            (":authority", f"127.0.0.1:{self.port}"),
            ("authorization", f"Bearer {token}"),
            ("content-type", "application/json"),
        ]
        self.conn.send_headers(sid, head)
        self.answers[sid] = Answer()
        view = memoryview(body)
        while view and not self.answers[sid].ended and not self.answers[sid].reset:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self._flush()
                self.pump(lambda: self.conn.local_flow_control_window(sid) > 0 or self.done(sid)())
                continue
            self.conn.send_data(sid, bytes(view[:room]), end_stream=len(view) <= room)
            view = view[room:]
        self._flush()
        return sid

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, ErrorCodes.CANCEL)
        self._flush()

    def pump(self, until: Callable[[], bool], timeout: float = 10) -> None:
        """Read frames until `until()` holds, the connection closes, or `timeout`."""
        deadline = time.monotonic() + timeout
        while not until() and not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                break
            for ev in self.conn.receive_data(data):
                self._on(ev)
            self._flush()

    def _on(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            a = self.answers[ev.stream_id]
            for k, v in ev.headers or []:
                if k == ":status":
                    a.status = int(v)
                else:
                    a.headers[str(k)] = str(v)
        elif isinstance(ev, h2.events.DataReceived):
            self.answers[ev.stream_id].body += ev.data or b""
            if self.auto_ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.answers[ev.stream_id].ended = True
        elif isinstance(ev, h2.events.StreamReset):
            self.answers[ev.stream_id].reset = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def done(self, *sids: int) -> Callable[[], bool]:
        return lambda: all(self.answers[s].ended or self.answers[s].reset for s in sids)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def h2client(kube_env: KubeEnv) -> Iterator[H2Client]:
    client = H2Client(kube_env.gateway.gateway.port)
    yield client
    client.close()


def _events(env: KubeEnv, match: Callable[..., bool], count: int = 1) -> list:
    return env.sink.wait_for("kube.request", match, count=count)


def test_kubectl_speaks_http2_to_the_gateway_and_its_requests_are_recorded_as_http_2(
    kube_env: KubeEnv,
) -> None:
    kenv = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    ok = kubectl(kenv, "get", "pods", "-n", "dev")
    assert ok.returncode == 0, ok.stderr
    assert "web-0" in ok.stdout and "web-1" in ok.stdout and "db-0" not in ok.stdout
    (listed,) = _events(kube_env, lambda e: getattr(e, "resource", "") == "pods")
    assert listed.http_version == "2"
    assert listed.response_code == 200 and listed.user == "alice" and listed.verb == "list"
    assert listed.source.user_agent.startswith("kubectl/")
    assert listed.source.remote_addr == "127.0.0.1"
    # discovery went over the same protocol
    assert {e.http_version for e in kube_env.sink.of_type("kube.request")} == {"2"}  # type: ignore[attr-defined]
    # the upstream saw the usual impersonation and our event id as its audit id
    (seen,) = [s for s in kube_env.upstream.seen if s.path.endswith("/pods")]
    assert (seen.impersonated, tuple(seen.groups)) == ("alice", ("devs",))
    assert seen.headers.get("Audit-ID") == listed.id


def test_kubectl_told_not_to_use_http2_is_served_over_http_1_1(kube_env: KubeEnv) -> None:
    kenv = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    ok = kubectl({**kenv, "DISABLE_HTTP2": "true"}, "get", "pods", "-n", "dev")  # client-go
    assert ok.returncode == 0, ok.stderr
    assert "web-0" in ok.stdout and "web-1" in ok.stdout
    events = kube_env.sink.wait_for("kube.request", lambda e: True, count=2)
    assert {e.http_version for e in events} == {"1.1"}  # type: ignore[attr-defined]


def test_kubectl_logs_follow_streams_over_http2_and_ends_when_kubectl_quits(
    kube_env: KubeEnv,
) -> None:
    proc = subprocess.Popen(
        ["kubectl", "logs", "-f", "-n", "dev", "web-0"],
        env=kube_env.kubeconfig(kube_env.mint.mint("alice")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]  # lines 3+ come 0.2 s apart
        assert lines[4] == "web-0 log line 4\n"
        (start,) = _events(
            kube_env,
            lambda e: getattr(e, "subresource", "") == "log" and getattr(e, "phase", "") == "start",
        )
        assert start.http_version == "2"  # type: ignore[attr-defined]
    finally:
        proc.terminate()
        proc.wait(10)
    # kubectl's exit drops its connection: the stream's handler ends and records it
    (end,) = _events(
        kube_env,
        lambda e: getattr(e, "subresource", "") == "log" and getattr(e, "phase", "") == "end",
    )
    assert end.http_version == "2" and end.request_id == start.id  # type: ignore[attr-defined]
    assert end.bytes_out >= len("".join(lines))  # type: ignore[attr-defined]


def test_http_1_1_clients_are_served_and_recorded_as_http_1_1(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")
    with httpx.Client(verify=False, timeout=10, http2=False) as http:
        r = http.get(
            f"{kube_env.gateway.url}{PODS_DEV}", headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    assert [p["metadata"]["name"] for p in r.json()["items"]] == ["web-0", "web-1"]
    (event,) = _events(kube_env, lambda e: getattr(e, "resource", "") == "pods")
    assert event.http_version == "1.1"


def test_upstreams_403_passes_through_unchanged_over_http2(
    kube_env: KubeEnv, h2client: H2Client
) -> None:
    token = kube_env.mint.mint("alice")
    sid = h2client.get(PODS_DEFAULT, token)
    h2client.pump(h2client.done(sid))
    answer = h2client.answers[sid]
    assert answer.status == 403 and answer.ended
    body = answer.json()
    assert body["kind"] == "Status" and body["reason"] == "Forbidden"
    assert body["message"] == (
        'pods is forbidden: User "alice" cannot list resource "pods" in API group "" '
        'in the namespace "default"'
    )
    (event,) = _events(kube_env, lambda e: getattr(e, "response_code", 0) == 403)
    assert event.http_version == "2" and event.namespace == "default"
    assert answer.headers["audit-id"] == event.id  # the cluster's header, passed through

    # kubectl shows the same message over h2
    denied = kubectl(kube_env.kubeconfig(token), "get", "pods")
    assert denied.returncode == 1 and body["message"] in denied.stderr


def test_many_concurrent_streams_share_one_connection_and_a_reset_ends_only_its_stream(
    kube_env: KubeEnv, h2client: H2Client
) -> None:
    token = kube_env.mint.mint("alice")
    watch = h2client.get(PODS_DEV + "?watch=true", token)
    lists = [h2client.get(PODS_DEV, token) for _ in range(12)]
    forbidden = [h2client.get(PODS_DEFAULT, token) for _ in range(4)]
    refused = h2client.get(PODS_DEV)  # no token: the gateway's own 401, on this stream only
    h2client.pump(
        lambda: (
            h2client.done(*lists, *forbidden, refused)()
            and len(h2client.answers[watch].body.splitlines()) >= 2
        )
    )
    assert {h2client.answers[s].status for s in lists} == {200}
    assert all(len(h2client.answers[s].json()["items"]) == 2 for s in lists)
    assert {h2client.answers[s].status for s in forbidden} == {403}
    assert h2client.answers[refused].status == 401
    assert "no bearer token" in h2client.answers[refused].json()["message"]
    # the watch is still open, with its two ADDED events so far
    assert h2client.answers[watch].status == 200 and not h2client.answers[watch].ended
    added = [orjson.loads(line) for line in h2client.answers[watch].body.splitlines()]
    assert [a["type"] for a in added] == ["ADDED", "ADDED"]
    assert wait_until(lambda: len(kube_env.gateway.gateway.live) == 1)

    h2client.reset(watch)
    (end,) = _events(
        kube_env, lambda e: getattr(e, "verb", "") == "watch" and getattr(e, "phase", "") == "end"
    )
    assert end.http_version == "2" and not getattr(end, "closed_by_lock", "")
    assert wait_until(lambda: not kube_env.gateway.gateway.live)

    # the connection carries on after the reset
    again = h2client.get(PODS_DEV, token)
    h2client.pump(h2client.done(again))
    assert h2client.answers[again].status == 200 and h2client.goaway is None
    pods = _events(
        kube_env,
        lambda e: getattr(e, "verb", "") == "list" and getattr(e, "resource", "") == "pods",
        count=17,
    )
    assert len(pods) == 17 and {e.http_version for e in pods} == {"2"}
    # every stream's handler is gone: nothing held for finished or reset streams
    server = kube_env.gateway.gateway._runner.server  # type: ignore[union-attr]
    assert wait_until(lambda: not server.connections)


def test_request_body_over_http2_reaches_the_cluster_whole(
    kube_env: KubeEnv, h2client: H2Client
) -> None:
    """200 KB: more than the 64 KiB initial window, so the body only gets through if
    the gateway reopens the window as the handler takes the data."""
    body = orjson.dumps({"kind": "Pod", "metadata": {"name": "x"}, "pad": "y" * 200_000})
    sid = h2client.post(PODS_DEV, kube_env.mint.mint("alice"), body)
    h2client.pump(h2client.done(sid))
    answer = h2client.answers[sid]
    assert answer.ended and answer.status != 0
    (seen,) = [s for s in kube_env.upstream.seen if s.method == "POST"]
    assert seen.headers.get("Content-Length") == str(len(body))
    (event,) = _events(kube_env, lambda e: getattr(e, "method", "") == "POST")
    assert event.bytes_in == len(body) and event.http_version == "2"  # type: ignore[attr-defined]
    assert event.response_code == answer.status  # type: ignore[attr-defined]


def test_oversized_request_body_over_http2_gets_413_and_no_upstream_request(
    kube_env: KubeEnv, h2client: H2Client
) -> None:
    body = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    sid = h2client.post(PODS_DEV, kube_env.mint.mint("alice"), body)
    h2client.pump(h2client.done(sid))
    answer = h2client.answers[sid]
    assert answer.status == 413
    assert "request body exceeds the 3145728-byte limit" in answer.json()["message"]
    assert kube_env.upstream_requests() == 0


def test_oversized_headers_over_http2_get_431_and_no_upstream_request(
    kube_env: KubeEnv, h2client: H2Client
) -> None:
    token = kube_env.mint.mint("alice")
    sid = h2client.get(PODS_DEV, token, x_filler="x" * 40_000)
    h2client.pump(h2client.done(sid))
    answer = h2client.answers[sid]
    assert answer.status == 431
    assert "exceed the gateway's 32768-byte limit" in answer.json()["message"]
    assert kube_env.upstream_requests() == 0
    # the connection is still good for the next request
    ok = h2client.get(PODS_DEV, token)
    h2client.pump(h2client.done(ok))
    assert h2client.answers[ok].status == 200


def test_header_block_over_the_advertised_limit_ends_the_connection_with_goaway(
    kube_env: KubeEnv,
) -> None:
    client = H2Client(kube_env.gateway.gateway.port)
    try:
        client.pump(lambda: client.conn.remote_settings.max_header_list_size is not None)
        limit = client.conn.remote_settings.max_header_list_size
        assert limit == 4 * 32 * 1024  # announced in the gateway's SETTINGS
        # one header block over the limit, HEADERS + CONTINUATIONs, sent as raw frames
        # (without Huffman coding: hpack's pure-Python encoder is slow at this size)
        block = hpack.Encoder().encode(
            [
                (":method", "GET"),
                (":path", PODS_DEV),
                (":scheme", "https"),
                (":authority", "127.0.0.1"),
                ("x-filler", "x" * (limit + 1)),
            ],
            huffman=False,
        )
        size = client.conn.max_outbound_frame_size
        chunks = [block[i : i + size] for i in range(0, len(block), size)]
        frames = [hyperframe.frame.HeadersFrame(1, data=chunks[0])]
        frames += [hyperframe.frame.ContinuationFrame(1, data=c) for c in chunks[1:]]
        frames[-1].flags.add("END_HEADERS")
        with contextlib.suppress(OSError):  # the gateway may hang up before the last one
            client.sock.sendall(b"".join(f.serialize() for f in frames))
        client.pump(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert kube_env.upstream_requests() == 0
    finally:
        client.close()


def _tls_h2_socket(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def _read_goaway(sock: ssl.SSLSocket) -> h2.events.ConnectionTerminated | None:
    """Read the gateway's frames until it closes; the GOAWAY among them, if any."""
    reader = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    reader.initiate_connection()
    goaway = None
    while True:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            break
        if not data:
            break
        for ev in reader.receive_data(data):
            if isinstance(ev, h2.events.ConnectionTerminated):
                goaway = ev
    return goaway


def test_malformed_http2_connections_get_goaway_and_the_gateway_keeps_serving(
    kube_env: KubeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    port = kube_env.gateway.gateway.port
    # 1. garbage instead of the client preface
    bad = _tls_h2_socket(port)
    bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 64)
    goaway = _read_goaway(bad)
    bad.close()
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR

    # 2. a valid preface, then a DATA frame on stream 0 (a connection error)
    bad = _tls_h2_socket(port)
    bad.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
        + b"\x00\x00\x04\x00\x00\x00\x00\x00\x00junk"  # DATA on stream 0
    )
    goaway = _read_goaway(bad)
    bad.close()
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR

    # 3. a frame header announcing more than the maximum frame size
    bad = _tls_h2_socket(port)
    bad.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")
    goaway = _read_goaway(bad)
    bad.close()
    assert goaway is not None and goaway.error_code == ErrorCodes.FRAME_SIZE_ERROR

    warnings = [r for r in caplog.records if "http/2 connection error" in r.getMessage()]
    assert len(warnings) == 3
    assert kube_env.upstream_requests() == 0

    ok = kubectl(kube_env.kubeconfig(kube_env.mint.mint("alice")), "get", "pods", "-n", "dev")
    assert ok.returncode == 0 and "web-0" in ok.stdout, ok.stderr


# -- the front on its own: flow control against a plain aiohttp app --------------------

ANSWER_BYTES = 4 * 1024 * 1024
CHUNK = 16 * 1024


class BigAnswerApp:
    """An aiohttp app behind AlpnSite whose one handler streams ANSWER_BYTES and counts
    what its writes got past (aiohttp blocks a write while the transport is paused)."""

    def __init__(self, tmp_path: Path) -> None:
        self.written = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        ca = TestCA.create("h2-test-ca")
        _, crt, key = ca.write(tmp_path / "pki", "h2-test")
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(crt, key)
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while self.written < ANSWER_BYTES:
            await resp.write(b"x" * CHUNK)
            self.written += CHUNK
        await resp.write_eof()
        return resp

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/big", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = AlpnSite(
            self.runner, "127.0.0.1", 0, ssl_context=self.tls, max_header_list_size=65536
        )
        await site.start()
        self.port = site.port

    def __enter__(self) -> BigAnswerApp:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _settled(read: Callable[[], int], timeout: float = 10) -> int:
    """`read()` once it gives the same value twice 0.3 s apart."""
    last = read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError(f"still changing after {timeout} s: {last}")


def test_an_http2_answer_waits_for_the_clients_flow_control_window(tmp_path: Path) -> None:
    with BigAnswerApp(tmp_path) as app:
        client = H2Client(app.port, auto_ack=False)
        try:
            sid = client.get("/big")
            # the client never opens its window: it gets 64 KiB, and the handler's writes
            # stop once the front holds its high-water mark on top of that
            client.pump(lambda: len(client.answers[sid].body) >= 65535, timeout=10)
            held = _settled(lambda: app.written)
            client.pump(lambda: False, timeout=0.2)
            answer = client.answers[sid]
            assert answer.status == 200 and len(answer.body) == 65535 and not answer.ended
            # what the client got + the front's high-water mark + aiohttp's own 64 KiB
            # between drains (+ the chunk in flight): nowhere near the 4 MiB answer
            assert held <= 65535 + STREAM_HIGH_WATER + 64 * 1024 + CHUNK
            # opening the window lets the rest through, all of it
            client.auto_ack = True
            client.conn.acknowledge_received_data(len(answer.body), sid)
            client._flush()
            client.pump(client.done(sid), timeout=30)
            assert answer.ended and len(answer.body) == ANSWER_BYTES
        finally:
            client.close()


# -- the frame-length guard on its own ---------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_frame_guard_passes_frames_within_the_limit_split_anywhere() -> None:
    stream = (
        PREFACE
        + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, empty
        + b"\x00\x40\x00\x00\x00\x00\x00\x00\x01"  # DATA of exactly 16384 bytes
        + b"x" * 16384
        + b"\x00\x00\x02\x08\x00\x00\x00\x00\x00ab"
    )
    guard = FrameGuard(16384, 65536)
    for i in range(len(stream)):  # one byte at a time
        guard.feed(stream[i : i + 1])
    FrameGuard(16384, 65536).feed(stream)  # and all at once


def test_frame_guard_refuses_an_overlong_frame_by_its_header_alone() -> None:
    guard = FrameGuard(16384, 65536)
    guard.feed(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x40")
    with pytest.raises(FrameTooLargeError, match="16385 bytes"):
        guard.feed(b"\x01\x00\x00\x00\x00\x00\x01")  # no payload sent yet


def test_frame_guard_refuses_a_wrong_preface() -> None:
    guard = FrameGuard(16384, 65536)
    guard.feed(PREFACE[:10])
    with pytest.raises(ProtocolError, match="preface"):
        guard.feed(b"GET / HTTP/1.1\r\n")


def test_frame_guard_refuses_a_header_block_over_the_limit_before_its_payload() -> None:
    guard = FrameGuard(16384, 65536)
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    guard.feed(PREFACE + settings)
    # HEADERS of 16000 without END_HEADERS, then CONTINUATIONs: the block adds up
    guard.feed(b"\x00\x3e\x80\x01\x00\x00\x00\x00\x01" + b"h" * 16000)
    continuation = b"\x00\x3e\x80\x09\x00\x00\x00\x00\x01"
    for _ in range(3):
        guard.feed(continuation + b"c" * 16000)
    with pytest.raises(DenialOfServiceError, match="65536"):
        guard.feed(continuation)  # 80000 bytes announced: refused before they come


def test_frame_guard_counts_each_header_block_on_its_own() -> None:
    guard = FrameGuard(16384, 65536)
    guard.feed(PREFACE)
    for _ in range(10):  # ten complete 16000-byte blocks: 160000 bytes in all
        guard.feed(b"\x00\x3e\x80\x01\x04\x00\x00\x00\x01" + b"h" * 16000)
