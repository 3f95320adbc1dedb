"""Short-lived auditcast tokens (JWT, EdDSA): kube credentials and web sessions.

Claims (docs/SEAMS.md): `iss`, `sub` (user), `aud` (cluster name, or "auditcast" for a
web session), `jti` (credential id), `iat`, `nbf`, `exp`, `kind`, `roles`, `groups`,
`kube_users`, `kube_groups`, `mfa`, `sso_subject`, `sso_issuer`, `email`.

Verification accepts only EdDSA with a key the CA trusts (by `kid`), so `alg: none`
and HS256-with-the-public-key confusion are refused before any claim is read.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field

from auditcast.access.ca import CertificateAuthority, load_ca
from auditcast.errors import InvalidToken
from auditcast.settings import Settings

ISSUER: Final = "auditcast"
SESSION_AUDIENCE: Final = "auditcast"
ALGORITHMS: Final = ["EdDSA"]
# Tolerated clock skew between the issuer and a gateway.
LEEWAY_S: Final = 5


class TokenClaims(BaseModel):
    model_config = ConfigDict(extra="ignore")

    iss: str
    sub: str
    aud: str
    jti: str
    iat: int
    nbf: int
    exp: int
    kind: Literal["kube", "session"] = "kube"
    roles: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    kube_users: list[str] = Field(default_factory=list)
    kube_groups: list[str] = Field(default_factory=list)
    mfa: bool = False
    sso_subject: str | None = None
    sso_issuer: str | None = None
    email: str | None = None
    access_requests: list[str] = Field(default_factory=list)

    @property
    def user(self) -> str:
        return self.sub

    @property
    def credential_id(self) -> str:
        return self.jti

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.exp, dt.UTC)


def new_credential_id() -> str:
    return str(uuid.uuid4())


def issue_token(
    ca: CertificateAuthority,
    *,
    user: str,
    audience: str,
    ttl: dt.timedelta,
    kind: Literal["kube", "session"],
    credential_id: str | None = None,
    **claims: Any,
) -> tuple[str, TokenClaims]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    body = TokenClaims(
        iss=ISSUER,
        sub=user,
        aud=audience,
        jti=credential_id or new_credential_id(),
        iat=now,
        nbf=now,
        exp=now + int(ttl.total_seconds()),
        kind=kind,
        **claims,
    )
    token = jwt.encode(
        body.model_dump(exclude_none=True),
        ca.token_key,
        algorithm="EdDSA",
        headers={"kid": ca.token_kid},
    )
    return token, body


def verify_token(ca: CertificateAuthority, token: str, *, audience: str, kind: str) -> TokenClaims:
    """Verify signature, issuer, audience, time and kind; raise InvalidToken with why."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("malformed token: not a JWT") from None
    if header.get("alg") not in ALGORITHMS:
        raise InvalidToken(f"token algorithm {header.get('alg')!r} is not accepted")
    key = ca.token_public_keys().get(str(header.get("kid")))
    if key is None:
        raise InvalidToken("token was not signed by this auditcast (unknown key)")
    try:
        data = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=ISSUER,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "nbf", "jti", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken(f"token was not issued for {audience}") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("token signature is invalid (forged or tampered)") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("token is not valid yet") from None
    except jwt.PyJWTError as e:
        raise InvalidToken(f"invalid token: {e}") from None
    claims = TokenClaims.model_validate(data)
    if claims.kind != kind:
        raise InvalidToken(f"a {claims.kind} token cannot be used here (needs {kind})")
    return claims


def verify_kube_token(token: str, cluster: str, *, settings: Settings) -> TokenClaims:
    """What the kube gateway calls for every request (it caches the result briefly)."""
    return verify_token(load_ca(settings), token, audience=cluster, kind="kube")


def verify_session_token(token: str, *, settings: Settings) -> TokenClaims:
    return verify_token(load_ca(settings), token, audience=SESSION_AUDIENCE, kind="session")
