"""`auditcast kube-gateway` as a real process: host-CA TLS, tokens from access.tokens,
roles from roles.yaml, events through the spool to Kafka; real kubectl in front, the
API-server double behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pexpect
import pytest
import yaml

from auditcast.access import ca as ca_mod
from auditcast.access import roles as roles_mod
from auditcast.access import tokens as tokens_mod
from auditcast.access.lock_authority import LockAuthority
from auditcast.access.lock_model import LockTargets, new_lock
from auditcast.broker import free_port
from auditcast.kafka import start_consumer
from auditcast.settings import Settings
from auditcast.topics import ALERTS, EVENTS_RAW
from tests.kubeapi import (
    ADMIN_TOKEN,
    ADMIN_USER,
    GATEWAY_TOKEN,
    FakeApiServer,
    ThreadedApiServer,
    demo_spec,
)
from tests.kubeapi.server import wait_for

EXAMPLE_ROLES = Path(roles_mod.__file__).with_name("roles.example.yaml")

AUDITCAST = str(Path(os.sys.executable).with_name("auditcast"))  # type: ignore[attr-defined]


@dataclass
class GatewayProcess:
    settings: Settings
    upstream: FakeApiServer
    port: int
    home: Path
    proc: subprocess.Popen[bytes]

    def token(self, user: str, cluster: str, roles: list[str], **claims: Any) -> tuple[str, str]:
        ca = ca_mod.load_ca(self.settings)
        token, body = tokens_mod.issue_token(
            ca,
            user=user,
            audience=cluster,
            ttl=dt.timedelta(minutes=10),
            kind="kube",
            roles=roles,
            **claims,
        )
        return token, body.jti

    def kubectl_env(self, token: str, cluster: str) -> dict[str, str]:
        ca = ca_mod.load_ca(self.settings)
        path = self.home / f"kubeconfig-{cluster}-{time.monotonic_ns()}"
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: https://127.0.0.1:{self.port}/cluster/{cluster}
    certificate-authority: {ca.tls_ca_path}
users:
- name: me
  user: {{token: {token}}}
contexts:
- name: {cluster}
  context: {{cluster: {cluster}, user: me}}
current-context: {cluster}
"""
        )
        return {**os.environ, "KUBECONFIG": str(path), "HOME": str(self.home)}


