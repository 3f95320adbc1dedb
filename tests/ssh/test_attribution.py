"""SSH sessions attributed to the SSO identity behind the certificate (real worker)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from auditcast.access.publish import Publisher
from auditcast.events import Event, decode_event
from auditcast.topics import EVENTS_AUDIT, IDENTITIES
from tests.ssh.conftest import RunningGateway, UserCert
from tests.ssh.harness import _read
from tests.streams.conftest import start_worker, stop_worker

pytestmark = pytest.mark.timeout(180)


def test_ssh_session_events_carry_the_sso_identity_after_attribution(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert], tmp_path: Path
) -> None:
    cert = issue_cert("kim", roles=("dev",))
    record = {
        "credential_id": cert.credential_id,
        "kind": "ssh-cert",
        "identity": {
            "user": "kim",
            "sso_subject": "sub-kim",
            "sso_issuer": "https://idp.example",
            "email": "kim@example.com",
            "groups": ["developers"],
            "roles": ["dev"],
        },
        "issued": "2026-01-01T00:00:00.000000Z",
        "expires": "2999-01-01T00:00:00.000000Z",
    }

    async def publish() -> None:
        pub = Publisher(ssh_gateway.settings)
        try:
            await pub.send(IDENTITIES, cert.credential_id.encode(), orjson.dumps(record))
        finally:
            await pub.close()

    asyncio.run(publish())
    worker = start_worker(ssh_gateway.settings, tmp_path / "worker.log")
    try:
        r = subprocess.run(
            ssh_gateway.ssh_argv(cert, "root@node1", "echo attributed"),
            capture_output=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        ssh_gateway.flush()

        def done(values: list[bytes]) -> bool:
            types = {decode_event(v).type for v in values}
            return {"session.start", "session.end", "ssh.exec"} <= types

        audit = [
            decode_event(v)
            for v in asyncio.run(_read(ssh_gateway.settings, EVENTS_AUDIT, done, 90))
        ]
    finally:
        stop_worker(worker)
    mine: list[Event] = [e for e in audit if e.credential_id == cert.credential_id]
    assert {"session.start", "session.end", "ssh.exec"} <= {e.type for e in mine}
    for e in mine:
        assert e.identity is not None, e
        assert (e.identity.user, e.identity.sso_subject) == ("kim", "sub-kim")
        assert e.identity.roles == ["dev"] and e.identity.email == "kim@example.com"
