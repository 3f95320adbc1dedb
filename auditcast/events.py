"""The event envelope and the recording frame: the contract on every topic.

Pure codecs, no I/O. `Event` is what collectors emit and stores keep (JSON via
orjson); `Frame` is one piece of a terminal recording (msgpack, batched per message).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgpack
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from auditcast.codes import CODE_BY_TYPE, code_for
from auditcast.errors import MalformedMessage
from auditcast.ids import uuid7

# Kafka's default message.max.bytes is 1 MiB; an envelope that large is a bug or an attack.
MAX_EVENT_BYTES: Final = 1024 * 1024
# A frame batch is flushed at ~32 KiB (DESIGN §2); 1 MiB leaves room for one big write.
MAX_FRAME_BATCH_BYTES: Final = 1024 * 1024

FrameKind = Literal["o", "i", "r", "m", "x"]
FRAME_KINDS: Final = frozenset({"o", "i", "r", "m", "x"})


def new_event_id() -> str:
    """Unique and time-ordered (UUIDv7): the idempotency key everywhere."""
    return uuid7()


def partition_key(session_id: str | None, user: str | None, event_id: str) -> bytes:
    """An event's Kafka key: its session for session-bound events (so they share a
    partition with the session's frames), else its user, else its id."""
    return (session_id or user or event_id).encode()


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """RFC 3339, UTC, microseconds, `Z` suffix."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_canonical_time(text: object) -> bool:
    """Whether `text` (a time that parsed) is already in `format_time`'s form, so a
    stage passing it on can keep it instead of formatting it again."""
    return (
        isinstance(text, str)
        and len(text) == 27
        and text[26] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == text[7] == "-"
        and text[13] == text[16] == ":"
    )


class Identity(BaseModel):
    """Who is behind an event, as attributed from the SSO login."""

    model_config = ConfigDict(extra="forbid")

    user: str
    sso_subject: str | None = None
    sso_issuer: str | None = None
    email: str | None = None
    groups: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)


class Source(BaseModel):
    """Which collector saw the event, and from where the actor came."""

    model_config = ConfigDict(extra="forbid")

    collector: str
    instance: str | None = None
    remote_addr: str | None = None
    user_agent: str | None = None


class Chain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prev: str | None = None
    hash: str


class Event(BaseModel):
    """The audit envelope. Type-specific fields ride along as extra attributes."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(default_factory=new_event_id)
    type: str
    code: str = ""
    time: datetime = Field(default_factory=utcnow)
    # The actor as the collector saw it (SSO user name on the credential, OS user for
    # local recordings). `identity` is what attribution proved about that actor.
    user: str | None = None
    credential_id: str | None = None
    identity: Identity | None = None
    cluster: str | None = None
    node: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    session_id: str | None = None
    source: Source | None = None
    chain: Chain | None = None

    def model_post_init(self, __context: Any) -> None:
        if not self.code:
            self.code = code_for(self.type)
        if self.time.tzinfo is None:
            self.time = self.time.replace(tzinfo=UTC)

    @field_serializer("time")
    def _ser_time(self, t: datetime) -> str:
        return format_time(t)

    @property
    def key(self) -> bytes:
        return partition_key(self.session_id, self.user, self.id)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def decode_event(raw: bytes | str) -> Event:
    """Parse one envelope, or raise MalformedMessage saying what is wrong."""
    return decode_event_doc(raw)[0]


def decode_event_doc(raw: bytes | str) -> tuple[Event, dict[str, Any]]:
    """`decode_event`, also returning the JSON object as sent: a stage that only adds a
    few fields writes `orjson.dumps(doc)` instead of re-serialising the model (a third
    of the cost per event on the hot path)."""
    data = _event_object(raw)
    return _validated(data), data


def decode_event_json(raw: bytes | str) -> tuple[Event | None, dict[str, Any]]:
    """`decode_event_doc` for stages that mostly need the JSON object: the same checks
    and the same MalformedMessage, but when the object plainly fits the model (every
    envelope field of its exact JSON type, a known `type`, `time` in `format_time`'s
    form) the model is not built and None comes in its place. Building it costs about
    three JSON parses per event; what the collectors and the worker write always takes
    the short way."""
    data = _event_object(raw)
    if plainly_valid_event(data):
        return None, data
    return _validated(data), data


