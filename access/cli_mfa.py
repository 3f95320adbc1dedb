"""`auditcast mfa`: enrol an authenticator app for per-session MFA.

auditcast mfa add [--name phone]     # shows the otpauth URI and a QR code, asks a code
auditcast mfa ls
"""

from __future__ import annotations

import io

import click
import qrcode

from auditcast.access.cli_common import api_call
from auditcast.access.mfa import new_secret, provisioning_uri
from auditcast.cli._util import json_option, print_json


def terminal_qr(data: str) -> str:
    """The QR code as text (two rows per line with half blocks), scannable on screen."""
    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(data)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


@click.group()
def mfa() -> None:
    """Per-session MFA devices (TOTP authenticator apps)."""


@mfa.command("add")
@click.option("--name", default="otp", show_default=True, help="A name for this device.")
@click.option("--code", help="The first code, for scripts (else you are asked).")
@click.option("--secret", hidden=True, help="Use this base32 secret (tests, migrations).")
@click.option("--no-qr", is_flag=True, help="Only print the otpauth URI.")
@json_option
def mfa_add(name: str, code: str | None, secret: str | None, no_qr: bool, as_json: bool) -> None:
    """Enrol a TOTP device: scan the QR code, then type the code your app shows."""
    # Who we are, from the API: fails before showing a secret if nobody is logged in.
    user = str(api_call("GET", "/mfa/devices")["user"])
    secret = secret or new_secret()
    uri = provisioning_uri(secret, user)
    click.echo("Add this to your authenticator app:", err=True)
    click.echo(uri, err=as_json)
    if not no_qr:
        click.echo(terminal_qr(uri), err=True)
    if code is None:
        code = click.prompt("Code from the app", err=True).strip()
    device = api_call("POST", "/mfa/devices", json={"name": name, "secret": secret, "code": code})
    if as_json:
        print_json({**device, "uri": uri})
    else:
        click.echo(f"MFA device {device['name']} enrolled for {device['user']}")


@mfa.command("ls")
@json_option
def mfa_ls(as_json: bool) -> None:
    """Your enrolled devices."""
    devices = api_call("GET", "/mfa/devices")["devices"]
    if as_json:
        print_json(devices)
        return
    if not devices:
        click.echo("no MFA devices; enrol one with `auditcast mfa add`")
    for d in devices:
        click.echo(f"{d['name']}  enrolled {d['created']}")
