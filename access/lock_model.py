"""Locks as data: the record on the `locks` topic, and matching a subject against them.

Pure code, no I/O. A lock names one or more targets (user, role, login, node, cluster,
credential, access request); it matches a subject when ALL of its set targets match
and it has not expired. `LockIndex` keeps locks indexed by target value so a check
looks at the few locks that name one of the subject's values, never at all of them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

from auditcast.errors import MalformedMessage
from auditcast.events import format_time

LockMode = Literal["best_effort", "strict"]
TargetField = Literal["user", "role", "login", "node", "cluster", "credential", "access_request"]
TARGET_FIELDS: Final[tuple[TargetField, ...]] = (
    "user",
    "role",
    "login",
    "node",
    "cluster",
    "credential",
    "access_request",
)
# A lock record is a few hundred bytes; anything near this is garbage or an attack.
MAX_LOCK_RECORD_BYTES: Final = 64 * 1024
# Lock names travel as Kafka keys, URL path segments and CLI arguments.
LOCK_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class LockTargets(BaseModel):
    """What a lock applies to; unset targets are wildcards, at least one must be set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = None
    role: str | None = None
    login: str | None = None
    node: str | None = None
    cluster: str | None = None
    credential: str | None = None
    access_request: str | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> LockTargets:
        if not any(getattr(self, f) for f in TARGET_FIELDS):
            raise ValueError(
                "a lock needs at least one target (user, role, login, node, cluster, "
                "credential or access_request)"
            )
        return self

    def items(self) -> Iterator[tuple[TargetField, str]]:
        for f in TARGET_FIELDS:
            value = getattr(self, f)
            if value:
                yield f, value

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.items())


