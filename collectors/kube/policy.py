"""Gateway decisions as plain functions: who is asking, may they reach this cluster,
which headers go upstream, and the `Status` body for our own refusals."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from auditcast.errors import AccessDenied, AccessError, MFARequired

# Headers that belong to one hop (RFC 9110 §7.6.1) or that we set ourselves.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The client must never choose who we impersonate, nor pass its own audit id.
STRIPPED_PREFIXES: Final = ("impersonate-",)
STRIPPED: Final = frozenset({"authorization", "audit-id"})


@dataclass(frozen=True)
class KubeClaims:
    """What a verified auditcast kube token says (see access.tokens)."""

    user: str
    credential_id: str
    cluster: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    kube_users: tuple[str, ...] = ()
    kube_groups: tuple[str, ...] = ()
    mfa: bool = False
    expires: float | None = None  # `exp`, seconds since the epoch
    access_requests: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, c: Mapping[str, Any], cluster: str) -> KubeClaims:
        def tup(key: str) -> tuple[str, ...]:
            v = c.get(key) or ()
            return (v,) if isinstance(v, str) else tuple(str(x) for x in v)

        return cls(
            user=str(c.get("user") or c.get("sub") or ""),
            credential_id=str(c.get("jti") or c.get("credential_id") or ""),
            cluster=cluster,
            roles=tup("roles"),
            groups=tup("groups"),
            kube_users=tup("kube_users"),
            kube_groups=tup("kube_groups"),
            mfa=bool(c.get("mfa")),
            expires=float(c["exp"]) if isinstance(c.get("exp"), int | float) else None,
            access_requests=tup("access_requests"),
        )


class RolePolicy(Protocol):
    """The part of the role definitions the gateway needs (access.roles)."""

    def cluster_allowed(self, roles: Iterable[str], labels: Mapping[str, str]) -> bool: ...

    def requires_mfa(self, roles: Iterable[str]) -> bool: ...


def authorize_cluster(
    claims: KubeClaims, labels: Mapping[str, str], policy: RolePolicy | None
) -> None:
    """Raise AccessDenied / MFARequired unless the roles may use a cluster with `labels`."""
    if policy is None:
        return
    if not policy.cluster_allowed(claims.roles, labels):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
        raise AccessDenied(
            f"roles {', '.join(claims.roles) or '(none)'} may not access cluster "
            f"{claims.cluster} ({shown})"
        )
    if policy.requires_mfa(claims.roles) and not claims.mfa:
        raise MFARequired(
            f"a role of {claims.user} requires per-session MFA for cluster {claims.cluster}; "
            "this token was issued without it"
        )


def impersonation(claims: KubeClaims) -> tuple[str, list[str]]:
    """The user and groups the upstream's RBAC will see for this caller."""
    user = claims.kube_users[0] if claims.kube_users else claims.user
    return user, list(claims.kube_groups)


def upstream_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str] | list[tuple[str, str]],
    claims: KubeClaims,
    auth: Mapping[str, str],
    audit_id: str,
    *,
    keep_upgrade: bool = False,
) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop, credentials and Impersonate-*, plus ours."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in incoming if isinstance(incoming, list) else incoming.items():
        lk = k.lower()
        if lk in STRIPPED or lk.startswith(STRIPPED_PREFIXES):
            continue
        if lk in HOP_BY_HOP and not (keep_upgrade and lk in ("connection", "upgrade")):
            continue
        if lk.startswith("sec-websocket-"):
            continue  # the WebSocket client library makes its own handshake
        out.add(k, v)
    out.update(auth)
    user, groups = impersonation(claims)
    out["Impersonate-User"] = user
    for g in groups:
        out.add("Impersonate-Group", g)
    out["Audit-ID"] = audit_id
    return out


def status_doc(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        doc["details"] = details
    return doc


REASONS: Final = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 431: "BadRequest"}


def refusal(err: AccessError | Exception, code: int | None = None) -> dict[str, Any]:
    """A Kubernetes `Status` for one of our own refusals, naming why."""
    status: int = code or int(getattr(err, "http_status", 403))
    message = getattr(err, "message", str(err))
    hint = getattr(err, "hint", "")
    if hint:
        message = f"{message} ({hint})"
    details: dict[str, Any] = {}
    lock_name = getattr(err, "lock_name", "")
    if lock_name:
        details = {"name": lock_name, "kind": "auditcast-lock"}
    return status_doc(status, REASONS.get(status, "Forbidden"), f"auditcast: {message}", **details)


def is_denied(err: Exception) -> bool:
    return isinstance(err, AccessDenied | MFARequired)
