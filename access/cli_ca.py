"""`auditcast ca show` / `auditcast ca rotate user|host|token`: the trust anchors in
`$AUDITCAST_HOME/ca/` and their rotation (old keys stay trusted for a grace period)."""

from __future__ import annotations

import click

from auditcast.cli._util import json_option, print_json, settings

KINDS = ("user", "host", "token")


@click.group()
def ca() -> None:
    """The auditcast certificate authorities (run where `auditcast up`/`api` runs)."""


@ca.command("show")
@json_option
def show(as_json: bool) -> None:
    """The public keys gateways, nodes and clients trust."""
    from auditcast.access.ca import load_ca

    authority = load_ca(settings())
    out = {
        "dir": str(authority.dir),
        "user_ca": authority.trusted_user_ca_lines(),
        "known_hosts": authority.host_ca_known_hosts_line().splitlines(),
        "token_kids": list(authority.token_public_keys()),
    }
    if as_json:
        print_json(out)
        return
    click.echo(f"CA folder:      {out['dir']}")
    click.echo("User CA (TrustedUserCAKeys = user_ca.pub):")
    for line in out["user_ca"]:
        click.echo(f"  {line}")
    click.echo("Host CA (known_hosts):")
    for line in out["known_hosts"]:
        click.echo(f"  {line}")
    click.echo(f"Token keys:     {', '.join(out['token_kids'])} (first signs)")


@ca.command("rotate")
@click.argument("kind", type=click.Choice(KINDS))
@json_option
def rotate(kind: str, as_json: bool) -> None:
    """Replace a CA key. Credentials signed by the old key stay valid for the grace
    period (24 h); new ones use the new key. Gateways pick it up on their next CA reload;
    nodes keep reading user_ca.pub, which lists both keys meanwhile."""
    from auditcast.access.ca import SSH_CA_GRACE, TOKEN_KEY_GRACE, load_ca

    authority = load_ca(settings())
    if kind == "token":
        new, grace = authority.rotate_token_key(), TOKEN_KEY_GRACE
    else:
        new, grace = authority.rotate_ssh_ca(f"{kind}_ca"), SSH_CA_GRACE
    if as_json:
        print_json({"kind": kind, "new": new, "grace_seconds": grace.total_seconds()})
    else:
        click.echo(f"rotated the {kind} key: {new}; the old one stays trusted for {grace}")
