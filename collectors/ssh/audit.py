"""The gateway's audit sink: events and recordings through the collector spool."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from auditcast.errors import SpoolError
from auditcast.events import Event

log = logging.getLogger(__name__)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class SpoolRecording:
    """A `SessionRecorder` seen through the gateway's `Recording` protocol."""

    def __init__(self, recorder: Any) -> None:
        self._rec = recorder

    @property
    def session_id(self) -> str:
        return str(self._rec.session_id)

    async def start(self) -> None:
        await _maybe_await(self._rec.start())

    def output(self, data: bytes) -> None:
        self._rec.output(data)

    def input(self, data: bytes) -> None:
        self._rec.input(data)

    def resize(self, cols: int, rows: int) -> None:
        self._rec.resize(cols, rows)

    def marker(self, text: str) -> None:
        self._rec.marker(text)

    async def end(self, exit_code: int | None, **fields: Any) -> None:
        await _maybe_await(self._rec.end(exit_code, **fields))


class SpoolAudit:
    """Events go to `events.raw`, recordings to `session.frames`, both via the spool."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool

    def emit(self, event: Event) -> None:
        try:
            self.spool.append_event(event)
        except SpoolError as e:
            # The session itself must not die because the audit path is full; the spool
            # raises its own alert. Log with the event id so it can be traced.
            log.error("event not spooled: %s", e, extra={"event_id": event.id})

    def recorder(self, kind: str, **start_fields: Any) -> SpoolRecording:
        from auditcast.collectors.session import SessionRecorder

        return SpoolRecording(SessionRecorder(self.spool, kind=kind, **start_fields))
