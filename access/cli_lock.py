"""`auditcast lock`: lock users, roles, logins, nodes, clusters, credentials, requests.

auditcast lock --user alice --ttl 5m --message "incident 42"
auditcast lock ls [--json]
auditcast lock rm NAME
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from auditcast.access.cli_common import api_call
from auditcast.cli._util import json_option, parse_duration, print_json

TARGET_OPTIONS = (
    ("user", "--user"),
    ("role", "--role"),
    ("login", "--login"),
    ("node", "--node"),
    ("cluster", "--cluster"),
    ("credential", "--credential"),
    ("access_request", "--access-request"),
)


def _describe(lock: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in lock["targets"].items() if v)


def _remaining(expires: str | None) -> str:
    if not expires:
        return "until removed"
    left = datetime.fromisoformat(expires.replace("Z", "+00:00")) - datetime.now(UTC)
    secs = max(0, int(left.total_seconds()))
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m{secs % 60:02d}s left"


@click.group(invoke_without_command=True)
@click.option("--user", help="Lock this user.")
@click.option("--role", help="Lock everyone acting with this role.")
@click.option("--login", help="Lock this SSH login (OS user on nodes).")
@click.option("--node", help="Lock this SSH node.")
@click.option("--cluster", help="Lock this Kubernetes cluster.")
@click.option("--credential", help="Lock this credential id (token jti / certificate).")
@click.option("--access-request", "access_request", help="Lock this access request's grants.")
@click.option("--ttl", help="How long the lock lasts (30s, 5m, 1h); default until removed.")
@click.option("--message", default="", help="Shown to whoever the lock stops.")
@click.option(
    "--mode",
    type=click.Choice(["best_effort", "strict"]),
    default="best_effort",
    show_default=True,
    help="strict: gateways whose lock view is stale refuse everything while it is active.",
)
@click.option("--name", help="Name the lock (default: a generated id).")
@json_option
@click.pass_context
def lock(
    ctx: click.Context,
    ttl: str | None,
    message: str,
    mode: str,
    name: str | None,
    as_json: bool,
    **targets: str | None,
) -> None:
    """Lock targets out at once: every new request is refused, live sessions end.

    A lock applies to a request when ALL the targets it names match, e.g.
    `--user alice --cluster prod` locks alice on prod only.
    """
    if ctx.invoked_subcommand is not None:
        return
    chosen = {k: v for k, v in targets.items() if v}
    if not chosen:
        raise click.UsageError(
            "name at least one target: "
            + ", ".join(opt for _, opt in TARGET_OPTIONS)
            + "  (or use `auditcast lock ls` / `auditcast lock rm NAME`)"
        )
    body: dict[str, Any] = {"targets": chosen, "message": message, "mode": mode}
    if ttl:
        body["ttl"] = parse_duration(ttl).total_seconds()
    if name:
        body["name"] = name
    created = api_call("POST", "/locks", json=body)
    if as_json:
        print_json(created)
        return
    click.echo(
        f"lock {created['name']} created: {_describe(created)} ({_remaining(created['expires'])})"
    )
    if not created.get("published", True):
        click.secho(
            "warning: the broker is unreachable; gateways will see the lock when it is back",
            fg="yellow",
            err=True,
        )


@lock.command("ls")
@json_option
def lock_ls(as_json: bool) -> None:
    """List the locks in force."""
    locks = api_call("GET", "/locks")
    if as_json:
        print_json(locks)
        return
    if not locks:
        click.echo("no locks")
        return
    rows = [
        (
            lk["name"],
            _describe(lk),
            lk["mode"],
            _remaining(lk["expires"]),
            lk["created_by"],
            lk["message"],
        )
        for lk in locks
    ]
    header = ("NAME", "TARGETS", "MODE", "EXPIRES", "BY", "MESSAGE")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@lock.command("rm")
@click.argument("name")
@json_option
def lock_rm(name: str, as_json: bool) -> None:
    """Remove lock NAME (gateways stop enforcing it at once)."""
    removed = api_call("DELETE", f"/locks/{name}")
    if as_json:
        print_json(removed)
    else:
        click.echo(f"lock {removed['name']} removed ({_describe(removed)})")
