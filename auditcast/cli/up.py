"""`auditcast up`: the embedded broker and every service in one supervised process tree."""

from __future__ import annotations

import logging
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from auditcast.cli._util import json_option, print_json, run, settings
from auditcast.logs import setup_logging
from auditcast.supervisor import (
    DEMO_SERVICES,
    SERVICES,
    Supervisor,
    demo_issuer,
    run_up,
)

STATE_STYLE = {
    "ready": "green",
    "external": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "not available": "dim",
    "failing": "red",
    "not configured": "dim",
}


def status_table(status: dict[str, object]) -> Table:
    table = Table(title=f"auditcast up — home {status['home']} (~home)", title_justify="left")
    for col in ("service", "state", "pid", "address", "log"):
        table.add_column(col, no_wrap=col != "log")
    for row in status["services"]:  # type: ignore[attr-defined]
        style = STATE_STYLE.get(row["state"], "")
        table.add_row(
            row["name"],
            f"[{style}]{row['state']}[/]" if style else row["state"],
            str(row["pid"] or "-"),
            row["address"] if row["state"] != "not available" else "-",
            _short(row["log"], str(status["home"])),
        )
    return table


def _short(path: str | None, home: str) -> str:
    if not path:
        return "-"
    return "~home/" + path.removeprefix(home).lstrip("/") if path.startswith(home) else path


@click.command()
@click.option("--demo", is_flag=True, help="Also start the demo identity provider and targets.")
@json_option
def up(demo: bool, as_json: bool) -> None:
    """Run the broker (embedded unless AUDITCAST_KAFKA is set), the stream worker, the
    stores and every other installed service; Ctrl-C stops them all.

    Prints what runs where once everything is ready (with --json: one JSON object on
    stdout). The same status is kept in $AUDITCAST_HOME/run/up.json; logs are in
    $AUDITCAST_HOME/logs/<service>.log.
    """
    s = settings()
    # Our own log goes to up.log; the terminal gets the status table.
    log_file = open(s.log_dir / "up.log", "a")
    setup_logging(s.log_level, stream=log_file)
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
    services = SERVICES
    if demo:
        # Children inherit the environment: the API verifies sign-ins against the demo IdP.
        os.environ.setdefault("AUDITCAST_OIDC_ISSUER", demo_issuer(s))
        services = DEMO_SERVICES + SERVICES
        console.print(
            f"demo: identity provider at {demo_issuer(s)} — users alice (admins), bob "
            "(developers), carol (contractors), dave (auditors); password <name>-pass. "
            "Demo SSH nodes and Kubernetes clusters are not started: describe yours in "
            "$AUDITCAST_HOME/nodes.yaml and kube-clusters.yaml."
        )

    def on_ready(sup: Supervisor, pending: list[str]) -> None:
        status = sup.status()
        if as_json:
            print_json(status)
            sys.stdout.flush()
        else:
            console.print(status_table(status))
            if pending:
                console.print(f"[yellow]not ready yet: {', '.join(pending)}[/]")
            failing = [r["name"] for r in status["services"] if r["state"] == "failing"]
            if failing:
                console.print(f"[red]failing (see their logs): {', '.join(failing)}[/]")
            console.print("Ctrl-C stops everything.")

    try:
        run(run_up(s, on_ready, services))
    finally:
        if not as_json:
            console.print("stopped.")
        logging.shutdown()
        log_file.close()
