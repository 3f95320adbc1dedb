"""The `auditcast` command: a lazy root group, so `auditcast kube credentials` (run by
kubectl on every call) starts without importing Faust, FastAPI or asyncssh.

Each verb lives in its own module and is named here as "module:attribute".
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from auditcast import __version__
from auditcast.errors import AuditcastError

# verb -> "module:attribute" of a click command or group. Keep sorted by verb.
COMMANDS: dict[str, str] = {
    "api": "auditcast.replay.cli_api:api",
    "audit-webhook": "auditcast.collectors.kube.cli:audit_webhook",
    "bench": "auditcast.cli.bench:bench",
    "ca": "auditcast.access.cli_ca:ca",
    "demo-idp": "auditcast.access.cli_idp:demo_idp",
    "events": "auditcast.replay.cli_events:events",
    "export": "auditcast.replay.cli_play:export",
    "kube": "auditcast.access.cli_kube:kube",
    "kube-gateway": "auditcast.collectors.kube.cli:kube_gateway",
    "lock": "auditcast.access.cli_lock:lock",
    "login": "auditcast.access.cli_login:login",
    "logout": "auditcast.access.cli_login:logout",
    "mfa": "auditcast.access.cli_mfa:mfa",
    "play": "auditcast.replay.cli_play:play",
    "rec": "auditcast.collectors.pty.cli:rec",
    "request": "auditcast.access.cli_request:request",
    "sessions": "auditcast.replay.cli_sessions:sessions",
    "spool": "auditcast.collectors.cli_spool:spool",
    "ssh": "auditcast.access.cli_ssh:ssh",
    "ssh-gateway": "auditcast.collectors.ssh.cli:ssh_gateway",
    "status": "auditcast.access.cli_login:status",
    "store": "auditcast.storage.cli:store",
    "topics": "auditcast.cli.topics:topics",
    "up": "auditcast.cli.up:up",
    "worker": "auditcast.streams.cli:worker",
}


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="auditcast")
def cli() -> None:
    """auditcast: access gateway and audit pipeline for Kubernetes and SSH.

    Start everything on this machine with `auditcast up`; record a local terminal
    with `auditcast rec`; read it back with `auditcast sessions ls`,
    `auditcast events search`, `auditcast play` and `auditcast export`.

    Settings come from AUDITCAST_* environment variables and
    $AUDITCAST_HOME/auditcast.toml (AUDITCAST_HOME defaults to ~/.auditcast).
    """


def fail(err: AuditcastError) -> None:
    """One line saying what went wrong, one saying what to do; a distinct exit code."""
    click.secho(f"error: {err.message}", fg="red", err=True)
    if err.hint:
        click.echo(f"hint: {err.hint}", err=True)
    sys.exit(err.exit_code)


def main() -> None:
    try:
        # Without standalone mode click returns (not raises) a ctx.exit(code).
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except AuditcastError as err:
        fail(err)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
