"""The hot paths' envelope check (`decode_event_json`): it skips building the pydantic
model only when the model would certainly accept the JSON, and otherwise decides
exactly as `decode_event_doc` does (same acceptance, same error message)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from auditcast.errors import MalformedMessage
from auditcast.events import (
    Chain,
    Event,
    Identity,
    Source,
    decode_event_doc,
    decode_event_json,
    plainly_valid_event,
)
from auditcast.storage.sink import parse_event_record, parse_event_record_text


def full_event() -> dict[str, Any]:
    return Event(
        type="kube.request",
        user="alice",
        credential_id="cred-1",
        identity=Identity(user="alice", email="a@example.com", groups=["dev"], roles=["r"]),
        cluster="prod",
        node="n1",
        labels={"team": "infra"},
        session_id="s-1",
        source=Source(collector="kube", instance="gw-1", remote_addr="10.0.0.7"),
        chain=Chain(prev="p", hash="h"),
        verb="get",
        response_code=200,
    ).to_dict()


# Every envelope field (and nested field) replaced by values of each JSON kind, plus
# times and keys that look right but are not.
ODD_VALUES: list[Any] = [None, 1, 1.5, True, "", "x", [], ["a"], [1], {}, {"a": 1}, {"a": "b"}]
TIMES = [
    "2026-11-29T00:26:52.334806Z",
    "2026-13-29T00:26:52.334806Z",
    "2026-02-30T00:26:52.334806Z",
    "0000-01-01T00:00:00.000000Z",
    "2026-11-29T00:26:52.3348060",
    "2026-11-29T00:26:52Z",
    "2026-11-29T00:26:52.334806+01:00",
    "2026-11-29 00:26:52.334806Z",
    "2026-11-29T24:00:00.000000Z",
    "2026-11-29T00:26:60.000000Z",
    "२०२६-11-29T00:26:52.334806Z",
]


def variants() -> list[dict[str, Any]]:
    base = full_event()
    out = [base]
    for key in list(base):
        for v in ODD_VALUES:
            d = copy.deepcopy(base)
            d[key] = v
            out.append(d)
        d = copy.deepcopy(base)
        del d[key]
        out.append(d)
    for key in ("identity", "source", "chain"):
        for sub in [*base[key], "unexpected"]:
            for v in ODD_VALUES:
                d = copy.deepcopy(base)
                d[key][sub] = v
                out.append(d)
            d = copy.deepcopy(base)
            d[key].pop(sub, None)
            out.append(d)
    for t in TIMES:
        d = copy.deepcopy(base)
        d["time"] = t
        out.append(d)
    for t in ("no.such.type", "session.start", "ssh.exec"):
        d = copy.deepcopy(base)
        d["type"] = t
        out.append(d)
    return out


def outcome(fn: Any, raw: bytes) -> tuple[str, Any]:
    try:
        doc = fn(raw)[1]
    except MalformedMessage as e:
        return "error", e.message
    return "ok", doc


@pytest.mark.parametrize("doc", variants(), ids=lambda d: orjson.dumps(d).decode()[-60:])
def test_fast_check_accepts_only_what_the_model_accepts(doc: dict[str, Any]) -> None:
    raw = orjson.dumps(doc)
    if plainly_valid_event(orjson.loads(raw)):
        Event.model_validate(orjson.loads(raw))  # must not raise
    assert outcome(decode_event_json, raw) == outcome(decode_event_doc, raw)


def test_what_collectors_and_the_worker_write_takes_the_short_way() -> None:
    written = [
        full_event(),
        Event(
            type="session.start", session_id="s", user="bob", source=Source(collector="pty")
        ).to_dict(),
        Event(type="user.login", user="bob").to_dict(),
    ]
    for doc in written:
        event, parsed = decode_event_json(orjson.dumps(doc))
        assert event is None
        assert parsed == doc


def test_store_keeps_the_record_text_only_when_nothing_was_normalised() -> None:
    raw = Event(type="user.login", user="bob").to_json()
    doc, text = parse_event_record_text(raw)
    assert text == raw.decode() and orjson.loads(text) == doc
    no_code = orjson.loads(raw)
    del no_code["code"]
    doc, text = parse_event_record_text(orjson.dumps(no_code))
    assert text is None and doc["code"] == Event(type="user.login").code
    offset = {**orjson.loads(raw), "time": "2026-11-29T01:00:00+01:00"}
    doc, text = parse_event_record_text(orjson.dumps(offset))
    assert text is None and doc["time"] == "2026-11-29T00:00:00.000000Z"
    assert parse_event_record(orjson.dumps(offset)) == doc
