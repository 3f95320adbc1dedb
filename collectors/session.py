"""`SessionRecorder`: the one session lifecycle every collector records through.

`start()` emits `session.start`; `output`/`input`/`resize`/`marker` add frames that are
flushed to the spool as one message every ~50 ms or 32 KiB (DESIGN §2); `end()` adds
the `x` frame and emits `session.end` with the byte counters. The hot path
(`output`) only appends to a list: no awaits, no per-byte work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Final, Protocol

from auditcast.events import Event, Frame, FrameKind, Source

log = logging.getLogger(__name__)

# Frames are batched: a message per keystroke would cost more than the keystroke.
FLUSH_INTERVAL_S: Final = 0.05
# ...but a burst is cut at 32 KiB so one message stays far below Kafka's 1 MiB limit.
FLUSH_BYTES: Final = 32 * 1024


class FrameSink(Protocol):
    """What the recorder needs of the spool."""

    def append_event(self, event: Event) -> None: ...

    def append_frames(self, session_id: str, frames: list[Frame]) -> None: ...


class SessionRecorder:
    def __init__(
        self,
        spool: FrameSink,
        *,
        kind: str,
        session_id: str | None = None,
        user: str | None = None,
        credential_id: str | None = None,
        cluster: str | None = None,
        node: str | None = None,
        labels: dict[str, str] | None = None,
        source: Source | None = None,
        **start_fields: Any,
    ) -> None:
        self.spool = spool
        self.kind = kind
        self.session_id = session_id or str(uuid.uuid4())
        self._common: dict[str, Any] = {
            "session_id": self.session_id,
            "user": user,
            "credential_id": credential_id,
            "cluster": cluster,
            "node": node,
            "labels": labels or {},
            "source": source,
        }
        self.start_fields = {k: v for k, v in start_fields.items() if v is not None}
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames = 0
        self.ended = False
        self._seq = 0
        self._t0 = 0.0
        self._pending: list[Frame] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def event(self, event_type: str, **fields: Any) -> Event:
        """An event of this session with the common fields set."""
        return Event(type=event_type, **self._common, **fields)

    def start(self) -> Event:
        self._t0 = time.monotonic()
        ev = self.event("session.start", kind=self.kind, **self.start_fields)
        self.spool.append_event(ev)
        return ev

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _add(self, kind: FrameKind, data: bytes) -> None:
        if self.ended:
            return
        t = round(self.elapsed, 6)
        for i in range(0, max(len(data), 1), FLUSH_BYTES):
            chunk = data[i : i + FLUSH_BYTES]
            self._pending.append(
                Frame(session_id=self.session_id, seq=self._seq, t=t, kind=kind, data=chunk)
            )
            self._seq += 1
            self._pending_bytes += len(chunk)
            if self._pending_bytes >= FLUSH_BYTES:
                self.flush()
        if self._pending and self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (sync use): flush now
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def output(self, data: bytes) -> None:
        if data:
            self.bytes_out += len(data)
            self._add("o", data)

    def input(self, data: bytes) -> None:
        if data:
            self.bytes_in += len(data)
            self._add("i", data)

    def resize(self, cols: int, rows: int) -> None:
        self._add("r", f"{cols}x{rows}".encode())

    def marker(self, text: str) -> None:
        self._add("m", text.encode())

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        frames, self._pending, self._pending_bytes = self._pending, [], 0
        self.frames += len(frames)
        try:
            self.spool.append_frames(self.session_id, frames)
        except Exception as e:  # the session goes on; the spool raises its own alert
            log.error("frames not spooled: %s", e, extra={"session_id": self.session_id})

    def end(self, exit_code: int | None, **fields: Any) -> Event:
        """Close the recording: `x` frame, then `session.end` with the counters."""
        if self.ended:
            raise RuntimeError(f"session {self.session_id} already ended")
        self._add("x", b"" if exit_code is None else str(exit_code).encode())
        self.flush()
        self.ended = True
        ev = self.event(
            "session.end",
            kind=self.kind,
            exit_code=exit_code,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            frames=self.frames,
            duration=round(self.elapsed, 6),
            recording=self.session_id,
            **{k: v for k, v in fields.items() if v is not None},
        )
        self.spool.append_event(ev)
        return ev
