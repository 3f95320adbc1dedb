"""Many sessions at once through the gateway: every one recorded completely, none mixed."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import asyncssh
import pytest

from auditcast.events import Event
from tests.ssh.conftest import RunningGateway, UserCert
from tests.ssh.harness import output_of, read_frames, session_frames

pytestmark = pytest.mark.timeout(240)

SESSIONS = 100
REAL_CLIENTS = 5  # of them with the OpenSSH client, the rest with asyncssh
LINES = 40


def command(i: int) -> str:
    return f"for n in $(seq 1 {LINES}); do echo session-{i}-line-$n; done; exit {i % 7}"


def expected_output(i: int) -> bytes:
    return b"".join(f"session-{i}-line-{n}\n".encode() for n in range(1, LINES + 1))


async def _asyncssh_session(gw: RunningGateway, cert: UserCert, i: int) -> tuple[int, bytes, bytes]:
    async with asyncssh.connect(
        "127.0.0.1",
        gw.port,
        username="root@node1" if i % 2 else "root@node2",
        client_keys=[(asyncssh.read_private_key(cert.key), asyncssh.read_certificate(cert.cert))],
        known_hosts=asyncssh.import_known_hosts(gw.pki.known_hosts.read_text()),
        agent_path=None,
    ) as conn:
        r = await conn.run(command(i), encoding=None)
        return int(r.exit_status or 0), bytes(r.stdout or b""), bytes(r.stderr or b"")


async def _openssh_session(gw: RunningGateway, cert: UserCert, i: int) -> tuple[int, bytes, bytes]:
    argv = gw.ssh_argv(cert, "root@node1" if i % 2 else "root@node2", command(i))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def _all(gw: RunningGateway, certs: list[UserCert]) -> list[tuple[int, bytes, bytes]]:
    jobs = [
        (_openssh_session if i < REAL_CLIENTS else _asyncssh_session)(gw, certs[i], i)
        for i in range(SESSIONS)
    ]
    return list(await asyncio.gather(*jobs))


def test_hundred_concurrent_sessions_are_each_recorded_completely_and_apart(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    # Ten users, ten sessions each: the recordings must still keep sessions apart.
    users = [issue_cert(f"user{u}") for u in range(10)]
    certs = [users[i % 10] for i in range(SESSIONS)]
    results = asyncio.run(_all(ssh_gateway, certs))
    for i, (status, out, _err) in enumerate(results):
        assert (status, out) == (i % 7, expected_output(i)), f"session {i} on the client side"

    def complete(ev: list[Event]) -> bool:
        return len([e for e in ev if e.type == "ssh.exec"]) >= SESSIONS

    execs = [e for e in ssh_gateway.events(complete, 60) if e.type == "ssh.exec"]
    assert len(execs) == SESSIONS
    by_command = {str((e.model_extra or {})["command"]): e for e in execs}
    sids = {str(e.session_id) for e in execs}
    frames = read_frames(
        ssh_gateway.settings,
        lambda fr: len({f.session_id for f in fr if f.kind == "x"} & sids) == SESSIONS,
        60,
    )
    for i in range(SESSIONS):
        ev = by_command[command(i)]
        assert ev.user == certs[i].user and ev.credential_id == certs[i].credential_id
        assert (ev.model_extra or {})["exit_code"] == i % 7
        recorded = output_of(session_frames(frames, str(ev.session_id)))
        # An exec recording holds stdout and stderr as the node sent them, interleaved:
        # the session's own lines in order, plus whatever its stderr said, nothing else.
        stdout, stderr = results[i][1], results[i][2]
        mine = [ln for ln in recorded.splitlines(keepends=True) if ln.startswith(b"session-")]
        assert b"".join(mine) == stdout, f"session {i} recording"
        assert sorted(recorded.splitlines()) == sorted((stdout + stderr).splitlines())
