"""REST for locks: `GET|POST|DELETE /v1/locks` (admin role required).

The API process is the lock authority: this router's lifespan starts it (SQLite rows,
`locks` topic records, republish after a broker restart, expiry tombstones).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from auditcast.access.api_common import (
    Caller,
    app_publisher,
    app_settings,
    call,
    caller_dependency,
    require_admin,
    service,
)
from auditcast.access.lock_authority import LockAuthority
from auditcast.access.lock_model import LockMode, LockTargets, new_lock


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    authority = LockAuthority(app_settings(app), publisher=app_publisher(app))
    await authority.start()
    app.state.lock_authority = authority
    try:
        yield
    finally:
        app.state.lock_authority = None
        await authority.stop()
        await app_publisher(app).close()


router = APIRouter(prefix="/locks", tags=["locks"], lifespan=lifespan)


class LockCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: LockTargets
    message: str = Field(default="", max_length=1000)
    mode: LockMode = "best_effort"
    # seconds; None means until removed
    ttl: float | None = Field(default=None, gt=0)
    name: str | None = None


def _authority(request: Request) -> LockAuthority:
    return service(request, "lock_authority")


@router.get("")
async def list_locks(
    request: Request, caller: Caller = Depends(caller_dependency)
) -> list[dict[str, Any]]:
    require_admin(request, caller)
    return [lk.to_dict() for lk in await call(_authority(request).active)]


@router.post("", status_code=201)
async def create_lock(
    body: LockCreate, request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    require_admin(request, caller)
    try:
        lock = new_lock(
            body.targets,
            ttl=None if body.ttl is None else timedelta(seconds=body.ttl),
            message=body.message,
            mode=body.mode,
            created_by=caller.user,
            name=body.name,
        )
    except ValueError as e:
        raise HTTPException(422, detail={"error": str(e), "hint": None}) from None
    published = await call(_authority(request).create, lock)
    return {**lock.to_dict(), "published": published}


@router.delete("/{name}")
async def delete_lock(
    name: str, request: Request, caller: Caller = Depends(caller_dependency)
) -> dict[str, Any]:
    require_admin(request, caller)
    lock = await call(_authority(request).delete, name, by=caller.user)
    return lock.to_dict()


@router.delete("")
async def delete_lock_by_query(
    request: Request,
    name: str = Query(..., description="the lock to remove"),
    caller: Caller = Depends(caller_dependency),
) -> dict[str, Any]:
    return await delete_lock(name, request, caller)
