"""Open the stores read-only for the CLI and the API (the store process owns writes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

from auditcast.errors import NotFound
from auditcast.settings import Settings
from auditcast.storage.recordings import Frame, Gap, RecordingStore, to_asciicast
from auditcast.storage.sqlite import SQLiteAuditStore


def audit_store(settings: Settings) -> SQLiteAuditStore:
    try:
        return SQLiteAuditStore(settings.db_path, readonly=True)
    except FileNotFoundError:
        raise NotFound(
            f"no audit log yet at {settings.db_path}",
            hint="start the pipeline with `auditcast up` (or `auditcast store`)",
        ) from None


def session_row(settings: Settings, session_id: str) -> dict[str, Any]:
    row = audit_store(settings).session(session_id)
    recordings = RecordingStore(settings.recordings_dir)
    if row is None and not recordings.exists(session_id):
        raise NotFound(
            f"no session {session_id}", hint="list sessions with `auditcast sessions ls`"
        )
    return row or {"id": session_id}


# An ended session's frames travel on their own topic and can land a little after its
# session.end (e.g. while the store rejoins a restarted broker); exporting right then
# would cut the recording short, so readers wait this long for the exit frame.
SETTLE_S: Final = 20.0


def wait_for_recording(settings: Settings, session_id: str, timeout: float = SETTLE_S) -> str:
    """The recording's status once it is no longer catching up with an ended session
    (or after `timeout`): `complete`, `gaps`, `live` or `none`."""
    row = session_row(settings, session_id)
    recordings = RecordingStore(settings.recordings_dir)
    deadline = time.monotonic() + timeout
    status = recordings.status(session_id)
    # no frames at all is only "still coming" when the session said it wrote output
    awaited = ("live", "none") if row.get("bytes_out") else ("live",)
    warned = False
    while row.get("end") and status in awaited and time.monotonic() < deadline:
        if not warned:
            print("waiting for the rest of the recording to arrive...", file=sys.stderr)
            warned = True
        time.sleep(0.2)
        status = recordings.status(session_id)
    if row.get("end") and status in awaited:
        print(
            f"warning: session {session_id} ended but its recording is incomplete ({status})",
            file=sys.stderr,
        )
    return status


def asciicast_lines(
    settings: Settings, session_id: str, idle_time_limit: float | None = None
) -> Iterator[str]:
    """Streamed: a 50 MB recording is never held whole in memory."""
    row = session_row(settings, session_id)
    items = RecordingStore(settings.recordings_dir).frames(session_id)
    start = row.get("start")
    ts = int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()) if start else None
    return to_asciicast(
        items,
        width=row.get("cols") or 80,
        height=row.get("rows") or 24,
        title=row.get("title") or row.get("command"),
        timestamp=ts,
        idle_time_limit=idle_time_limit,
    )


def output_frames(settings: Settings, session_id: str) -> Iterator[Frame | Gap]:
    """Streamed, in seq order, with gaps; raises NotFound for an unknown session."""
    session_row(settings, session_id)
    return RecordingStore(settings.recordings_dir).frames(session_id)
