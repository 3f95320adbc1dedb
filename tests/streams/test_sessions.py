"""Session assembly as plain state transitions (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from auditcast.events import Event, Frame
from auditcast.streams import sessions

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def start() -> Event:
    return Event(type="session.start", session_id="s1", user="bob", time=T0)


def end(**fields: object) -> Event:
    return Event(
        type="session.end", session_id="s1", user="bob", time=T0 + timedelta(seconds=2.5), **fields
    )


def frames(n: int, size: int = 3) -> list[Frame]:
    return [Frame(session_id="s1", seq=i, t=i / 10, kind="o", data=b"x" * size) for i in range(n)]


def test_session_end_gets_frame_count_and_duration() -> None:
    summary = sessions.on_event(sessions.empty("s1"), start())
    summary = sessions.on_frames(summary, frames(4))
    summary = sessions.on_event(summary, end(exit_code=3))
    out = sessions.enrich_end(end(exit_code=3), summary)
    extra = out.model_extra or {}
    assert extra["frames"] == 4 and extra["duration"] == 2.5 and extra["exit_code"] == 3
    assert summary["bytes"] == 12 and summary["last_seq"] == 3


def test_values_the_collector_sent_are_kept() -> None:
    summary = sessions.on_frames(sessions.on_event(sessions.empty("s1"), start()), frames(2))
    out = sessions.enrich_end(end(frames=9, duration=1.0), summary)
    assert out.model_extra == {"frames": 9, "duration": 1.0}


def test_end_without_a_seen_start_gets_no_invented_duration() -> None:
    out = sessions.enrich_end(end(), sessions.empty("s1"))
    assert "duration" not in (out.model_extra or {})


def test_other_events_pass_unchanged() -> None:
    ev = Event(type="kube.request", session_id="s1", user="bob")
    assert sessions.enrich_end(ev, sessions.empty("s1")) is ev
    assert sessions.on_event(sessions.empty("s1"), ev) == sessions.empty("s1")


def test_folding_the_json_matches_folding_the_model() -> None:
    events = [
        start(),
        end(exit_code=3),
        end(frames=9, duration=1.0),
        Event(type="kube.request", session_id="s1", user="bob"),
    ]
    for summary in (sessions.empty("s1"), sessions.on_frames(
        sessions.on_event(sessions.empty("s1"), start()), frames(3)
    )):  # fmt: skip
        for ev in events:
            doc = orjson.loads(ev.to_json())
            folded = sessions.fold_event(summary, doc["type"], doc["time"])
            assert folded == sessions.on_event(summary, ev)
            assert sessions.end_fields_doc(doc, folded) == sessions.end_fields(ev, folded)
