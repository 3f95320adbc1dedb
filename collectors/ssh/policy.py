"""Who may open which SSH session: pure decisions over plain data, no I/O.

The gateway feeds in what it learned during authentication (the certificate, the
requested destination, the node from the inventory, the user's merged role grant and
the lock in force, if any) and gets back either an allowed `Target` or a `Refusal`
whose message is what the user reads in their terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from auditcast.access.roles import labels_allowed

# Extension that access.ca puts on every user certificate (docs/SEAMS.md).
CREDENTIAL_EXTENSION: Final = "auditcast-credential@auditcast"
# Extension carrying the user's roles (comma separated) when access.ca adds it; the
# gateway otherwise resolves roles through the `identities` record of the credential.
ROLES_EXTENSION: Final = "auditcast-roles@auditcast"
# Set by access.ca when the certificate was issued after a per-session MFA check.
WILDCARD: Final = "*"


@dataclass(frozen=True)
class Destination:
    """`root@node1` as typed in `ssh root@node1@gateway`: the login and the node."""

    login: str
    node: str


@dataclass(frozen=True)
class CertInfo:
    """What the gateway needs from an OpenSSH user certificate."""

    user: str  # key id
    principals: tuple[str, ...]
    credential_id: str
    valid_after: datetime
    valid_before: datetime
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    # The node's own host public key ("ssh-ed25519 AAAA..."), for nodes without a
    # host certificate from the auditcast host CA.
    host_key: str | None = None


def node_known_hosts(ca_lines: str | None, node: Node) -> str | None:
    """known_hosts text the gateway checks a node's host key against: the host CA's
    `@cert-authority` line, plus the node's pinned key when the inventory has one."""
    lines = [ca_lines.strip()] if ca_lines else []
    if node.host_key:
        host = node.address if node.port == 22 else f"[{node.address}]:{node.port}"
        lines.append(f"{host} {node.host_key.strip()}")
    return "\n".join(lines) + "\n" if lines else None


