"""The seam every audit store implements (SQLite now, Elasticsearch later)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# A page of search results never exceeds this many events.
MAX_PAGE: int = 1000


@dataclass(frozen=True)
class EventQuery:
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    type: str | None = None
    session_id: str | None = None
    cluster: str | None = None
    q: str | None = None
    limit: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")


@dataclass
class Page:
    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


class AuditStore(Protocol):
    """Idempotent on event id: adding the same event twice stores it once."""

    def add_many(self, docs: Sequence[dict[str, Any]]) -> int: ...

    def search(self, query: EventQuery) -> Page: ...

    def get(self, event_id: str) -> dict[str, Any] | None: ...

    def sessions(
        self, *, user: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def session(self, session_id: str) -> dict[str, Any] | None: ...
