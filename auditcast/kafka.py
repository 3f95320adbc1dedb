"""Kafka plumbing shared by every part: where the broker is, topics, producers, consumers.

Delivery rules (DESIGN §3): producers use acks=all (idempotent where the broker
supports it); consumers never auto-commit, they commit after their output is durable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from auditcast.errors import BrokerUnavailable, TopicMissing
from auditcast.events import MAX_FRAME_BATCH_BYTES
from auditcast.lifeline import pid_alive
from auditcast.settings import Settings
from auditcast.topics import TOPICS, topic

# The embedded broker names its cluster with this prefix, so clients can tell it from a
# real Kafka (idempotence off) and notice a restart (a new id: replay the spool window).
EMBEDDED_CLUSTER_PREFIX: Final = "auditcast-embedded-"
# How long a client waits for a broker before reporting it unavailable.
CONNECT_TIMEOUT_S: Final = 10.0
# Request size: the largest frame batch plus headroom for the record batch framing.
MAX_REQUEST_BYTES: Final = MAX_FRAME_BATCH_BYTES + 64 * 1024
TOPIC_ALREADY_EXISTS: Final = 36


@dataclass(frozen=True)
class ClusterInfo:
    bootstrap: str
    cluster_id: str

    @property
    def embedded(self) -> bool:
        return self.cluster_id.startswith(EMBEDDED_CLUSTER_PREFIX) or self.cluster_id.startswith(
            "tansu"
        )


def resolve_bootstrap(settings: Settings) -> str:
    """AUDITCAST_KAFKA if set, else the embedded broker `auditcast up` published."""
    if settings.kafka:
        return settings.kafka
    try:
        info = json.loads(settings.broker_file.read_text())
        bootstrap = str(info["bootstrap"])
    except (OSError, ValueError, KeyError):
        raise BrokerUnavailable(
            f"no Kafka broker configured and none running under {settings.home_dir}"
        ) from None
    pid = info.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        # left behind by an `auditcast up` that was killed outright: say so, rather
        # than have every client time out connecting to an address nobody serves
        raise BrokerUnavailable(
            f"the embedded broker {settings.broker_file} names (pid {pid}) is gone: "
            "`auditcast up` was stopped without cleaning up"
        )
    return bootstrap


async def _admin(bootstrap: str, timeout: float) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (TimeoutError, KafkaConnectionError, KafkaError, OSError) as e:
        await admin.close()
        raise BrokerUnavailable(f"Kafka broker at {bootstrap} is unreachable: {e}") from None
    return admin


async def cluster_info(bootstrap: str, timeout: float = CONNECT_TIMEOUT_S) -> ClusterInfo:
    admin = await _admin(bootstrap, timeout)
    try:
        desc = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return ClusterInfo(bootstrap=bootstrap, cluster_id=str(desc["cluster_id"]))
    except (TimeoutError, KafkaError, OSError) as e:
        raise BrokerUnavailable(f"Kafka broker at {bootstrap} did not answer: {e}") from None
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, bootstrap: str | None = None) -> list[str]:
    """Create every auditcast topic that is missing; returns the names created."""
    bootstrap = bootstrap or resolve_bootstrap(settings)
    admin = await _admin(bootstrap, CONNECT_TIMEOUT_S)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                topic(settings, spec.name),
                settings.partitions,
                settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if spec.compact else {},
            )
            for spec in TOPICS
            if topic(settings, spec.name) not in existing
        ]
        if not wanted:
            return []
        resp = await admin.create_topics(wanted)
        created = []
        for name, code, msg in resp.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise BrokerUnavailable(f"cannot create topic {name}: {msg} (error {code})")
            if code == 0:
                created.append(name)
        return created
    except KafkaError as e:
        raise BrokerUnavailable(f"cannot create topics on {bootstrap}: {e}") from None
    finally:
        await admin.close()


async def require_topics(settings: Settings, names: list[str], bootstrap: str) -> None:
    """Raise TopicMissing naming the first absent topic."""
    admin = await _admin(bootstrap, CONNECT_TIMEOUT_S)
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    for name in names:
        full = topic(settings, name)
        if full not in existing:
            raise TopicMissing(f"topic {full} does not exist on {bootstrap}")


def use_idempotence(settings: Settings, info: ClusterInfo | None) -> bool:
    if settings.kafka_idempotence != "auto":
        return settings.kafka_idempotence == "on"
    return not (info is None or info.embedded)


def producer_config(settings: Settings, bootstrap: str, idempotent: bool) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": idempotent,
        # Small linger: collectors send in bursts; 5 ms batches them without a felt delay.
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "max_request_size": MAX_REQUEST_BYTES,
        "request_timeout_ms": 15_000,
        "compression_type": compression_type(settings),
    }


def compression_type(settings: Settings) -> str | None:
    """The settings' batch compression as aiokafka and Faust name it (None: none)."""
    return None if settings.kafka_compression == "none" else settings.kafka_compression


