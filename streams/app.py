"""The Faust app: `events.raw` → attribution + session assembly → `events.audit`.

Two agents share one worker:

- `audit` reads `events.raw` in batches, looks each event's credential up in the
  `identities` global table, folds session.start/end into the `sessions` table,
  enriches session.end with `frames` and `duration`, and writes the event to
  `events.audit` under the same key. Unknown credentials also raise an
  `audit.unattributed` alert on `alerts`.
- `frames` reads `session.frames` (co-partitioned with `events.raw` by session id)
  and counts frames and bytes per session in the same table.

A malformed record never stops an agent: it is counted, logged with its offset and
copied to `dead-letter` with headers saying where it came from (docs/SEAMS.md).
Every batch's output is acknowledged by the broker before the batch's offsets are
committed (at-least-once; the stores dedupe by event id).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import faust
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from faust.types import EventT, RecordMetadata

from auditcast.errors import MalformedMessage
from auditcast.events import (
    Event,
    Identity,
    PlainEnvelope,
    decode_event_json,
    decode_frames,
    plain_envelope,
)
from auditcast.kafka import MAX_REQUEST_BYTES, BatchSender, compression_type, start_producer
from auditcast.settings import Settings
from auditcast.streams import sessions
from auditcast.streams.attribution import (
    audit_record,
    decide,
    decide_doc,
    decide_plain,
    plain_record,
    unattributed_alert,
)
from auditcast.streams.audit_path import AuditPath
from auditcast.streams.identities import IdentityView
from auditcast.topics import (
    ALERTS,
    DEAD_LETTER,
    EVENTS_AUDIT,
    EVENTS_RAW,
    IDENTITIES,
    SESSION_FRAMES,
    topic,
)

log = logging.getLogger("auditcast.streams")

# Batching: up to this many records or this long, whichever comes first. 1000 keeps a
# batch's output well under one producer request; 50 ms matches the collectors' own
# flush cadence, so a live session is not held back noticeably.
BATCH_MAX: Final = 1000
# A dead-letter copy is cut to what one produce request can carry (an oversized record
# is one of the reasons to dead-letter it); the headers say where the original is.
DEAD_LETTER_MAX_BYTES: Final = 512 * 1024
BATCH_WITHIN_S: Final = 0.05
# Event types folded into the sessions table.
SESSION_TYPES: Final = frozenset({"session.start", "session.end"})
# Identity JSON is cached per identities record; a worker sees few distinct ones.
IDENTITY_CACHE_MAX: Final = 10_000

PRODUCER_BATCH_BYTES: Final = 256 * 1024
PRODUCER_LINGER_S: Final = 0.005

# Group membership tuned for a single-node broker: Faust's defaults (session 60 s,
# rebalance 60 s, heartbeat 3 s) made the first join on Tansu take ~30 s.
SESSION_TIMEOUT_S: Final = 10.0
HEARTBEAT_INTERVAL_S: Final = 1.0
REBALANCE_TIMEOUT_S: Final = 10.0


def app_id(settings: Settings) -> str:
    """The consumer group and table-topic prefix; the topic prefix keeps setups apart."""
    return f"{settings.topic_prefix}worker"


@dataclass
class WorkerStats:
    """Counters the worker logs and tests read."""

    consumed: Counter[str] = field(default_factory=Counter)
    produced: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    unattributed: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "consumed": dict(self.consumed),
            "produced": dict(self.produced),
            "dead_letters": dict(self.dead_letters),
            "unattributed": self.unattributed,
        }


def _decode(
    value: bytes | None,
) -> tuple[Event | None, dict[str, Any] | None, PlainEnvelope | None]:
    """A record of `events.raw` as read: (None, None, envelope fields) by `plain_envelope`,
    or (model, JSON object, None) the dict's way (`decode_event_json`); session events
    always go the dict's way. Raises MalformedMessage."""
    if value is None:
        raise MalformedMessage("empty record (null value)")
    env = plain_envelope(value)
    if env is not None and not (env.session_id and env.type in SESSION_TYPES):
        return None, None, env
    return (*decode_event_json(value), None)


def _credential_id(
    event: Event | None, doc: dict[str, Any] | None, env: PlainEnvelope | None
) -> str | None:
    if env is not None:
        return env.credential_id
    if event is not None:
        return event.credential_id
    return doc.get("credential_id") if doc is not None else None


