"""`auditcast ssh`: `auditcast ssh ls` lists nodes; `auditcast ssh LOGIN@NODE [CMD]` connects."""

from __future__ import annotations

from typing import Any

import click

from auditcast.cli._util import json_option, print_json


class _SSHGroup(click.Group):
    """Subcommands, or a destination: anything that is not a subcommand connects."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["connect", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SSHGroup)
def ssh() -> None:
    """SSH to nodes through the auditcast gateway: `auditcast ssh root@node1 [CMD]`."""


@ssh.command("ls")
@json_option
def ls(as_json: bool) -> None:
    """Nodes your roles allow, with their labels and your logins."""
    from auditcast.access.cli_common import api_call

    rows: list[dict[str, Any]] = api_call("GET", "/ssh/nodes")
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no nodes: your roles allow none")
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        click.echo(f"{r['name']:<20} {labels:<32} logins: {', '.join(r['logins'])}")


def _connect() -> click.Command:
    from auditcast.collectors.ssh.client import ssh as connect

    connect.name = "connect"
    return connect


ssh.add_command(_connect(), "connect")
