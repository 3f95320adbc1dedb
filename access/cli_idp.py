"""`auditcast demo-idp`: run the demo OpenID provider (oidc-provider) in the foreground."""

from __future__ import annotations

import signal
import threading

import click

from auditcast.cli._util import settings

DEMO_IDP_PORT = 3081


@click.command("demo-idp")
@click.option("--port", type=int, default=DEMO_IDP_PORT, show_default=True)
def demo_idp(port: int) -> None:
    """Run the demo identity provider with users alice (admins), bob (developers),
    carol (contractors) and dave (auditors); each password is `<name>-pass`.

    For trying auditcast on one machine (`auditcast up --demo` starts it); point
    AUDITCAST_OIDC_ISSUER at http://127.0.0.1:PORT.
    """
    from auditcast.access.idp_runner import IdPProcess

    s = settings()
    idp = IdPProcess(port, s.home_dir / "demo-idp", host=s.bind_host).start()
    click.echo(f"demo identity provider at {idp.issuer} (users: alice, bob, carol, dave)", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if idp.proc is None or idp.proc.poll() is not None:
                raise click.ClickException(f"the identity provider exited; see {idp.log_file}")
    finally:
        idp.stop()