class StreamsApp:
    """The Faust app with its topics, tables and agents for one settings object."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.stats = WorkerStats()
        self.ready = asyncio.Event()
        servers = ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())
        self.app = faust.App(
            app_id(settings),
            broker=servers,
            # Values are our own envelopes (JSON) and frame batches (msgpack), parsed by
            # the kernel codecs; Faust moves bytes.
            key_serializer="raw",
            value_serializer="raw",
            store="memory://",
            web_enabled=False,
            # acks=all; Faust turns idempotence on only for exactly_once, which Tansu lacks.
            producer_acks=-1,
            producer_max_request_size=MAX_REQUEST_BYTES,
            # Faust's 16 KiB batches with no linger meant one broker round trip per ~50
            # events (measured ~1,200 events/s); these match auditcast.kafka's producers.
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            producer_linger=PRODUCER_LINGER_S,
            producer_compression_type=compression_type(settings),
            consumer_max_fetch_size=4 * 1024 * 1024,
            processing_guarantee="at_least_once",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=SESSION_TIMEOUT_S,
            broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
            broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
            broker_commit_interval=1.0,
            stream_wait_empty=False,
            table_standby_replicas=0,
        )
        t = self.topic_name
        self.session_frames = self.app.topic(t(SESSION_FRAMES), internal=False)
        self.events_audit = t(EVENTS_AUDIT)
        self.alerts = t(ALERTS)
        self.dead_letter = t(DEAD_LETTER)
        self.bootstrap = bootstrap
        # Output goes through the kernel's producer, not Faust's topic.send: acks=all,
        # idempotent on a real Kafka (off on Tansu), and ~10x cheaper per record here.
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        # Attribution joins on credential id while events are keyed by session, so each
        # worker reads all of `identities` (see streams.identities for why not GlobalTable).
        self.identities = IdentityView(bootstrap, t(IDENTITIES))
        self.sessions = self.app.Table(
            "sessions",
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
        )
        # events.raw is read by the batched hot path, in step with Faust's assignment.
        self.audit_path = AuditPath(
            bootstrap, t(EVENTS_RAW), f"{app_id(settings)}-audit", self.process_raw_batch
        )
        self.app.agent(self.session_frames, name="frames")(self._frames_agent)
        self.app.task(self.audit_path.run)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]
        # Faust types signal receivers as sync-or-awaitable with a `signal` keyword; ours
        # take it through **kwargs.
        self.app.on_rebalance_complete.connect(self._on_rebalance_complete)  # type: ignore[arg-type]
        self.app.task(self._start_identities)
        self.app.on_before_shutdown.connect(self._stop_identities)  # type: ignore[arg-type]
        self._assigned = asyncio.Event()
        self._identities_loaded = asyncio.Event()
        self._identity_docs: dict[int, tuple[Identity, dict[str, Any], bytes]] = {}

    def topic_name(self, name: str) -> str:
        return topic(self.settings, name)

    async def _on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        await self.audit_path.revoke()

    async def _on_rebalance_complete(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = self.app.consumer.assignment() if self.app.consumer else set()
        frames_topic = self.topic_name(SESSION_FRAMES)
        await self.audit_path.own(tp.partition for tp in assigned if tp.topic == frames_topic)
        log.info(
            "partitions assigned and tables recovered",
            extra={"fields": {"assigned": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)}},
        )
        self._assigned.set()
        if self._identities_loaded.is_set():
            self.ready.set()

    async def _start_identities(self) -> None:
        await self.identities.start()
        # Events read before the identities already on the topic would be misattributed.
        while not await self.identities.catch_up(timeout=5.0):
            log.warning("still loading identities")
        log.info(
            "identities loaded", extra={"fields": {"credentials": len(self.identities.records)}}
        )
        self._identities_loaded.set()
        if self._assigned.is_set():
            self.ready.set()

    async def _stop_identities(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        await self.audit_path.stop()
        await self.identities.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes what is pending

    async def output(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                self._producer = await start_producer(self.settings, self.bootstrap)
            return self._producer

    # --- lookups -----------------------------------------------------------------

    def _session(self, session_id: str) -> sessions.SessionSummary:
        raw = self.sessions.get(session_id.encode())
        return orjson.loads(raw) if raw else sessions.empty(session_id)

    def _put_session(
        self, changed: dict[bytes, int], partition: int, summary: sessions.SessionSummary
    ) -> None:
        """Update the table now and note the session for `_write_sessions`."""
        key = summary["session_id"].encode()
        self.sessions.data[key] = orjson.dumps(summary)
        changed[key] = partition

    def _changelog_topic(self) -> str:
        name: str = self.sessions.changelog_topic.get_topic_name()
        return name

    async def _write_sessions(self, out: BatchSender, changed: dict[bytes, int]) -> None:
        """Write the changelog of the sessions a batch touched, on their source partition
        as Faust would.

        Written directly: inside a batch there is no single "current event" for Faust's
        table to take the partition from, and Faust's own changelog buffer was the
        slowest step of the worker. One record per session per batch, with the table's
        value at the time of writing: recovery needs only the last, and the other agent
        may have updated the same session meanwhile.
        """
        changelog = self._changelog_topic()
        for key, partition in changed.items():
            await out.add(changelog, partition, key, self.sessions.data[key])

    # --- agents ------------------------------------------------------------------

    def _identity_json(self, identity: Identity) -> tuple[dict[str, Any], bytes]:
        """The JSON form of an identity (as a dict and as text), made once per
        identities record."""
        cached = self._identity_docs.get(id(identity))
        if cached is None or cached[0] is not identity:
            doc = identity.model_dump(mode="json", exclude_none=True)
            cached = (identity, doc, orjson.dumps(doc))
            if len(self._identity_docs) > IDENTITY_CACHE_MAX:
                self._identity_docs.clear()
            self._identity_docs[id(identity)] = cached
        return cached[1], cached[2]

    async def process_raw_batch(
        self, batch: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> asyncio.Future[Any]:
        """Attribute a batch of `events.raw` records and queue them for `events.audit`;
        the future completes when the broker has acknowledged all of the output."""
        pending: list[Awaitable[RecordMetadata]] = []
        producer = await self.output()
        out = BatchSender(producer, end_alone=[self._changelog_topic()])
        same_partition = await self._audit_partitions_match(producer)
        source = self.topic_name(EVENTS_RAW)
        # Most records are read by msgspec into their envelope fields only and extended
        # as text (`plain_envelope`, `plain_record`). The rest go the dict's way: the model
        # is built only where it is used (session events, alerts) or where the JSON needs
        # pydantic's verdict; otherwise the JSON is checked and read as it is. Each record
        # is read and written out in one step, while it is still in the CPU's cache.
        self.stats.consumed[source] += len(batch)
        get_identity = self.identities.get
        caught_up = False
        changed: dict[bytes, int] = {}
        for msg in batch:
            try:
                event, doc, env = _decode(msg.value)
            except MalformedMessage as e:
                pending.append(await self._dead_letter(source, msg, e.message))
                continue
            if not caught_up and (cred := _credential_id(event, doc, env)):
                if get_identity(cred) is None:
                    # A credential is usually issued moments before its first use: let
                    # the view catch up (once per batch) before calling it unknown.
                    await self.identities.catch_up()
                    caught_up = True
            value = self._plain_value(env, msg.value) if env is not None else None
            unattributed = False
            if value is None:
                if doc is None:  # unattributed, or a null in it: the dict's way after all
                    event, doc = decode_event_json(msg.value)
                value, event, unattributed = self._audit_value(msg, event, doc, changed)
            if same_partition:
                await out.add(self.events_audit, msg.partition, msg.key, value)
            else:
                pending.append(await producer.send(self.events_audit, key=msg.key, value=value))
            self.stats.produced[EVENTS_AUDIT] += 1
            if unattributed:
                assert event is not None
                pending.append(await self._alert(producer, event))
        await self._write_sessions(out, changed)
        pending.extend(await out.send())
        # The audit path commits the batch's offsets once this completes.
        return asyncio.gather(*pending)

    def _plain_value(self, env: PlainEnvelope, raw: bytes | None) -> bytes | None:
        """The `events.audit` value of a record `plain_envelope` read, or None when it
        must be made from the dict (unattributed: the alert needs the model)."""
        found, unattributed = decide_plain(env, self.identities.get(env.credential_id))
        if unattributed or raw is None:
            return None
        return plain_record(env, raw, self._identity_json(found)[1] if found else None)

    def _audit_value(
        self,
        msg: ConsumerRecord[bytes, bytes],
        event: Event | None,
        doc: dict[str, Any],
        changed: dict[bytes, int],
    ) -> tuple[bytes, Event | None, bool]:
        """The `events.audit` value of a record read as JSON (`decode_event_json`), the
        event (built if an alert needs it) and whether it is unattributed; session
        events are folded into the sessions table (noted in `changed`)."""
        get_identity = self.identities.get
        extra: dict[str, Any] = {}
        if event is None:  # plainly valid: read from the JSON
            found, unattributed = decide_doc(doc, get_identity(doc.get("credential_id")))
            session_id = doc.get("session_id")
            if session_id and doc["type"] in SESSION_TYPES:
                summary = sessions.fold_event(self._session(session_id), doc["type"], doc["time"])
                self._put_session(changed, msg.partition, summary)
                extra = sessions.end_fields_doc(doc, summary)
            if unattributed:
                event = Event.model_validate(doc)  # for the alert
        else:
            found, unattributed = decide(event, get_identity(event.credential_id))
            if event.session_id and event.type in SESSION_TYPES:
                summary = sessions.on_event(self._session(event.session_id), event)
                self._put_session(changed, msg.partition, summary)
                extra = sessions.end_fields(event, summary)
        ident_doc, ident_json = self._identity_json(found) if found is not None else (None, None)
        value = audit_record(event, doc, ident_doc, extra, raw=msg.value, identity_json=ident_json)
        return value, event, unattributed

    async def _audit_partitions_match(self, producer: AIOKafkaProducer) -> bool:
        """Whether `events.audit` has as many partitions as `events.raw`: then a record's
        key hashes to the same partition number on both, and the output can go straight
        to its input's partition."""
        audit = await producer.partitions_for(self.events_audit)
        return len(audit) == self.settings.partitions

    async def _alert(self, producer: AIOKafkaProducer, event: Event) -> Awaitable[RecordMetadata]:
        self.stats.unattributed += 1
        log.warning(
            "unattributed event",
            extra={
                "event_id": event.id,
                "session_id": event.session_id,
                "credential_id": event.credential_id,
                "user": event.user,
            },
        )
        alert = unattributed_alert(event)
        self.stats.produced[ALERTS] += 1
        fut: Awaitable[RecordMetadata] = await producer.send(
            self.alerts, key=(alert.user or "").encode(), value=alert.to_json()
        )
        return fut

    async def _frames_agent(self, stream: faust.StreamT[Any]) -> None:
        async for batch in cast(faust.Stream[Any], stream).take_events(
            BATCH_MAX, within=BATCH_WITHIN_S
        ):
            await self.process_frames_batch(batch)

    async def process_frames_batch(self, batch: Sequence[EventT]) -> None:
        pending: list[Awaitable[RecordMetadata]] = []
        producer = await self.output()
        source = self.topic_name(SESSION_FRAMES)
        changed: dict[bytes, int] = {}
        for ev in batch:
            msg = ev.message
            self.stats.consumed[source] += 1
            try:
                if msg.value is None:
                    raise MalformedMessage("empty record (null value)")
                frames = decode_frames(msg.value)
            except MalformedMessage as e:
                pending.append(await self._dead_letter(source, msg, e.message))
                continue
            if not frames:
                continue
            by_session: dict[str, list[Any]] = {}
            for f in frames:
                by_session.setdefault(f.session_id, []).append(f)
            for session_id, group in by_session.items():
                summary = sessions.on_frames(self._session(session_id), group)
                self._put_session(changed, msg.partition, summary)
        out = BatchSender(producer, end_alone=[self._changelog_topic()])
        await self._write_sessions(out, changed)
        pending.extend(await out.send())
        await asyncio.gather(*pending)

    async def _dead_letter(self, source: str, msg: Any, error: str) -> Awaitable[RecordMetadata]:
        self.stats.dead_letters[source] += 1
        log.warning(
            "malformed record sent to dead-letter",
            extra={
                "topic": source,
                "partition": msg.partition,
                "offset": msg.offset,
                "fields": {"error": error},
            },
        )
        headers = {
            "source_topic": source.encode(),
            "source_partition": str(msg.partition).encode(),
            "source_offset": str(msg.offset).encode(),
            "error": error.encode()[:1024],
        }
        value = bytes(msg.value or b"")[:DEAD_LETTER_MAX_BYTES]
        producer = await self.output()
        fut: Awaitable[RecordMetadata] = await producer.send(
            self.dead_letter, key=msg.key, value=value, headers=list(headers.items())
        )
        return fut
