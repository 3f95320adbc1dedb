"""Fixtures for the kube gateway: the test-double API server, the gateway on its own
event loop, kubeconfigs for real kubectl, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from auditcast.access.ca import load_ca
from auditcast.access.locks import LockView
from auditcast.access.tokens import issue_token
from auditcast.aio import new_event_loop
from auditcast.collectors.kube.gateway import KubeGateway
from auditcast.collectors.kube.upstreams import UpstreamCluster
from auditcast.collectors.kube.wiring import lock_subject, token_verifier
from auditcast.events import Event
from auditcast.settings import Settings
from tests.kubeapi import GATEWAY_TOKEN, FakeApiServer, ThreadedApiServer, demo_spec
from tests.kubeapi.pki import TestCA


@dataclass
class TokenMint:
    """Kube tokens issued and verified by the real access.ca / access.tokens, with the
    CA in its own AUDITCAST_HOME."""

    home: Path

    def __post_init__(self) -> None:
        self.settings = Settings(home=self.home)
        self.ca = load_ca(self.settings)
        self.verify = token_verifier(self.settings)

    def mint(
        self,
        user: str = "alice",
        cluster: str = "dev-cluster",
        *,
        ttl: float = 300,
        kube_groups: tuple[str, ...] = ("devs",),
        roles: tuple[str, ...] = ("dev",),
        mfa: bool = False,
        ca: Any = None,
    ) -> str:
        token, _ = issue_token(
            ca or self.ca,
            user=user,
            audience=cluster,
            ttl=timedelta(seconds=ttl),
            kind="kube",
            roles=list(roles),
            groups=["engineering"],
            kube_groups=list(kube_groups),
            mfa=mfa,
        )
        return str(token)


class CollectingSink:
    """Where the in-process gateway's events go in these tests (the spool's interface)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def append_event(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, t: str) -> list[Event]:
        return [e for e in self.events if e.type == t]

    def wait_for(
        self, t: str, match: Callable[[Event], bool] = lambda e: True, *, count: int = 1
    ) -> list[Event]:
        """The `t` events that `match`, once at least `count` are in (or whatever is in
        after 10 s). The gateway emits a request's event on its own thread after the
        client has its response, and emits a stream's end once it sees the close, so
        kubectl can exit before the event is here."""

        def found() -> list[Event]:
            return [e for e in self.of_type(t) if match(e)]

        wait_until(lambda: len(found()) >= count, timeout=10)
        return found()


class ThreadedGateway:
    """The gateway on its own event loop, so tests can drive real kubectl synchronously.
    The loop is the kind `auditcast kube-gateway` runs on (uvloop by default)."""

    def __init__(self, gateway: KubeGateway, tls: ssl.SSLContext) -> None:
        self.gateway = gateway
        self.tls = tls
        self.loop = new_event_loop(Settings.model_fields["event_loop"].default)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="kube-gw")

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        self.call(self.gateway.start("127.0.0.1", 0, self.tls))
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.gateway.port}"


@dataclass
class KubeEnv:
    upstream: FakeApiServer
    gateway: ThreadedGateway
    sink: CollectingSink
    mint: TokenMint
    ca_path: Path
    home: Path
    settings: Settings | None = None
    locks: LockView | None = None

    def kubeconfig(self, token: str, cluster: str = "dev-cluster") -> dict[str, str]:
        """Environment for kubectl with a kubeconfig pointing at the gateway."""
        path = self.home / f"kubeconfig-{uuid.uuid4().hex[:8]}"
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {self.gateway.url}/cluster/{cluster}
    certificate-authority: {self.ca_path}
users:
- name: me
  user:
    token: {token}
contexts:
- name: {cluster}
  context: {{cluster: {cluster}, user: me}}
current-context: {cluster}
"""
        )
        return {**os.environ, "KUBECONFIG": str(path), "HOME": str(self.home)}

    def upstream_requests(self) -> int:
        return len(self.upstream.seen)


@contextlib.contextmanager
def running_kube_env(
    tmp_path: Path, settings: Settings | None = None, audit: tuple[str, Path] | None = None
) -> Iterator[KubeEnv]:
    """Upstream double + gateway; with `settings`, a real LockView on the broker too;
    with `audit` (webhook URL, its CA), the double posts audit EventLists there."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    overrides: dict[str, Any] = {}
    if audit:
        overrides = {"audit_webhook_url": audit[0], "audit_webhook_ca": audit[1]}
    with ThreadedApiServer(demo_spec(tmp_path / "upstream", **overrides)) as upstream:
        ca = TestCA.create("auditcast-test-host-ca")
        ca_path, crt, key = ca.write(tmp_path / "gw-pki", "kube-gateway")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(crt, key)
        clusters = {
            name: UpstreamCluster(
                name, upstream.url, ca=upstream.ca_path, token=GATEWAY_TOKEN, labels={"env": env}
            )
            for name, env in (("dev-cluster", "dev"), ("prod-cluster", "prod"))
        }
        mint = TokenMint(tmp_path / "access-home")
        sink = CollectingSink()
        gw = KubeGateway(clusters, mint.verify, sink)
        with ThreadedGateway(gw, tls) as threaded:
            view = None
            if settings is not None:
                view = LockView(settings)
                threaded.call(view.start())
                gw.locks = view
                gw.subject_of = lock_subject
                gw._remove_listener = view.add_listener(gw._on_lock)
            try:
                yield KubeEnv(upstream, threaded, sink, mint, ca_path, home, settings, view)
            finally:
                if view is not None:
                    threaded.call(view.stop())


@pytest.fixture
def kube_env(tmp_path: Path) -> Iterator[KubeEnv]:
    with running_kube_env(tmp_path) as env:
        yield env


@pytest.fixture
def kube_env_with_locks(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> Iterator[KubeEnv]:
    with running_kube_env(tmp_path, make_settings()) as env:
        yield env


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def expired_claims_token(mint: TokenMint) -> str:
    return mint.mint("alice", ttl=-3600)


def foreign_token(tmp: Path) -> str:
    """Well-formed, but signed by another auditcast's key: a forgery to this gateway."""
    other = load_ca(Settings(home=tmp))
    return TokenMint(tmp).mint("alice", ca=other)
