"""The worker's view of the compacted `identities` topic: credential id → identity.

Attribution joins events (keyed by session) with identities (keyed by credential), so
every worker needs the whole topic, not the partitions its group was assigned. Faust's
GlobalTable is the textbook tool, but with it the Faust assignor never finished the
first group assignment on the embedded Tansu broker (measured: stuck after "Elected
group leader" for 90 s; the same app without it joins in ~8 s). So this is a plain
group-less aiokafka consumer over all partitions, from the beginning, folded into a
dict: the same semantics (compaction: last record per key wins, tombstone deletes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from auditcast.aio import cancel_and_wait
from auditcast.errors import BrokerUnavailable, MalformedMessage
from auditcast.events import Identity
from auditcast.kafka import CONNECT_TIMEOUT_S, consumer_config
from auditcast.streams.attribution import parse_identity_record

log = logging.getLogger("auditcast.streams.identities")

# How long attribution waits for the view to catch up before calling a credential
# unknown: a credential is usually issued moments before its first use.
CATCH_UP_WAIT_S: Final = 2.0


class IdentityView:
    """All of `identities`, kept current by a background task."""

    def __init__(self, bootstrap: str, topic_name: str) -> None:
        self.bootstrap = bootstrap
        self.topic_name = topic_name
        self.records: dict[str, Identity] = {}
        self.malformed = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    def get(self, credential_id: str | None) -> Identity | None:
        return self.records.get(credential_id) if credential_id else None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one record: the latest per credential wins, a null value deletes."""
        if key is None:
            self.malformed += 1
            log.warning("identities record without a key ignored")
            return
        credential_id = key.decode(errors="replace")
        if value is None:
            self.records.pop(credential_id, None)
            return
        try:
            self.records[credential_id] = parse_identity_record(value)
        except MalformedMessage as e:
            self.malformed += 1
            log.warning(
                "unusable identities record ignored",
                extra={"credential_id": credential_id, "fields": {"error": e.message}},
            )

    async def start(self) -> None:
        cfg = consumer_config(self.bootstrap, None)
        consumer = AIOKafkaConsumer(**cfg)
        try:
            await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
            parts = consumer.partitions_for_topic(self.topic_name)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(self.topic_name) or set()
            if not parts:
                raise BrokerUnavailable(f"topic {self.topic_name} has no partitions")
            self._partitions = [TopicPartition(self.topic_name, p) for p in sorted(parts)]
            consumer.assign(self._partitions)
            await consumer.seek_to_beginning(*self._partitions)
        except (TimeoutError, KafkaError, OSError) as e:
            await consumer.stop()
            raise BrokerUnavailable(f"cannot read {self.topic_name}: {e}") from None
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="identities-view")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for r in records:
                    self.apply(r.key, r.value)
            self._progress.set()
            self._progress = asyncio.Event()

    async def catch_up(self, timeout: float = CATCH_UP_WAIT_S) -> bool:
        """Wait until everything on the topic now has been read; False on timeout."""
        consumer = self._consumer
        if consumer is None:
            return False
        deadline = time.monotonic() + timeout
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(self._partitions), timeout)
        except (TimeoutError, KafkaError):
            return False
        while True:
            positions = [await self._position(tp) for tp in ends]
            if all(pos >= end for pos, end in zip(positions, ends.values(), strict=True)):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                return False

    async def _position(self, tp: TopicPartition) -> int:
        assert self._consumer is not None
        return int(await self._consumer.position(tp))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._consumer is not None:
            await self._consumer.stop()
