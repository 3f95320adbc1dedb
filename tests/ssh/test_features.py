"""File transfers, forwarding and per-session MFA through the gateway (real ssh/sftp/sshd)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pexpect
import pyotp
import pytest

from auditcast.access.mfa import MFAStore
from auditcast.events import Event
from tests.ssh.conftest import RunningGateway, UserCert
from tests.ssh.harness import read_events

pytestmark = pytest.mark.timeout(120)


def extra(e: Event, name: str) -> object:
    return (e.model_extra or {}).get(name)


def events_of(gw: RunningGateway, type_: str, n: int = 1) -> list[Event]:
    evs = gw.events(lambda ev: len([e for e in ev if e.type == type_]) >= n)
    return [e for e in evs if e.type == type_]


def sftp(
    gw: RunningGateway, cert: UserCert, dest: str, batch: str
) -> subprocess.CompletedProcess[bytes]:
    argv = [
        "sftp", "-F", "/dev/null", "-P", str(gw.port), "-i", str(cert.key),
        "-o", f"CertificateFile={cert.cert}", "-o", f"UserKnownHostsFile={gw.pki.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-b", "-",
        f"{dest}@127.0.0.1",
    ]  # fmt: skip
    return subprocess.run(argv, input=batch.encode(), capture_output=True, timeout=60)


def test_sftp_upload_and_download_are_file_transfer_events_without_contents(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert], tmp_path: Path
) -> None:
    cert = issue_cert("ops1", roles=("ops",))
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(300_000))
    remote = f"/tmp/auditcast-sftp-{os.getpid()}.bin"
    back = tmp_path / "back.bin"
    r = sftp(
        ssh_gateway, cert, "root@node1", f"put {local} {remote}\nget {remote} {back}\nrm {remote}\n"
    )
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == local.read_bytes()

    transfers = events_of(ssh_gateway, "ssh.file_transfer", 2)
    up = next(e for e in transfers if extra(e, "direction") == "upload")
    down = next(e for e in transfers if extra(e, "direction") == "download")
    for e in (up, down):
        assert extra(e, "path") == remote and extra(e, "size") == 300_000, e
        assert extra(e, "protocol") == "sftp" and extra(e, "allowed") is True
        assert e.user == "ops1" and e.node == "node1"
    # No recording was made of the transfer: no session.start for the sftp channel.
    assert not [
        e
        for e in read_events(ssh_gateway.settings, lambda ev: True, 1)
        if e.type == "session.start"
    ]


def test_sftp_is_refused_for_roles_without_file_transfer(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    cert = issue_cert("dev1", roles=("dev",))
    r = sftp(ssh_gateway, cert, "root@node1", "ls /\n")
    assert r.returncode != 0
    (ev,) = events_of(ssh_gateway, "ssh.file_transfer")
    assert extra(ev, "allowed") is False and ev.user == "dev1"


def test_legacy_scp_upload_is_a_file_transfer_event(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert], tmp_path: Path
) -> None:
    cert = issue_cert("ops2", roles=("ops",))
    local = tmp_path / "f.txt"
    local.write_bytes(b"x" * 12345)
    remote = f"/tmp/auditcast-scp-{os.getpid()}.txt"
    argv = [
        "scp", "-O", "-F", "/dev/null", "-P", str(ssh_gateway.port), "-i", str(cert.key),
        "-o", f"CertificateFile={cert.cert}",
        "-o", f"UserKnownHostsFile={ssh_gateway.pki.known_hosts}", "-o", "IdentitiesOnly=yes",
        str(local), f"root@node2@127.0.0.1:{remote}",
    ]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (ev,) = events_of(ssh_gateway, "ssh.file_transfer")
    assert extra(ev, "protocol") == "scp" and extra(ev, "direction") == "upload"
    assert extra(ev, "path") == remote
    assert int(extra(ev, "size")) >= 12345  # type: ignore[call-overload]


async def _forward(gw: RunningGateway, cert: UserCert, port: int) -> bytes:
    async with asyncssh.connect(
        "127.0.0.1", gw.port, username="root@node1",
        client_keys=[(asyncssh.read_private_key(cert.key), asyncssh.read_certificate(cert.cert))],
        known_hosts=asyncssh.import_known_hosts(gw.pki.known_hosts.read_text()), agent_path=None,
    ) as conn:  # fmt: skip
        reader, writer = await conn.open_connection("127.0.0.1", port)
        banner = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return banner


def test_port_forwarding_is_refused_unless_the_role_allows_it_and_each_try_is_an_event(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    node_port = ssh_gateway.nodes["node1"].port
    with pytest.raises(asyncssh.ChannelOpenError):
        asyncio.run(_forward(ssh_gateway, issue_cert("dev2", roles=("dev",)), node_port))
    # ops may forward: the tunnel is opened from the node, which sees its own sshd.
    banner = asyncio.run(_forward(ssh_gateway, issue_cert("ops3", roles=("ops",)), node_port))
    assert banner.startswith(b"SSH-2.0-OpenSSH")
    evs = events_of(ssh_gateway, "ssh.port_forward", 2)
    assert {(e.user, extra(e, "allowed")) for e in evs} == {("dev2", False), ("ops3", True)}
    assert all(extra(e, "dest_port") == node_port for e in evs)


def test_session_mfa_role_asks_for_a_fresh_totp_code(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    secret = pyotp.random_base32()
    store = MFAStore(ssh_gateway.settings)
    store.add_device("erin", "phone", secret)
    store.close()
    cert = issue_cert("erin", roles=("secure",))
    argv = ssh_gateway.ssh_argv(cert, "root@node3", "echo", "mfa-ok")
    argv.remove("-T")

    wrong = pexpect.spawn(argv[0], argv[1:], timeout=20)
    wrong.expect("auditcast MFA code: ")
    wrong.sendline("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    wrong.expect("auditcast MFA code: ")  # OpenSSH asks again after a refusal
    wrong.close(force=True)

    child = pexpect.spawn(argv[0], argv[1:], timeout=20)
    child.expect("auditcast MFA code: ")
    child.sendline(pyotp.TOTP(secret).now())
    child.expect("mfa-ok")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    (ex,) = events_of(ssh_gateway, "ssh.exec")
    assert ex.user == "erin" and ex.node == "node3"


def test_session_mfa_role_without_a_code_is_refused(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    cert = issue_cert("frank", roles=("secure",))
    r = subprocess.run(
        [*ssh_gateway.ssh_argv(cert, "root@node1", "true"), "-o", "BatchMode=yes"],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 255
    assert b"requires a per-session MFA code" in r.stderr
    evs = events_of(ssh_gateway, "auth.failed")
    (ev,) = [e for e in evs if e.source is not None and e.source.collector == "ssh"]
    assert extra(ev, "reason") == "mfa_required" and ev.user == "frank"


@pytest.mark.parametrize(("role", "allowed"), [("dev", False), ("agent", True)])
def test_agent_forwarding_follows_the_role_flag_and_every_try_is_recorded(
    ssh_gateway: RunningGateway,
    issue_cert: Callable[..., UserCert],
    tmp_path: Path,
    role: str,
    allowed: bool,
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        marker = tmp_path / "agent_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agent-key-marker",
                        "-f", str(marker)], check=True)  # fmt: skip
        subprocess.run(["ssh-add", "-q", str(marker)], check=True,
                       env={**os.environ, "SSH_AUTH_SOCK": str(sock)})  # fmt: skip
        cert = issue_cert("gina", roles=(role,))
        argv = ssh_gateway.ssh_argv(cert, "root@node1", "ssh-add -l || echo no-agent")
        r = subprocess.run(
            [argv[0], "-A", *argv[1:]],
            capture_output=True,
            timeout=60,
            env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
        )
    finally:
        agent.terminate()
        agent.wait(5)
    assert r.returncode == 0, r.stderr
    # With the flag the node can use the user's agent; without it, it has none.
    assert (b"agent-key-marker" in r.stdout) is allowed, r.stdout
    assert (b"no-agent" in r.stdout) is not allowed
    (ev,) = events_of(ssh_gateway, "ssh.agent_forward")
    assert extra(ev, "allowed") is allowed and ev.user == "gina" and ev.node == "node1"
