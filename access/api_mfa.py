"""REST for per-session MFA: `POST /v1/mfa/devices` (enrol), `GET /v1/mfa/devices`,
`POST /v1/mfa/verify`.

Enrolment is one request: the client makes the secret, shows it as a QR code, and
sends it with the first code the app shows, which proves the app holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from auditcast.access.api_common import (
    Caller,
    app_publisher,
    app_settings,
    call,
    caller_dependency,
    service,
)
from auditcast.access.mfa import DEVICE_NAME_MAX, MFAService


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    svc = MFAService(app_settings(app), app_publisher(app))
    app.state.mfa_service = svc
    try:
        yield
    finally:
        app.state.mfa_service = None
        await svc.close()


router = APIRouter(prefix="/mfa", tags=["mfa"], lifespan=lifespan)


class Enrol(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="otp", min_length=1, max_length=DEVICE_NAME_MAX)
    secret: str = Field(min_length=16, max_length=128)
    code: str = Field(max_length=16)


class Verify(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=16)
    session_id: str | None = None
    cluster: str | None = None
    node: str | None = None


def _svc(request: Request) -> MFAService:
    return service(request, "mfa_service")


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/devices", status_code=201)
async def enrol_device(
    body: Enrol, request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    device = await call(_svc(request).enrol, caller.user, body.name, body.secret, body.code)
    return {"user": device.user, "name": device.name, "created": device.created}


@router.get("/devices")
async def list_devices(
    request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    """The caller's devices (names and dates, never secrets)."""
    devices = await asyncio.to_thread(_svc(request).store.devices, caller.user)
    return {
        "user": caller.user,
        "devices": [{"name": d.name, "created": d.created} for d in devices],
    }


@router.post("/verify")
async def verify(
    body: Verify, request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    done = await call(
        _svc(request).verify,
        caller.user,
        body.code,
        session_id=body.session_id,
        cluster=body.cluster,
        node=body.node,
        remote_addr=_remote(request),
    )
    return {"verified": True, "user": done.user, "device": done.device, "event_id": done.event_id}
