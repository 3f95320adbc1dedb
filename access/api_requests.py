"""REST for access requests: `POST /v1/requests`, `GET /v1/requests`,
`GET /v1/requests/{id}`, `POST /v1/requests/{id}/review`.

Who may request and review is decided by the roles (`allow_request`, `review`) in
`$AUDITCAST_HOME/roles.yaml`, read through access core's `access.roles`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from auditcast.access.api_common import (
    Caller,
    api_url,
    app_publisher,
    app_settings,
    call,
    caller_dependency,
    service,
)
from auditcast.access.requests import (
    MAX_REASON_CHARS,
    AccessRequest,
    Policies,
    RequestService,
)
from auditcast.settings import Settings


def role_policies(settings: Settings) -> Policies:
    """Role name -> role (with allow_request, review, max_session_ttl), read each time so
    an edited roles.yaml takes effect without a restart."""
    from auditcast.access.roles import load_roles

    return load_roles(settings)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app_settings(app)

    def policies() -> Policies:
        override = getattr(app.state, "role_policies", None)
        return override() if override is not None else role_policies(settings)

    svc = RequestService(settings, policies, app_publisher(app))
    app.state.request_service = svc
    try:
        yield
    finally:
        app.state.request_service = None
        await svc.close()


router = APIRouter(prefix="/requests", tags=["access requests"], lifespan=lifespan)


class RequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(min_length=1)
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)
    # seconds of access once approved; capped by the roles' max_session_ttl
    ttl: float | None = Field(default=None, gt=0)


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)


def _svc(request: Request) -> RequestService:
    return service(request, "request_service")


def _out(req: AccessRequest) -> dict[str, Any]:
    return req.to_dict()


@router.post("", status_code=201)
async def create_request(
    body: RequestCreate, request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    req = await call(
        _svc(request).create,
        caller.user,
        list(caller.roles),
        body.roles,
        body.reason,
        ttl=None if body.ttl is None else timedelta(seconds=body.ttl),
        api_url=api_url(request),
    )
    return _out(req)


@router.get("")
async def list_requests(
    request: Request, caller: Caller = Depends(caller_dependency)
) -> list[dict[str, Any]]:
    reqs = await call(_svc(request).visible, caller.user, list(caller.roles))
    return [_out(r) for r in reqs]


@router.get("/{request_id}")
async def get_request(
    request_id: str, request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    svc = _svc(request)
    visible = await call(svc.visible, caller.user, list(caller.roles))
    for r in visible:
        if r.id == request_id:
            return _out(r)
    req = await call(svc.get, request_id)  # 404 when it does not exist at all
    from auditcast.access.api_common import http_error
    from auditcast.errors import AccessDenied

    raise http_error(AccessDenied(f"access request {req.id} is neither yours nor yours to review"))


@router.post("/{request_id}/review")
async def review_request(
    request_id: str,
    body: Review,
    request: Request,
    caller: Caller = Depends(caller_dependency),
) -> dict[str, Any]:
    req = await call(
        _svc(request).review,
        request_id,
        caller.user,
        list(caller.roles),
        approve=body.approve,
        reason=body.reason,
        api_url=api_url(request),
    )
    return _out(req)
