"""Adapters from the rest of auditcast to the gateway's small interfaces (ports.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from auditcast.collectors.ssh.policy import CertInfo, Grant, Node, grant_from_roles


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
