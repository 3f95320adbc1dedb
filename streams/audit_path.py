"""The worker's hot path: `events.raw` read in large batches, beside Faust.

Faust hands a stream one event at a time (a queue hop, a task switch and an ack per
event): profiled at ~190 µs of the worker's ~280 µs per event on this 2-core machine,
which capped attribution near 2,300 events/s. Attribution itself needs no per-event
machinery, so `events.raw` is read here with a plain aiokafka consumer, `getmany` at a
time, and each batch is processed and its output acknowledged before its offsets are
committed (at-least-once, as before; the stores dedupe by event id).

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
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError

from auditcast.errors import BrokerUnavailable
from auditcast.kafka import consumer_config, next_offsets

log = logging.getLogger("auditcast.streams.audit_path")

# One batch: enough to amortise the commit and the producer's acks, bounded for memory.
MAX_BATCH: Final = 5000
# An idle poll returns after this; a stop or an assignment change is noticed as soon.
POLL_MS: Final = 100
RETRY_S: Final = 1.0

Process = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


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
        # Held while a batch is processed and committed: a revoke waits for it.
        self._batch = asyncio.Lock()
        self._owned: frozenset[int] = frozenset()
        self._assigned = asyncio.Event()

    async def stop(self) -> None:
        """Stop reading; a batch in hand is finished and committed first."""
        async with self._batch:
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
            self._owned = wanted
            self._apply()
        log.info("owning %s partitions %s", self.topic, sorted(wanted))

    async def revoke(self) -> None:
        """Let go of every partition once the batch in hand is committed."""
        async with self._batch:
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
                        self._apply()
        finally:
            await consumer.stop()

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_BATCH)
        if not batches:
            return
        async with self._batch:
            # A revoke may have come while the fetch was out: drop what is no longer ours.
            records = [
                r for tp, recs in batches.items() if tp.partition in self._owned for r in recs
            ]
            if records:
                await self._process(records)
                await consumer.commit(next_offsets(records))
