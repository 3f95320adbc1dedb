"""Attribution decisions as plain functions (no broker)."""

from __future__ import annotations

import orjson
import pytest

from auditcast.errors import MalformedMessage
from auditcast.events import Event, Identity, Source, decode_event_json, plain_envelope
from auditcast.streams.attribution import (
    attribute,
    audit_record,
    decide,
    decide_doc,
    decide_plain,
    parse_identity_record,
    plain_record,
)
from auditcast.streams.identities import IdentityView

ALICE = Identity(user="alice", sso_subject="sub-1", groups=["dev"], roles=["developer"])


def kube_event(credential_id: str | None = "cred-1") -> Event:
    return Event(
        type="kube.request",
        user="alice",
        credential_id=credential_id,
        source=Source(collector="kube"),
    )


def test_event_with_known_credential_gets_identity_from_its_login() -> None:
    result = attribute(kube_event(), ALICE)
    assert result.event.identity == ALICE
    assert result.alert is None


def test_local_recording_is_attributed_to_the_os_user() -> None:
    ev = Event(type="session.start", user="bob", session_id="s", source=Source(collector="pty"))
    result = attribute(ev, None)
    assert result.event.identity == Identity(user="bob")
    assert result.alert is None


def test_unknown_credential_passes_unattributed_and_raises_an_alert() -> None:
    ev = kube_event("cred-unknown")
    result = attribute(ev, None)
    assert result.event.identity is None
    assert result.event.id == ev.id
    assert result.alert is not None
    assert result.alert.type == "audit.unattributed"
    assert result.alert.user == "alice"
    assert result.alert.model_extra["event_id"] == ev.id
    assert "cred-unknown" in result.alert.model_extra["reason"]


def test_event_from_a_gateway_without_credential_is_not_taken_for_a_local_one() -> None:
    ev = Event(type="kube.request", user="mallory", source=Source(collector="kube"))
    result = attribute(ev, None)
    assert result.event.identity is None and result.alert is not None


def test_identity_record_in_the_seams_format_parses() -> None:
    raw = orjson.dumps(
        {
            "credential_id": "c",
            "kind": "kube-token",
            "identity": ALICE.model_dump(),
            "issued": "2026-11-28T00:00:00Z",
            "expires": "2026-11-28T01:00:00Z",
        }
    )
    assert parse_identity_record(raw) == ALICE


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"credential_id": "c"}', b'{"identity": {"user": 5}}'],
    ids=["not-json", "not-object", "no-identity", "wrong-type"],
)
def test_malformed_identity_record_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_identity_record(raw)


def test_identity_view_keeps_the_latest_record_and_forgets_on_tombstone() -> None:
    view = IdentityView("unused:9092", "identities")
    rec = {"credential_id": "c", "kind": "ssh-cert", "identity": {"user": "alice"}}
    view.apply(b"c", orjson.dumps(rec))
    view.apply(b"c", orjson.dumps({**rec, "identity": {"user": "alice", "roles": ["admin"]}}))
    assert view.get("c") == Identity(user="alice", roles=["admin"])
    view.apply(b"c", b"garbage")  # a bad record does not erase a good one
    assert view.get("c") is not None and view.malformed == 1
    view.apply(b"c", None)
    assert view.get("c") is None


@pytest.mark.parametrize(
    "event",
    [
        kube_event(),
        kube_event(None),
        kube_event("cred-unknown"),
        Event(type="session.start", user="bob", session_id="s", source=Source(collector="pty")),
        Event(type="session.start", session_id="s", source=Source(collector="pty")),
        Event(type="kube.request", user="mallory", source=Source(collector="kube")),
        Event(type="kube.request", user="carol", identity=Identity(user="carol")),
        Event(type="audit.unattributed", user="dave"),
        Event(type="user.login", user="erin"),
    ],
    ids=lambda e: f"{e.type}-{e.user}-{e.credential_id}-{e.source and e.source.collector}",
)
@pytest.mark.parametrize("known", [ALICE, None], ids=["known", "unknown"])
def test_deciding_on_the_json_matches_deciding_on_the_model(
    event: Event, known: Identity | None
) -> None:
    doc = orjson.loads(event.to_json())
    assert decide_doc(doc, known) == decide(event, known)


