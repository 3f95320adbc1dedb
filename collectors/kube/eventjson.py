"""The gateway's events written straight to their JSON, without the pydantic model.

The gateway writes one `kube.request` per request. `Event(**fields).to_json()` validates
and serialises it through pydantic: ~40 µs here, more than all the rest of our own work
on a GET. The gateway made every field itself, so there is nothing to validate: this
writes the document `Event.to_json()` would (the same keys in the same order, `code`
from the code table, `time` in `format_time`'s form, None and "" left out, `source` as
an object without its None fields), which `decode_event_json` takes the short way.
tests/kube/test_eventjson.py holds the two against each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from pydantic import BaseModel

from auditcast.codes import code_for
from auditcast.events import Event, format_time, new_event_id, partition_key

# The envelope's fields in the model's order (auditcast.events.Event); the rest of a
# document's keys follow as extras, in the order the fields were given.
_ENVELOPE: Final = tuple(Event.model_fields)
_ENVELOPE_SET: Final = frozenset(_ENVELOPE)


def _plain(value: Any) -> Any:
    """A nested model (Source, Identity) as `model_dump(mode="json", exclude_none=True)`
    gives it; a dict loses its None values the same way."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


def event_doc(fields: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The JSON object of `Event(**{k: v for k, v in fields.items() if v != ""})`.

    `fields` must hold `type` (a known event type); `id`, `code` and `time` are filled
    in like the model's defaults when missing."""
    kept = {k: v for k, v in fields.items() if v is not None and v != ""}
    event_type = kept["type"]
    doc: dict[str, Any] = {
        "id": kept.get("id") or new_event_id(),
        "type": event_type,
        "code": kept.get("code") or code_for(event_type),
        "time": format_time(kept.get("time") or now or datetime.now(UTC)),
    }
    for name in _ENVELOPE[4:]:
        if name in kept:
            doc[name] = _plain(kept[name])
        elif name == "labels":
            doc[name] = {}
    for name, value in kept.items():
        if name not in _ENVELOPE_SET:
            doc[name] = value
    return doc


def event_key(doc: Mapping[str, Any]) -> bytes:
    """`Event.key` of the document."""
    return partition_key(doc.get("session_id"), doc.get("user"), doc["id"])


def event_json(fields: Mapping[str, Any], now: datetime | None = None) -> tuple[bytes, bytes]:
    """(partition key, JSON bytes) of the event `fields` describe."""
    doc = event_doc(fields, now)
    return event_key(doc), orjson.dumps(doc)
