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
    return fold_event(summary, event.type, format_time(event.time))


def fold_event(summary: SessionSummary, event_type: str, time: str) -> SessionSummary:
    """`on_event` from the event's type and its time as `format_time` writes it (what a
    plainly valid envelope carries), without the model."""
    out = dict(summary)
    if event_type == "session.start":
        out["start"] = time
    elif event_type == "session.end":
        out["end"] = time
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
    return _end_fields(event.time, event.model_extra or {}, summary)


def end_fields_doc(doc: dict[str, Any], summary: SessionSummary) -> dict[str, Any]:
    """`end_fields` for an envelope as JSON that `plainly_valid_event` accepted."""
    if doc["type"] != "session.end":
        return {}
    # `frames` and `duration` are no envelope fields: in the JSON exactly when extras
    return _end_fields(_parse_time(doc["time"]), doc, summary)


def _end_fields(end: datetime, sent: Any, summary: SessionSummary) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if "frames" not in sent and summary.get("frames"):
        update["frames"] = summary["frames"]
    if "duration" not in sent and "start" in summary:
        start = _parse_time(summary["start"])
        update["duration"] = round(max(0.0, (end - start).total_seconds()), 6)
    return update


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def enrich_end(event: Event, summary: SessionSummary) -> Event:
    """The event with `end_fields` added."""
    update = end_fields(event, summary)
    if not update:
        return event
    return Event.model_validate({**event.to_dict(), **update})
