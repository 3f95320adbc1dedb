"""The worker's hot path: `events.raw` read in large batches, beside Faust.

Faust hands a stream one event at a time (a queue hop, a task switch and an ack per
event): profiled at ~190 µs of the worker's ~280 µs per event on this 2-core machine,
which capped attribution near 2,300 events/s. Attribution itself needs no per-event
machinery, so `events.raw` is read here with a plain aiokafka consumer, `getmany` at a
time. A batch's offsets are committed only once its output is acknowledged
(at-least-once, as before; the stores dedupe by event id); while the broker
acknowledges one batch, the next is already being processed (one batch in flight).

Faust still coordinates: its consumer group (over `session.frames` and the sessions
table's changelog) decides which partitions this worker owns, and recovers the table.
`events.raw` is co-partitioned with `session.frames` by session id, so this path
follows that assignment: on a revoke it finishes the batch in hand, commits and lets
go; after the rebalance (tables recovered) it takes the same partition numbers of
`events.raw`. Its offsets are committed under their own group id, which never joins
(manual assignment), so they cannot disturb Faust's group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError

from auditcast.errors import BrokerUnavailable
from auditcast.kafka import consumer_config

log = logging.getLogger("auditcast.streams.audit_path")

# One batch: enough to amortise the commit and the producer's acks, bounded for memory.
MAX_BATCH: Final = 5000
# An idle poll returns after this; a stop or an assignment change is noticed as soon.
POLL_MS: Final = 100
RETRY_S: Final = 1.0

Records = Sequence[ConsumerRecord[bytes, bytes]]
# Processes a batch: returns once its output is queued, with an awaitable that completes
# when the broker has acknowledged all of it.
Process = Callable[[Records], Awaitable[Awaitable[Any]]]


@dataclass
class _InFlight:
    acked: Awaitable[Any]
    offsets: dict[TopicPartition, int]


class AuditPath:
    """Reads `topic` for the partitions it is told to own and hands batches to `process`."""

    def __init__(self, bootstrap: str, topic: str, group: str, process: Process) -> None:
        self.topic = topic
        self.group = group
        self._process = process
        self._bootstrap = bootstrap
        # Made in run(): aiokafka clients bind to the running loop (Faust's).
        self._consumer: AIOKafkaConsumer | None = None
        self._running = asyncio.Event()
        # Held while a batch is processed or settled: a revoke waits for it.
        self._batch = asyncio.Lock()
        self._owned: frozenset[int] = frozenset()
        self._assigned = asyncio.Event()
        self._in_flight: _InFlight | None = None

    async def stop(self) -> None:
        """Stop reading; the batch in flight is acknowledged and committed first."""
        async with self._batch:
            await self._settle_before_handover()
            self._owned = frozenset()
            self._assigned.clear()
            if self._consumer is not None:
                await self._consumer.stop()

    async def own(self, partitions: Iterable[int]) -> None:
        """Take (exactly) these partitions from their committed offsets (now, or as soon
        as `run` has its consumer: Faust may rebalance before it starts app tasks)."""
        wanted = frozenset(partitions)
        async with self._batch:
            if wanted == self._owned:
                return
            await self._settle_before_handover()
            self._owned = wanted
            self._apply()
        log.info("owning %s partitions %s", self.topic, sorted(wanted))

    async def revoke(self) -> None:
        """Let go of every partition once the batch in flight is committed."""
        async with self._batch:
            await self._settle_before_handover()
            had, self._owned = self._owned, frozenset()
            self._release()
        if had:
            log.info("owning %s partitions [] (revoked %s)", self.topic, sorted(had))

    def _release(self) -> None:
        self._assigned.clear()
        if self._consumer is not None and self._consumer.assignment():
            self._consumer.unsubscribe()

    def _apply(self) -> None:
        """Assign what we own to the consumer (a new assignment starts each partition at
        its last commit)."""
        if self._consumer is None or not self._running.is_set():
            return
        if not self._owned:
            self._release()
            return
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(self._owned)])
        self._assigned.set()

    async def _settle(self) -> None:
        """Wait for the batch in flight to be acknowledged, then commit it."""
        flight, self._in_flight = self._in_flight, None
        if flight is not None and self._consumer is not None:
            await flight.acked
            await self._consumer.commit(flight.offsets)

    async def _settle_before_handover(self) -> None:
        """`_settle` for a rebalance or a stop: if the batch cannot be made durable now,
        it is not committed and whoever owns the partitions next reads it again."""
        try:
            await self._settle()
        except (KafkaError, BrokerUnavailable, OSError, TimeoutError) as e:
            log.warning(
                "audit path could not commit its last batch before a handover; it will be "
                "read again: %s",
                e or type(e).__name__,
                extra={"topic": self.topic},
            )

    async def run(self) -> None:
        """Read and process until stopped. A failed batch (the broker went away, output
        not acknowledged) is read again from the last commit."""
        consumer = self._consumer = AIOKafkaConsumer(
            **consumer_config(self._bootstrap, self.group, max_poll_records=MAX_BATCH)
        )
        await consumer.start()
        async with self._batch:
            self._running.set()
            self._apply()
        try:
            while True:
                await self._assigned.wait()
                try:
                    await self._poll_once(consumer)
                except ConsumerStoppedError:
                    return
                except (KafkaError, BrokerUnavailable, OSError, TimeoutError) as e:
                    log.warning(
                        "audit path failed a batch; re-reading it from the last commit: %s",
                        e or type(e).__name__,
                        extra={"topic": self.topic},
                    )
                    await asyncio.sleep(RETRY_S)
                    async with self._batch:
                        self._drop_in_flight()
                        self._apply()
        finally:
            self._drop_in_flight()
            await consumer.stop()

    def _drop_in_flight(self) -> None:
        flight, self._in_flight = self._in_flight, None
        if flight is not None and isinstance(flight.acked, asyncio.Future):
            # its outcome no longer matters: the batch is read again
            flight.acked.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        idle_ms = 0 if self._in_flight is not None else POLL_MS
        batches = await consumer.getmany(timeout_ms=idle_ms, max_records=MAX_BATCH)
        async with self._batch:
            # A revoke may have come while the fetch was out: drop what is no longer ours.
            owned = {tp: recs for tp, recs in batches.items() if tp.partition in self._owned}
            records = [r for recs in owned.values() for r in recs]
            acked = await self._process(records) if records else None
            # this batch's output is queued; now the previous one must be durable
            await self._settle()
            if acked is not None:
                # each partition's records come in offset order: commit past the last
                offsets = {tp: recs[-1].offset + 1 for tp, recs in owned.items() if recs}
                self._in_flight = _InFlight(acked, offsets)
