"""Access requests: ask for a role for a while, have someone allowed to approve it.

Pure part: `AccessRequest` (the record), `check_can_request`, `check_can_review`,
`access_ttl` and `effective_state` decide from plain data. Stateful part:
`RequestStore` (table `access_requests` in `$AUDITCAST_HOME/access.db`) and
`RequestService`, which also emits `access_request.created` / `.reviewed` and posts
the Slack-compatible webhook (`settings.request_webhook_url`).

`approved_roles(request_id, user)` is what login calls to add an approved request's
roles to a credential, for at most the approved access TTL.

States: pending -> approved | denied; pending too long, or approved past its access
TTL -> expired (computed from the clock, never stored as a guess).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from auditcast.access.access_db import connect
from auditcast.access.notify import post_webhook, request_message
from auditcast.access.publish import Publisher, audit_event
from auditcast.errors import AccessDenied, AuditcastError, NotFound
from auditcast.events import Source, format_time, new_event_id
from auditcast.settings import Settings, load_settings

log = logging.getLogger(__name__)

RequestState = Literal["pending", "approved", "denied", "expired"]
# A request nobody reviewed in a day is stale: the need has passed or been met otherwise.
PENDING_TTL: Final = timedelta(hours=24)
# Used when a role does not say how long its sessions may last.
DEFAULT_ACCESS_TTL: Final = timedelta(hours=1)
MAX_REASON_CHARS: Final = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_requests (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
)
"""


class RequestStateError(AuditcastError):
    exit_code = 8
    http_status = 409


class RolePolicy(Protocol):
    """What a role says about requests (access.roles.Role has these fields)."""

    @property
    def allow_request(self) -> Any: ...

    @property
    def review(self) -> Any: ...

    @property
    def max_session_ttl(self) -> Any: ...


Policies = Mapping[str, Any]


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _allows(patterns: Iterable[str], role: str) -> bool:
    return any(fnmatch.fnmatchcase(role, p) for p in patterns)


def role_ttl(policy: Any) -> timedelta:
    value = getattr(policy, "max_session_ttl", None)
    if value is None:
        return DEFAULT_ACCESS_TTL
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    from auditcast.cli._util import parse_duration

    return parse_duration(str(value))


class AccessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_event_id)
    user: str
    roles: list[str]
    reason: str = ""
    state: RequestState = "pending"
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # How long the roles are granted once approved (capped by the roles' max_session_ttl).
    access_ttl_s: float
    reviewer: str | None = None
    review_reason: str | None = None
    reviewed: datetime | None = None
    access_expires: datetime | None = None

    @field_serializer("created", "reviewed", "access_expires")
    def _ser_time(self, t: datetime | None) -> str | None:
        return None if t is None else format_time(t)

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        doc["state"] = effective_state(self, now or datetime.now(UTC))
        return doc


def effective_state(req: AccessRequest, now: datetime) -> RequestState:
    if req.state == "pending" and now >= req.created + PENDING_TTL:
        return "expired"
    if req.state == "approved" and req.access_expires is not None and now >= req.access_expires:
        return "expired"
    return req.state


def check_can_request(user_roles: Iterable[str], wanted: list[str], policies: Policies) -> None:
    """Raise AccessDenied/NotFound unless the user's roles allow requesting every role."""
    if not wanted:
        raise AccessDenied("name at least one role to request", hint="--roles devrole")
    allowed: list[str] = []
    for r in user_roles:
        if r in policies:
            allowed += _names(getattr(policies[r], "allow_request", None))
    for role in wanted:
        if role not in policies:
            raise NotFound(f"no role named {role}", hint="ask an administrator which roles exist")
        if not _allows(allowed, role):
            raise AccessDenied(
                f"your roles ({', '.join(sorted(user_roles)) or 'none'}) may not request {role}",
                hint="a role's allow_request lists the roles its members may request",
            )


def check_can_review(
    reviewer: str, reviewer_roles: Iterable[str], req: AccessRequest, policies: Policies
) -> None:
    """Raise AccessDenied unless `reviewer` may approve or deny every role of `req`."""
    if reviewer == req.user:
        raise AccessDenied("you cannot review your own access request")
    reviewable: list[str] = []
    for r in reviewer_roles:
        if r in policies:
            reviewable += _names(getattr(policies[r], "review", None))
    for role in req.roles:
        if not _allows(reviewable, role):
            raise AccessDenied(
                f"your roles ({', '.join(sorted(reviewer_roles)) or 'none'}) may not review "
                f"requests for {role}",
                hint="a role's review list names the roles its members may approve",
            )


def can_review(
    reviewer: str, reviewer_roles: Iterable[str], req: AccessRequest, policies: Policies
) -> bool:
    try:
        check_can_review(reviewer, reviewer_roles, req, policies)
    except AccessDenied:
        return False
    return True


def access_ttl(wanted: list[str], policies: Policies, requested: timedelta | None) -> timedelta:
    """The requested TTL, or the roles' limit, whichever is shorter."""
    cap = min(role_ttl(policies[r]) for r in wanted)
    if requested is None:
        return cap
    if requested <= timedelta(0):
        raise AccessDenied("an access request's ttl must be positive")
    return min(requested, cap)


