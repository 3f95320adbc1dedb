"""Read what is on a topic, for assertions (no consumer group, from the beginning)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, topic


async def events_on(settings: Settings, name: str = EVENTS_RAW) -> list[dict[str, Any]]:
    """Every JSON document on partition 0 of a topic, up to its end offset now."""
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic(settings, name), 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        end = (await c.end_offsets([tp]))[tp]
        out: list[dict[str, Any]] = []
        while await c.position(tp) < end:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out.extend(orjson.loads(r.value) for r in recs)
        return out
    finally:
        await c.stop()
