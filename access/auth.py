"""The auth service behind `/v1/auth`: SSO login → roles → short-lived credentials.

Every credential issued here is bound to the SSO identity that asked for it: it emits
`cert.issued` and writes an `identities` record (credential id → identity), which the
stream processors join every gateway event against.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from auditcast.access.ca import CertificateAuthority, load_ca
from auditcast.access.inventory import load_clusters, load_nodes
from auditcast.access.lock_model import Lock, LockSubject
from auditcast.access.oidc import LEEWAY_S, IDTokenVerifier, discover
from auditcast.access.publish import Publisher
from auditcast.access.roles import Access, effective_access, load_roles_file, roles_for_groups
from auditcast.access.tokens import SESSION_AUDIENCE, TokenClaims, issue_token
from auditcast.errors import (
    AccessDenied,
    AccessError,
    ConfigError,
    InvalidToken,
    Locked,
    MFARequired,
    NotFound,
)
from auditcast.events import Event, Identity, Source, format_time
from auditcast.settings import Settings
from auditcast.topics import IDENTITIES

log = logging.getLogger(__name__)

# A per-session MFA credential is good for starting one session, not for an afternoon.
MFA_CREDENTIAL_TTL: Final = dt.timedelta(minutes=1)

# One ID token, one sign-in: a token copied from a log or a proxy cannot mint a second
# session. Remembered until it expires (plus the verifier's leeway); bounded so a flood of
# sign-ins cannot grow memory without end (at the bound, sign-in is refused, not opened).
MAX_SPENT_ID_TOKENS: Final = 100_000

LockCheck = Callable[[LockSubject], Awaitable[Lock | None]]


class SpentIDTokens:
    """ID tokens already exchanged for a session in this process, until they expire."""

    def __init__(self, limit: int = MAX_SPENT_ID_TOKENS) -> None:
        self.limit = limit
        self._until: dict[bytes, float] = {}

    def spend(self, id_token: str, exp: float, *, now: float | None = None) -> None:
        """Remember the token, or raise InvalidToken when it was spent before."""
        now = time.time() if now is None else now
        digest = hashlib.sha256(id_token.encode()).digest()
        until = self._until.get(digest)
        if until is not None and until >= now:
            raise InvalidToken("ID token was already used to sign in (replayed)")
        if len(self._until) >= self.limit:
            self._until = {k: v for k, v in self._until.items() if v >= now}
            if len(self._until) >= self.limit:
                raise AccessError("too many sign-ins in flight", hint="try again in a minute")
        self._until[digest] = exp + LEEWAY_S


def identity_of(claims: TokenClaims) -> Identity:
    return Identity(
        user=claims.sub, sso_subject=claims.sso_subject, sso_issuer=claims.sso_issuer,
        email=claims.email, groups=claims.groups, roles=claims.roles,
    )  # fmt: skip


def identity_record(claims: TokenClaims, kind: str) -> bytes:
    return orjson.dumps(
        {
            "credential_id": claims.jti,
            "kind": kind,
            "identity": identity_of(claims).model_dump(),
            "issued": format_time(dt.datetime.fromtimestamp(claims.iat, dt.UTC)),
            "expires": format_time(claims.expires),
        }
    )


class AuthService:
    def __init__(
        self, settings: Settings, publisher: Publisher, lock_check: LockCheck | None = None
    ):
        self.settings = settings
        self.publisher = publisher
        self.lock_check = lock_check
        self.ca: CertificateAuthority = load_ca(settings)
        self._verifier: IDTokenVerifier | None = None
        self.spent = SpentIDTokens()
        self._verifier_lock = asyncio.Lock()

    async def verifier(self) -> IDTokenVerifier:
        async with self._verifier_lock:
            if self._verifier is None:
                issuer = self.settings.oidc_issuer
                if not issuer:
                    raise ConfigError(
                        "no identity provider configured",
                        hint="set AUDITCAST_OIDC_ISSUER (or run `auditcast up --demo`)",
                    )
                meta = await discover(issuer)
                self._verifier = IDTokenVerifier(
                    meta.issuer, self.settings.oidc_client_id, meta.jwks_uri
                )
            return self._verifier

    def access(self, roles: list[str]) -> Access:
        return effective_access(roles, load_roles_file(self.settings).roles)

    async def _refuse_if_locked(self, subject: LockSubject) -> None:
        if self.lock_check is None:
            return
        lock = await self.lock_check(subject)
        if lock is not None:
            raise Locked(f"lock {lock.name} in force: {lock.message}", lock_name=lock.name)

    async def _publish(self, claims: TokenClaims, kind: str, event: Event) -> None:
        await self.publisher.send(IDENTITIES, claims.jti.encode(), identity_record(claims, kind))
        await self.publisher.emit(event)

    # ------------------------------------------------------------------ login

    async def login(
        self, id_token: str, *, nonce: str | None, request_ids: list[str], remote_addr: str | None
    ) -> tuple[str, TokenClaims]:
        """Verify the ID token, map groups to roles (plus approved requests), and issue a
        web session token."""
        verifier = await self.verifier()
        sso = await asyncio.to_thread(verifier.verify, id_token, nonce=nonce)
        self.spent.spend(id_token, float(sso["exp"]))
        user = str(sso.get(self.settings.oidc_username_claim) or sso["sub"])
        raw_groups = sso.get(self.settings.oidc_groups_claim) or []
        groups = [str(g) for g in (raw_groups if isinstance(raw_groups, list) else [raw_groups])]
        roles_file = load_roles_file(self.settings)
        roles = roles_for_groups(groups, roles_file.group_mappings)
        access = effective_access(roles, roles_file.roles)
        expires = dt.datetime.now(dt.UTC) + (access.ttl or dt.timedelta(hours=1))
        if request_ids:
            from auditcast.access.requests import approved_roles

            for rid in request_ids:
                extra, until = await asyncio.to_thread(
                    approved_roles, rid, user, settings=self.settings
                )
                roles += [r for r in extra if r not in roles]
                expires = min(expires, until)
        if not roles:
            raise AccessDenied(
                f"{user} has no auditcast role: none of the groups {groups} is mapped",
                hint="ask an administrator to map your IdP group in roles.yaml",
            )
        await self._refuse_if_locked(
            LockSubject.of(user=user, roles=roles, access_requests=request_ids)
        )
        ttl = expires - dt.datetime.now(dt.UTC)
        token, claims = issue_token(
            self.ca, user=user, audience=SESSION_AUDIENCE, ttl=ttl, kind="session",
            roles=roles, groups=groups, sso_subject=str(sso["sub"]), sso_issuer=str(sso["iss"]),
            email=sso.get("email"), access_requests=request_ids,
        )  # fmt: skip
        await self._publish(
            claims, "session",
            Event(type="user.login", user=user, credential_id=claims.jti,
                  identity=identity_of(claims),
                  source=Source(collector="api", remote_addr=remote_addr),
                  expires=format_time(claims.expires), access_requests=request_ids),
        )  # fmt: skip
        return token, claims

    # ------------------------------------------------------------------ credentials

    async def _mfa(
        self, session: TokenClaims, access: Access, code: str | None, **ctx: str
    ) -> bool:
        if not access.require_session_mfa:
            return False
        if not code:
            raise MFARequired(
                f"role requires a fresh MFA code for each session ({', '.join(session.roles)})"
            )
        from auditcast.access.mfa import verify_session_mfa

        await verify_session_mfa(session.sub, code, settings=self.settings, collector="api", **ctx)
        return True

    def _ttl(self, session: TokenClaims, access: Access, mfa: bool) -> dt.timedelta:
        left = session.expires - dt.datetime.now(dt.UTC)
        return min(left, access.ttl, MFA_CREDENTIAL_TTL if mfa else left)

    async def kube_token(
        self, session: TokenClaims, cluster: str, *, mfa_code: str | None, remote_addr: str | None
    ) -> tuple[str, TokenClaims]:
        access = self.access(session.roles)
        target = next((c for c in load_clusters(self.settings) if c.name == cluster), None)
        if target is None:
            raise NotFound(
                f"no cluster named {cluster}", hint="list yours with `auditcast kube ls`"
            )
        if not access.cluster_allowed(target.labels):
            raise AccessDenied(
                f"your roles ({', '.join(session.roles)}) do not allow cluster {cluster}"
            )
        await self._refuse_if_locked(
            LockSubject.of(user=session.sub, roles=session.roles, cluster=cluster,
                           credential=session.jti, access_requests=session.access_requests)
        )  # fmt: skip
        mfa = await self._mfa(session, access, mfa_code, cluster=cluster)
        token, claims = issue_token(
            self.ca, user=session.sub, audience=cluster, ttl=self._ttl(session, access, mfa),
            kind="kube", roles=session.roles, groups=session.groups,
            kube_users=list(access.kube_users), kube_groups=list(access.kube_groups), mfa=mfa,
            sso_subject=session.sso_subject, sso_issuer=session.sso_issuer, email=session.email,
            access_requests=session.access_requests,
        )  # fmt: skip
        await self._publish(
            claims, "kube-token",
            Event(type="cert.issued", user=session.sub, credential_id=claims.jti,
                  identity=identity_of(claims), cluster=cluster, labels=target.labels,
                  source=Source(collector="api", remote_addr=remote_addr), kind="kube-token",
                  expires=format_time(claims.expires), mfa=mfa, session_credential=session.jti),
        )  # fmt: skip
        return token, claims

    async def ssh_cert(
        self,
        session: TokenClaims,
        public_key: str,
        *,
        mfa_code: str | None,
        remote_addr: str | None,
    ) -> tuple[str, TokenClaims]:
        access = self.access(session.roles)
        if not access.logins:
            raise AccessDenied(f"your roles ({', '.join(session.roles)}) allow no SSH logins")
        await self._refuse_if_locked(
            LockSubject.of(user=session.sub, roles=session.roles, credential=session.jti,
                           access_requests=session.access_requests)
        )  # fmt: skip
        mfa = await self._mfa(session, access, mfa_code)
        ttl = self._ttl(session, access, mfa)
        # The certificate's credential id is what the SSH gateway reports; its identity
        # record makes those events attributable like a kube token's.
        _, claims = issue_token(
            self.ca, user=session.sub, audience="ssh", ttl=ttl, kind="kube", roles=session.roles,
            groups=session.groups, mfa=mfa, sso_subject=session.sso_subject,
            sso_issuer=session.sso_issuer, email=session.email,
        )  # fmt: skip
        try:
            cert = self.ca.sign_user_cert(
                public_key, key_id=session.sub, principals=list(access.logins), ttl=ttl,
                credential_id=claims.jti, roles=session.roles, mfa=mfa,
            )  # fmt: skip
        except ValueError as e:
            raise AccessDenied(f"cannot certify that public key: {e}") from None
        await self._publish(
            claims, "ssh-cert",
            Event(type="cert.issued", user=session.sub, credential_id=claims.jti,
                  identity=identity_of(claims),
                  source=Source(collector="api", remote_addr=remote_addr), kind="ssh-cert",
                  principals=list(access.logins),
                  expires=format_time(claims.expires), mfa=mfa, session_credential=session.jti),
        )  # fmt: skip
        return cert, claims

    def visible_clusters(self, session: TokenClaims) -> list[dict[str, Any]]:
        access = self.access(session.roles)
        return [
            {"name": c.name, "labels": c.labels}
            for c in load_clusters(self.settings)
            if access.cluster_allowed(c.labels)
        ]

    def visible_nodes(self, session: TokenClaims) -> list[dict[str, Any]]:
        access = self.access(session.roles)
        return [
            {"name": n.name, "labels": n.labels, "logins": list(access.logins)}
            for n in load_nodes(self.settings)
            if access.node_allowed(n.labels)
        ]
