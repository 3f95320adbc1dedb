"""The store process: `events.audit` → audit store, `session.frames` → recording store.

At-least-once and idempotent: offsets are committed only after the SQLite transaction
or the recording files are written; a redelivery is absorbed by the stores' dedupe.
A record that is not a valid envelope or frame batch is counted, logged with its
offset and copied to the `dead-letter` topic; the consumer goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from auditcast.codes import CODE_BY_TYPE
from auditcast.errors import BrokerUnavailable, MalformedMessage
from auditcast.events import (
    Frame,
    decode_event_json,
    decode_frames,
    format_time,
    is_canonical_time,
)
from auditcast.kafka import (
    cluster_info,
    resolve_bootstrap,
    start_consumer,
    start_producer,
)
from auditcast.settings import Settings
from auditcast.storage.recordings import RecordingStore
from auditcast.storage.sqlite import EventBatch, EventBatchBuilder, SQLiteAuditStore
from auditcast.topics import DEAD_LETTER, EVENTS_AUDIT, SESSION_FRAMES, topic

log = logging.getLogger(__name__)

EVENTS_GROUP: Final = "auditcast-store-events"
FRAMES_GROUP: Final = "auditcast-store-frames"
# One poll: big enough to amortise the commit, bounded for memory. A write is one poll,
# or several read while the last write ran, up to MAX_WRITE_RECORDS.
MAX_POLL_RECORDS: Final = 5000
MAX_WRITE_RECORDS: Final = 20_000
# ... and up to this many bytes of records: a frame batch can be 1 MiB on its own.
MAX_WRITE_BYTES: Final = 64 * 1024 * 1024
RETRY_S: Final = 2.0
# How long an idle poll waits; short enough that stop and readiness feel immediate.
POLL_MS: Final = 500
# How often the broker's cluster id is checked (at most one restart window without it).
CLUSTER_CHECK_S: Final = 1.0
STOP_TIMEOUT_S: Final = 5.0


def batch_offsets(
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
) -> dict[TopicPartition, int]:
    """`next_offsets` of a `getmany` result, from the last record of each partition's
    list (in offset order) instead of a look at every record."""
    return {tp: recs[-1].offset + 1 for tp, recs in batches.items() if recs}


@dataclass
class SinkStats:
    stored_events: int = 0
    duplicate_events: int = 0
    stored_frames: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def parse_event_record(value: bytes | None) -> dict[str, Any]:
    """Validate like the contract says, then keep the document as sent (extras intact),
    with the two fields the store relies on normalised: `time` as RFC 3339 UTC with a
    `Z` (so text order is time order) and `code` filled from the type. Re-reading the
    JSON costs a third of `Event.to_dict()`, which matters at 20,000 events/s; and what
    plainly fits the model is not built into one (`decode_event_json`)."""
    return parse_event_record_text(value)[0]


def parse_event_record_text(value: bytes | None) -> tuple[dict[str, Any], str | None]:
    """`parse_event_record`, with the record as JSON text when the document is exactly
    what was sent (nothing normalised), so the store need not serialise it again."""
    if value is None:
        raise MalformedMessage("empty record (tombstone) on an event topic")
    event, doc = decode_event_json(value)
    if event is None:  # plainly valid: the time is canonical and the type known
        if doc.get("code"):
            return doc, value.decode()
        doc["code"] = CODE_BY_TYPE[doc["type"]]
        return doc, None
    if not is_canonical_time(doc.get("time")):
        doc["time"] = format_time(event.time)
    doc["code"] = event.code
    return doc, None


class DeadLetters:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, stats: SinkStats):
        self.settings, self.producer, self.stats = settings, producer, stats

    async def send(self, rec: ConsumerRecord[bytes, bytes], error: str) -> None:
        self.stats.dead_lettered += 1
        log.warning(
            "malformed record sent to dead-letter: %s",
            error,
            extra={
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "dead_lettered": self.stats.dead_lettered,
            },
        )
        await self.producer.send_and_wait(
            topic(self.settings, DEAD_LETTER),
            rec.value or b"",
            key=rec.key,
            headers=[
                ("source_topic", rec.topic.encode()),
                ("source_partition", str(rec.partition).encode()),
                ("source_offset", str(rec.offset).encode()),
                ("error", error[:1000].encode()),
            ],
        )


@dataclass
class Route:
    """How one topic is stored: `parse` checks records on the event loop (dead-lettering
    the malformed ones) and adds them to the next write's batch (a new one when given
    None), which `seal` finishes (None if nothing is left to write); `write` makes it
    durable and runs in a thread, so parsing the next polls overlaps the SQLite/file
    write."""

    topic: str
    group: str
    parse: Callable[[list[ConsumerRecord[bytes, bytes]], DeadLetters, Any], Awaitable[Any]]
    seal: Callable[[Any], Any]
    write: Callable[[Any], None]
    on_ready: Callable[[], None]


async def _consume(settings: Settings, route: Route, stats: SinkStats) -> None:
    """One consumer loop that survives the broker going away (and coming back empty).

    Offsets of a poll are committed only after its write returned (SQLite committed,
    recording files fsynced). At most one write is in flight; while it runs, the polls
    that come in are parsed into the next one (up to MAX_WRITE_RECORDS and
    MAX_WRITE_BYTES), and the one before it is committed. Under a backlog the writes
    grow: a 20,000-event transaction
    cost the SQLite thread ~10 % less per event than four of 5,000 (fewer commits,
    fewer full-text segments to merge); when the store keeps up, each poll is written
    as soon as it is parsed."""
    loop = asyncio.get_running_loop()
    while True:
        consumer = producer = None
        pending: asyncio.Future[None] | None = None
        try:
            log.info("store consumer for %s connecting", route.topic, extra={"topic": route.topic})
            bootstrap = resolve_bootstrap(settings)
            cluster = (await cluster_info(bootstrap)).cluster_id
            checked = time.monotonic()
            producer = await start_producer(settings)
            consumer = await start_consumer(
                settings, [route.topic], group_id=route.group, max_poll_records=MAX_POLL_RECORDS
            )
            dead = DeadLetters(settings, producer, stats)
            route.on_ready()
            offsets: dict[TopicPartition, int] = {}  # of the write in flight
            # parsed, not yet handed to the writer: the batch, its offsets, its size
            parsed: Any = None
            parsed_offsets: dict[TopicPartition, int] = {}
            parsed_records = parsed_bytes = 0
            while True:
                if time.monotonic() - checked >= CLUSTER_CHECK_S:
                    # The embedded broker forgets everything when it restarts: positions
                    # and commits of the old one would skip the new log's start. Never
                    # commit across that: start over from the new broker's earliest.
                    now_id = (await cluster_info(bootstrap, timeout=5.0)).cluster_id
                    if now_id != cluster:
                        raise BrokerUnavailable(f"broker changed ({cluster} -> {now_id})")
                    checked = time.monotonic()
                batches = await consumer.getmany(timeout_ms=0 if pending else POLL_MS)
                records = [r for recs in batches.values() for r in recs]
                if records:
                    parsed = await route.parse(records, dead, parsed)
                    parsed_offsets.update(batch_offsets(batches))
                    parsed_records += len(records)
                    parsed_bytes += sum(len(r.value) for r in records if r.value)
                    if pending is not None and not pending.done():
                        if parsed_records < MAX_WRITE_RECORDS and parsed_bytes < MAX_WRITE_BYTES:
                            continue  # the writer is busy: read on into the next write
                written = None
                if pending is not None:
                    await pending
                    pending, written = None, offsets
                unwritten = None  # offsets of polls that left nothing to write
                if parsed_offsets:
                    batch = route.seal(parsed)
                    if batch is not None:
                        offsets = parsed_offsets
                        # handed to the thread now: a task (to_thread) would start it only
                        # when the loop next waits, often after the next poll's parse
                        pending = loop.run_in_executor(None, route.write, batch)
                    else:  # all malformed: dead-lettered, nothing to write
                        unwritten = parsed_offsets
                    parsed, parsed_offsets, parsed_records, parsed_bytes = None, {}, 0, 0
                if written is not None:  # the last write is durable: commit it while
                    await consumer.commit(written)  # the thread writes the next one
                if unwritten is not None:
                    await consumer.commit(unwritten)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # broker gone or restarted: start over, dedupe absorbs replays
            stats.last_error = str(e)
            log.warning(
                "store consumer for %s restarting: %s", route.topic, e, extra={"topic": route.topic}
            )
        finally:
            if pending is not None:  # never leave a write running behind a new consumer
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
            await _stop(consumer, producer)
        await asyncio.sleep(RETRY_S)


async def _stop(*clients: AIOKafkaConsumer | AIOKafkaProducer | None) -> None:
    """Stop clients without hanging on a broker that is gone (leaving a group whose
    coordinator vanished can retry for ever); uncommitted work is redelivered anyway."""
    tasks = [asyncio.ensure_future(c.stop()) for c in clients if c is not None]
    if not tasks:
        return
    # asyncio.wait, not wait_for: wait_for would wait for a cancelled stop() to unwind.
    done, late = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.debug("client stop failed: %s", t.exception())
    for t in late:
        t.add_done_callback(lambda t: t.cancelled() or t.exception())
        log.warning("a Kafka client did not stop within %.0f s; left behind", STOP_TIMEOUT_S)


class StoreSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.audit = SQLiteAuditStore(settings.db_path)
        self.recordings = RecordingStore(settings.recordings_dir)
        self.stats = SinkStats()
        self._ready: set[str] = set()

    async def _parse_events(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        dead: DeadLetters,
        batch: EventBatchBuilder | None,
    ) -> EventBatchBuilder:
        # rows and search texts are made here, on the loop, which waits for the writer
        # anyway: its thread is left with SQLite's work, mostly run without the GIL
        batch = batch or EventBatchBuilder()
        for r in records:
            try:
                doc, text = parse_event_record_text(r.value)
            except MalformedMessage as e:
                await dead.send(r, e.message)
                continue
            batch.add(doc, text)
        return batch

    @staticmethod
    def _seal_events(batch: EventBatchBuilder) -> EventBatch | None:
        return batch.build() if len(batch) else None

    def _write_events(self, batch: EventBatch) -> None:
        new = self.audit.write(batch)
        self.stats.stored_events += new
        self.stats.duplicate_events += batch.given - new

    async def _parse_frames(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        dead: DeadLetters,
        frames: list[Frame] | None,
    ) -> list[Frame]:
        frames = frames if frames is not None else []
        for r in records:
            try:
                if r.value is None:
                    raise MalformedMessage("empty record (tombstone) on session.frames")
                batch = decode_frames(r.value)
                for f in batch:  # a path-unsafe id would fail the write on every retry
                    if not self.recordings.valid_session_id(f.session_id):
                        raise MalformedMessage(f"unusable session id {f.session_id[:80]!r}")
                frames.extend(batch)
            except MalformedMessage as e:
                await dead.send(r, e.message)
        return frames

    def _write_frames(self, frames: list[Frame]) -> None:
        self.recordings.add(frames)
        self.stats.stored_frames += len(frames)

    def _mark_ready(self, which: str) -> None:
        self._ready.add(which)
        if self._ready >= {"events", "frames"}:
            self.stats.ready.set()
            (self.settings.run_dir / "store.ready").write_text("ready\n")

    async def run(self) -> None:
        (self.settings.run_dir / "store.ready").unlink(missing_ok=True)
        try:
            await asyncio.gather(
                _consume(self.settings, Route(EVENTS_AUDIT, EVENTS_GROUP, self._parse_events,
                         self._seal_events, self._write_events,
                         lambda: self._mark_ready("events")), self.stats),
                _consume(self.settings, Route(SESSION_FRAMES, FRAMES_GROUP, self._parse_frames,
                         lambda frames: frames or None, self._write_frames,
                         lambda: self._mark_ready("frames")), self.stats),
            )  # fmt: skip
        finally:
            (self.settings.run_dir / "store.ready").unlink(missing_ok=True)
            self.audit.close()


__all__ = ["StoreSink", "parse_event_record", "parse_event_record_text"]
