"""Audit EventList parsing and bypass classification (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from auditcast.collectors.kube.auditlog import (
    InvalidAuditEvents,
    RecentIds,
    classify,
    parse_event_list,
    unattributed_reason,
)

GATEWAY = {"auditcast-gateway"}


def _event(user: str = "auditcast-gateway", audit_id: str = "id-1", **extra: Any) -> dict:
    doc: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/dev/pods",
        "verb": "list",
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.1.2.3"],
        "userAgent": "kubectl/v1.32.4",
        "objectRef": {"resource": "pods", "namespace": "dev", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "stageTimestamp": "2026-11-28T10:00:00.000000Z",
    }
    doc.update(extra)
    return doc


def _list(*items: dict) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})


def test_event_list_parses_into_records_with_who_what_where() -> None:
    [rec] = parse_event_list(
        _list(_event(impersonatedUser={"username": "alice", "groups": ["devs"]}))
    )
    assert (rec.username, rec.impersonated_user, rec.verb) == ("auditcast-gateway", "alice", "list")
    f = rec.fields()
    assert (f["resource"], f["namespace"], f["response_code"]) == ("pods", "dev", 200)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({"kind": "PodList", "apiVersion": "v1"}), "expected kind EventList"),
        (_list({"auditID": "x"}), "user must be an object"),
        (_list(_event(auditID="")), "'auditID' must be a non-empty string"),
        (_list(_event(user=5)), "username"),  # type: ignore[arg-type]
    ],
)
def test_malformed_event_lists_are_rejected_with_the_reason(body: bytes, error: str) -> None:
    with pytest.raises(InvalidAuditEvents, match=error):
        parse_event_list(body)


def test_direct_request_by_another_user_is_unattributed() -> None:
    [rec] = parse_event_list(_list(_event(user="kubernetes-admin")))
    assert classify(rec, GATEWAY, set()) == "unattributed"
    assert "directly" in unattributed_reason(rec, GATEWAY)


def test_gateway_request_with_a_known_audit_id_is_attributed() -> None:
    [rec] = parse_event_list(_list(_event(audit_id="0193-known")))
    known = RecentIds()
    assert classify(rec, GATEWAY, known) == "pending"  # kube.request not seen yet
    known.add("0193-known")
    assert classify(rec, GATEWAY, known) == "gateway"


def test_control_plane_identities_are_not_bypasses() -> None:
    [rec] = parse_event_list(_list(_event(user="system:node:node1")))
    assert classify(rec, GATEWAY, set()) == "system"


def test_recent_ids_forget_the_oldest_beyond_their_limit() -> None:
    ids = RecentIds(limit=2)
    ids.update(["a", "b", "c"])
    assert "a" not in ids and "b" in ids and "c" in ids
