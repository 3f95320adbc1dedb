"""`auditcast login`, `auditcast logout`, `auditcast status` (like `tsh status`)."""

from __future__ import annotations

from typing import Any

import click

from auditcast.cli._util import json_option, print_json, run, settings


def _show(p: dict[str, Any]) -> None:
    click.echo(f"> Profile URL:   {p['api_url']}")
    click.echo(f"  Logged in as:  {p['user']}" + (f" <{p['email']}>" if p.get("email") else ""))
    click.echo(f"  Roles:         {', '.join(p['roles']) or '-'}")
    click.echo(f"  Kube groups:   {', '.join(p['kube_groups']) or '-'}")
    click.echo(f"  Logins:        {', '.join(p['logins']) or '-'}")
    click.echo(f"  Clusters:      {', '.join(p['clusters']) or '-'}")
    if p.get("access_requests"):
        click.echo(f"  Requests:      {', '.join(p['access_requests'])}")
    click.echo(
        f"  Valid until:   {p['expires']}"
        + ("  (per-session MFA)" if p.get("require_session_mfa") else "")
    )


@click.command()
@click.option("--proxy", help="auditcast API URL (default http://127.0.0.1:3080).")
@click.option("--device", is_flag=True, help="Use the device flow (no browser on this machine).")
@click.option(
    "--request", "request_ids", multiple=True, help="Add the roles of an approved access request."
)
@json_option
def login(proxy: str | None, device: bool, request_ids: tuple[str, ...], as_json: bool) -> None:
    """Sign in with your company SSO and get short-lived credentials.

    Writes a kubeconfig context per cluster your roles allow (user: the
    `auditcast kube credentials` exec plugin), an SSH certificate, and the
    gateway's host CA into known_hosts. Nothing long-lived is stored.
    """
    from auditcast.access.login_flow import login as do_login

    out = run(do_login(settings(), proxy=proxy, device=device, request_ids=list(request_ids)))
    if as_json:
        print_json(out)
    else:
        _show(out)


@click.command()
def logout() -> None:
    """Forget the session, cached kube tokens and the SSH certificate on this machine."""
    import shutil

    from auditcast.access.profile import kube_cache_dir, profile_path, ssh_dir

    s = settings()
    profile_path(s).unlink(missing_ok=True)
    (ssh_dir(s) / "id_ed25519-cert.pub").unlink(missing_ok=True)
    shutil.rmtree(kube_cache_dir(s), ignore_errors=True)
    click.echo("logged out")


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Who you are signed in as, your roles, groups, logins and when it all expires."""
    from auditcast.access.profile import load_profile

    p = load_profile(settings()).model_dump(mode="json", exclude={"token"})
    if as_json:
        print_json(p)
    else:
        _show(p)
