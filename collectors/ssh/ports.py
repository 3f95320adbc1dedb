"""The small interfaces the SSH gateway needs from the rest of auditcast.

`wiring.py` adapts the real parts (access inventory, roles, locks, MFA; the spool and
SessionRecorder) to these; the gateway itself only sees the protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from auditcast.access.lock_model import Lock, LockSubject
from auditcast.collectors.ssh.policy import CertInfo, Grant, Node
from auditcast.events import Event


class NodeDirectory(Protocol):
    def get(self, name: str) -> Node | None: ...


class GrantResolver(Protocol):
    async def grant_for(self, cert: CertInfo) -> Grant: ...


class LockSource(Protocol):
    """access.locks.LockView's shape: answers from memory, calls listeners on new locks."""

    def check(self, subject: LockSubject) -> Lock | None: ...

    def add_listener(self, listener: Callable[[Lock], None]) -> Callable[[], None]: ...


class MfaCheck(Protocol):
    async def verify(self, user: str, code: str, **context: str | None) -> bool: ...


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
