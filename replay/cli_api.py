"""`auditcast api`: serve the HTTP API (and, later, the web UI)."""

from __future__ import annotations

import click

from auditcast.cli._util import settings
from auditcast.logs import setup_logging


@click.command()
@click.option("--port", type=int, help="Listen port (default AUDITCAST_API_PORT, 3080).")
@click.option("--host", help="Listen address (default AUDITCAST_BIND_HOST, loopback).")
def api(port: int | None, host: str | None) -> None:
    """Serve the auditcast API under /v1: sign-in, credentials, locks, access requests, MFA."""
    import uvicorn

    from auditcast.replay.app import create_app

    s = settings()
    setup_logging(s.log_level)
    uvicorn.run(
        create_app(s),
        host=host or s.bind_host,
        port=port or s.api_port,
        log_level=s.log_level.lower(),
        log_config=None,
    )
