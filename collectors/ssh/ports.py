"""The small interfaces the SSH gateway needs from the rest of auditcast.

`wiring.py` adapts the real parts (access inventory, roles, locks, MFA; the spool and
SessionRecorder) to these; the gateway itself only sees the protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from auditcast.events import Event
from collectors.ssh.policy import CertInfo, Grant, Node


class NodeDirectory(Protocol):
    def get(self, name: str) -> Node | None: ...


class GrantResolver(Protocol):
    async def grant_for(self, cert: CertInfo) -> Grant: ...


class LockLike(Protocol):
    name: str
    message: str


class LockSource(Protocol):
    def check(
        self,
        *,
        user: str,
        roles: tuple[str, ...],
        login: str,
        node: str,
        credential: str,
    ) -> LockLike | None: ...

    def matches(
        self,
        lock: Any,
        *,
        user: str,
        roles: tuple[str, ...],
        login: str,
        node: str,
        credential: str,
    ) -> bool: ...

    def subscribe(self) -> AsyncIterator[Any]: ...


class MfaCheck(Protocol):
    async def verify(self, user: str, code: str) -> bool: ...


class Recording(Protocol):
    """One recorded session (collectors.session.SessionRecorder's shape)."""

    session_id: str

    async def start(self) -> None: ...
    def output(self, data: bytes) -> None: ...
    def input(self, data: bytes) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def marker(self, text: str) -> None: ...
    async def end(self, exit_code: int | None, **fields: Any) -> None: ...


class AuditSink(Protocol):
    def emit(self, event: Event) -> None: ...
    def recorder(self, kind: str, **start_fields: Any) -> Recording: ...
