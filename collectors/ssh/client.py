"""`auditcast ssh LOGIN@NODE [CMD...]`: the real OpenSSH client, pointed at the gateway.

Runs `ssh` with the key and certificate `auditcast login` stored, the known_hosts file
holding the `@cert-authority` line for the gateway, and `-p ssh_port LOGIN@NODE@HOST`.
The process is replaced by ssh (exec), so the terminal, signals and exit status are
ssh's own.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import click

from auditcast.errors import ConfigError, LoginRequired
from auditcast.settings import Settings, load_settings


@dataclass(frozen=True)
class SshProfile:
    key: Path
    cert: Path
    known_hosts: Path


def find_profile(settings: Settings) -> SshProfile:
    """The key, certificate and known_hosts `auditcast login` wrote (access.profile)."""
    from auditcast.access.profile import ssh_dir

    d = ssh_dir(settings)
    key, cert, known = d / "id_ed25519", d / "id_ed25519-cert.pub", d / "known_hosts"
    if not (key.is_file() and cert.is_file()):
        raise LoginRequired(f"no SSH certificate from `auditcast login` in {d}")
    if not known.is_file():
        raise LoginRequired(f"no known_hosts with the gateway's host CA in {d}")
    return SshProfile(key, cert, known)


def ssh_argv(
    profile: SshProfile,
    destination: str,
    command: tuple[str, ...],
    *,
    host: str,
    port: int,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The OpenSSH command line for LOGIN@NODE through the gateway at host:port."""
    login, sep, node = destination.partition("@")
    if not sep or not login or not node:
        raise click.BadParameter(
            f"{destination!r} is not LOGIN@NODE (e.g. root@node1)", param_hint="DESTINATION"
        )
    return [
        "ssh",
        "-p", str(port),
        "-i", str(profile.key),
        "-o", f"CertificateFile={profile.cert}",
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={profile.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        *extra,
        f"{login}@{node}@{host}",
        *command,
    ]  # fmt: skip


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@click.option("--gateway", "gateway_host", help="Gateway host (default: settings.bind_host).")
@click.option("-o", "ssh_options", multiple=True, help="Extra OpenSSH -o option (repeatable).")
@click.argument("destination")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(
    gateway_host: str | None,
    ssh_options: tuple[str, ...],
    destination: str,
    command: tuple[str, ...],
) -> None:
    """Open a shell (or run COMMAND) on NODE as LOGIN through the SSH gateway."""
    settings = load_settings()
    exe = shutil.which("ssh")
    if exe is None:
        raise ConfigError(
            "the OpenSSH client `ssh` is not installed", hint="apt install openssh-client"
        )
    extra = tuple(x for o in ssh_options for x in ("-o", o))
    argv = ssh_argv(
        find_profile(settings),
        destination,
        command,
        host=gateway_host or settings.bind_host,
        port=settings.ssh_port,
        extra=extra,
    )
    os.execv(exe, argv)
