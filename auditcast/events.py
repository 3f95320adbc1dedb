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
import msgspec
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
    if _plain_json(raw, data) or plainly_valid_event(data):
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
    if type(time) is not str or not _plain_time(time):
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


def _plain_time(time: str) -> bool:
    """Whether `time` is in `format_time`'s form and a real instant."""
    if _CANONICAL_TIME.match(time) is None:
        return False
    try:
        datetime.fromisoformat(time)  # the calendar: no 13th month, no 30 February
    except ValueError:
        return False
    return True


# The envelope's fields as `plainly_valid_event` types them, for msgspec, which checks a
# record's JSON against them in C while it reads it: 2-3x faster than the Python checks
# over orjson's dict, and with no dict at all where a stage needs only these fields.
# gc=False: the structs hold only text, never a cycle.
class _PlainIdentity(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    user: str
    sso_subject: str | None = None
    sso_issuer: str | None = None
    email: str | None = None
    groups: list[str] = []
    roles: list[str] = []


class _PlainSource(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    collector: str
    instance: str | None = None
    remote_addr: str | None = None
    user_agent: str | None = None


class _PlainChain(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    hash: str
    prev: str | None = None


class PlainEnvelope(msgspec.Struct, gc=False):
    """The envelope fields of a record `plain_envelope` read (type-specific fields are
    not kept). `code` is UNSET when the JSON has none, so a stage can tell."""

    type: str
    time: str
    id: str = ""
    code: str | msgspec.UnsetType = msgspec.UNSET
    user: str | None = None
    credential_id: str | None = None
    identity: _PlainIdentity | None = None
    cluster: str | None = None
    node: str | None = None
    labels: dict[str, str] = {}
    session_id: str | None = None
    source: _PlainSource | None = None
    chain: _PlainChain | None = None


_PLAIN_DECODER: Final = msgspec.json.Decoder(PlainEnvelope)
# msgspec skips unknown fields without checking them as orjson would, and orjson
# refuses some JSON msgspec takes: text that is not UTF-8 (including encoded
# surrogates), numbers beyond a double (1e400, or 309+ digits) and nesting deeper than
# 1024. `plain_envelope` answers only for ASCII records under PLAIN_MAX_BYTES (too short
# to nest that deep) with no number in exponent form and fewer than 300 digits, signs,
# points and blanks in all; everything else goes the way of `decode_event_json`.
# (Escaped lone surrogates and malformed numbers msgspec refuses itself.)
# tests/unit/test_events_plain_envelope.py holds the cases. The scan is one
# `translate`: digits, signs, points and blanks go, `:` `,` `[` become `:`, so a number
# with an exponent leaves `:e` behind. (A regex over the record cost ~10x more.)
PLAIN_MAX_BYTES: Final = 2048
_PLAIN_DELETE: Final = b"0123456789+-. \t\r\n"
_PLAIN_SCAN: Final = bytes.maketrans(b",[E", b"::e")


def plain_envelope(raw: bytes) -> PlainEnvelope | None:
    """The envelope fields of `raw` when `decode_event_json(raw)` certainly takes the
    short way (orjson reads it as an object that `plainly_valid_event` accepts), read
    without building the dict (with the worker's attribution: 38k instead of 53k
    instructions per event under callgrind). None means "not certain, ask
    `decode_event_json`", never that the record is malformed."""
    if len(raw) >= PLAIN_MAX_BYTES or not raw.isascii():
        return None
    scan = raw.translate(_PLAIN_SCAN, _PLAIN_DELETE)
    if b":e" in scan or len(raw) - len(scan) >= 300:
        return None
    try:
        env = _PLAIN_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # DecodeError: also ValidationError
        return None
    if env.type not in CODE_BY_TYPE or not _plain_time(env.time):
        return None
    return env


def _plain_json(raw: bytes | str, data: dict[str, Any]) -> bool:
    """`plainly_valid_event(data)` for the `data` orjson read from `raw`, answered by
    msgspec from `raw` where it can: True only if `plainly_valid_event` says so. msgspec
    checks every occurrence of a repeated key (orjson keeps the last), so it may say
    False where the Python checks say True; they are asked then."""
    try:
        _PLAIN_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # deeper than msgspec goes: ask Python
        return False
    event_type, time = data.get("type"), data.get("time")
    return (
        type(event_type) is str
        and event_type in CODE_BY_TYPE
        and type(time) is str
        and _plain_time(time)
    )


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
