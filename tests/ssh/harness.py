"""Start the gateway for tests, and read back what it wrote to the broker."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from auditcast.collectors.ssh.policy import Node
from auditcast.collectors.ssh.service import GatewayService, load_keys, start_service
from auditcast.collectors.ssh.wiring import StaticNodes
from auditcast.events import Event, Frame, decode_event, decode_frames
from auditcast.kafka import resolve_bootstrap
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES, topic


async def start_gateway(
    settings: Settings, pki: Any, nodes: dict[str, Any], roles: dict[str, Any]
) -> GatewayService:
    # Every test's home shares the session's CAs: the sshd nodes trust that user CA.
    shutil.copytree(pki.ca_dir, settings.home_dir / "ca", dirs_exist_ok=True)
    inventory = StaticNodes(
        Node(name=n.name, address="127.0.0.1", port=n.port, labels=n.labels) for n in nodes.values()
    )
    svc: GatewayService = await start_service(
        settings,
        inventory,
        roles,
        host="127.0.0.1",
        port=0,
        keys=load_keys(settings, ("127.0.0.1", "localhost")),
    )
    return svc


async def _read(
    settings: Settings, name: str, done: Callable[[list[bytes]], bool], timeout: float
) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic(settings, name),
        bootstrap_servers=resolve_bootstrap(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                values.extend(r.value for r in records if r.value is not None)
            if done(values):
                break
    finally:
        await consumer.stop()
    return values


def read_events(
    settings: Settings, until: Callable[[list[Event]], bool], timeout: float = 15.0
) -> list[Event]:
    """Events on `events.raw`, read until `until(events)` holds or the timeout."""

    def done(values: list[bytes]) -> bool:
        return until([decode_event(v) for v in values])

    values = asyncio.run(_read(settings, EVENTS_RAW, done, timeout))
    return [decode_event(v) for v in values]


def read_frames(
    settings: Settings, until: Callable[[list[Frame]], bool], timeout: float = 15.0
) -> list[Frame]:
    def decode(values: list[bytes]) -> list[Frame]:
        return [f for v in values for f in decode_frames(v)]

    values = asyncio.run(_read(settings, SESSION_FRAMES, lambda v: until(decode(v)), timeout))
    return decode(values)


def session_frames(frames: list[Frame], session_id: str) -> list[Frame]:
    """One session's frames in order, each seq once (redelivery is allowed upstream)."""
    seen: dict[int, Frame] = {}
    for f in frames:
        if f.session_id == session_id:
            seen.setdefault(f.seq, f)
    return [seen[s] for s in sorted(seen)]


def output_of(frames: list[Frame]) -> bytes:
    return b"".join(f.data for f in frames if f.kind == "o")


def input_of(frames: list[Frame]) -> bytes:
    return b"".join(f.data for f in frames if f.kind == "i")
