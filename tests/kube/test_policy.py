"""Gateway decisions without I/O: labels, per-session MFA, headers sent upstream."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest
from multidict import CIMultiDict

from auditcast.collectors.kube.policy import (
    KubeClaims,
    authorize_cluster,
    refusal,
    upstream_headers,
)
from auditcast.errors import AccessDenied, Locked, MFARequired


class Roles:
    """Role definitions as plain data: allowed env labels and MFA per role."""

    def __init__(self, envs: dict[str, set[str]], mfa: set[str]) -> None:
        self.envs, self.mfa = envs, mfa

    def cluster_allowed(self, roles: Iterable[str], labels: Mapping[str, str]) -> bool:
        return any(labels.get("env") in self.envs.get(r, set()) for r in roles)

    def requires_mfa(self, roles: Iterable[str]) -> bool:
        return any(r in self.mfa for r in roles)


ROLES = Roles({"dev": {"dev"}, "prod-admin": {"prod"}}, mfa={"prod-admin"})


def claims(roles: tuple[str, ...], *, mfa: bool = False, cluster: str = "c") -> KubeClaims:
    return KubeClaims(
        user="alice",
        credential_id="cred-1",
        cluster=cluster,
        roles=roles,
        kube_groups=("devs",),
        mfa=mfa,
    )


def test_role_without_the_clusters_labels_is_denied_naming_roles_and_labels() -> None:
    with pytest.raises(AccessDenied, match=r"roles dev may not access cluster c \(env=prod\)"):
        authorize_cluster(claims(("dev",)), {"env": "prod"}, ROLES)
    authorize_cluster(claims(("dev",)), {"env": "dev"}, ROLES)


def test_role_requiring_session_mfa_refuses_tokens_without_it() -> None:
    with pytest.raises(MFARequired, match="requires per-session MFA"):
        authorize_cluster(claims(("prod-admin",)), {"env": "prod"}, ROLES)
    authorize_cluster(claims(("prod-admin",), mfa=True), {"env": "prod"}, ROLES)


def test_upstream_headers_drop_client_credentials_and_impersonation() -> None:
    incoming = CIMultiDict(
        {
            "Authorization": "Bearer user-token",
            "Impersonate-User": "admin",
            "Impersonate-Extra-scopes": "x",
            "Audit-ID": "forged",
            "Connection": "keep-alive",
            "Accept": "application/json",
        }
    )
    incoming.add("Impersonate-Group", "system:masters")
    out = upstream_headers(incoming, claims(("dev",)), {"Authorization": "Bearer gw"}, "ev-1")
    assert out["Authorization"] == "Bearer gw"
    assert out.getall("Impersonate-User") == ["alice"]
    assert out.getall("Impersonate-Group") == ["devs"]
    assert "Impersonate-Extra-scopes" not in out and "Connection" not in out
    assert out["Audit-ID"] == "ev-1" and out["Accept"] == "application/json"


def test_kube_users_claim_overrides_the_sso_user_for_impersonation() -> None:
    c = KubeClaims(user="alice", credential_id="x", cluster="c", kube_users=("alice@corp",))
    out = upstream_headers(CIMultiDict(), c, {}, "ev")
    assert out["Impersonate-User"] == "alice@corp"
    assert "Impersonate-Group" not in out


def test_refusal_is_a_kubernetes_status_naming_the_lock() -> None:
    doc = refusal(Locked("access locked by l1: incident", lock_name="l1"))
    assert doc["kind"] == "Status" and doc["code"] == 403 and doc["reason"] == "Forbidden"
    assert doc["message"].startswith("auditcast: access locked by l1: incident")
    assert doc["details"] == {"name": "l1", "kind": "auditcast-lock"}
