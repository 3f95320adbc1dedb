"""The whole path with real parts: SSO sign-in (`auditcast login` against the real
OpenID provider and `auditcast api`), the kubeconfig and exec plugin it writes, plain
kubectl through `auditcast kube-gateway`, and the worker attributing every
`kube.request` to the SSO identity on events.audit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from auditcast.broker import free_port
from auditcast.events import Event, decode_event
from auditcast.kafka import start_consumer
from auditcast.settings import Settings
from auditcast.topics import EVENTS_AUDIT
from tests.access.conftest import AUDITCAST, AccessAPI, access_api, idp  # noqa: F401
from tests.helpers.broker import settings_env
from tests.kubeapi import GATEWAY_TOKEN, ThreadedApiServer, demo_spec
from tests.streams.conftest import start_worker, stop_worker

pytestmark = pytest.mark.timeout(240)


def _pods(events: list[Event]) -> dict[str, Event]:
    return {
        e.namespace: e  # type: ignore[attr-defined]
        for e in events
        if e.type == "kube.request" and getattr(e, "resource", "") == "pods" and e.identity
    }


async def _audit(settings: Settings, timeout: float = 120) -> list[Event]:
    consumer = await start_consumer(settings, [EVENTS_AUDIT], None)
    got: list[Event] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(decode_event(r.value) for r in records)
            if {"dev", "default"} <= set(_pods(got)):
                break
    finally:
        await consumer.stop()
    return got


def test_sso_user_runs_plain_kubectl_through_the_gateway_and_is_attributed(
    access_api: AccessAPI,  # noqa: F811
    tmp_path: Path,
) -> None:
    server = access_api.settings
    with ThreadedApiServer(demo_spec(tmp_path / "upstream")) as upstream:
        token_file = tmp_path / "gateway.token"
        token_file.write_text(GATEWAY_TOKEN)
        clusters = [
            {"name": name, "url": upstream.url, "ca": str(upstream.ca_path),
             "token_file": str(token_file), "labels": {"environment": env}}
            for name, env in (("staging-1", "staging"), ("prod-1", "production"))
        ]  # fmt: skip
        (server.home_dir / "kube-clusters.yaml").write_text(yaml.safe_dump({"clusters": clusters}))
        port = free_port()
        env = {**os.environ, **settings_env(server), "AUDITCAST_KUBE_PORT": str(port)}
        log = (tmp_path / "gateway.log").open("wb")
        gateway = subprocess.Popen([AUDITCAST, "kube-gateway"], env=env, stdout=log, stderr=log)
        worker = start_worker(server, tmp_path / "worker.log")
        try:
            ready = server.run_dir / "kube-gateway.json"
            deadline = time.monotonic() + 30
            while not ready.exists():
                assert gateway.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "gateway.log"
                ).read_text()
                time.sleep(0.05)

            bob = access_api.client("bob")
            bob.env["AUDITCAST_KUBE_PORT"] = str(port)
            access_api.login("bob", client=bob)

            def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    ["kubectl", "--context", "auditcast-staging-1", *args],
                    env=bob.env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            ok = kubectl("get", "pods", "-n", "dev")
            assert ok.returncode == 0, ok.stderr + (tmp_path / "gateway.log").read_text()[-2000:]
            assert "web-0" in ok.stdout
            denied = kubectl("get", "pods")
            assert denied.returncode == 1
            assert 'pods is forbidden: User "bob" cannot list resource "pods"' in denied.stderr
            # the exec plugin's token went to the gateway, never to the cluster
            assert all(s.user == "auditcast-gateway" for s in upstream.seen)
            assert {s.impersonated for s in upstream.seen} == {"bob"}

            audit = asyncio.run(_audit(server))
        finally:
            stop_worker(worker)
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(15)
            log.close()

    pods = _pods(audit)
    assert pods["dev"].response_code == 200  # type: ignore[attr-defined]
    assert pods["default"].response_code == 403  # type: ignore[attr-defined]
    for e in pods.values():
        assert e.identity is not None, e
        assert e.identity.user == "bob" and e.identity.sso_issuer == access_api.idp.issuer
        assert "devrole" in e.identity.roles
        assert e.cluster == "staging-1" and e.labels == {"environment": "staging"}
