"""`auditcast spool`: see what collectors hold for the broker, and deliver it."""

from __future__ import annotations

from typing import Any

import click

from auditcast.cli._util import json_option, print_json, run, settings
from auditcast.logs import setup_logging

# Without --follow, drain gives up once nothing was sent for this long (broker away).
DRAIN_IDLE_EXIT_S = 10.0


@click.group()
def spool() -> None:
    """Inspect and drain the collectors' on-disk spools ($AUDITCAST_HOME/spool)."""


def _row_text(r: dict[str, Any]) -> str:
    age = r["oldest_pending_age_s"]
    held = f" ({r['held_bytes']:,} B held by running collectors)" if r["held_bytes"] else ""
    return (
        f"{r['spool']:<14} pending {r['pending_records']:>7,} records "
        f"{r['pending_bytes']:>13,} B{held}   "
        f"retained {r['retained_bytes']:>13,} B"
        + (f"   oldest pending {age:.0f}s" if age is not None else "")
    )


@spool.command("status")
@json_option
def status(as_json: bool) -> None:
    """Pending (not yet acknowledged) records and retained history per spool."""
    from auditcast.collectors.spool import spool_status

    rows = spool_status(settings())
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no spools yet")
    for r in rows:
        click.echo(_row_text(r))


@spool.command("drain")
@click.option(
    "--follow", is_flag=True, help="Keep draining until stopped (as `auditcast up` does)."
)
@click.option(
    "--idle-exit",
    type=float,
    default=DRAIN_IDLE_EXIT_S,
    show_default=True,
    help="Without --follow: give up after this many seconds without progress.",
)
def drain(follow: bool, idle_exit: float) -> None:
    """Send every record no running collector holds (e.g. left by a killed `auditcast rec`).

    Exits 3 if records that no running collector holds are still undelivered.
    """
    from auditcast.collectors.spool import drain_all, spool_status

    s = settings()
    setup_logging(s.log_level)
    sent = run(drain_all(s, follow=follow, idle_exit_s=idle_exit))
    rows = spool_status(s)
    left = sum(r["pending_records"] for r in rows)
    held = sum(r["held_bytes"] for r in rows)
    click.echo(
        f"sent {sent} record(s); {left} record(s) still pending"
        + (f" ({held:,} bytes held by running collectors)" if held else "")
    )
    if sum(r["pending_bytes"] for r in rows) > held:
        raise SystemExit(3)
