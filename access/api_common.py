"""What the lock, access-request and MFA routers share: the caller, errors, services.

The authenticated caller comes from access core's dependency (`access.api`); the
services (lock authority, request service, MFA service, one Kafka publisher) live on
`app.state` and are started by the routers' lifespans, which FastAPI merges into the
app's when it includes the routers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Header, HTTPException, Request

from auditcast.access.publish import Publisher
from auditcast.errors import AccessDenied, AuditcastError
from auditcast.settings import Settings, load_settings

T = TypeVar("T")


class Caller(Protocol):
    """The authenticated user of a request: who, with which roles (incl. requested)."""

    @property
    def user(self) -> str: ...

    @property
    def roles(self) -> list[str]: ...


def _no_login() -> Caller:
    raise HTTPException(
        503, detail={"error": "sign-in is not available on this API", "hint": "see access.api"}
    )


async def caller_dependency(request: Request, authorization: str = Header(default="")) -> Caller:
    """The signed-in caller, per access core's `access.api.current_user` (imported late:
    access.api itself builds on this module). Tests may override this dependency."""
    from auditcast.access.api import current_user

    return await current_user(request, authorization)


def http_error(err: AuditcastError) -> HTTPException:
    """The status of the error class, a JSON body with the message and the hint."""
    return HTTPException(
        status_code=err.http_status, detail={"error": err.message, "hint": err.hint or None}
    )


async def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    try:
        return await fn(*args, **kwargs)
    except AuditcastError as e:
        raise http_error(e) from None
    except ValueError as e:
        raise HTTPException(status_code=422, detail={"error": str(e), "hint": None}) from None


def is_admin(settings: Settings, roles: list[str]) -> bool:
    """Any of the roles has `admin: true` in roles.yaml (the shipped `admin` role does)."""
    from auditcast.access.roles import effective_access, load_roles

    try:
        return effective_access(roles, load_roles(settings)).admin
    except AuditcastError as e:
        raise http_error(e) from None


def require_admin(request: Request, caller: Caller) -> None:
    if not is_admin(app_settings(request.app), list(caller.roles)):
        raise http_error(
            AccessDenied(
                f"{caller.user} needs an admin role for this",
                hint="roles with `admin: true` in roles.yaml may manage locks",
            )
        )


def app_settings(app: FastAPI) -> Settings:
    settings = getattr(app.state, "settings", None)
    if settings is None:
        settings = load_settings()
        app.state.settings = settings
    return settings


def app_publisher(app: FastAPI) -> Publisher:
    publisher = getattr(app.state, "access_publisher", None)
    if publisher is None:
        publisher = Publisher(app_settings(app))
        app.state.access_publisher = publisher
    return publisher


def api_url(request: Request) -> str:
    """The API's own base URL as the caller reached it (for links in notifications)."""
    return str(request.base_url).rstrip("/")


def service(request: Request, name: str) -> Any:
    svc = getattr(request.app.state, name, None)
    if svc is None:
        raise HTTPException(503, detail={"error": f"{name} is not running", "hint": None})
    return svc