async def start_producer(settings: Settings, bootstrap: str | None = None) -> AIOKafkaProducer:
    """A started producer with acks=all; idempotent unless the broker is the embedded one."""
    bootstrap = bootstrap or resolve_bootstrap(settings)
    info = await cluster_info(bootstrap)
    producer = AIOKafkaProducer(
        **producer_config(settings, bootstrap, use_idempotence(settings, info))
    )
    try:
        await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_S)
    except (TimeoutError, KafkaError, OSError) as e:
        await producer.stop()
        raise BrokerUnavailable(f"cannot start a producer on {bootstrap}: {e}") from None
    return producer


def consumer_config(bootstrap: str, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        # Tansu rebalances slowly with the defaults; a short session keeps joins brisk.
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 300_000,
    }
    cfg.update(overrides)
    return cfg


async def start_consumer(
    settings: Settings,
    names: list[str],
    group_id: str | None,
    bootstrap: str | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A started consumer on the prefixed topics; manual commits only."""
    bootstrap = bootstrap or resolve_bootstrap(settings)
    await require_topics(settings, names, bootstrap)
    consumer = AIOKafkaConsumer(
        *(topic(settings, n) for n in names), **consumer_config(bootstrap, group_id, **overrides)
    )
    try:
        await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
    except (TimeoutError, KafkaError, OSError) as e:
        await consumer.stop()
        raise BrokerUnavailable(f"cannot start a consumer on {bootstrap}: {e}") from None
    return consumer


def next_offsets(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[TopicPartition, int]:
    """The offsets to commit once `records` are durably handled: one past the last
    record of each partition."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


class BatchSender:
    """Records for one producer, grouped into one batch per (topic, partition) in order.

    `producer.send` costs ~35 µs per record here (a future, the partitioner, the
    accumulator); appending to a batch the caller fills costs a few. For stages that
    write thousands of records per poll and wait for all of them anyway.

    Topics in `end_alone` get the last record of each partition in a batch of its own.
    Tansu answers ListOffsets(latest) with the last *batch's* base offset + 1, not the
    log end, so a reader that reads "up to the end" (Faust's table recovery does) stops
    after the first record of the last batch and misses the rest; with the last record
    alone in its batch, that answer is the true end.
    """

    def __init__(self, producer: AIOKafkaProducer, end_alone: Iterable[str] = ()) -> None:
        self.producer = producer
        self.end_alone = frozenset(end_alone)
        self._open: dict[tuple[str, int], Any] = {}
        self._held: dict[tuple[str, int], _Record] = {}
        self._futures: list[asyncio.Future[Any]] = []

    async def add(
        self,
        topic_name: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        where = (topic_name, partition)
        record = _Record(key, value, headers or [])
        if topic_name in self.end_alone:  # hold it back; append the one held before
            previous = self._held.get(where)
            self._held[where] = record
            if previous is None:
                return
            record = previous
        await self._append(where, record)

    async def _append(self, where: tuple[str, int], record: _Record) -> None:
        batch = self._open.get(where)
        if batch is None:
            batch = self._open[where] = self.producer.create_batch()
        if record.append_to(batch):
            return
        await self._send_open(where)  # full: send it and start the next one
        batch = self._open[where] = self.producer.create_batch()
        if not record.append_to(batch):
            raise ValueError(f"a {len(record.value or b'')}-byte record does not fit a batch")

    async def _send_open(self, where: tuple[str, int]) -> None:
        batch = self._open.pop(where)
        self._futures.append(await self.producer.send_batch(batch, where[0], partition=where[1]))

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every open batch to the producer; the futures of all batches sent."""
        for where in list(self._open):
            await self._send_open(where)
        for where, record in self._held.items():  # each alone, after the rest
            await self._append(where, record)
            await self._send_open(where)
        self._held.clear()
        futures, self._futures = self._futures, []
        return futures


@dataclass(frozen=True)
class _Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def append_to(self, batch: Any) -> bool:
        """Whether it fitted (aiokafka's BatchBuilder returns None when full)."""
        appended = batch.append(
            key=self.key, value=self.value, timestamp=None, headers=self.headers
        )
        return appended is not None
