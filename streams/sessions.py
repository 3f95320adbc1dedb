"""Session assembly: start, frames and end of one session folded into a summary.

Pure state transitions over plain dicts (they live in a Faust table, JSON on its
changelog); the agents in `streams.app` feed them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypedDict

from auditcast.events import Event, Frame, format_time


class SessionSummary(TypedDict, total=False):
    session_id: str
    start: str  # RFC 3339 time of session.start
    end: str  # RFC 3339 time of session.end
    frames: int
    bytes: int
    last_seq: int


def empty(session_id: str) -> SessionSummary:
    return {"session_id": session_id, "frames": 0, "bytes": 0, "last_seq": -1}


def on_event(summary: SessionSummary, event: Event) -> SessionSummary:
    """Fold a session.start or session.end into the summary; other events leave it."""
    out = dict(summary)
    if event.type == "session.start":
        out["start"] = format_time(event.time)
    elif event.type == "session.end":
        out["end"] = format_time(event.time)
    return out  # type: ignore[return-value]


def on_frames(summary: SessionSummary, frames: Iterable[Frame]) -> SessionSummary:
    count = summary.get("frames", 0)
    size = summary.get("bytes", 0)
    last = summary.get("last_seq", -1)
    for f in frames:
        count += 1
        size += len(f.data)
        last = max(last, f.seq)
    out: SessionSummary = {**summary}
    out["frames"], out["bytes"], out["last_seq"] = count, size, last
    return out


def end_fields(event: Event, summary: SessionSummary) -> dict[str, Any]:
    """For a session.end: `frames` and `duration` (seconds) where the collector left them
    out (values the collector sent are kept); nothing for other events."""
    if event.type != "session.end":
        return {}
    extra: dict[str, Any] = event.model_extra or {}
    update: dict[str, Any] = {}
    if "frames" not in extra and summary.get("frames"):
        update["frames"] = summary["frames"]
    if "duration" not in extra and "start" in summary:
        start = datetime.fromisoformat(summary["start"].replace("Z", "+00:00"))
        update["duration"] = round(max(0.0, (event.time - start).total_seconds()), 6)
    return update


def enrich_end(event: Event, summary: SessionSummary) -> Event:
    """The event with `end_fields` added."""
    update = end_fields(event, summary)
    if not update:
        return event
    return Event.model_validate({**event.to_dict(), **update})
