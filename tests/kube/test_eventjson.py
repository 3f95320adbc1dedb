"""The gateway's events written without the pydantic model are the model's JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from auditcast.collectors.kube.eventjson import event_doc, event_json
from auditcast.events import Event, Source, decode_event, decode_event_json

NOW = datetime(2026, 11, 29, 6, 30, 1, 123456, tzinfo=UTC)

KUBE_REQUEST: dict[str, Any] = {
    "id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "type": "kube.request",
    "user": "alice",
    "credential_id": "cred-1",
    "cluster": "dev-cluster",
    "labels": {"env": "dev"},
    "source": {
        "collector": "kube-gateway",
        "instance": "kube-gateway",
        "remote_addr": "127.0.0.1",
        "user_agent": None,
    },
    "method": "GET",
    "http_version": "1.1",
    "request_path": "/api/v1/namespaces/dev/pods",
    "request_query": "",
    "verb": "list",
    "api_group": "",
    "api_version": "v1",
    "resource": "pods",
    "subresource": "",
    "namespace": "dev",
    "name": "",
    "kube_users": [],
    "kube_groups": ["devs"],
    "roles": ["dev"],
    "response_code": 200,
    "latency_ms": 1.234,
    "bytes_in": 0,
    "bytes_out": 4321,
}


def _model_json(fields: dict[str, Any]) -> bytes:
    """What the gateway wrote before: the pydantic model's JSON."""
    return Event(**{k: v for k, v in fields.items() if v != ""}, time=NOW).to_json()


@pytest.mark.parametrize(
    "fields",
    [
        KUBE_REQUEST,
        # a stream's end: a session, an exit code, a lock that closed it
        {
            **KUBE_REQUEST,
            "id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
            "request_id": KUBE_REQUEST["id"],
            "phase": "end",
            "long_running": True,
            "response_code": 101,
            "session_id": "3f2b7c1e-1111-4222-8333-444455556666",
            "exit_code": 0,
            "closed_by_lock": "lock-1",
        },
        # a refusal: no cluster, the source given as the model, a None user
        {
            "type": "auth.failed",
            "cluster": None,
            "labels": {},
            "source": Source(collector="kube-gateway", instance="gw", remote_addr="::1"),
            "reason": "token expired",
            "error": "InvalidToken",
            "request_path": "/cluster/x/api",
            "method": "GET",
        },
    ],
    ids=["kube.request", "stream end", "auth.failed"],
)
def test_event_json_is_the_same_document_as_the_models(fields: dict[str, Any]) -> None:
    key, raw = event_json(fields, NOW)
    doc = orjson.loads(raw)
    model = orjson.loads(_model_json(fields))
    if "id" not in fields:  # both drew a fresh id
        model["id"] = doc["id"]
    assert list(doc.items()) == list(model.items())  # same keys, same order, same values
    assert key == decode_event(raw).key


def test_event_json_takes_the_consumers_short_way() -> None:
    """The worker and the store skip pydantic for documents that plainly fit the model:
    the gateway's must be such documents (known type, canonical time)."""
    event, doc = decode_event_json(event_json(KUBE_REQUEST)[1])
    assert event is None
    assert doc["code"] and doc["time"].endswith("Z")


def test_event_doc_drops_empty_text_and_none_like_the_gateway_always_did() -> None:
    doc = event_doc({**KUBE_REQUEST, "user_agent": None, "namespace": ""}, NOW)
    assert "namespace" not in doc and "user_agent" not in doc
    assert "user_agent" not in doc["source"]
    assert doc["time"] == "2026-11-29T06:30:01.123456Z"


def test_event_doc_without_labels_has_empty_labels_like_the_model() -> None:
    doc = event_doc({"type": "kube.request", "user": "bob"}, NOW)
    assert doc["labels"] == {} and doc["id"]
    assert list(doc) == list(orjson.loads(_model_json({"type": "kube.request", "user": "bob"})))
