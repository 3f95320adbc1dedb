"""Adapt the real parts of auditcast (access tokens, roles, locks, CA; the spool and
SessionRecorder) to the small interfaces the gateway and the webhook use."""

from __future__ import annotations

import importlib
import ssl
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from auditcast.collectors.kube.policy import KubeClaims
from auditcast.collectors.kube.upstreams import CLUSTERS_FILE, UpstreamCluster, load_clusters
from auditcast.errors import ConfigError
from auditcast.settings import Settings


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{module} is not available: {e}") from None


def clusters_file(settings: Settings, override: Path | None) -> Path:
    return override or settings.home_dir / CLUSTERS_FILE


# The token keys are read once and re-read this often, so a rotated key is picked up
# without reading the CA directory on every request.
CA_RELOAD_SECONDS = 60.0


def token_verifier(settings: Settings) -> Any:
    tokens = _import("auditcast.access.tokens")
    ca_mod = _import("auditcast.access.ca")
    state: dict[str, Any] = {"ca": ca_mod.load_ca(settings), "at": time.monotonic()}

    def verify(token: str, cluster: str) -> KubeClaims:
        if time.monotonic() - state["at"] > CA_RELOAD_SECONDS:
            state["ca"], state["at"] = ca_mod.load_ca(settings), time.monotonic()
        claims = tokens.verify_token(state["ca"], token, audience=cluster, kind="kube")
        data = claims if isinstance(claims, Mapping) else _as_mapping(claims)
        return KubeClaims.from_mapping(data, cluster)

    return verify


def _as_mapping(obj: Any) -> Mapping[str, Any]:
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump())
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    raise ConfigError(f"cannot read token claims of type {type(obj).__name__}")


def lock_subject(claims: KubeClaims) -> Any:
    model = _import("auditcast.access.lock_model")
    return model.LockSubject.of(
        user=claims.user,
        roles=claims.roles,
        cluster=claims.cluster,
        credential=claims.credential_id,
        access_requests=claims.access_requests,
    )


class AccessRoles:
    """access.roles as the gateway's RolePolicy: cluster labels and per-session MFA.

    Role names on a token that the roles file no longer defines grant nothing."""

    def __init__(self, settings: Settings) -> None:
        self._mod = _import("auditcast.access.roles")
        self.roles = self._mod.load_roles(settings)

    def _defs(self, names: Iterable[str]) -> list[Any]:
        return [self.roles[n] for n in names if n in self.roles]

    def cluster_allowed(self, roles: Iterable[str], labels: Mapping[str, str]) -> bool:
        return bool(self._mod.kube_labels_allowed(self._defs(roles), dict(labels)))

    def requires_mfa(self, roles: Iterable[str]) -> bool:
        return any(r.require_session_mfa for r in self._defs(roles))


def server_tls(
    settings: Settings, cert: Path | None, key: Path | None, name: str
) -> ssl.SSLContext:
    """TLS for our listener: the given cert/key, else one issued by the auditcast host CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if cert:
        ctx.load_cert_chain(str(cert), str(key or cert))
        return ctx
    ca = _import("auditcast.access.ca")
    cert_path, key_path = ca.issue_server_cert(
        settings, name, hosts=[settings.bind_host, "localhost"]
    )
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def gateway_users(clusters: Mapping[str, UpstreamCluster]) -> set[str]:
    return {c.identity for c in clusters.values()}


__all__ = [
    "AccessRoles",
    "clusters_file",
    "gateway_users",
    "load_clusters",
    "lock_subject",
    "server_tls",
    "token_verifier",
]
