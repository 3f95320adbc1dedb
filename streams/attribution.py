"""Attribution: tie an event on `events.raw` to the SSO identity behind its credential.

Pure functions over plain data; the Faust agent in `streams.app` only moves bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson
from pydantic import ValidationError

from auditcast.codes import CODE_BY_TYPE
from auditcast.errors import MalformedMessage
from auditcast.events import (
    Event,
    Identity,
    PlainEnvelope,
    Source,
    format_time,
    is_canonical_time,
)

# The collector name of the local PTY recorder: its events carry the OS user and no
# credential, so the OS user is the identity (DESIGN §6, `auditcast rec`).
LOCAL_RECORDER: Final = "pty"
# Events that are themselves about attribution are passed on as they are.
SELF_ATTRIBUTED_TYPES: Final = frozenset({"audit.unattributed", "lock.violation"})


@dataclass(frozen=True)
class Attributed:
    """What attribution decided: the event to write to `events.audit`, maybe an alert."""

    event: Event
    alert: Event | None = None


def parse_identity_record(raw: bytes) -> Identity:
    """The `identity` of one `identities` record (docs/SEAMS.md), or MalformedMessage."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(f"identities record is not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("identity"), dict):
        raise MalformedMessage("identities record has no identity object")
    try:
        return Identity.model_validate(data["identity"])
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise MalformedMessage(
            f"identities record: invalid identity.{loc}: {first['msg']}"
        ) from None


def decide(event: Event, identity: Identity | None) -> tuple[Identity | None, bool]:
    """The identity to put on `event` (None: leave it as it is), and whether the event
    is unattributed (an alert is due).

    - the event already names its identity, or is about attribution itself: as it is;
    - the credential is known: the identity from its `identities` record;
    - a local recording (no credential, collector `pty`): the OS user;
    - otherwise unattributed: an `audit.unattributed` alert says which actor and
      credential could not be tied to a login.
    """
    collector = event.source.collector if event.source is not None else None
    return _decide(
        event.identity is not None, event.type, event.credential_id, collector, event.user, identity
    )


def decide_doc(doc: dict[str, Any], identity: Identity | None) -> tuple[Identity | None, bool]:
    """`decide` for an envelope as JSON that `plainly_valid_event` accepted (so every
    field has its model's type), without building the model."""
    source = doc.get("source")
    collector = source.get("collector") if source is not None else None
    return _decide(
        doc.get("identity") is not None,
        doc["type"],
        doc.get("credential_id"),
        collector,
        doc.get("user"),
        identity,
    )


def decide_plain(env: PlainEnvelope, identity: Identity | None) -> tuple[Identity | None, bool]:
    """`decide` for the envelope fields `plain_envelope` read."""
    collector = env.source.collector if env.source is not None else None
    return _decide(
        env.identity is not None, env.type, env.credential_id, collector, env.user, identity
    )


def _decide(
    has_identity: bool,
    event_type: str,
    credential_id: str | None,
    collector: str | None,
    user: str | None,
    identity: Identity | None,
) -> tuple[Identity | None, bool]:
    if has_identity or event_type in SELF_ATTRIBUTED_TYPES:
        return None, False
    if identity is not None:
        return identity, False
    if credential_id is None and collector == LOCAL_RECORDER and user:
        return Identity(user=user), False
    return None, True


def attribute(event: Event, identity: Identity | None) -> Attributed:
    """Fill `event.identity` as `decide` says, with the alert when it is unattributed."""
    found, unattributed = decide(event, identity)
    if found is not None:
        return Attributed(event.model_copy(update={"identity": found}))
    return Attributed(event, unattributed_alert(event) if unattributed else None)