_ALICE_DOC = ALICE.model_dump(mode="json", exclude_none=True)
_RECORDS = [
    # what collectors write (no nulls, code present)
    Event(
        type="kube.request", user="alice", credential_id="c", source=Source(collector="kube")
    ).to_json(),
    # no code, whitespace around and inside, a top-level null, a falsy code
    b' { "id": "e1", "type": "kube.request", "time": "2026-11-29T01:02:03.000004Z" } \n',
    b'{"id":"e2","type":"session.end","time":"2026-11-29T01:02:03.000004Z","user":null}',
    b'{"id":"e3","type":"session.end","time":"2026-11-29T01:02:03.000004Z","code":""}',
    # fields that `extra` or the identity would overwrite
    b'{"id":"e4","type":"session.end","time":"2026-11-29T01:02:03.000004Z","frames":1}',
    b'{"id":"e5","type":"kube.request","time":"2026-11-29T01:02:03.000004Z",'
    b'"identity":{"user":"zed"}}',
    b'{"id":"e6","type":"kube.request","time":"2026-11-29T01:02:03.000004Z","s":"}\\""}',
]


@pytest.mark.parametrize("raw", _RECORDS, ids=range(len(_RECORDS)))
@pytest.mark.parametrize("identity", [_ALICE_DOC, None], ids=["identity", "none"])
@pytest.mark.parametrize("extra", [{}, {"frames": 3, "duration": 1.5}], ids=["plain", "extra"])
def test_the_record_extended_as_text_is_the_record_built_from_the_document(
    raw: bytes, identity: dict | None, extra: dict
) -> None:
    """The worker appends identity and extra fields to the record's text; what the
    store then reads must be exactly the object the dict-based path writes."""
    doc = orjson.loads(raw)
    built = audit_record(None, dict(doc), identity, extra)
    fast = audit_record(None, doc, identity, extra, raw=raw, identity_json=orjson.dumps(identity))
    assert orjson.loads(fast) == orjson.loads(built)
    short = (
        None not in doc.values()
        and doc.get("code") != ""
        and not (identity and "identity" in doc)
        and not (extra and "frames" in doc)
    )
    assert fast.startswith(raw.rstrip()[:-1]) == short  # the text kept, or built anew


_PLAIN_RECORDS = [
    *_RECORDS,
    kube_event().to_json(),
    kube_event(None).to_json(),
    Event(
        type="session.start", user="bob", session_id="s", source=Source(collector="pty")
    ).to_json(),
    Event(type="kube.request", user="carol", identity=Identity(user="carol")).to_json(),
    Event(type="audit.unattributed", user="dave").to_json(),
    b'{"id":"e7","type":"kube.request","time":"2026-11-29T01:02:03.000004Z","code":"X1"}',
    b'{"id":"e8","type":"kube.request","time":"2026-11-29T01:02:03.000004Z","x":"null"}',
    b'{"id":"e9","type":"kube.request","time":"2026-11-29T01:02:03.000004Z","identity":null}',
    b'{"id":"e10","type":"kube.request","time":"2026-11-29T01:02:03.000004Z","code":"X","code":""}',
    b'{"id":"e11","type":"kube.request","time":"2026-11-29T01:02:03.000004Z","source":'
    b'{"collector":"pty"},"user":"u"}\t\r\n',
]


@pytest.mark.parametrize("raw", _PLAIN_RECORDS, ids=range(len(_PLAIN_RECORDS)))
@pytest.mark.parametrize("known", [ALICE, None], ids=["known", "unknown"])
def test_the_worker_reading_only_the_envelope_writes_what_the_dict_way_writes(
    raw: bytes, known: Identity | None
) -> None:
    """Records `plain_envelope` reads are attributed and extended from its fields; the
    decision and the bytes written must be those of the dict-based path, and it may
    decline (None: the dict's way) only where that path builds the record anew or the
    record has a null in it."""
    env = plain_envelope(raw)
    if env is None:
        return
    event, doc = decode_event_json(raw)
    assert event is None
    assert decide_plain(env, known) == decide_doc(doc, known)
    found, _ = decide_doc(doc, known)
    ident_doc = found.model_dump(mode="json", exclude_none=True) if found else None
    ident_json = orjson.dumps(ident_doc) if found else None
    expected = audit_record(None, dict(doc), ident_doc, {}, raw=raw, identity_json=ident_json)
    written = plain_record(env, raw, ident_json)
    if written is None:
        kept_text = expected.startswith(raw.rstrip()[:-1])
        assert b"null" in raw or not kept_text
    else:
        assert written == expected


def test_most_records_are_extended_without_the_dict() -> None:
    raw = kube_event().to_json()
    env = plain_envelope(raw)
    assert env is not None
    assert plain_record(env, raw, orjson.dumps(_ALICE_DOC)) == audit_record(
        None, orjson.loads(raw), _ALICE_DOC, {}
    )
