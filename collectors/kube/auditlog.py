"""Kubernetes audit `EventList` parsing and bypass classification, without I/O.

The API server's webhook backend (batch mode) posts `audit.k8s.io/v1` `EventList`
documents. Each `Event` names the authenticated user (`user.username`), the
impersonated one if any, and an `auditID` — which the apiserver takes from the
`Audit-ID` request header when a client sends one. The gateway sends the id of its
`kube.request` event there, so a request that came through the gateway is one made
*as the gateway's identity* whose auditID is a `kube.request` we recorded. Anything else
reached the cluster some other way: a bypass.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from auditcast.errors import MalformedMessage

# A batch from the apiserver is at most a few MiB (its default max batch is 400 events).
MAX_EVENTLIST_BYTES: Final = 16 * 1024 * 1024
# How long we wait for the gateway's kube.request to show up before calling an audit
# record made as the gateway unattributed: the spool → broker hop plus a batch delay.
MATCH_GRACE_SECONDS: Final = 10.0
# How many gateway request ids we remember (a few minutes of a busy gateway).
RECENT_IDS: Final = 200_000

# Identities of the control plane itself: their requests never pass the gateway and
# are not people bypassing it.
SYSTEM_PREFIXES: Final = ("system:node:", "system:serviceaccount:kube-system:")
SYSTEM_USERS: Final = frozenset(
    {"system:apiserver", "system:kube-scheduler", "system:kube-controller-manager"}
)


class InvalidAuditEvents(MalformedMessage):
    """An audit webhook body that is not an audit.k8s.io/v1 EventList."""


@dataclass(frozen=True)
class AuditRecord:
    audit_id: str
    stage: str
    verb: str
    request_uri: str
    username: str
    groups: tuple[str, ...]
    impersonated_user: str | None
    source_ips: tuple[str, ...]
    user_agent: str
    response_code: int | None
    object_ref: dict[str, str]
    timestamp: str

    def fields(self) -> dict[str, Any]:
        """The record as event fields (kube.* names as in kube.request)."""
        out: dict[str, Any] = {
            "audit_id": self.audit_id,
            "stage": self.stage,
            "verb": self.verb,
            "request_path": self.request_uri,
            "kube_user": self.username,
            "kube_groups": list(self.groups),
            "source_ips": list(self.source_ips),
            "user_agent": self.user_agent,
            "response_code": self.response_code,
            "audit_time": self.timestamp,
        }
        if self.impersonated_user:
            out["impersonated_user"] = self.impersonated_user
        for k in ("resource", "namespace", "name", "subresource", "apiGroup"):
            if self.object_ref.get(k):
                out["api_group" if k == "apiGroup" else k] = self.object_ref[k]
        return out


def _str(d: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    v = d.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v):
        raise InvalidAuditEvents(f"{where}: field {key!r} must be a non-empty string")
    return v


def parse_event_list(raw: bytes) -> list[AuditRecord]:
    """Validate one webhook body; raise InvalidAuditEvents saying what is wrong."""
    if len(raw) > MAX_EVENTLIST_BYTES:
        raise InvalidAuditEvents(f"EventList of {len(raw)} bytes exceeds {MAX_EVENTLIST_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidAuditEvents(f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidAuditEvents("body is not a JSON object")
    if doc.get("kind") != "EventList" or doc.get("apiVersion") != "audit.k8s.io/v1":
        raise InvalidAuditEvents(
            f"expected kind EventList, apiVersion audit.k8s.io/v1; got "
            f"{doc.get('kind')!r}, {doc.get('apiVersion')!r}"
        )
    items = doc.get("items") or []
    if not isinstance(items, list):
        raise InvalidAuditEvents("items must be a list")
    return [_record(item, i) for i, item in enumerate(items)]


def _record(item: Any, i: int) -> AuditRecord:
    where = f"items[{i}]"
    if not isinstance(item, dict):
        raise InvalidAuditEvents(f"{where} is not an object")
    user = item.get("user")
    if not isinstance(user, dict):
        raise InvalidAuditEvents(f"{where}: user must be an object")
    imp = item.get("impersonatedUser")
    status = item.get("responseStatus") or {}
    code = status.get("code") if isinstance(status, dict) else None
    ref = item.get("objectRef") or {}
    return AuditRecord(
        audit_id=_str(item, "auditID", where),
        stage=_str(item, "stage", where),
        verb=_str(item, "verb", where),
        request_uri=_str(item, "requestURI", where),
        username=_str(user, "username", f"{where}.user"),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        impersonated_user=imp.get("username") if isinstance(imp, dict) else None,
        source_ips=tuple(str(s) for s in item.get("sourceIPs") or ()),
        user_agent=_str(item, "userAgent", where, required=False),
        response_code=code if isinstance(code, int) else None,
        object_ref={str(k): str(v) for k, v in ref.items()} if isinstance(ref, dict) else {},
        timestamp=_str(item, "stageTimestamp", where, required=False)
        or _str(item, "requestReceivedTimestamp", where, required=False),
    )


Verdict = Literal["gateway", "unattributed", "pending", "system"]


def classify(
    record: AuditRecord, gateway_users: Collection[str], known_ids: Collection[str]
) -> Verdict:
    """`gateway` when it came through us; `pending` when it is as the gateway but its
    kube.request has not arrived yet; `system` for the control plane; else a bypass."""
    if record.username in SYSTEM_USERS or record.username.startswith(SYSTEM_PREFIXES):
        return "system"
    if record.username not in gateway_users:
        return "unattributed"
    if record.audit_id in known_ids:
        return "gateway"
    return "pending"


def unattributed_reason(record: AuditRecord, gateway_users: Collection[str]) -> str:
    if record.username not in gateway_users:
        return (
            f"request by {record.username!r} reached the API server directly, "
            "not through the auditcast gateway"
        )
    return (
        f"request as the gateway identity {record.username!r} with audit id "
        f"{record.audit_id} matches no gateway request (stolen gateway credentials?)"
    )


class RecentIds:
    """Gateway request ids seen lately (bounded, oldest forgotten first)."""

    def __init__(self, limit: int = RECENT_IDS) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, event_id: str) -> None:
        self._ids[event_id] = time.monotonic()
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def update(self, ids: Iterable[str]) -> None:
        for i in ids:
            self.add(i)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Any:
        return iter(self._ids)