@pytest.fixture
def gateway_process(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    cli_env: Callable[[Settings], dict[str, str]],
) -> Iterator[GatewayProcess]:
    port = free_port()
    settings = make_settings(kube_port=port)
    with ThreadedApiServer(demo_spec(tmp_path / "upstream")) as upstream:
        token_file = tmp_path / "gateway.token"
        token_file.write_text(GATEWAY_TOKEN)
        (settings.home_dir / "kube-clusters.yaml").write_text(
            f"""clusters:
  - name: dev-cluster
    url: {upstream.url}
    ca: {upstream.ca_path}
    token_file: {token_file}
    labels: {{environment: staging}}
  - name: prod-cluster
    url: {upstream.url}
    ca: {upstream.ca_path}
    token_file: {token_file}
    labels: {{environment: production}}
"""
        )
        roles = yaml.safe_load(EXAMPLE_ROLES.read_text())
        roles["roles"]["oncall"] = {
            "kube_groups": ["devs"],
            "kube_labels": {"environment": "staging"},
            "require_session_mfa": True,
        }
        (settings.home_dir / "roles.yaml").write_text(yaml.safe_dump(roles))
        env = {**cli_env(settings), "AUDITCAST_KUBE_PORT": str(port)}
        log = (tmp_path / "gateway.log").open("wb")
        proc = subprocess.Popen([AUDITCAST, "kube-gateway"], env=env, stdout=log, stderr=log)
        ready = settings.run_dir / "kube-gateway.json"
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"gateway did not start:\n{(tmp_path / 'gateway.log').read_text()}")
            time.sleep(0.05)
        assert json.loads(ready.read_text())["port"] == port
        try:
            yield GatewayProcess(settings, upstream, port, tmp_path, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


async def _events(settings: Settings, want: Callable[[list[dict]], bool]) -> list[dict]:
    consumer = await start_consumer(settings, [EVENTS_RAW], None)
    got: list[dict] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not want(got):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return got


def test_kubectl_through_the_gateway_process_is_recorded_on_kafka(
    gateway_process: GatewayProcess,
) -> None:
    gw = gateway_process
    token, credential = gw.token("alice", "dev-cluster", ["devrole"], kube_groups=["devs"])
    env = gw.kubectl_env(token, "dev-cluster")
    ok = subprocess.run(
        ["kubectl", "get", "pods", "-n", "dev"], env=env, capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    assert "web-0" in ok.stdout
    denied = subprocess.run(
        ["kubectl", "get", "pods"], env=env, capture_output=True, text=True, timeout=30
    )
    assert denied.returncode == 1
    assert 'User "alice" cannot list resource "pods"' in denied.stderr

    def pods(evs: list[dict]) -> list[dict]:
        return [e for e in evs if e["type"] == "kube.request" and e.get("resource") == "pods"]

    events = asyncio.run(_events(gw.settings, lambda got: len(pods(got)) >= 2))
    by_ns = {e["namespace"]: e for e in pods(events)}
    assert by_ns["dev"]["response_code"] == 200 and by_ns["default"]["response_code"] == 403
    for e in by_ns.values():
        assert e["user"] == "alice" and e["credential_id"] == credential
        assert e["cluster"] == "dev-cluster" and e["labels"] == {"environment": "staging"}
        assert e["code"] == "AC3000I" and e["source"]["collector"] == "kube-gateway"


def test_role_labels_from_roles_yaml_keep_devrole_off_production(
    gateway_process: GatewayProcess,
) -> None:
    gw = gateway_process
    token, _ = gw.token("alice", "prod-cluster", ["devrole"], kube_groups=["devs"])
    r = subprocess.run(
        ["kubectl", "get", "pods", "-n", "dev"],
        env=gw.kubectl_env(token, "prod-cluster"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "may not access cluster prod-cluster (environment=production)" in r.stderr
    assert not gw.upstream.seen


def test_audit_webhook_process_flags_a_direct_request_on_the_alerts_topic(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    cli_env: Callable[[Settings], dict[str, str]],
) -> None:
    port = free_port()
    settings = make_settings(webhook_port=port)
    ca = ca_mod.load_ca(settings)
    env = {**cli_env(settings), "AUDITCAST_WEBHOOK_PORT": str(port)}
    log = (tmp_path / "webhook.log").open("wb")
    proc = subprocess.Popen([AUDITCAST, "audit-webhook"], env=env, stdout=log, stderr=log)
    try:
        ready = settings.run_dir / "audit-webhook.json"
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "webhook.log"
            ).read_text()
            time.sleep(0.05)
        spec = demo_spec(
            tmp_path / "upstream",
            audit_webhook_url=f"https://127.0.0.1:{port}/audit/dev-cluster",
            audit_webhook_ca=ca.tls_ca_path,
        )
        with ThreadedApiServer(spec) as upstream:
            kubeconfig = tmp_path / "direct"
            kubeconfig.write_text(
                f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{upstream.url}", certificate-authority: "{upstream.ca_path}"}}}}]
users: [{{name: u, user: {{token: {ADMIN_TOKEN}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""  # noqa: E501
            )
            r = subprocess.run(
                ["kubectl", "get", "pods", "-n", "dev"],
                env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert r.returncode == 0, r.stderr
            assert wait_for(lambda: 200 in upstream.audit_posts, 10), upstream.audit_posts
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()

    def alerts(got: list[bytes]) -> list[dict]:
        docs = [orjson.loads(v) for v in got]
        return [d for d in docs if d.get("resource") == "pods"]

    raw = asyncio.run(_values(settings, ALERTS, lambda got: bool(alerts(got))))
    [alert] = alerts(raw)
    assert alert["type"] == "audit.unattributed" and alert["code"] == "AC3100W"
    assert alert["user"] == ADMIN_USER and alert["cluster"] == "dev-cluster"
    assert "not through the auditcast gateway" in alert["reason"]


async def _values(
    settings: Settings, name: str, want: Callable[[list[bytes]], bool]
) -> list[bytes]:
    consumer = await start_consumer(settings, [name], None)
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not want(got):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return got


def test_role_requiring_session_mfa_refuses_tokens_without_it(
    gateway_process: GatewayProcess,
) -> None:
    gw = gateway_process
    no_mfa, _ = gw.token("alice", "dev-cluster", ["oncall"], kube_groups=["devs"])
    with_mfa, _ = gw.token("alice", "dev-cluster", ["oncall"], kube_groups=["devs"], mfa=True)
    refused = subprocess.run(
        ["kubectl", "get", "pods", "-n", "dev"],
        env=gw.kubectl_env(no_mfa, "dev-cluster"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1
    assert not gw.upstream.seen
    ok = subprocess.run(
        ["kubectl", "get", "pods", "-n", "dev"],
        env=gw.kubectl_env(with_mfa, "dev-cluster"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    log = (gw.home / "gateway.log").read_text()
    assert "requires per-session MFA" in log


def test_lock_created_elsewhere_closes_exec_in_the_gateway_process_and_is_lifted(
    gateway_process: GatewayProcess,
) -> None:
    gw = gateway_process
    token, _ = gw.token("carol", "dev-cluster", ["devrole"], kube_groups=["devs"])
    env = gw.kubectl_env(token, "dev-cluster")
    authority = LockAuthority(gw.settings)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(authority.start())
    shell = pexpect.spawn(
        "kubectl", ["exec", "-it", "-n", "dev", "web-0", "--", "sh"], env=env, timeout=20
    )
    try:
        shell.expect_exact("web-0$ ")
        lock = new_lock(LockTargets(user="carol"), ttl=dt.timedelta(minutes=5), message="INC-7")
        t0 = time.monotonic()
        loop.run_until_complete(authority.create(lock))
        shell.expect(pexpect.EOF, timeout=5)
        assert time.monotonic() - t0 < 2.0
        assert "INC-7" in shell.before.decode()
        denied = subprocess.run(
            ["kubectl", "get", "pods", "-n", "dev"], env=env, capture_output=True, text=True
        )
        assert denied.returncode == 1 and f"access locked by {lock.name}: INC-7" in denied.stderr
        loop.run_until_complete(authority.delete(lock.name, by="secops"))
        deadline = time.monotonic() + 15
        while True:
            again = subprocess.run(
                ["kubectl", "get", "pods", "-n", "dev"], env=env, capture_output=True, text=True
            )
            if again.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.returncode == 0, again.stderr
    finally:
        shell.close(force=True)
        loop.run_until_complete(authority.stop())
        loop.close()
