"""Attribution decisions as plain functions (no broker)."""

from __future__ import annotations

import orjson
import pytest

from auditcast.errors import MalformedMessage
from auditcast.events import Event, Identity, Source
from auditcast.streams.attribution import attribute, decide, decide_doc, parse_identity_record
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
