"""`auditcast request`: ask for a role for a while; review others' requests.

auditcast request create --roles devrole --reason "debug staging"
auditcast request ls [--json]
auditcast request review ID --approve|--deny --reason "..."
auditcast login --request ID      # then use the approved role (access core)
"""

from __future__ import annotations

from typing import Any

import click

from auditcast.access.cli_common import api_call
from auditcast.cli._util import json_option, parse_duration, print_json


def _line(r: dict[str, Any]) -> str:
    extra = ""
    if r.get("reviewer"):
        extra = f" by {r['reviewer']}"
    if r["state"] == "approved" and r.get("access_expires"):
        extra += f", access until {r['access_expires']}"
    return f"{r['id']}  {r['user']}  {','.join(r['roles'])}  {r['state']}{extra}  {r['reason']}"


@click.group()
def request() -> None:
    """Access requests: temporary roles approved by a reviewer."""


@request.command("create")
@click.option("--roles", required=True, help="Comma-separated roles to request.")
@click.option("--reason", required=True, help="Why you need them (reviewers see this).")
@click.option("--ttl", help="How long you need the access once approved (capped by the role).")
@json_option
def request_create(roles: str, reason: str, ttl: str | None, as_json: bool) -> None:
    """Request ROLES; a reviewer is notified."""
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    if not wanted:
        raise click.UsageError("--roles needs at least one role name")
    body: dict[str, Any] = {"roles": wanted, "reason": reason}
    if ttl:
        body["ttl"] = parse_duration(ttl).total_seconds()
    created = api_call("POST", "/requests", json=body)
    if as_json:
        print_json(created)
        return
    click.echo(f"request {created['id']} created ({', '.join(created['roles'])}), pending review")
    click.echo(f"once approved: auditcast login --request {created['id']}")


@request.command("ls")
@json_option
def request_ls(as_json: bool) -> None:
    """Your requests, and those you may review."""
    reqs = api_call("GET", "/requests")
    if as_json:
        print_json(reqs)
        return
    if not reqs:
        click.echo("no access requests")
    for r in reqs:
        click.echo(_line(r))


@request.command("review")
@click.argument("request_id")
@click.option("--approve/--deny", "approve", default=None, help="Approve or deny the request.")
@click.option("--reason", default="", help="Why (the requester sees this).")
@json_option
def request_review(request_id: str, approve: bool | None, reason: str, as_json: bool) -> None:
    """Approve or deny REQUEST_ID."""
    if approve is None:
        raise click.UsageError("say --approve or --deny")
    done = api_call(
        "POST", f"/requests/{request_id}/review", json={"approve": approve, "reason": reason}
    )
    if as_json:
        print_json(done)
    else:
        click.echo(f"request {done['id']} {done['state']}")
