"""`/v1/auth`, `/v1/kube`, `/v1/ssh`: sign-in and short-lived credentials over HTTP.

`current_user` is the FastAPI dependency every other router uses for the caller: the
web session token (`Authorization: Bearer ...`) that `POST /v1/auth/login` issued,
verified on each request, and refused while a lock covers its user or roles.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from pydantic import BaseModel, Field

from auditcast.access.api_common import app_publisher, app_settings, http_error
from auditcast.access.auth import AuthService
from auditcast.access.ca import load_ca, public_jwk
from auditcast.access.lock_model import Lock, LockSubject
from auditcast.access.tokens import TokenClaims, verify_session_token
from auditcast.errors import AuditcastError, InvalidToken, Locked

router = APIRouter(tags=["auth"])


def auth_service(app: FastAPI) -> AuthService:
    svc = getattr(app.state, "auth_service", None)
    if svc is None:

        async def lock_check(subject: LockSubject) -> Lock | None:
            authority = getattr(app.state, "lock_authority", None)
            if authority is None:
                return None
            now = datetime.now(UTC)
            return authority.check(subject, now=now)  # in-memory index, not a table scan

        svc = AuthService(app_settings(app), app_publisher(app), lock_check)
        app.state.auth_service = svc
    return svc


async def current_user(request: Request, authorization: str = Header(default="")) -> TokenClaims:
    """The signed-in caller; 401 with a hint when the session is missing or invalid."""
    scheme, _, token = authorization.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("not signed in: no bearer token")
        claims = verify_session_token(token.strip(), settings=app_settings(request.app))
        svc = auth_service(request.app)
        if svc.lock_check is not None:
            subject = LockSubject.of(
                user=claims.sub, roles=claims.roles, credential=claims.jti,
                access_requests=claims.access_requests,
            )  # fmt: skip
            lock = await svc.lock_check(subject)
            if lock is not None:
                raise Locked(f"lock {lock.name} in force: {lock.message}", lock_name=lock.name)
    except AuditcastError as e:
        raise http_error(e) from None
    return claims


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


class LoginIn(BaseModel):
    id_token: str = Field(max_length=16384)
    nonce: str | None = None
    request_ids: list[str] = Field(default_factory=list, max_length=10)


class KubeIn(BaseModel):
    cluster: str = Field(max_length=253)
    mfa_code: str | None = Field(default=None, max_length=10)


class SSHIn(BaseModel):
    public_key: str = Field(max_length=8192)
    mfa_code: str | None = Field(default=None, max_length=10)


def _session_out(token: str, claims: TokenClaims) -> dict[str, Any]:
    return {
        "token": token,
        "user": claims.sub,
        "roles": claims.roles,
        "groups": claims.groups,
        "email": claims.email,
        "expires": claims.expires.isoformat(),
        "credential_id": claims.jti,
        "access_requests": claims.access_requests,
    }


@router.post("/auth/login")
async def login(body: LoginIn, request: Request) -> dict[str, Any]:
    svc = auth_service(request.app)
    try:
        token, claims = await svc.login(
            body.id_token,
            nonce=body.nonce,
            request_ids=body.request_ids,
            remote_addr=_remote(request),
        )
    except AuditcastError as e:
        if isinstance(e, InvalidToken | Locked):
            from auditcast.access.publish import audit_event
            from auditcast.events import Source

            await app_publisher(request.app).emit_quietly(
                audit_event("auth.failed", reason=e.message, stage="login",
                            source=Source(collector="api", remote_addr=_remote(request)))
            )  # fmt: skip
        raise http_error(e) from None
    out = _session_out(token, claims)
    access = svc.access(claims.roles)
    out.update(
        kube_groups=list(access.kube_groups), logins=list(access.logins),
        require_session_mfa=access.require_session_mfa,
        user_ca=svc.ca.user_ca_line(), known_hosts=svc.ca.host_ca_known_hosts_line(),
        tls_ca=svc.ca.tls_cert_pem(),
    )  # fmt: skip
    return out


@router.get("/auth/whoami")
async def whoami(request: Request, caller: TokenClaims = Depends(current_user)) -> dict[str, Any]:
    access = auth_service(request.app).access(caller.roles)
    return {
        "user": caller.sub, "roles": caller.roles, "groups": caller.groups, "email": caller.email,
        "kube_groups": list(access.kube_groups), "kube_users": list(access.kube_users),
        "logins": list(access.logins), "expires": caller.expires.isoformat(),
        "require_session_mfa": access.require_session_mfa, "sso_issuer": caller.sso_issuer,
    }  # fmt: skip


@router.post("/auth/kube")
async def kube_credential(
    body: KubeIn, request: Request, caller: TokenClaims = Depends(current_user)
) -> dict[str, Any]:
    try:
        token, claims = await auth_service(request.app).kube_token(
            caller, body.cluster, mfa_code=body.mfa_code, remote_addr=_remote(request)
        )
    except AuditcastError as e:
        raise http_error(e) from None
    return {
        "token": token,
        "expires": claims.expires.isoformat(),
        "credential_id": claims.jti,
        "mfa": claims.mfa,
    }


@router.post("/auth/ssh")
async def ssh_certificate(
    body: SSHIn, request: Request, caller: TokenClaims = Depends(current_user)
) -> dict[str, Any]:
    svc = auth_service(request.app)
    try:
        cert, claims = await svc.ssh_cert(
            caller, body.public_key, mfa_code=body.mfa_code, remote_addr=_remote(request)
        )
    except AuditcastError as e:
        raise http_error(e) from None
    return {
        "certificate": cert, "expires": claims.expires.isoformat(), "credential_id": claims.jti,
        "known_hosts": svc.ca.host_ca_known_hosts_line(),
    }  # fmt: skip


@router.get("/kube/clusters")
async def kube_clusters(
    request: Request, caller: TokenClaims = Depends(current_user)
) -> list[dict[str, Any]]:
    return auth_service(request.app).visible_clusters(caller)


@router.get("/ssh/nodes")
async def ssh_nodes(
    request: Request, caller: TokenClaims = Depends(current_user)
) -> list[dict[str, Any]]:
    return auth_service(request.app).visible_nodes(caller)


@router.get("/auth/jwks")
async def jwks(request: Request) -> dict[str, Any]:
    """The public keys that sign auditcast tokens (RFC 8037 OKP JWKs), current key
    first, rotated keys still in their grace period after it: for gateways that verify
    kube tokens without access to `$AUDITCAST_HOME/ca`."""
    ca = load_ca(app_settings(request.app))
    return {"keys": [public_jwk(kid, key) for kid, key in ca.token_public_keys().items()]}


@router.get("/auth/config")
async def auth_config(request: Request) -> dict[str, Any]:
    """What a CLI needs to start a login: the issuer and client id (no secrets)."""
    s = app_settings(request.app)
    return {"issuer": s.oidc_issuer, "client_id": s.oidc_client_id, "scopes": s.oidc_scopes}