class Lock(BaseModel):
    """One lock, exactly as it travels on the `locks` topic (docs/SEAMS.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default_factory=lambda: str(uuid.uuid4()))
    targets: LockTargets
    message: str = ""
    # strict: while this lock is active, a view that cannot confirm it is current
    # (stale) refuses every check rather than guessing (Teleport's locking_mode=strict).
    mode: LockMode = "best_effort"
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    created_by: str = ""
    expires: datetime | None = None

    @model_validator(mode="after")
    def _valid(self) -> Lock:
        if not LOCK_NAME.match(self.name):
            raise ValueError(
                f"lock name {self.name!r} must be 1-128 letters, digits, '.', '_', '@' or '-'"
            )
        for t in (self.created, self.expires):
            if t is not None and t.tzinfo is None:
                raise ValueError("lock times must carry a time zone (RFC 3339)")
        return self

    @field_serializer("created", "expires")
    def _ser_time(self, t: datetime | None) -> str | None:
        return None if t is None else format_time(t)

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def matches(self, subject: LockSubject, now: datetime) -> bool:
        """All set targets match the subject, and the lock is in force at `now`."""
        if self.expired(now):
            return False
        return all(value in subject.values(f) for f, value in self.targets.items())

    def to_dict(self) -> dict[str, Any]:
        """The record format: set targets only, times in RFC 3339, `expires` may be null."""
        return {
            **self.model_dump(mode="json"),
            "targets": self.targets.model_dump(exclude_none=True),
        }

    def to_record(self) -> bytes:
        return orjson.dumps(self.to_dict())


def new_lock(
    targets: LockTargets,
    *,
    ttl: timedelta | None,
    message: str = "",
    mode: LockMode = "best_effort",
    created_by: str = "",
    name: str | None = None,
    now: datetime | None = None,
) -> Lock:
    now = now or datetime.now(UTC)
    if ttl is not None and ttl <= timedelta(0):
        raise ValueError("a lock's ttl must be positive")
    return Lock(
        name=name or str(uuid.uuid4()),
        targets=targets,
        message=message,
        mode=mode,
        created=now,
        created_by=created_by,
        expires=None if ttl is None else now + ttl,
    )


def decode_lock(raw: bytes | str) -> Lock:
    """One `locks` record value, or MalformedMessage saying what is wrong."""
    if len(raw) > MAX_LOCK_RECORD_BYTES:
        raise MalformedMessage(f"lock record of {len(raw)} bytes exceeds {MAX_LOCK_RECORD_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(f"lock record is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("lock record is not a JSON object")
    try:
        return Lock.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "lock"
        raise MalformedMessage(f"invalid lock field {loc}: {first['msg']}") from None


@dataclass(frozen=True)
class LockSubject:
    """Who wants to do what, where: the values a gateway knows about one request.

    A user has several roles, and a credential may carry several access requests; the
    other targets are single values. Unknown values are None and match no lock target.
    """

    user: str | None = None
    roles: frozenset[str] = frozenset()
    login: str | None = None
    node: str | None = None
    cluster: str | None = None
    credential: str | None = None
    access_requests: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        user: str | None = None,
        roles: Iterable[str] = (),
        login: str | None = None,
        node: str | None = None,
        cluster: str | None = None,
        credential: str | None = None,
        access_requests: Iterable[str] = (),
    ) -> LockSubject:
        return cls(
            user=user,
            roles=frozenset(roles),
            login=login,
            node=node,
            cluster=cluster,
            credential=credential,
            access_requests=frozenset(access_requests),
        )

    def values(self, target: TargetField) -> frozenset[str] | tuple[str, ...]:
        if target == "role":
            return self.roles
        if target == "access_request":
            return self.access_requests
        value = getattr(self, target)
        return (value,) if value else ()


# A lock must match on every target it sets, so it is enough to file it under one of
# them; the most selective one keeps the buckets a check looks at small.
INDEX_PRIORITY: Final[tuple[TargetField, ...]] = (
    "credential",
    "access_request",
    "user",
    "login",
    "node",
    "cluster",
    "role",
)


def _index_key(lock: Lock) -> tuple[str, str]:
    for f in INDEX_PRIORITY:
        value = getattr(lock.targets, f)
        if value:
            return (f, value)
    raise AssertionError("a lock always has a target")  # LockTargets validates this


@dataclass
class LockIndex:
    """Active locks by name, plus an inverted index (target, value) -> lock names.

    Each lock is filed under its most selective target only, so a check looks at the
    locks that name one of the subject's values there, never at all locks.
    """

    locks: dict[str, Lock] = field(default_factory=dict)
    _by_target: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.locks)

    def put(self, lock: Lock) -> Lock | None:
        """Add or replace a lock; returns the lock it replaced, if any."""
        old = self.remove(lock.name)
        self.locks[lock.name] = lock
        self._by_target.setdefault(_index_key(lock), set()).add(lock.name)
        return old

    def remove(self, name: str) -> Lock | None:
        old = self.locks.pop(name, None)
        if old is not None:
            key = _index_key(old)
            names = self._by_target.get(key)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_target[key]
        return old

    def candidates(self, subject: LockSubject) -> set[str]:
        found: set[str] = set()
        for f in TARGET_FIELDS:
            for value in subject.values(f):
                names = self._by_target.get((f, value))
                if names:
                    found |= names
        return found

    def match(self, subject: LockSubject, now: datetime) -> Lock | None:
        """The matching lock created first (deterministic), or None."""
        best: Lock | None = None
        for name in self.candidates(subject):
            lock = self.locks[name]
            if lock.matches(subject, now) and (best is None or lock.created < best.created):
                best = lock
        return best

    def active(self, now: datetime) -> list[Lock]:
        return sorted(
            (lk for lk in self.locks.values() if not lk.expired(now)), key=lambda lk: lk.created
        )

    def any_strict(self, now: datetime) -> bool:
        return any(lk.mode == "strict" and not lk.expired(now) for lk in self.locks.values())

    def pop_expired(self, now: datetime) -> list[Lock]:
        gone = [lk for lk in self.locks.values() if lk.expired(now)]
        for lk in gone:
            self.remove(lk.name)
        return gone
