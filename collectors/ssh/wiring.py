"""Adapters from the rest of auditcast to the gateway's small interfaces (ports.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from auditcast.collectors.ssh.policy import CertInfo, Grant, Node, grant_from_roles
from auditcast.errors import ConfigError
from auditcast.settings import Settings


class StaticNodes:
    """An inventory held in memory (from settings, a file or the access inventory)."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self._nodes = {n.name: n for n in nodes}

    def get(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def all(self) -> list[Node]:
        return sorted(self._nodes.values(), key=lambda n: n.name)


class RoleGrants:
    """Roles named on the certificate, resolved against the role definitions."""

    def __init__(self, roles: Mapping[str, Any]) -> None:
        self.roles = roles

    async def grant_for(self, cert: CertInfo) -> Grant:
        return grant_from_roles(cert.roles, self.roles)


def load_inventory(settings: Settings) -> StaticNodes:
    """Nodes from the access inventory: name, labels, and `address`/`port` extras."""
    from auditcast.access.inventory import load_nodes

    nodes: list[Node] = []
    for n in load_nodes(settings):
        extra = dict(getattr(n, "extra", {}) or {})
        nodes.append(
            Node(
                name=n.name,
                address=str(extra.get("address", "127.0.0.1")),
                port=int(extra.get("port", 22)),
                labels=dict(n.labels),
                host_key=str(extra["host_key"]) if extra.get("host_key") else None,
            )
        )
    return StaticNodes(nodes)


def load_roles(settings: Settings) -> Mapping[str, Any]:
    try:
        from auditcast.access import roles
    except ImportError:
        raise ConfigError(
            "role definitions (access.roles) are not available in this build"
        ) from None
    loaded: Mapping[str, Any] = roles.load_roles(settings)
    return loaded
