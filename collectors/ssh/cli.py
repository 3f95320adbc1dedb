"""`auditcast ssh-gateway`: the SSH gateway as its own process (port settings.ssh_port)."""

from __future__ import annotations

import asyncio
import signal

import click
import orjson

from auditcast.cli._util import json_option
from auditcast.logs import setup_logging
from auditcast.settings import load_settings


@click.command("ssh-gateway")
@click.option("--host", default=None, help="Address to listen on (default: settings.bind_host).")
@click.option("--port", type=int, default=None, help="Port (default: settings.ssh_port, 3022).")
@json_option
def ssh_gateway(host: str | None, port: int | None, as_json: bool) -> None:
    """Run the SSH gateway: `ssh -p 3022 LOGIN@NODE@HOST` with an auditcast certificate.

    Nodes come from the access inventory, roles from the roles file; the nodes must
    trust the auditcast user CA (deploy/ssh/sshd_config.snippet).
    """
    settings = load_settings()
    setup_logging(settings.log_level)
    asyncio.run(_serve(settings, host, port, as_json))


async def _serve(settings: object, host: str | None, port: int | None, as_json: bool) -> None:
    from auditcast.collectors.ssh.service import start_service
    from auditcast.collectors.ssh.wiring import load_inventory, load_roles
    from auditcast.settings import Settings

    assert isinstance(settings, Settings)
    svc = await start_service(
        settings, load_inventory(settings), load_roles(settings), host=host, port=port
    )
    info = {"ssh_gateway": f"{host or settings.bind_host}:{svc.port}"}
    if as_json:  # one line, so a supervisor can read it as soon as the port is open
        click.echo(orjson.dumps(info).decode())
    else:
        click.echo(f"ssh gateway listening on {info['ssh_gateway']}", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await svc.stop()
