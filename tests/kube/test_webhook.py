"""The audit webhook: the API-server double posts real audit EventList batches over TLS;
a request made directly (bypassing the gateway) raises audit.unattributed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from auditcast.access.publish import Publisher
from auditcast.collectors.kube.auditlog import RecentIds
from auditcast.collectors.kube.webhook import AuditWebhook, follow_gateway_requests
from auditcast.events import Event
from auditcast.settings import Settings
from auditcast.topics import ALERTS
from tests.kube.conftest import CollectingSink, KubeEnv, running_kube_env, wait_until
from tests.kube.test_gateway import kubectl
from tests.kubeapi import ADMIN_TOKEN, GATEWAY_TOKEN, GATEWAY_USER
from tests.kubeapi.pki import TestCA


class AlertingSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.topics: list[tuple[str, bytes, bytes]] = []

    def append(self, topic_name: str, key: bytes, value: bytes) -> None:
        self.topics.append((topic_name, key, value))


class WebhookThread:
    def __init__(self, hook: AuditWebhook, tls: ssl.SSLContext, settings: Settings) -> None:
        self.hook, self.tls, self.settings = hook, tls, settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: object, timeout: float = 15) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self) -> WebhookThread:
        self.thread.start()
        self.call(self.hook.start("127.0.0.1", 0, self.tls))
        ready = asyncio.Event()

        async def follow() -> None:
            await follow_gateway_requests(self.settings, self.hook.known, ready)

        self.follower = asyncio.run_coroutine_threadsafe(follow(), self.loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.follower.cancel()
        with contextlib.suppress(concurrent.futures.CancelledError, Exception):
            self.follower.result(5)
        self.call(asyncio.sleep(0.1))  # let the consumer's cancellation finish
        self.call(self.hook.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def audited(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> Iterator[tuple[KubeEnv, WebhookThread, AlertingSink]]:
    settings = make_settings()
    ca = TestCA.create("webhook-ca")
    ca_path, crt, key = ca.write(tmp_path / "hook-pki", "audit-webhook")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    sink = AlertingSink()
    hook = AuditWebhook(
        sink,
        {GATEWAY_USER},
        known_ids=RecentIds(),
        cluster_labels={"dev-cluster": {"env": "dev"}},
        grace=5.0,  # how long a request as the gateway may wait for its kube.request
    )
    with WebhookThread(hook, tls, settings) as thread:
        url = f"https://127.0.0.1:{hook.port}/audit/dev-cluster"
        with running_kube_env(tmp_path, audit=(url, ca_path)) as env:
            yield env, thread, sink


def test_direct_request_bypassing_the_gateway_raises_audit_unattributed(
    audited: tuple[KubeEnv, WebhookThread, AlertingSink],
) -> None:
    env, _, sink = audited
    direct = env.home / "direct-kubeconfig"
    direct.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{env.upstream.url}", certificate-authority: "{env.upstream.ca_path}"}}}}]
users: [{{name: u, user: {{token: {ADMIN_TOKEN}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""  # noqa: E501
    )
    r = subprocess.run(
        ["kubectl", "get", "pods", "-n", "dev"],
        env={"KUBECONFIG": str(direct), "HOME": str(env.home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr

    def pods_alerts() -> list[Event]:
        return [
            e for e in sink.of_type("audit.unattributed") if getattr(e, "resource", "") == "pods"
        ]

    assert wait_until(lambda: bool(pods_alerts()), timeout=10), sink.events
    alert = pods_alerts()[0]
    assert alert.user == "cluster-admin-direct" and alert.cluster == "dev-cluster"
    assert alert.labels == {"env": "dev"}
    assert "not through the auditcast gateway" in alert.reason  # type: ignore[attr-defined]
    assert alert.source and alert.source.user_agent and "kubectl" in alert.source.user_agent
    on_alerts = [t for t in sink.topics if t[0] == ALERTS]
    assert any(Event.model_validate_json(v).id == alert.id for _, _, v in on_alerts)


def test_requests_through_the_gateway_are_matched_by_audit_id_not_flagged(
    audited: tuple[KubeEnv, WebhookThread, AlertingSink],
) -> None:
    env, thread, sink = audited
    assert env.settings is None
    r = kubectl(env.kubeconfig(env.mint.mint("alice")), "get", "pods", "-n", "dev")
    assert r.returncode == 0, r.stderr
    # the gateway writes a request's event just after its answer, so kubectl may exit
    # first; the pods list is kubectl's last request, and events are written in order
    env.sink.wait_for("kube.request", lambda e: getattr(e, "resource", "") == "pods")
    # what the spool does in production: the gateway's kube.request events reach events.raw
    publisher = Publisher(thread.settings)

    async def publish() -> None:
        for e in env.sink.of_type("kube.request"):
            await publisher.emit(e)
        await publisher.close()

    thread.call(publish())
    gateway_ids = {e.id for e in env.sink.of_type("kube.request")}
    assert wait_until(
        lambda: (
            sum(1 for e in sink.of_type("kube.audit") if e.request_id in gateway_ids)  # type: ignore[attr-defined]
            >= len(gateway_ids)
        ),
        timeout=15,
    )
    assert not sink.of_type("audit.unattributed")
    matched = [e for e in sink.of_type("kube.audit") if getattr(e, "verdict", "") == "gateway"]
    assert {e.impersonated_user for e in matched} == {"alice"}  # type: ignore[attr-defined]


def test_malformed_event_list_is_rejected_with_400(
    audited: tuple[KubeEnv, WebhookThread, AlertingSink],
) -> None:
    _, thread, sink = audited
    with httpx.Client(verify=False) as http:
        r = http.post(
            f"https://127.0.0.1:{thread.hook.port}/audit/dev-cluster",
            content=b'{"kind":"PodList"}',
        )
    assert r.status_code == 400 and "expected kind EventList" in r.json()["error"]
    assert thread.hook.counts["rejected"] == 1
    assert not sink.of_type("kube.audit")


def test_stolen_gateway_credentials_are_flagged_when_no_gateway_request_matches(
    audited: tuple[KubeEnv, WebhookThread, AlertingSink],
) -> None:
    env, _, sink = audited
    # someone with the gateway's own token calls the cluster directly, impersonating alice
    ctx = ssl.create_default_context(cafile=str(env.upstream.ca_path))
    with httpx.Client(verify=ctx, timeout=10) as http:
        r = http.get(
            f"{env.upstream.url}/api/v1/namespaces/dev/pods",
            headers={
                "Authorization": f"Bearer {GATEWAY_TOKEN}",
                "Impersonate-User": "alice",
                "Impersonate-Group": "devs",
            },
        )
    assert r.status_code == 200

    def flagged() -> list[Event]:
        return [e for e in sink.of_type("audit.unattributed") if getattr(e, "resource", "")]

    assert wait_until(lambda: bool(flagged()), timeout=10)
    [alert] = flagged()
    assert alert.user == "alice"  # the impersonated user, as the cluster saw it
    assert "matches no gateway request" in alert.reason  # type: ignore[attr-defined]
    assert alert.kube_user == GATEWAY_USER  # type: ignore[attr-defined]
