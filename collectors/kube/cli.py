"""`auditcast kube-gateway` and `auditcast audit-webhook`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import click

from auditcast.aio import cancel_and_wait, run_service
from auditcast.cli._util import run, settings
from auditcast.logs import setup_logging
from auditcast.settings import Settings

log = logging.getLogger("auditcast.kube")

path_option = click.Path(path_type=Path, dir_okay=False)


def _ready_file(s: Settings, name: str) -> Path:
    return s.run_dir / f"{name}.json"


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _publish(s: Settings, name: str, port: int, **extra: Any) -> None:
    doc = {"pid": os.getpid(), "port": port, "url": f"https://{s.bind_host}:{port}", **extra}
    path = _ready_file(s, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


@click.command("kube-gateway")
@click.option("--clusters", "clusters_path", type=path_option, help="Clusters file (YAML).")
@click.option("--port", type=int, help="Listen port (default: settings kube_port, 3026).")
@click.option("--tls-cert", type=path_option, help="Server certificate (default: from host CA).")
@click.option("--tls-key", type=path_option, help="Key of --tls-cert.")
def kube_gateway(
    clusters_path: Path | None, port: int | None, tls_cert: Path | None, tls_key: Path | None
) -> None:
    """Run the Kubernetes API gateway (TLS on 3026).

    kubectl reaches cluster NAME at https://HOST:3026/cluster/NAME with the kubeconfig
    `auditcast login` writes. Upstream clusters come from
    $AUDITCAST_HOME/kube-clusters.yaml (name, url, ca, token_file or client_cert/key,
    labels, impersonation_user).
    """
    s = settings()
    setup_logging(s.log_level)
    run_service(_serve_gateway(s, clusters_path, port, tls_cert, tls_key), s.event_loop)


async def _serve_gateway(
    s: Settings, clusters_path: Path | None, port: int | None, cert: Path | None, key: Path | None
) -> None:
    from auditcast.access.locks import LockView
    from auditcast.collectors.kube import wiring
    from auditcast.collectors.kube.gateway import KubeGateway
    from auditcast.collectors.session import SessionRecorder
    from auditcast.collectors.spool import Spool

    clusters = wiring.load_clusters(wiring.clusters_file(s, clusters_path))
    tls = wiring.server_tls(s, cert, key, "kube-gateway")
    spool = Spool(s, "kube-gateway")
    await spool.start()
    locks = LockView(s)
    await locks.start()
    try:
        roles: Any = wiring.AccessRoles(s)
    except Exception as e:  # no role definitions: labels are not restricted
        log.warning(
            "roles unavailable; cluster labels unchecked", extra={"fields": {"err": str(e)}}
        )
        roles = None

    def recorder(kind: str, **fields: Any) -> Any:
        return SessionRecorder(spool, kind=kind, **fields)

    gw = KubeGateway(
        clusters,
        wiring.token_verifier(s),
        spool,
        locks=locks,
        subject_of=wiring.lock_subject,
        roles=roles,
        recorder=recorder,
        instance=f"kube-gateway@{os.uname().nodename}",
    )
    await gw.start(s.bind_host, s.kube_port if port is None else port, tls)
    _publish(s, "kube-gateway", gw.port, clusters=sorted(clusters))
    log.info("kube gateway listening", extra={"fields": {"port": gw.port}})
    try:
        await _until_signalled()
    finally:
        with contextlib.suppress(FileNotFoundError):
            _ready_file(s, "kube-gateway").unlink()
        await gw.stop()
        await locks.stop()
        await spool.close(5.0)


@click.command("audit-webhook")
@click.option("--clusters", "clusters_path", type=path_option, help="Clusters file (YAML).")
@click.option("--port", type=int, help="Listen port (default: settings webhook_port, 3027).")
@click.option("--tls-cert", type=path_option, help="Server certificate (default: from host CA).")
@click.option("--tls-key", type=path_option, help="Key of --tls-cert.")
@click.option(
    "--gateway-user",
    "gateway_users",
    multiple=True,
    help="The gateway's identity on the clusters (default: from the clusters file).",
)
def audit_webhook(
    clusters_path: Path | None,
    port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    gateway_users: tuple[str, ...],
) -> None:
    """Receive Kubernetes audit EventLists (TLS on 3027) and flag gateway bypasses.

    Point the API server's --audit-webhook-config-file at
    https://HOST:3027/audit/CLUSTER (see deploy/kube/).
    """
    s = settings()
    setup_logging(s.log_level)
    run(_serve_webhook(s, clusters_path, port, tls_cert, tls_key, gateway_users))


async def _serve_webhook(
    s: Settings,
    clusters_path: Path | None,
    port: int | None,
    cert: Path | None,
    key: Path | None,
    users: tuple[str, ...],
) -> None:
    from auditcast.collectors.kube import wiring
    from auditcast.collectors.kube.auditlog import RecentIds
    from auditcast.collectors.kube.webhook import AuditWebhook, follow_gateway_requests
    from auditcast.collectors.spool import Spool

    labels: dict[str, dict[str, str]] = {}
    gateway_users = set(users)
    path = wiring.clusters_file(s, clusters_path)
    if path.exists() or clusters_path:
        clusters = wiring.load_clusters(path)
        labels = {n: dict(c.labels) for n, c in clusters.items()}
        gateway_users |= wiring.gateway_users(clusters)
    if not gateway_users:
        gateway_users = {"auditcast-gateway"}
    tls = wiring.server_tls(s, cert, key, "audit-webhook")
    spool = Spool(s, "audit-webhook")
    await spool.start()
    known = RecentIds()
    ready = asyncio.Event()
    follower = asyncio.create_task(follow_gateway_requests(s, known, ready))
    hook = AuditWebhook(spool, gateway_users, known_ids=known, cluster_labels=labels)
    await hook.start(s.bind_host, s.webhook_port if port is None else port, tls)
    ready_wait = asyncio.create_task(ready.wait())
    await asyncio.wait({follower, ready_wait}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    ready_wait.cancel()
    if follower.done():  # could not follow events.raw: say why rather than run blind
        await hook.stop()
        await spool.close(5.0)
        follower.result()
    _publish(s, "audit-webhook", hook.port)
    try:
        await _until_signalled()
    finally:
        await cancel_and_wait(follower)
        with contextlib.suppress(FileNotFoundError):
            _ready_file(s, "audit-webhook").unlink()
        await hook.stop()
        await spool.close(5.0)