def unattributed_alert(event: Event) -> Event:
    """An `audit.unattributed` alert about an event no identity could be found for."""
    reason = (
        f"credential {event.credential_id} is unknown"
        if event.credential_id
        else "the event carries no credential"
    )
    fields: dict[str, Any] = {
        "reason": reason,
        "event_id": event.id,
        "event_type": event.type,
    }
    return Event(
        type="audit.unattributed",
        user=event.user,
        credential_id=event.credential_id,
        cluster=event.cluster,
        node=event.node,
        labels=event.labels,
        session_id=event.session_id,
        source=Source(
            collector="streams", instance=event.source.collector if event.source else None
        ),
        **fields,
    )


def audit_record(
    event: Event | None,
    doc: dict[str, Any],
    identity: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
    *,
    raw: bytes | None = None,
    identity_json: bytes | None = None,
) -> bytes:
    """The `events.audit` value for `event` as sent (`doc`, its parsed JSON), with the
    `identity` attribution found (its JSON form) and `extra` fields added. `event` may be
    None when `doc` is plainly valid (`decode_event_json`: its time is canonical).

    `time` and `code` are normalised and nulls dropped as `Event.to_json` does; the rest
    is kept as the collector wrote it, so the record is not re-serialised from the model.
    With `raw` (the record `doc` was parsed from) and `identity_json` (`identity` as
    JSON), a plainly valid record is extended as text instead (`_extended`).
    """
    if event is None and raw is not None:
        text = _extended(raw, doc, identity_json if identity is not None else None, extra)
        if text is not None:
            return text
    out = {k: v for k, v in doc.items() if v is not None}
    if event is None:
        out["code"] = out.get("code") or CODE_BY_TYPE[out["type"]]
    else:
        if not is_canonical_time(out.get("time")):
            out["time"] = format_time(event.time)
        out["code"] = event.code
    if identity is not None:
        out["identity"] = identity
    if extra:
        out.update(extra)
    return orjson.dumps(out)


def _extended(
    raw: bytes, doc: dict[str, Any], identity_json: bytes | None, extra: dict[str, Any] | None
) -> bytes | None:
    """`raw` with `code` (when missing), `identity` and `extra` appended inside its
    closing brace: the same JSON object `audit_record` builds, without copying the
    document and serialising it again (two thirds of the worker's own cost per event).
    None when that would not be the same object: a top-level null to drop, a `code` to
    replace, a field to overwrite, or text after the object's closing brace."""
    if None in doc.values():
        return None
    parts: list[bytes] = []
    if not doc.get("code"):
        if "code" in doc:
            return None
        parts.append(b'"code":' + orjson.dumps(CODE_BY_TYPE[doc["type"]]))
    if identity_json is not None:
        if "identity" in doc:
            return None
        parts.append(b'"identity":' + identity_json)
    if extra:
        if not extra.keys().isdisjoint(doc):
            return None
        parts.append(orjson.dumps(extra)[1:-1])
    return _appended(raw, parts)


def plain_record(env: PlainEnvelope, raw: bytes, identity_json: bytes | None) -> bytes | None:
    """`audit_record` for a record `plain_envelope` read as `env`, with the identity
    attribution found (as JSON) and no extra fields: `raw` extended as `_extended` does,
    decided from `env` instead of the dict. None where `_extended` would say None, and
    wherever the record has `null` in it at all (a top-level null is dropped from the
    record, and only the dict says where one is)."""
    if b"null" in raw:
        return None
    parts: list[bytes] = []
    if env.code is msgspec.UNSET:
        parts.append(b'"code":' + orjson.dumps(CODE_BY_TYPE[env.type]))
    elif not env.code:
        return None
    if identity_json is not None:
        if env.identity is not None:
            return None
        parts.append(b'"identity":' + identity_json)
    return _appended(raw, parts)


def _appended(raw: bytes, parts: list[bytes]) -> bytes | None:
    """`raw` (a JSON object) with the `"key":value` texts of `parts` added inside its
    closing brace; None if anything follows that brace but whitespace."""
    body = raw.rstrip(b" \t\r\n")
    if not body.endswith(b"}"):
        return None
    if not parts:
        return body
    return b"".join((body[:-1], b",", b",".join(parts), b"}"))
