"""The API process (`auditcast api`): FastAPI under /v1.

It mounts the access routers (sign-in and credentials, locks, access requests, MFA);
the replay routes (events, sessions, recordings) and the web UI slot in here next.
AuditcastError becomes its HTTP status with a JSON body `{"error", "hint"}`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from auditcast import __version__
from auditcast.errors import AuditcastError
from auditcast.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    from auditcast.access import api, api_locks, api_mfa, api_requests

    app = FastAPI(title="auditcast", version=__version__)
    app.state.settings = settings or load_settings()
    for router in (api.router, api_locks.router, api_requests.router, api_mfa.router):
        app.include_router(router, prefix="/v1")

    @app.exception_handler(AuditcastError)
    async def _auditcast_error(request: Request, exc: AuditcastError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.http_status, content={"error": exc.message, "hint": exc.hint or None}
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Routers raise HTTPException(detail={"error", "hint"}) (access.api_common.http_error):
        # lift those to the top level like AuditcastError; "detail" stays for older clients.
        body: dict[str, object] = {"detail": exc.detail}
        if isinstance(exc.detail, dict) and "error" in exc.detail:
            body = {**exc.detail, "detail": exc.detail}
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
