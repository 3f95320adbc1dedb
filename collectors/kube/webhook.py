"""`auditcast audit-webhook`: the audit webhook backend API servers post to.

The API server's `--audit-webhook-config-file` points at
`https://HOST:3027/audit/CLUSTER` (deploy/kube/audit-webhook-kubeconfig.yaml); each
`EventList` is validated, each record becomes a `kube.audit` event, and a record that
did not come through the gateway becomes an `audit.unattributed` event and alert.
Which requests came through the gateway is learnt from the `kube.request` events on
`events.raw` (their ids are the `Audit-ID`s the gateway sent).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Collection
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from auditcast.aio import cancel_and_wait
from auditcast.collectors.kube.auditlog import (
    MATCH_GRACE_SECONDS,
    MAX_EVENTLIST_BYTES,
    AuditRecord,
    InvalidAuditEvents,
    RecentIds,
    classify,
    parse_event_list,
    unattributed_reason,
)
from auditcast.collectors.kube.gateway import _bound_port
from auditcast.events import Event, Source
from auditcast.topics import ALERTS

log = logging.getLogger("auditcast.kube.webhook")

PENDING_CHECK_SECONDS: Final = 0.5
# Records waiting for their kube.request; beyond this we judge them at once.
MAX_PENDING: Final = 100_000


class AuditSink(Protocol):
    """collectors.spool.Spool, as the webhook uses it."""

    def append_event(self, event: Event) -> None: ...

    def append(self, topic_name: str, key: bytes, value: bytes) -> None: ...


class AuditWebhook:
    def __init__(
        self,
        sink: AuditSink,
        gateway_users: Collection[str],
        *,
        known_ids: RecentIds | None = None,
        cluster_labels: dict[str, dict[str, str]] | None = None,
        grace: float = MATCH_GRACE_SECONDS,
        instance: str = "audit-webhook",
    ) -> None:
        self.sink = sink
        self.gateway_users = frozenset(gateway_users)
        self.known = known_ids or RecentIds()
        self.cluster_labels = cluster_labels or {}
        self.grace = grace
        self.instance = instance
        self.pending: list[tuple[float, str, AuditRecord]] = []
        self.counts = {"gateway": 0, "unattributed": 0, "system": 0, "rejected": 0}
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_EVENTLIST_BYTES)
        app.router.add_post("/audit/{cluster}", self.receive)
        app.router.add_post("/audit", self.receive)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.port = _bound_port(site)
        self._task = asyncio.create_task(self._judge_pending())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.judge_pending(force=True)
        if self._runner:
            await self._runner.cleanup()

    async def receive(self, request: web.Request) -> web.Response:
        cluster = request.match_info.get("cluster", "")
        try:
            records = parse_event_list(await request.read())
        except InvalidAuditEvents as e:
            self.counts["rejected"] += 1
            log.warning("rejected audit batch", extra={"fields": {"error": e.message}})
            return web.json_response({"error": e.message}, status=400)
        except web.HTTPRequestEntityTooLarge:
            self.counts["rejected"] += 1
            return web.json_response(
                {"error": f"EventList exceeds {MAX_EVENTLIST_BYTES} bytes"}, status=413
            )
        for record in records:
            self.consider(cluster, record)
        return web.json_response({"accepted": len(records)})

    def consider(self, cluster: str, record: AuditRecord) -> None:
        verdict = classify(record, self.gateway_users, self.known)
        if verdict == "pending":
            if len(self.pending) < MAX_PENDING:
                self.pending.append((time.monotonic() + self.grace, cluster, record))
                return
            verdict = "unattributed"
        self._emit(cluster, record, verdict)

    def judge_pending(self, *, force: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for deadline, cluster, record in self.pending:
            if record.audit_id in self.known:
                self._emit(cluster, record, "gateway")
            elif force or now >= deadline:
                self._emit(cluster, record, "unattributed")
            else:
                keep.append((deadline, cluster, record))
        self.pending = keep

    async def _judge_pending(self) -> None:
        while True:
            await asyncio.sleep(PENDING_CHECK_SECONDS)
            self.judge_pending()

    def _emit(self, cluster: str, record: AuditRecord, verdict: str) -> None:
        self.counts[verdict] = self.counts.get(verdict, 0) + 1
        fields: dict[str, Any] = {
            "cluster": cluster or None,
            "labels": self.cluster_labels.get(cluster, {}),
            "source": Source(
                collector="audit-webhook",
                instance=self.instance,
                remote_addr=record.source_ips[0] if record.source_ips else None,
                user_agent=record.user_agent or None,
            ),
            "verdict": verdict,
            **record.fields(),
        }
        user = record.impersonated_user or record.username
        if verdict == "gateway":
            # the gateway's kube.request already is the attributed record of this call
            fields["request_id"] = record.audit_id
        try:
            self.sink.append_event(Event(type="kube.audit", user=user, **fields))
            if verdict == "unattributed":
                fields["reason"] = unattributed_reason(record, self.gateway_users)
                alert = Event(type="audit.unattributed", user=user, **fields)
                self.sink.append_event(alert)
                self.sink.append(ALERTS, alert.key, alert.to_json())
        except Exception:
            log.exception("could not record audit event", extra={"user": user})


async def follow_gateway_requests(settings: Any, known: RecentIds, ready: asyncio.Event) -> None:
    """Learn gateway request ids from kube.request events on events.raw."""
    from auditcast.kafka import start_consumer
    from auditcast.topics import EVENTS_RAW

    consumer = await start_consumer(settings, [EVENTS_RAW], None)
    try:
        ready.set()
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for rec in records:
                    try:
                        doc = orjson.loads(rec.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(doc, dict) and doc.get("type") == "kube.request":
                        known.add(str(doc.get("id")))
    finally:
        await consumer.stop()
