"""Kernel Kafka plumbing against the real embedded broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from auditcast.broker import EmbeddedBroker, free_port
from auditcast.errors import BrokerUnavailable, TopicMissing
from auditcast.events import Event, decode_event
from auditcast.kafka import (
    cluster_info,
    ensure_topics,
    producer_config,
    start_consumer,
    start_producer,
    use_idempotence,
)
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, topic


async def test_embedded_broker_reports_its_own_cluster_id(broker: EmbeddedBroker) -> None:
    info = await cluster_info(broker.bootstrap)
    assert info.cluster_id == broker.cluster_id and info.embedded


async def test_embedded_broker_starts_without_a_connection_error_in_the_logs(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """It is asked over Kafka only once it listens: before, every start logged the
    Kafka client's `Unable connect to ...` ERROR, which read like a fault."""
    b = EmbeddedBroker(log_path=tmp_path / "tansu.log", die_with_parent=True)
    with caplog.at_level(logging.DEBUG):
        await b.start()
    try:
        assert b.running
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert errors == []
    finally:
        b.stop()


async def test_idempotence_is_off_on_tansu_and_on_for_real_kafka(broker: EmbeddedBroker) -> None:
    info = await cluster_info(broker.bootstrap)
    assert use_idempotence(Settings(), info) is False
    real = type(info)(bootstrap="k:9092", cluster_id="MkU3OEVBNTcwNTJENDM2Qk")
    assert use_idempotence(Settings(), real) is True
    assert use_idempotence(Settings(kafka_idempotence="off"), real) is False


async def test_event_produced_is_consumed_with_manual_commit(
    make_settings: Callable[..., Settings],
) -> None:
    s = await asyncio.to_thread(make_settings)
    producer = await start_producer(s)
    e = Event(type="session.start", session_id="s1", user="alice")
    await producer.send_and_wait(topic(s, EVENTS_RAW), e.to_json(), key=e.key)
    await producer.stop()
    consumer = await start_consumer(s, [EVENTS_RAW], group_id="g1")
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert decode_event(msg.value).id == e.id
        await consumer.commit()
    finally:
        await consumer.stop()


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
async def test_every_compression_setting_round_trips_through_the_broker(
    make_settings: Callable[..., Settings], codec: str
) -> None:
    """Whatever `AUDITCAST_KAFKA_COMPRESSION` says, a batch of envelopes comes back as
    sent (Tansu keeps the compressed batch; the consumer needs no setting to read it)."""
    s = await asyncio.to_thread(make_settings, kafka_compression=codec)
    assert producer_config(s, "x", idempotent=False)["compression_type"] == (
        None if codec == "none" else codec
    )
    producer = await start_producer(s)
    sent = [Event(type="session.start", session_id=f"s{i}", user="alice") for i in range(200)]
    try:
        acks = [await producer.send(topic(s, EVENTS_RAW), e.to_json(), key=b"k") for e in sent]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    consumer = await start_consumer(s, [EVENTS_RAW], group_id=f"g-{codec}")
    got: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(r.value for r in recs if r.value is not None)
    finally:
        await consumer.stop()
    assert got == [e.to_json() for e in sent]


async def test_ensure_topics_is_idempotent(make_settings: Callable[..., Settings]) -> None:
    s = await asyncio.to_thread(make_settings)
    assert await ensure_topics(s) == []


async def test_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(BrokerUnavailable, match=r"unreachable|did not answer"):
        await cluster_info(f"127.0.0.1:{free_port()}", timeout=1.5)


async def test_missing_topic_is_a_clear_error(broker: EmbeddedBroker, tmp_path) -> None:
    s = Settings(home=tmp_path, kafka=broker.bootstrap, topic_prefix="never-created.")
    with pytest.raises(TopicMissing, match=r"never-created\.events\.raw"):
        await start_consumer(s, [EVENTS_RAW], group_id="g")


async def test_batch_sender_keeps_order_and_makes_the_log_end_visible_on_tansu(
    broker: EmbeddedBroker,
) -> None:
    """Tansu reports the log end as the last batch's base offset + 1. A plain batch of
    ten records makes that 1 (a reader that reads "to the end", like Faust's table
    recovery, would stop after one record); with `end_alone` it is the true end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from auditcast.kafka import BatchSender, consumer_config

    s = Settings(kafka=broker.bootstrap)
    producer = await start_producer(s, broker.bootstrap)
    names = {"plain": f"bs-plain-{free_port()}", "alone": f"bs-alone-{free_port()}"}
    try:
        for which, name in names.items():
            out = BatchSender(producer, end_alone=[name] if which == "alone" else [])
            for i in range(10):
                await out.add(name, 0, f"k{i}".encode(), f"v{i}".encode())
            await asyncio.gather(*await out.send())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**consumer_config(broker.bootstrap, None))
    await consumer.start()
    try:
        ends = {}
        for which, name in names.items():
            tp = TopicPartition(name, 0)
            consumer.assign([tp])
            ends[which] = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            got = await consumer.getmany(tp, timeout_ms=2000)
            assert [r.value for r in got.get(tp, [])] == [f"v{i}".encode() for i in range(10)]
    finally:
        await consumer.stop()
    assert ends == {"plain": 1, "alone": 10}