class RequestStore:
    def __init__(self, settings: Settings) -> None:
        self._db = connect(settings)
        self._db.execute(_SCHEMA)
        self._db.commit()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def put(self, req: AccessRequest) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO access_requests(id, doc) VALUES (?, ?)",
                (req.id, req.model_dump_json()),
            )
            self._db.commit()

    def get(self, request_id: str) -> AccessRequest:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM access_requests WHERE id = ?", (request_id,)
            ).fetchone()
        if row is None:
            raise NotFound(
                f"no access request {request_id}", hint="list them with `auditcast request ls`"
            )
        return AccessRequest.model_validate_json(row["doc"])

    def all(self) -> list[AccessRequest]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM access_requests ORDER BY id").fetchall()
        return [AccessRequest.model_validate_json(r["doc"]) for r in rows]


class RequestService:
    def __init__(
        self,
        settings: Settings,
        policies: Callable[[], Policies],
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.policies = policies
        self.store = RequestStore(settings)
        self.publisher = publisher or Publisher(settings)
        self._own_publisher = publisher is None

    async def close(self) -> None:
        self.store.close()
        if self._own_publisher:
            await self.publisher.close()

    def link(self, request_id: str, api_url: str | None) -> str:
        # The configured public URL wins over the address this request came in on.
        base = (
            getattr(self.settings, "api_url", None)
            or api_url
            or f"http://{self.settings.bind_host}:{self.settings.api_port}"
        )
        return f"{base.rstrip('/')}/requests/{request_id}"

    async def create(
        self,
        user: str,
        user_roles: list[str],
        roles: list[str],
        reason: str,
        *,
        ttl: timedelta | None = None,
        api_url: str | None = None,
    ) -> AccessRequest:
        policies = self.policies()
        wanted = sorted(set(roles))
        if len(reason) > MAX_REASON_CHARS:
            raise AccessDenied(f"the reason is limited to {MAX_REASON_CHARS} characters")
        check_can_request(user_roles, wanted, policies)
        req = AccessRequest(
            user=user,
            roles=wanted,
            reason=reason,
            access_ttl_s=access_ttl(wanted, policies, ttl).total_seconds(),
        )
        await asyncio.to_thread(self.store.put, req)
        log.info("access request created", extra={"user": user, "fields": {"request": req.id}})
        await self.publisher.emit_quietly(
            audit_event(
                "access_request.created",
                user=user,
                source=Source(collector="api"),
                request_id=req.id,
                requested_roles=wanted,
                reason=reason,
            )
        )
        await self._notify("created", req, api_url)
        return req

    async def get(self, request_id: str) -> AccessRequest:
        return await asyncio.to_thread(self.store.get, request_id)

    async def visible(self, user: str, user_roles: list[str]) -> list[AccessRequest]:
        """The caller's own requests and those the caller may review."""
        policies = self.policies()
        reqs = await asyncio.to_thread(self.store.all)
        return [r for r in reqs if r.user == user or can_review(user, user_roles, r, policies)]

    async def review(
        self,
        request_id: str,
        reviewer: str,
        reviewer_roles: list[str],
        *,
        approve: bool,
        reason: str = "",
        api_url: str | None = None,
    ) -> AccessRequest:
        req = await self.get(request_id)
        check_can_review(reviewer, reviewer_roles, req, self.policies())
        now = datetime.now(UTC)
        state = effective_state(req, now)
        if state != "pending":
            raise RequestStateError(f"access request {request_id} is {state}, not pending")
        req.state = "approved" if approve else "denied"
        req.reviewer = reviewer
        req.review_reason = reason
        req.reviewed = now
        if approve:
            req.access_expires = now + timedelta(seconds=req.access_ttl_s)
        await asyncio.to_thread(self.store.put, req)
        log.info(
            "access request %s", req.state, extra={"user": reviewer, "fields": {"request": req.id}}
        )
        await self.publisher.emit_quietly(
            audit_event(
                "access_request.reviewed",
                user=reviewer,
                source=Source(collector="api"),
                request_id=req.id,
                requester=req.user,
                requested_roles=req.roles,
                state=req.state,
                reason=reason,
                access_expires=None
                if req.access_expires is None
                else format_time(req.access_expires),
            )
        )
        await self._notify(req.state, req, api_url)
        return req

    async def _notify(self, action: str, req: AccessRequest, api_url: str | None) -> None:
        url = self.settings.request_webhook_url
        if not url:
            return
        payload = request_message(
            action=action,
            request_id=req.id,
            user=req.user,
            roles=req.roles,
            reason=req.reason,
            link=self.link(req.id, api_url),
            reviewer=req.reviewer,
            review_reason=req.review_reason,
        )
        await post_webhook(url, payload)


def approved_roles(
    request_id: str,
    user: str,
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> tuple[list[str], datetime]:
    """The roles an approved request grants `user`, and when that grant ends.

    For login: a credential issued with this request must expire no later than the
    returned time. Raises NotFound, AccessDenied (someone else's request) or
    RequestStateError (pending, denied or expired).
    """
    store = RequestStore(settings or load_settings())
    try:
        req = store.get(request_id)
    finally:
        store.close()
    if req.user != user:
        raise AccessDenied(f"access request {request_id} belongs to another user")
    state = effective_state(req, now or datetime.now(UTC))
    if state != "approved" or req.access_expires is None:
        raise RequestStateError(
            f"access request {request_id} is {state}; only an approved request grants roles",
            hint="wait for a reviewer, or create a new request with `auditcast request create`",
        )
    return list(req.roles), req.access_expires


def dumps(reqs: list[AccessRequest]) -> bytes:
    now = datetime.now(UTC)
    return orjson.dumps([r.to_dict(now) for r in reqs])
