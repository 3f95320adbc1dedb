"""`kubectl port-forward` through the gateway: real kubectl 1.32, the gateway relaying the
SPDY/3.1 port-forward protocol opaquely (WebSocket-tunnelled by default, or a direct
`Upgrade: SPDY/3.1`), and the test-double API server joining each forwarded connection
to a real TCP server on loopback standing for the pod's port. The gateway does not
record port-forward contents (it is not a terminal); it emits start/end events."""

from __future__ import annotations

import http.server
import os
import re
import socket
import socketserver
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

import pytest

from auditcast.access.lock_authority import LockAuthority
from auditcast.access.lock_model import LockTargets, new_lock
from auditcast.events import Event
from tests.kube.conftest import KubeEnv, wait_until
from tests.kube.test_gateway import kubectl

ECHO_PORT = 7000
HTTP_PORT = 8080


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the pod, you asked for {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Threaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def pod_ports(kube_env: KubeEnv) -> Iterator[KubeEnv]:
    """Pod dev/web-0 listens on ECHO_PORT (echo) and HTTP_PORT (HTTP), really on loopback."""
    yield from _with_pod_servers(kube_env)


@pytest.fixture
def pod_ports_with_locks(kube_env_with_locks: KubeEnv) -> Iterator[KubeEnv]:
    yield from _with_pod_servers(kube_env_with_locks)


def _with_pod_servers(env: KubeEnv) -> Iterator[KubeEnv]:
    echo = _Threaded(("127.0.0.1", 0), _Echo)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    for s in (echo, web):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    pod = next(p for p in env.upstream.spec.pods if p.name == "web-0")
    pod.ports.update({ECHO_PORT: echo.server_address[1], HTTP_PORT: web.server_address[1]})
    try:
        yield env
    finally:
        for s in (echo, web):
            s.shutdown()
            s.server_close()


class PortForward:
    """A running `kubectl port-forward` and the local port it listens on."""

    def __init__(self, env: dict[str, str], *ports: int) -> None:
        spec = [f":{p}" for p in ports]
        self.proc = subprocess.Popen(
            ["kubectl", "port-forward", "-n", "dev", "pod/web-0", *spec, "--address", "127.0.0.1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.local: dict[int, int] = {}
        assert self.proc.stdout is not None
        for _ in ports:
            line = self.proc.stdout.readline()
            m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
            assert m, f"kubectl port-forward said {line!r}: {self.stderr()}"
            self.local[int(m.group(2))] = int(m.group(1))

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err


def _echo_roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        got = bytearray()

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send)
        t.start()
        while chunk := s.recv(65536):
            got += chunk
        t.join(10)
        return bytes(got)


def _ended(conn: socket.socket) -> bool:
    try:
        return conn.recv(100) == b""
    except ConnectionResetError:
        return True


def _events(env: KubeEnv, phase: str) -> list[Event]:
    return env.sink.wait_for(
        "kube.request",
        lambda e: (
            getattr(e, "subresource", "") == "portforward" and getattr(e, "phase", "") == phase
        ),
    )


def test_port_forward_carries_a_megabyte_and_an_http_get_exactly(pod_ports: KubeEnv) -> None:
    env = pod_ports
    pf = PortForward(env.kubeconfig(env.mint.mint("alice")), ECHO_PORT, HTTP_PORT)
    try:
        payload = os.urandom(1 << 20)
        assert _echo_roundtrip(pf.local[ECHO_PORT], payload) == payload
        url = f"http://127.0.0.1:{pf.local[HTTP_PORT]}/status?x=1"
        with urllib.request.urlopen(url, timeout=20) as r:
            assert r.read() == b"hello from the pod, you asked for /status?x=1\n"
        # a second connection over the same port-forward works too
        assert _echo_roundtrip(pf.local[ECHO_PORT], b"again") == b"again"
        (start,) = _events(env, "start")
        assert start.user == "alice" and start.name == "web-0"  # type: ignore[attr-defined]
    finally:
        pf.close()
    (end,) = _events(env, "end")
    assert end.namespace == "dev"  # type: ignore[attr-defined]
    assert end.request_id == start.id  # type: ignore[attr-defined]
    assert end.response_code == 101  # type: ignore[attr-defined]
    # the gateway counts the tunnel's bytes (SPDY framing included), it does not record them
    assert end.bytes_in > 1 << 20 and end.bytes_out > 1 << 20  # type: ignore[attr-defined]
    assert not env.sink.of_type("session.start")


def test_port_forward_over_direct_spdy_upgrade_works_too(pod_ports: KubeEnv) -> None:
    env = pod_ports
    kenv = {**env.kubeconfig(env.mint.mint("alice")), "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
    pf = PortForward(kenv, ECHO_PORT)
    try:
        payload = os.urandom(300_000)
        assert _echo_roundtrip(pf.local[ECHO_PORT], payload) == payload
    finally:
        pf.close()
    seen = [s for s in env.upstream.seen if s.path.endswith("/portforward")]
    assert seen and all(s.headers.get("Upgrade") == "SPDY/3.1" for s in seen)
    (end,) = _events(env, "end")
    assert end.name == "web-0"  # type: ignore[attr-defined]


def test_rbac_denied_user_gets_the_upstreams_403_for_port_forward(pod_ports: KubeEnv) -> None:
    env = pod_ports
    kenv = env.kubeconfig(env.mint.mint("carol", kube_groups=("viewers",)))
    r = subprocess.run(
        ["kubectl", "port-forward", "-n", "dev", "pod/web-0", f":{ECHO_PORT}"],
        env=kenv,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert (
        'error upgrading connection: pods "web-0" is forbidden: User "carol" cannot create '
        'resource "pods/portforward" in API group "" in the namespace "dev"'
    ) in r.stderr, r.stderr
    # kubectl tried the WebSocket tunnel, then fell back to SPDY: the cluster refused both
    tried = [(s.method, s.status) for s in env.upstream.seen if s.path.endswith("/portforward")]
    assert tried == [("GET", 403), ("POST", 403)]
    refused = env.sink.wait_for(
        "kube.request",
        lambda e: getattr(e, "subresource", "") == "portforward",
        count=2,
    )
    assert [getattr(e, "response_code", 0) for e in refused] == [403, 403]
    assert all(e.user == "carol" for e in refused)


@pytest.mark.parametrize("websockets", ["true", "false"], ids=["websocket", "spdy"])
def test_lock_on_the_user_ends_a_live_port_forward_and_refuses_the_next(
    pod_ports_with_locks: KubeEnv, websockets: str
) -> None:
    env = pod_ports_with_locks
    assert env.settings is not None
    authority = LockAuthority(env.settings)
    env.gateway.call(authority.start())
    kenv = {
        **env.kubeconfig(env.mint.mint("alice")),
        "KUBECTL_PORT_FORWARD_WEBSOCKETS": websockets,
    }
    pf = PortForward(kenv, ECHO_PORT)
    try:
        with socket.create_connection(("127.0.0.1", pf.local[ECHO_PORT]), timeout=20) as conn:
            conn.sendall(b"before the lock")
            assert conn.recv(100) == b"before the lock"
            assert wait_until(lambda: len(env.gateway.gateway.live) == 1)
            lock = new_lock(LockTargets(user="alice"), ttl=timedelta(minutes=5), message="INC-7")
            env.gateway.call(authority.create(lock))
            # the forwarded connection ends: kubectl loses the tunnel and exits
            assert _ended(conn)
            pf.proc.wait(20)
        (end,) = _events(env, "end")
        assert end.closed_by_lock == lock.name  # type: ignore[attr-defined]
        denied = kubectl(kenv, "port-forward", "-n", "dev", "pod/web-0", f":{ECHO_PORT}")
        assert denied.returncode != 0
        assert f"access locked by {lock.name}: INC-7" in denied.stderr
    finally:
        pf.close()
        env.gateway.call(authority.stop())


def test_forwarding_to_a_port_nothing_listens_on_reports_the_pods_error(
    pod_ports: KubeEnv,
) -> None:
    env = pod_ports
    pf = PortForward(env.kubeconfig(env.mint.mint("alice")), 9999)
    try:
        with socket.create_connection(("127.0.0.1", pf.local[9999]), timeout=20) as conn:
            conn.sendall(b"anyone there?")
            assert _ended(conn)
        pf.proc.wait(20)  # the error on the error stream ends kubectl's port-forward
    finally:
        err = pf.close()
    assert pf.proc.returncode == 1
    assert "an error occurred forwarding" in err
    assert "-> 9999: error forwarding port 9999 to pod: no container port 9999 in this pod" in err
