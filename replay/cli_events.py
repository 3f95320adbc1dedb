"""`auditcast events search`: the audit log, filtered, with cursor paging."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from auditcast.cli._util import json_option, print_json, settings, since


@click.group()
def events() -> None:
    """Search the audit log."""


@events.command("search")
@click.option("--user", help="Actor (collector-seen or SSO user).")
@click.option("--type", "type_", help="Event type, e.g. kube.request, session.end.")
@click.option("--session", "session_id", help="Events of one session.")
@click.option("--cluster", help="Events on one Kubernetes cluster.")
@click.option("--since", "since_", help="Only events within this long (e.g. 15m, 1h, 7d).")
@click.option("--q", help="Full-text search in the event documents.")
@click.option("--limit", default=100, show_default=True, help="Page size (max 1000).")
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
def search(
    user: str | None, type_: str | None, session_id: str | None, cluster: str | None,
    since_: str | None, q: str | None, limit: int, cursor: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Print matching events, oldest first; --json prints {"events": [...], "next_cursor"}."""
    from auditcast.replay.reading import audit_store
    from auditcast.storage.base import EventQuery

    try:
        query = EventQuery(
            since=since(since_) if since_ else None, user=user, type=type_,
            session_id=session_id, cluster=cluster, q=q, limit=limit, cursor=cursor,
        )  # fmt: skip
        page = audit_store(settings()).search(query)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if as_json:
        print_json({"events": page.items, "next_cursor": page.next_cursor})
        return
    table = Table("time", "type", "code", "user", "session", "details")
    for ev in page.items:
        details = " ".join(
            f"{k}={ev[k]}"
            for k in ("verb", "request_path", "command", "exit_code", "message")
            if k in ev
        )
        table.add_row(
            ev["time"][:23].replace("T", " "), ev["type"], ev["code"],
            (ev.get("identity") or {}).get("user") or ev.get("user") or "",
            (ev.get("session_id") or "")[:13], details[:60],
        )  # fmt: skip
    console = Console()
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")
