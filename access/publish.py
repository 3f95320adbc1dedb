"""How the API process (locks, access requests, MFA) puts records and events on Kafka.

One lazily started producer with acks=all. A send that cannot reach the broker raises
`BrokerUnavailable` after `SEND_TIMEOUT_S`; the producer is then rebuilt on the next
send, because a restarted embedded broker is a different cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from auditcast.errors import BrokerUnavailable
from auditcast.events import Event
from auditcast.kafka import start_producer
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, topic

log = logging.getLogger(__name__)

# A lock or audit event that cannot be written in this time is reported, not hung on.
SEND_TIMEOUT_S: Final = 5.0


def audit_event(event_type: str, **fields: Any) -> Event:
    """An envelope with type-specific fields riding along as extras."""
    return Event(type=event_type, **fields)


class Publisher:
    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                self._producer = await start_producer(self.settings, self.bootstrap)
            return self._producer

    async def send(self, topic_name: str, key: bytes, value: bytes | None) -> None:
        """One record on a prefixed topic, acknowledged by the broker."""
        producer = await self._get()
        try:
            await asyncio.wait_for(
                producer.send_and_wait(topic(self.settings, topic_name), value, key=key),
                SEND_TIMEOUT_S,
            )
        except (TimeoutError, KafkaError, OSError) as e:
            await self.reset()
            raise BrokerUnavailable(
                f"cannot write to {topic_name}: {e or type(e).__name__}"
            ) from None

    async def emit(self, event: Event) -> None:
        """An audit event on `events.raw`."""
        await self.send(EVENTS_RAW, event.key, event.to_json())
        log.info(
            "emitted %s",
            event.type,
            extra={"event_id": event.id, "user": event.user, "credential_id": event.credential_id},
        )

    async def emit_quietly(self, event: Event) -> bool:
        """`emit`, logging instead of raising: for events that must not fail a request."""
        try:
            await self.emit(event)
            return True
        except BrokerUnavailable as e:
            log.warning("event %s not emitted: %s", event.type, e, extra={"event_id": event.id})
            return False

    async def reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), SEND_TIMEOUT_S)

    async def close(self) -> None:
        await self.reset()
