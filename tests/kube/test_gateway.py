"""The kube gateway with real kubectl 1.32 in front and the API-server double behind."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from auditcast.collectors.kube.gateway import KubeGateway
from auditcast.collectors.kube.upstreams import UpstreamCluster
from tests.kube.conftest import (
    CollectingSink,
    KubeEnv,
    TokenMint,
    expired_claims_token,
    foreign_token,
    wait_until,
)
from tests.kubeapi.pki import TestCA


def kubectl(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_devs_user_lists_pods_in_dev_and_gets_the_upstreams_403_in_default(
    kube_env: KubeEnv,
) -> None:
    env = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    ok = kubectl(env, "get", "pods", "-n", "dev")
    assert ok.returncode == 0, ok.stderr
    assert "web-0" in ok.stdout and "web-1" in ok.stdout and "db-0" not in ok.stdout

    denied = kubectl(env, "get", "pods")
    assert denied.returncode == 1
    assert (
        'pods is forbidden: User "alice" cannot list resource "pods" in API group "" '
        'in the namespace "default"' in denied.stderr
    )
    # the upstream saw the gateway impersonating alice with her kube groups
    lists = [s for s in kube_env.upstream.seen if s.path.endswith("/pods")]
    assert {(s.user, s.impersonated, tuple(s.groups)) for s in lists} == {
        ("auditcast-gateway", "alice", ("devs",))
    }
    pods = kube_env.sink.wait_for(
        "kube.request", lambda e: getattr(e, "resource", "") == "pods", count=2
    )
    events = {(e.namespace, e.response_code): e for e in pods}  # type: ignore[attr-defined]
    allowed, forbidden = events[("dev", 200)], events[("default", 403)]
    assert allowed.verb == "list" and allowed.user == "alice"  # type: ignore[attr-defined]
    assert allowed.cluster == "dev-cluster" and allowed.labels == {"env": "dev"}
    assert allowed.credential_id and allowed.source and allowed.source.user_agent
    assert allowed.source.user_agent.startswith("kubectl/")
    assert forbidden.request_path == "/api/v1/namespaces/default/pods"  # type: ignore[attr-defined]
    # the cluster's audit id is our event id: every upstream call is linkable
    audit_ids = {s.headers.get("Audit-ID") for s in lists}
    assert {allowed.id, forbidden.id} <= audit_ids


def _token_cases(env: KubeEnv) -> dict[str, tuple[str, str]]:
    return {
        "forged": (foreign_token(env.home / "other-auditcast"), "not signed by this auditcast"),
        "expired": (expired_claims_token(env.mint), "token expired"),
        "other cluster": (
            env.mint.mint("alice", cluster="prod-cluster"),
            "not issued for dev-cluster",
        ),
        "garbage": ("not-a-jwt", "malformed token: not a JWT"),
    }


@pytest.mark.parametrize("case", ["forged", "expired", "other cluster", "garbage"])
def test_bad_tokens_are_refused_with_a_clear_error_and_never_reach_the_cluster(
    kube_env: KubeEnv, case: str
) -> None:
    token, message = _token_cases(kube_env)[case]
    result = kubectl(kube_env.kubeconfig(token), "get", "pods", "-n", "dev")
    assert result.returncode == 1
    # kubectl prints a fixed line for any 401 (and re-runs the exec plugin for a fresh
    # token); the reason is in the Status body, which the plugin-less client sees:
    assert "You must be logged in to the server" in result.stderr
    with _client() as http:  # the Status body names the reason and what to do
        r = http.get(
            f"{kube_env.gateway.url}/cluster/dev-cluster/api/v1/namespaces/dev/pods",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 401 and r.json()["kind"] == "Status"
    assert message in r.json()["message"] and "auditcast login" in r.json()["message"]
    assert kube_env.upstream_requests() == 0
    failures = kube_env.sink.wait_for("auth.failed")
    assert failures and all(e.cluster == "dev-cluster" for e in failures)


def _client() -> httpx.Client:
    return httpx.Client(verify=False, timeout=10)


def test_oversized_headers_get_431_and_no_upstream_request(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")
    with _client() as http:
        r = http.get(
            f"{kube_env.gateway.url}/cluster/dev-cluster/api/v1/namespaces/dev/pods",
            headers={"Authorization": f"Bearer {token}", "X-Filler": "x" * 40_000},
        )
    assert r.status_code == 431
    body = r.json()
    assert body["kind"] == "Status" and "exceed the gateway's 32768-byte limit" in body["message"]
    assert kube_env.upstream_requests() == 0


def test_client_impersonation_headers_are_replaced_by_the_tokens_identity(
    kube_env: KubeEnv,
) -> None:
    token = kube_env.mint.mint("alice")
    with _client() as http:
        r = http.get(
            f"{kube_env.gateway.url}/cluster/dev-cluster/api/v1/namespaces/dev/pods",
            headers={
                "Authorization": f"Bearer {token}",
                "Impersonate-User": "admin",
                "Impersonate-Group": "system:masters",
            },
        )
    assert r.status_code == 200
    [seen] = kube_env.upstream.seen
    assert (seen.impersonated, seen.groups) == ("alice", ["devs"])
    assert seen.headers["Authorization"] != f"Bearer {token}"


def test_unknown_cluster_and_missing_prefix_are_404_status(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")
    with _client() as http:
        r1 = http.get(
            f"{kube_env.gateway.url}/cluster/nope/api", headers={"Authorization": f"Bearer {token}"}
        )
        r2 = http.get(f"{kube_env.gateway.url}/api/v1/pods")
    # discovery paths get the reason as text/plain: kubectl prints that, not a Status
    assert r1.status_code == 404 and "unknown cluster 'nope'" in r1.text
    assert r2.status_code == 404 and "/cluster/NAME" in r2.json()["message"]
    assert kube_env.upstream_requests() == 0


def _ws_url(env: KubeEnv, query: str = "command=sh&stdin=true&stdout=true&tty=true") -> str:
    base = env.gateway.url.replace("https", "wss")
    return f"{base}/cluster/dev-cluster/api/v1/namespaces/dev/pods/web-0/exec?{query}"


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_unknown_websocket_subprotocol_is_refused_before_the_cluster(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")

    async def attempt() -> tuple[int, str]:
        async with aiohttp.ClientSession() as s:
            try:
                await s.ws_connect(
                    _ws_url(kube_env),
                    protocols=["v9.bogus.k8s.io"],
                    headers={"Authorization": f"Bearer {token}"},
                    ssl=_insecure(),
                )
            except aiohttp.WSServerHandshakeError as e:
                return e.status, str(e.message)
        return 101, ""

    status, _ = asyncio.run(attempt())
    assert status == 400
    with _client() as http:  # the same request as plain HTTP shows the Status body
        r = http.get(
            _ws_url(kube_env).replace("wss", "https"),
            headers={
                "Authorization": f"Bearer {token}",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Protocol": "v9.bogus.k8s.io",
            },
        )
    assert r.status_code == 400
    assert "unsupported WebSocket subprotocol(s) v9.bogus.k8s.io" in r.json()["message"]
    assert kube_env.upstream_requests() == 0


def test_malformed_client_frame_ends_the_exec_stream_with_an_error(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")

    async def session() -> tuple[list[bytes], int | None]:
        got: list[bytes] = []
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(
                _ws_url(kube_env),
                protocols=["v5.channel.k8s.io"],
                headers={"Authorization": f"Bearer {token}"},
                ssl=_insecure(),
            )
            await ws.send_bytes(b"\x00echo ok\n")
            await ws.send_bytes(b"\x09garbage")  # channel 9 does not exist
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    got.append(msg.data)
            return got, ws.close_code

    frames, close_code = asyncio.run(asyncio.wait_for(session(), 15))
    errors = [orjson.loads(f[1:]) for f in frames if f[:1] == b"\x03"]
    assert errors, frames[-3:]
    assert "malformed frame from client: unknown channel 9" in errors[-1]["message"]
    assert close_code == 1007, (close_code, frames[-3:])
    ends = kube_env.sink.wait_for("kube.request", lambda e: getattr(e, "phase", "") == "end")
    assert ends, kube_env.sink.events
    end = ends[0]
    assert "unknown channel 9" in end.error  # type: ignore[attr-defined]


def test_non_tty_exec_reports_exit_code_and_is_one_event_at_start_and_end(
    kube_env: KubeEnv,
) -> None:
    env = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    r = kubectl(
        env, "exec", "-n", "dev", "web-0", "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    assert r.returncode == 7 and r.stdout == "out\n" and "err" in r.stderr
    execs = kube_env.sink.wait_for(
        "kube.request", lambda e: getattr(e, "subresource", "") == "exec", count=2
    )
    start, end = sorted(execs, key=lambda e: e.time)
    assert (start.phase, end.phase) == ("start", "end")  # type: ignore[attr-defined]
    assert end.request_id == start.id and end.exit_code == 7  # type: ignore[attr-defined]
    assert start.name == "web-0" and start.namespace == "dev"  # type: ignore[attr-defined]


def test_watch_streams_without_buffering_and_records_start_and_end(kube_env: KubeEnv) -> None:
    env = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    proc = subprocess.Popen(
        ["kubectl", "get", "pods", "-n", "dev", "-w", "--output-watch-events"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # arrives while the watch is still open
        assert "web-0" in first or "NAME" in first
        assert wait_until(
            lambda: any(getattr(e, "phase", "") == "start" for e in kube_env.sink.events)
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert wait_until(lambda: any(getattr(e, "phase", "") == "end" for e in kube_env.sink.events))
    watch = [e for e in kube_env.sink.of_type("kube.request") if getattr(e, "verb", "") == "watch"]
    assert sorted(e.phase for e in watch) == ["end", "start"]  # type: ignore[attr-defined]


def test_role_labels_and_session_mfa_are_enforced_before_the_cluster(kube_env: KubeEnv) -> None:
    from tests.kube.test_policy import ROLES

    kube_env.gateway.gateway.roles = ROLES
    url = f"{kube_env.gateway.url}/cluster/prod-cluster/api/v1/namespaces/dev/pods"
    dev_on_prod = kube_env.mint.mint("alice", cluster="prod-cluster", roles=("dev",))
    admin_no_mfa = kube_env.mint.mint("alice", cluster="prod-cluster", roles=("prod-admin",))
    admin_mfa = kube_env.mint.mint("alice", cluster="prod-cluster", roles=("prod-admin",), mfa=True)
    with _client() as http:
        denied = http.get(url, headers={"Authorization": f"Bearer {dev_on_prod}"})
        no_mfa = http.get(url, headers={"Authorization": f"Bearer {admin_no_mfa}"})
        assert kube_env.upstream_requests() == 0
        ok = http.get(url, headers={"Authorization": f"Bearer {admin_mfa}"})
    assert denied.status_code == 403
    assert "may not access cluster prod-cluster (env=prod)" in denied.json()["message"]
    assert no_mfa.status_code == 401 and "requires per-session MFA" in no_mfa.json()["message"]
    assert ok.status_code == 200 and kube_env.upstream_requests() == 1


def test_forbidden_exec_shows_the_clusters_403_after_kubectls_spdy_fallback(
    kube_env: KubeEnv,
) -> None:
    env = kube_env.kubeconfig(kube_env.mint.mint("alice", kube_groups=("viewers",)))
    r = kubectl(env, "exec", "-n", "dev", "web-0", "--", "true")
    assert r.returncode == 1
    assert (
        'pods "web-0" is forbidden: User "alice" cannot create resource "pods/exec" '
        'in API group "" in the namespace "dev"' in r.stderr
    )
    # the WebSocket attempt, then kubectl's SPDY fallback: both reached the cluster
    # as alice and both were recorded
    execs = [s for s in kube_env.upstream.seen if s.path.endswith("/exec")]
    assert [s.method for s in execs] == ["GET", "POST"]
    assert {s.impersonated for s in execs} == {"alice"}
    spdy = kube_env.sink.wait_for("kube.request", lambda e: bool(getattr(e, "protocol", "")))
    assert spdy and spdy[0].response_code == 403  # type: ignore[attr-defined]
    assert spdy[0].protocol.startswith("SPDY/")  # type: ignore[attr-defined]


def test_oversized_request_body_gets_413_and_no_upstream_request(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")
    with _client() as http:
        r = http.post(
            f"{kube_env.gateway.url}/cluster/dev-cluster/api/v1/namespaces/dev/pods",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            content=b"{" + b" " * (4 * 1024 * 1024) + b"}",
        )
    assert r.status_code == 413
    assert "request body exceeds the 3145728-byte limit" in r.json()["message"]
    assert kube_env.upstream_requests() == 0


def test_logs_follow_streams_lines_as_they_come(kube_env: KubeEnv) -> None:
    env = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    proc = subprocess.Popen(
        ["kubectl", "logs", "-f", "-n", "dev", "web-0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]  # lines 3+ come 0.2 s apart
        assert lines[4] == "web-0 log line 4\n"
    finally:
        proc.terminate()
        proc.wait(10)
    assert wait_until(
        lambda: (
            sorted(
                getattr(e, "phase", "")
                for e in kube_env.sink.of_type("kube.request")
                if getattr(e, "subresource", "") == "log"
            )
            == ["end", "start"]
        )
    )


def test_attach_is_proxied_and_recorded_as_a_stream(kube_env: KubeEnv) -> None:
    import pexpect

    env = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    sh = pexpect.spawn("kubectl", ["attach", "-it", "-n", "dev", "web-0"], env=env, timeout=20)
    try:
        sh.sendline("")
        sh.expect_exact("web-0$ ")
        sh.sendline("echo attached-$((40+2))")
        sh.expect_exact("attached-42")
        sh.sendline("exit")
        sh.expect(pexpect.EOF)
    finally:
        sh.close(force=True)
    assert wait_until(
        lambda: (
            sorted(
                getattr(e, "phase", "")
                for e in kube_env.sink.of_type("kube.request")
                if getattr(e, "subresource", "") == "attach"
            )
            == ["end", "start"]
        )
    )


@dataclass
class _Standalone:
    """A gateway of its own in front of a small TLS server (`_standalone`)."""

    gw: KubeGateway
    mint: TokenMint
    sink: CollectingSink
    client_tls: ssl.SSLContext
    stopped: bool = False

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.gw.port}/cluster/dev-cluster{path}"

    async def stop(self) -> None:
        self.stopped = True
        await self.gw.stop()


@contextlib.asynccontextmanager
async def _standalone(
    tmp_path: Path, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[_Standalone]:
    """`handler` answers every request as the cluster `dev-cluster`, over TLS and by
    host name, behind a gateway of its own; the gateway is stopped afterwards unless
    the test did."""
    up_ca_path, crt, key = TestCA.create("standalone-up-ca").write(tmp_path / "up-pki", "up")
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    up_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    up_tls.load_cert_chain(crt, key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=up_tls).start()
    gw_ca_path, gw_crt, gw_key = TestCA.create("standalone-gw-ca").write(
        tmp_path / "gw-pki", "kube-gateway"
    )
    gw_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    gw_tls.load_cert_chain(gw_crt, gw_key)
    sink = CollectingSink()
    cluster = UpstreamCluster(
        "dev-cluster", f"https://localhost:{runner.addresses[0][1]}", ca=up_ca_path
    )
    mint = TokenMint(tmp_path / "access-home")
    gw = KubeGateway({"dev-cluster": cluster}, mint.verify, sink)
    env = _Standalone(gw, mint, sink, ssl.create_default_context(cafile=gw_ca_path))
    await gw.start("127.0.0.1", 0, gw_tls)
    try:
        yield env
    finally:
        if not env.stopped:
            await gw.stop()
        await runner.cleanup()


async def test_a_cookie_set_for_one_user_never_rides_on_another_users_request(
    tmp_path: Path,
) -> None:
    """An app behind the cluster's service proxy sets a session cookie in its answer to
    alice; bob's next request through the gateway must not carry it (one upstream
    connection pool serves every user). alice's kubectl still gets the Set-Cookie.
    The upstream here is a small TLS app server (a test double for the app behind
    `services/NAME/proxy`), reached by host name so that a cookie jar would keep it."""
    seen_cookies: list[str | None] = []

    async def app_handler(request: web.Request) -> web.Response:
        seen_cookies.append(request.headers.get("Cookie"))
        resp = web.json_response({"user": request.headers.get("Impersonate-User")})
        resp.set_cookie("app-session", f"secret-of-{request.headers.get('Impersonate-User')}")
        return resp

    async with _standalone(tmp_path, app_handler) as env:
        url = env.url("/api/v1/namespaces/dev/services/web:80/proxy/")
        for user in ("alice", "bob"):
            # a fresh client per user, like two people's kubectl: no jar of their own
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=env.client_tls),
                cookie_jar=aiohttp.DummyCookieJar(),
            ) as s:
                headers = {"Authorization": f"Bearer {env.mint.mint(user)}"}
                async with s.get(url, headers=headers) as r:
                    assert r.status == 200
                    assert (await r.json())["user"] == user
                    assert f"app-session=secret-of-{user}" in r.headers["Set-Cookie"]
    assert seen_cookies == [None, None]


async def test_a_gateway_that_stops_finishes_a_live_watch_and_records_its_end(
    tmp_path: Path,
) -> None:
    """Stopping the gateway ends held-open streams from our side: a watch's answer is
    finished (the client reads the end of the stream, not a broken connection, as for a
    lock) and its end event is emitted. The upstream is a small TLS server that streams
    one watch event and then holds the watch open (a test double for the API server)."""

    async def watch(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"type":"ADDED","object":{"kind":"Pod"}}\n')
        await asyncio.sleep(3600)  # a watch stays open until someone ends it
        return resp

    async with _standalone(tmp_path, watch) as env:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=env.client_tls)) as s:
            headers = {"Authorization": f"Bearer {env.mint.mint('alice')}"}
            url = env.url("/api/v1/namespaces/dev/pods?watch=1")
            async with s.get(url, headers=headers) as r:
                assert r.status == 200
                assert b"ADDED" in await r.content.readline()
                await env.stop()
                assert await asyncio.wait_for(r.content.read(), 10) == b""  # a clean end
    watch_events = [
        e for e in env.sink.of_type("kube.request") if getattr(e, "verb", "") == "watch"
    ]
    assert sorted(e.phase for e in watch_events) == ["end", "start"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("prefix", ["/cluster/dev-cluster", "/cluster/dev%2Dcluster"])
def test_the_query_and_path_reach_the_upstream_as_sent(kube_env: KubeEnv, prefix: str) -> None:
    """Label selectors carry `=`, `!` and `,` (percent-encoded by kubectl); the upstream
    must see the same query, also when a client percent-encodes the cluster prefix."""
    token = kube_env.mint.mint("alice")
    query = "labelSelector=app%3Dweb%2Ctier%21%3Ddb&limit=500"
    with _client() as http:
        r = http.get(
            f"{kube_env.gateway.url}{prefix}/api/v1/namespaces/dev/pods?{query}",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200, r.text
    (seen,) = [s for s in kube_env.upstream.seen if s.path == "/api/v1/namespaces/dev/pods"]
    assert parse_qs(seen.query) == {"labelSelector": ["app=web,tier!=db"], "limit": ["500"]}


def _raw_exchange(env: KubeEnv, head: str, body: bytes) -> tuple[bytes, bytes]:
    """Send a request head over TLS, read what the gateway says before the body is
    sent (within 2 s), then send the body and read the rest until the answer's end."""
    import socket

    ctx = ssl.create_default_context(cafile=str(env.ca_path))
    with (
        socket.create_connection(("127.0.0.1", env.gateway.gateway.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(head.encode())
        sock.settimeout(2)
        try:
            before = sock.recv(65536)
        except TimeoutError:
            before = b""
        sock.settimeout(10)
        rest = b""
        if before.startswith(b"HTTP/1.1 100 "):
            sock.sendall(body)
            while b"\r\n\r\n" not in rest:
                rest += sock.recv(65536)
        return before, rest


def test_a_body_announced_with_expect_100_continue_is_invited_then_forwarded(
    kube_env: KubeEnv,
) -> None:
    token = kube_env.mint.mint("alice")
    body = b'{"kind": "Pod", "metadata": {"name": "new"}}'
    head = (
        "POST /cluster/dev-cluster/api/v1/namespaces/dev/pods HTTP/1.1\r\n"
        f"Host: localhost\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    before, answer = _raw_exchange(kube_env, head, body)
    assert before == b"HTTP/1.1 100 Continue\r\n\r\n"  # nothing else before the body
    # the cluster answered the POST (its double does not create pods), and it got it once
    status = int(answer.split(b" ", 2)[1])
    posts = [s for s in kube_env.upstream.seen if s.method == "POST"]
    assert len(posts) == 1 and posts[0].status == status and status != 417


def test_an_unknown_expectation_gets_417_and_no_upstream_request(kube_env: KubeEnv) -> None:
    token = kube_env.mint.mint("alice")
    head = (
        "POST /cluster/dev-cluster/api/v1/namespaces/dev/pods HTTP/1.1\r\n"
        f"Host: localhost\r\nAuthorization: Bearer {token}\r\n"
        "Content-Length: 2\r\nExpect: telepathy\r\n\r\n"
    )
    before, _ = _raw_exchange(kube_env, head, b"{}")
    assert before.startswith(b"HTTP/1.1 417 ")
    assert b"unknown Expect: telepathy" in before
    assert kube_env.upstream_requests() == 0


def test_an_unauthenticated_body_is_refused_before_it_is_invited(kube_env: KubeEnv) -> None:
    head = (
        "POST /cluster/dev-cluster/api/v1/namespaces/dev/pods HTTP/1.1\r\n"
        "Host: localhost\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    before, _ = _raw_exchange(kube_env, head, b"{}")
    assert before.startswith(b"HTTP/1.1 401 ")
    assert kube_env.upstream_requests() == 0
