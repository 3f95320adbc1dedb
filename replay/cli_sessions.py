"""`auditcast sessions ls`: recorded sessions, newest first."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from auditcast.cli._util import json_option, print_json, settings, since


@click.group()
def sessions() -> None:
    """Recorded sessions (local `rec`, SSH, kubectl exec)."""


@sessions.command("ls")
@click.option("--user", help="Only sessions of this user (collector or SSO name).")
@click.option("--since", "since_", help="Only sessions started within this long (e.g. 1h, 2d).")
@click.option("--limit", default=100, show_default=True)
@json_option
def ls(user: str | None, since_: str | None, limit: int, as_json: bool) -> None:
    """List sessions with their user, target, exit code and size."""
    from auditcast.replay.reading import audit_store
    from auditcast.storage.recordings import RecordingStore

    s = settings()
    rows = audit_store(s).sessions(user=user, since=since(since_) if since_ else None, limit=limit)
    recordings = RecordingStore(s.recordings_dir)
    for r in rows:
        r["session_id"] = r["id"]
        # the audit log and the recording arrive on separate topics: an ended session's
        # recording may still be catching up (`live`) after a broker restart
        r["recording"] = recordings.status(r["id"])
    if as_json:
        print_json(rows)
        return
    table = Table(
        "session", "start", "user", "kind", "target", "command", "exit", "out bytes", "recording"
    )
    for r in rows:
        table.add_row(
            r["id"],
            (r["start"] or "")[:19].replace("T", " "),
            r["identity_user"] or r["user"] or "",
            r["kind"] or "",
            r["node"] or r["cluster"] or "",
            (r["command"] or r["title"] or "")[:40],
            "" if r["exit_code"] is None else str(r["exit_code"]),
            "" if r["bytes_out"] is None else f"{r['bytes_out']:,}",
            r["recording"],
        )
    Console().print(table)
