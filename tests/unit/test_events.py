"""The event envelope and frame codecs: what every topic carries."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from auditcast.codes import CODE_BY_TYPE, EVENT_CODES
from auditcast.errors import MalformedMessage
from auditcast.events import (
    MAX_EVENT_BYTES,
    Event,
    Frame,
    decode_event,
    decode_frames,
    encode_frames,
    format_time,
    is_canonical_time,
)


def test_event_round_trips_with_type_specific_fields() -> None:
    e = Event(type="kube.request", user="alice", verb="get", resource="pods", response_code=200)
    back = decode_event(e.to_json())
    assert back.id == e.id
    assert back.code == "AC3000I"
    assert back.model_extra == {"verb": "get", "resource": "pods", "response_code": 200}
    assert back.time == e.time


def test_event_time_is_rfc3339_utc_with_microseconds() -> None:
    doc = orjson.loads(Event(type="user.login", user="a").to_json())
    assert doc["time"].endswith("Z") and len(doc["time"].split(".")[1]) == 7


def test_ids_are_time_ordered() -> None:
    ids = [Event(type="user.login").id for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == 200


def test_codes_are_unique_and_cover_the_contract() -> None:
    codes = [c.code for c in EVENT_CODES]
    assert len(codes) == len(set(codes))
    for t in (
        "kube.request",
        "kube.exec",
        "session.start",
        "session.end",
        "ssh.exec",
        "user.login",
        "cert.issued",
        "lock.created",
        "lock.deleted",
        "lock.violation",
        "access_request.created",
        "access_request.reviewed",
        "mfa.verified",
        "auth.failed",
        "audit.unattributed",
    ):
        assert t in CODE_BY_TYPE


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\x00\x01not json", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"type": "session.start", "time": "yesterday"}', "time"),
        (b'{"type": "no.such.type"}', "unknown event type"),
        (b'{"id": "x"}', "type"),
        (b'{"id": 5, "type": "user.login"}', "id"),
        (b'{"type": "session.start", "labels": []}', "labels"),
        (b'{"type":"session.start","x":"' + b"a" * MAX_EVENT_BYTES + b'"}', "exceeds"),
    ],
)
def test_malformed_events_say_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedMessage, match=says):
        decode_event(raw)


def test_frames_keep_arbitrary_bytes() -> None:
    data = bytes(range(256)) + b"\xff\xfe\x1b[31m\xe2\x82"
    frames = [Frame(session_id="s", seq=i, t=i * 0.5, kind="o", data=data) for i in range(3)]
    assert decode_frames(encode_frames(frames)) == frames


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\xc1\xc1\xc1", "not msgpack"),
        (msgpack.packb({"a": 1}), "not a msgpack array"),
        (msgpack.packb([1]), "frame 0 is not a map"),
        (msgpack.packb([{"session_id": "s", "seq": -1, "t": 0, "kind": "o", "data": b""}]), "seq"),
        (msgpack.packb([{"session_id": "s", "seq": 0, "t": 0, "kind": "z", "data": b""}]), "kind"),
        (msgpack.packb([{"session_id": "s", "seq": 0, "t": 0, "kind": "o"}]), "data"),
    ],
)
def test_malformed_frame_batches_say_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedMessage, match=says):
        decode_frames(raw)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2026-11-28T20:29:50.332000Z", True),
        ("2026-11-28T20:29:50.332Z", False),  # milliseconds only: reformatted
        ("2026-11-28T20:29:50.332000+00:00", False),
        ("2026-11-28 20:29:50.332000Z", False),
        (1764361790, False),
    ],
)
def test_only_times_already_in_the_store_form_are_kept_as_sent(
    text: object, canonical: bool
) -> None:
    assert is_canonical_time(text) is canonical
    if canonical:
        assert (
            format_time(decode_event(orjson.dumps({"type": "session.start", "time": text})).time)
            == text
        )