@dataclass(frozen=True)
class Grant:
    """The SSH-relevant union of a user's roles (allow lists add up, denies win)."""

    roles: tuple[str, ...] = ()
    logins: frozenset[str] = frozenset()
    # one allow selector per role (any may match), one deny selector per role (any denies)
    node_labels_any: Sequence[Mapping[str, list[str]]] = ()
    node_labels_deny: Sequence[Mapping[str, list[str]]] = ()
    require_session_mfa: bool = False
    allow_file_transfer: bool = False
    allow_port_forwarding: bool = False
    allow_agent_forwarding: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a session is refused; `message` is shown to the user verbatim."""

    reason: str  # short machine-readable cause, e.g. "node_unknown"
    message: str


@dataclass(frozen=True)
class Target:
    """An allowed session: who, as which login, to which node."""

    cert: CertInfo
    login: str
    node: Node
    grant: Grant


def parse_destination(username: str) -> Destination | Refusal:
    """`login@node`: the login is before the first `@`, the node after it."""
    login, sep, node = username.partition("@")
    if not sep or not login or not node:
        return Refusal(
            "bad_destination",
            f"auditcast: cannot tell login and node from {username!r}; "
            "connect as LOGIN@NODE, e.g. `ssh -p 3022 root@node1@gateway`",
        )
    return Destination(login=login, node=node)


def node_allowed(labels: Mapping[str, str], grant: Grant) -> bool:
    """Some role's allow selector matches and no role's deny selector does (the same
    rule as for Kubernetes clusters: access.roles.labels_allowed)."""
    return labels_allowed(grant.node_labels_any, grant.node_labels_deny, labels)


def cert_time_refusal(cert: CertInfo, now: datetime | None = None) -> Refusal | None:
    now = now or datetime.now(UTC)
    if now < cert.valid_after:
        return Refusal("cert_not_yet_valid", "auditcast: your certificate is not valid yet")
    if now >= cert.valid_before:
        return Refusal(
            "cert_expired",
            f"auditcast: your certificate expired at {cert.valid_before:%Y-%m-%d %H:%M:%S} UTC; "
            "run `auditcast login` for a fresh one",
        )
    return None


def authorize(
    cert: CertInfo,
    dest: Destination,
    node: Node | None,
    grant: Grant,
) -> Target | Refusal:
    """The policy decision, locks and MFA aside (they come from live state)."""
    if not cert.credential_id:
        return Refusal(
            "cert_not_auditcast",
            "auditcast: this certificate carries no auditcast credential; run `auditcast login`",
        )
    if dest.login not in cert.principals:
        return Refusal(
            "login_not_allowed",
            f"auditcast: your certificate does not allow login {dest.login!r} "
            f"(allowed: {', '.join(cert.principals) or 'none'})",
        )
    if grant.logins and dest.login not in grant.logins:
        return Refusal(
            "login_not_allowed",
            f"auditcast: your roles do not allow login {dest.login!r} "
            f"(allowed: {', '.join(sorted(grant.logins))})",
        )
    if node is None:
        return Refusal("node_unknown", f"auditcast: no node named {dest.node!r} in the inventory")
    if not node_allowed(node.labels, grant):
        labels = ", ".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
        return Refusal(
            "node_denied",
            f"auditcast: your roles do not allow access to node {node.name!r} ({labels})",
        )
    return Target(cert=cert, login=dest.login, node=node, grant=grant)


def lock_notice(name: str, message: str) -> str:
    """The line written to a live terminal when a lock ends its session."""
    return f"session terminated: lock {name} in force: {message}"


def lock_refusal(name: str, message: str) -> Refusal:
    return Refusal("locked", f"auditcast: access denied: lock {name} in force: {message}")


def _field(role: Any, name: str, default: Any) -> Any:
    if isinstance(role, Mapping):
        return role.get(name, default)
    return getattr(role, name, default)


def _selector(value: Any) -> dict[str, list[str]]:
    """`{"env": "staging"}`, `{"env": ["staging", "dev"]}` or `"*"` -> label -> values."""
    if not value:
        return {}
    if value == WILDCARD:
        return {WILDCARD: [WILDCARD]}
    return {
        str(k): [str(v)] if isinstance(v, str) else [str(x) for x in v] for k, v in value.items()
    }


def grant_from_roles(names: Iterable[str], roles: Mapping[str, Any]) -> Grant:
    """The union of the named roles (dicts as in roles YAML, or role objects).

    Unknown role names add nothing. Allow lists add up across roles; a deny selector
    of any role wins; the strictest MFA setting and the most permissive transfer and
    forwarding flags apply, as each role grants them.
    """
    known = [n for n in names if n in roles]
    logins: set[str] = set()
    allow: list[Mapping[str, list[str]]] = []
    deny: list[Mapping[str, list[str]]] = []
    mfa = transfer = ports = agent = False
    for name in known:
        role = roles[name]
        logins.update(str(x) for x in _field(role, "logins", ()) or ())
        node_labels = _field(role, "node_labels", None)
        sel = _selector(node_labels)
        if sel:
            allow.append(sel)
        deny_sel = _selector(_field(role, "node_labels_deny", None))
        if deny_sel:
            deny.append(deny_sel)
        mfa = mfa or bool(_field(role, "require_session_mfa", False))
        transfer = transfer or bool(_field(role, "allow_file_transfer", False))
        ports = ports or bool(_field(role, "allow_port_forwarding", False))
        agent = agent or bool(_field(role, "allow_agent_forwarding", False))
    return Grant(
        roles=tuple(known),
        logins=frozenset(logins),
        node_labels_any=tuple(allow),
        node_labels_deny=tuple(deny),
        require_session_mfa=mfa,
        allow_file_transfer=transfer,
        allow_port_forwarding=ports,
        allow_agent_forwarding=agent,
    )
