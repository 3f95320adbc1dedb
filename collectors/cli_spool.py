"""`auditcast spool`: see what collectors hold for the broker, and deliver it."""

from __future__ import annotations

import click

from auditcast.cli._util import json_option, print_json, run, settings
from auditcast.logs import setup_logging


@click.group()
def spool() -> None:
    """Inspect and drain the collectors' on-disk spools ($AUDITCAST_HOME/spool)."""


@spool.command("status")
@json_option
def status(as_json: bool) -> None:
    """Pending (not yet acknowledged) and retained bytes per spool."""
    from auditcast.collectors.spool import spool_status

    rows = spool_status(settings())
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no spools yet")
    for r in rows:
        age = r["oldest_pending_age_s"]
        click.echo(
            f"{r['spool']:<16} pending {r['pending_bytes']:>12,} B   "
            f"retained {r['retained_bytes']:>12,} B"
            + (f"   oldest pending {age:.0f}s" if age is not None else "")
        )


@spool.command("drain")
@click.option(
    "--follow", is_flag=True, help="Keep draining until stopped (as `auditcast up` does)."
)
def drain(follow: bool) -> None:
    """Send every record no live collector owns (e.g. left by an `auditcast rec`)."""
    from auditcast.collectors.spool import drain_all, spool_status

    s = settings()
    setup_logging(s.log_level)
    sent = run(drain_all(s, follow=follow, idle_exit_s=10))
    left = sum(r["pending_bytes"] for r in spool_status(s))
    click.echo(f"sent {sent} record(s); {left} byte(s) still pending")
    if left:
        raise SystemExit(3)