_TEXT: Final = ("id", "code")  # str with a default: null is not allowed
_OPTIONAL_TEXT: Final = ("user", "credential_id", "cluster", "node", "session_id")
_CANONICAL_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z", re.ASCII)
# Per nested model: its fields, which must be text, and which are lists of text (the
# rest are optional text). Unknown keys are refused (extra="forbid").
_NESTED: Final = {
    "identity": (
        frozenset({"user", "sso_subject", "sso_issuer", "email", "groups", "roles"}),
        "user",
        frozenset({"groups", "roles"}),
    ),
    "source": (frozenset({"collector", "instance", "remote_addr", "user_agent"}), "collector", ()),
    "chain": (frozenset({"prev", "hash"}), "hash", ()),
}


def plainly_valid_event(data: dict[str, Any]) -> bool:
    """Whether `Event.model_validate(data)` certainly succeeds (with a known type and a
    canonical time), judged by exact types only. False means "ask pydantic": it may
    still accept the object (a time with an offset, say) or say what is wrong.
    Plain loops over the keys present: it runs on every event twice (worker, store)."""
    get = data.get
    event_type = get("type")
    if type(event_type) is not str or event_type not in CODE_BY_TYPE:
        return False
    time = get("time")
    if type(time) is not str or _CANONICAL_TIME.match(time) is None:
        return False
    try:
        datetime.fromisoformat(time)  # the calendar: no 13th month, no 30 February
    except ValueError:
        return False
    for name in _OPTIONAL_TEXT:
        v = get(name)
        if v is not None and type(v) is not str:
            return False
    for name in _TEXT:
        if name in data and type(data[name]) is not str:
            return False
    if "labels" in data:
        labels = data["labels"]
        if type(labels) is not dict:
            return False
        for v in labels.values():
            if type(v) is not str:
                return False
    for name, (fields, required, text_lists) in _NESTED.items():
        sub = get(name)
        if sub is None:
            continue
        if type(sub) is not dict or type(sub.get(required)) is not str:
            return False
        for key, v in sub.items():
            if key not in fields:
                return False
            if key in text_lists:
                if type(v) is not list:
                    return False
                for item in v:
                    if type(item) is not str:
                        return False
            elif v is not None and type(v) is not str:
                return False
    return True


def _event_object(raw: bytes | str) -> dict[str, Any]:
    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedMessage(f"event of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES} limit")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(f"event is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("event is not a JSON object")
    return data


def _validated(data: dict[str, Any]) -> Event:
    try:
        event = Event.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "event"
        raise MalformedMessage(f"invalid event field {loc}: {first['msg']}") from None
    except ValueError as e:  # unknown type from model_post_init
        raise MalformedMessage(str(e)) from None
    if event.type not in CODE_BY_TYPE:
        raise MalformedMessage(f"unknown event type {event.type!r}")
    return event


class Frame(BaseModel):
    """One piece of a recording: `t` seconds since session start, raw bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str
    seq: int = Field(ge=0)
    t: float = Field(ge=0)
    kind: FrameKind
    data: bytes

    def to_record(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "t": self.t,
            "kind": self.kind,
            "data": self.data,
        }


def encode_frames(frames: Sequence[Frame]) -> bytes:
    """A batch of frames as one Kafka message value (msgpack array of maps)."""
    return msgpack.packb([f.to_record() for f in frames], use_bin_type=True)


def decode_frames(raw: bytes) -> list[Frame]:
    """Parse one frame batch, or raise MalformedMessage saying what is wrong."""
    if len(raw) > MAX_FRAME_BATCH_BYTES:
        raise MalformedMessage(
            f"frame batch of {len(raw)} bytes exceeds the {MAX_FRAME_BATCH_BYTES} limit"
        )
    try:
        records = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage(f"frame batch is not msgpack: {e}") from None
    if not isinstance(records, list):
        raise MalformedMessage("frame batch is not a msgpack array")
    frames: list[Frame] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise MalformedMessage(f"frame {i} is not a map")
        data = rec.get("data")
        if isinstance(data, str):  # tolerate text-encoded producers; bytes are canonical
            rec = {**rec, "data": data.encode()}
        try:
            frames.append(Frame.model_validate(rec, strict=False))
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise MalformedMessage(f"frame {i}: invalid field {loc}: {first['msg']}") from None
    return frames


def iter_frame_records(frames: Iterable[Frame]) -> Iterable[dict[str, Any]]:
    for f in frames:
        yield f.to_record()
