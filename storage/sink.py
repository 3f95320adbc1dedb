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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaProducer, ConsumerRecord

from auditcast.errors import MalformedMessage
from auditcast.events import decode_event, decode_frames
from auditcast.kafka import start_consumer, start_producer
from auditcast.settings import Settings
from auditcast.storage.recordings import RecordingStore
from auditcast.storage.sqlite import SQLiteAuditStore
from auditcast.topics import DEAD_LETTER, EVENTS_AUDIT, SESSION_FRAMES, topic

log = logging.getLogger(__name__)

EVENTS_GROUP: Final = "auditcast-store-events"
FRAMES_GROUP: Final = "auditcast-store-frames"
# One poll is one transaction: big enough to amortise the commit, bounded for memory.
MAX_POLL_RECORDS: Final = 5000
RETRY_S: Final = 2.0


@dataclass
class SinkStats:
    stored_events: int = 0
    duplicate_events: int = 0
    stored_frames: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def parse_event_record(value: bytes | None) -> dict[str, Any]:
    """Validate like the contract says, then keep the document as sent (extras intact)."""
    if value is None:
        raise MalformedMessage("empty record (tombstone) on an event topic")
    return decode_event(value).to_dict()


class DeadLetters:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, stats: SinkStats):
        self.settings, self.producer, self.stats = settings, producer, stats

    async def send(self, rec: ConsumerRecord[bytes, bytes], error: str) -> None:
        self.stats.dead_lettered += 1
        log.warning(
            "malformed record sent to dead-letter: %s",
            error,
            extra={"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
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


async def _consume(
    settings: Settings,
    name: str,
    group: str,
    handle: Callable[[list[ConsumerRecord[bytes, bytes]], DeadLetters], Awaitable[None]],
    stats: SinkStats,
    on_ready: Callable[[], None],
) -> None:
    """One consumer loop that survives the broker going away (and coming back empty)."""
    while True:
        consumer = producer = None
        try:
            producer = await start_producer(settings)
            consumer = await start_consumer(
                settings, [name], group_id=group, max_poll_records=MAX_POLL_RECORDS
            )
            dead = DeadLetters(settings, producer, stats)
            on_ready()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                records = [r for recs in batches.values() for r in recs]
                if not records:
                    continue
                await handle(records, dead)
                await consumer.commit()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # broker gone or restarted: start over, dedupe absorbs replays
            stats.last_error = str(e)
            log.warning("store consumer for %s restarting: %s", name, e, extra={"topic": name})
            await asyncio.sleep(RETRY_S)
        finally:
            for client in (consumer, producer):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()


class StoreSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.audit = SQLiteAuditStore(settings.db_path)
        self.recordings = RecordingStore(settings.recordings_dir)
        self.stats = SinkStats()
        self._ready: set[str] = set()

    async def _events(self, records: list[ConsumerRecord[bytes, bytes]], dead: DeadLetters) -> None:
        docs = []
        for r in records:
            try:
                docs.append(parse_event_record(r.value))
            except MalformedMessage as e:
                await dead.send(r, e.message)
        if docs:
            new = await asyncio.to_thread(self.audit.add_many, docs)
            self.stats.stored_events += new
            self.stats.duplicate_events += len(docs) - new

    async def _frames(self, records: list[ConsumerRecord[bytes, bytes]], dead: DeadLetters) -> None:
        frames = []
        for r in records:
            try:
                if r.value is None:
                    raise MalformedMessage("empty record (tombstone) on session.frames")
                frames.extend(decode_frames(r.value))
            except MalformedMessage as e:
                await dead.send(r, e.message)
        if frames:
            await asyncio.to_thread(self.recordings.add, frames)
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
                _consume(self.settings, EVENTS_AUDIT, EVENTS_GROUP, self._events, self.stats,
                         lambda: self._mark_ready("events")),
                _consume(self.settings, SESSION_FRAMES, FRAMES_GROUP, self._frames, self.stats,
                         lambda: self._mark_ready("frames")),
            )  # fmt: skip
        finally:
            (self.settings.run_dir / "store.ready").unlink(missing_ok=True)
            self.audit.close()


__all__ = ["StoreSink", "parse_event_record"]
