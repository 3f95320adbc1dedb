"""Topic names and their creation (DESIGN §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from auditcast.settings import Settings

EVENTS_RAW: Final = "events.raw"
SESSION_FRAMES: Final = "session.frames"
IDENTITIES: Final = "identities"
LOCKS: Final = "locks"
EVENTS_AUDIT: Final = "events.audit"
ALERTS: Final = "alerts"
DEAD_LETTER: Final = "dead-letter"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    compact: bool = False


TOPICS: Final[tuple[TopicSpec, ...]] = (
    TopicSpec(EVENTS_RAW),
    TopicSpec(SESSION_FRAMES),
    TopicSpec(IDENTITIES, compact=True),
    TopicSpec(LOCKS, compact=True),
    TopicSpec(EVENTS_AUDIT),
    TopicSpec(ALERTS),
    TopicSpec(DEAD_LETTER),
)


def topic(settings: Settings, name: str) -> str:
    """The full topic name with the configured prefix."""
    return f"{settings.topic_prefix}{name}"
