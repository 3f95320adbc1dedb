"""The SSH gateway with the real OpenSSH client, real sshd nodes and the real broker."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pexpect
import pytest

from auditcast.access.lock_model import LockTargets, new_lock
from auditcast.access.publish import Publisher
from auditcast.collectors.ssh.policy import Node
from auditcast.collectors.ssh.service import load_keys, start_service
from auditcast.collectors.ssh.wiring import StaticNodes
from auditcast.events import Event
from auditcast.settings import Settings
from auditcast.topics import IDENTITIES, LOCKS
from tests.ssh.conftest import ROLES, LoopThread, Pki, RunningGateway, UserCert
from tests.ssh.harness import input_of, output_of, read_frames, session_frames
from tests.ssh.nodes import SshdNode

pytestmark = pytest.mark.timeout(120)


def run_ssh(
    gw: RunningGateway, cert: UserCert, dest: str, *cmd: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(gw.ssh_argv(cert, dest, *cmd), capture_output=True, timeout=60)


def of_type(events: list[Event], type_: str) -> list[Event]:
    return [e for e in events if e.type == type_]


def extra(e: Event, name: str) -> object:
    return (e.model_extra or {}).get(name)


def publish_lock(gw: RunningGateway, **targets: str) -> tuple[str, float]:
    lock = new_lock(LockTargets(**targets), ttl=None, message="incident 4711", created_by="test")

    async def send() -> None:
        pub = Publisher(gw.settings)
        try:
            await pub.send(LOCKS, lock.name.encode(), lock.to_record())
        finally:
            await pub.close()

    t0 = time.monotonic()
    asyncio.run(send())
    return lock.name, t0


def test_certificate_login_gets_a_shell_and_the_recording_matches_the_screen(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert], tmp_path: Path
) -> None:
    cert = issue_cert("alice")
    argv = ssh_gateway.ssh_argv(cert, "root@node1", tty=True)
    child = pexpect.spawn(argv[0], [*argv[1:], "-q"], timeout=20, dimensions=(30, 100))
    seen = bytearray()
    child.logfile_read = _Sink(seen)
    child.expect(r"[#$] ")
    child.sendline("echo hello-$((6*7))")
    child.expect("hello-42")
    child.expect(r"[#$] ")
    child.setwinsize(40, 120)
    child.sendline("stty size")
    child.expect("40 120")
    child.expect(r"[#$] ")
    child.sendline("exit 7")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7

    events = ssh_gateway.events(lambda ev: bool(of_type(ev, "session.end")))
    start, end = of_type(events, "session.start")[0], of_type(events, "session.end")[0]
    for e in (start, end):
        assert e.user == "alice" and e.credential_id == cert.credential_id
        assert e.node == "node1" and e.labels == {"env": "staging", "team": "web"}
    assert extra(start, "login") == "root"
    assert extra(end, "exit_code") == 7
    sid = start.session_id
    assert sid and end.session_id == sid

    frames = read_frames(
        ssh_gateway.settings, lambda fr: any(f.kind == "x" and f.session_id == sid for f in fr)
    )
    mine = session_frames(frames, sid)
    # Everything the user's terminal showed is in the recording, byte for byte.
    assert output_of(mine) == bytes(seen)
    assert b"echo hello-$((6*7))\n" in input_of(mine)
    assert [f.data for f in mine if f.kind == "r"] == [b"100x30", b"120x40"]
    # The recording as an asciicast v2 file: `asciinema cat` prints the screen again.
    cast = tmp_path / "shell.cast"
    lines = [orjson.dumps({"version": 2, "width": 100, "height": 30})]
    lines += [orjson.dumps([f.t, f.kind, f.data.decode()]) for f in mine if f.kind in "or"]
    cast.write_bytes(b"\n".join(lines) + b"\n")
    asciinema = Path(sys.executable).with_name("asciinema")
    shown = subprocess.run([str(asciinema), "cat", str(cast)], capture_output=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == bytes(seen)


class _Sink:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def write(self, data: bytes) -> None:
        self.buf += data

    def flush(self) -> None:
        pass


def test_exec_command_is_an_ssh_exec_event_with_its_output_recorded(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    cert = issue_cert("bob")
    r = run_ssh(ssh_gateway, cert, "root@node2", "echo out-$((2+3)); echo err >&2; exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout == b"out-5\n" and r.stderr == b"err\n"

    events = ssh_gateway.events(lambda ev: bool(of_type(ev, "ssh.exec")))
    (ex,) = of_type(events, "ssh.exec")
    assert extra(ex, "command") == "echo out-$((2+3)); echo err >&2; exit 5"
    assert extra(ex, "exit_code") == 5
    assert ex.user == "bob" and ex.node == "node2" and ex.credential_id == cert.credential_id
    frames = read_frames(
        ssh_gateway.settings,
        lambda fr: any(f.kind == "x" and f.session_id == ex.session_id for f in fr),
    )
    recorded = output_of(session_frames(frames, str(ex.session_id)))
    assert b"out-5\n" in recorded and b"err\n" in recorded


@pytest.mark.parametrize(
    ("case", "dest", "cert_args", "reason", "message"),
    [
        ("expired", "root@node1", {"validity": "-2h:-1h"}, "cert_expired", "expired"),
        ("other CA", "root@node1", {"ca": "other"}, "cert_untrusted_ca", "not signed by"),
        ("principal", "nobody@node1", {}, "login_not_allowed", "does not allow login 'nobody'"),
        ("labels", "root@node3", {}, "node_denied", "do not allow access to node 'node3'"),
        ("unknown node", "root@node9", {}, "node_unknown", "no node named 'node9'"),
    ],
)
def test_refused_connections_say_why_emit_auth_failed_and_never_reach_the_node(
    ssh_gateway: RunningGateway,
    issue_cert: Callable[..., UserCert],
    case: str,
    dest: str,
    cert_args: dict[str, object],
    reason: str,
    message: str,
) -> None:
    if cert_args.get("ca") == "other":
        cert_args = {"ca": ssh_gateway.pki.other_ca}
    cert = issue_cert("mallory", **cert_args)
    before = {n: node.connections() for n, node in ssh_gateway.nodes.items()}

    r = run_ssh(ssh_gateway, cert, dest, "true")

    assert r.returncode == 255
    assert message in r.stderr.decode(), r.stderr
    assert b"Permission denied" in r.stderr
    events = ssh_gateway.events(lambda ev: bool(of_type(ev, "auth.failed")))
    (failed,) = of_type(events, "auth.failed")
    assert extra(failed, "reason") == reason
    assert failed.source is not None and failed.source.remote_addr == "127.0.0.1"
    if reason != "cert_untrusted_ca":
        assert failed.user == "mallory" and failed.credential_id == cert.credential_id
    assert {n: node.connections() for n, node in ssh_gateway.nodes.items()} == before


@pytest.mark.parametrize(
    "target", [{"user": "carol"}, {"login": "root"}, {"node": "node1"}, {"role": "dev"}]
)
def test_lock_ends_a_live_session_with_a_notice_and_refuses_the_reconnect(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert], target: dict[str, str]
) -> None:
    cert = issue_cert("carol")
    argv = ssh_gateway.ssh_argv(cert, "root@node1", tty=True)
    child = pexpect.spawn(argv[0], [*argv[1:], "-q"], timeout=20)
    child.expect(r"[#$] ")
    name, _ = publish_lock(ssh_gateway, **target)
    # how soon is a benchmark (tests/bench/bench_ssh.py: lock -> notice p99), not an
    # assert here; the expect fails after 20 s if the notice never comes
    child.expect(f"session terminated: lock {name} in force: incident 4711")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 255

    r = run_ssh(ssh_gateway, cert, "root@node1", "true")
    assert r.returncode == 255
    assert f"lock {name} in force: incident 4711" in r.stderr.decode()

    events = ssh_gateway.events(
        lambda ev: bool(of_type(ev, "session.end")) and bool(of_type(ev, "auth.failed")),
    )
    (end,) = of_type(events, "session.end")
    assert extra(end, "terminated_by_lock") == name
    assert extra(of_type(events, "auth.failed")[0], "reason") == "locked"


def test_lock_on_another_user_leaves_the_session_alone(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    cert = issue_cert("dave")
    argv = ssh_gateway.ssh_argv(cert, "root@node2", tty=True)
    child = pexpect.spawn(argv[0], [*argv[1:], "-q"], timeout=20)
    child.expect(r"[#$] ")
    publish_lock(ssh_gateway, user="someone-else")
    time.sleep(0.5)
    child.sendline("echo still-$((1+1))")
    child.expect("still-2")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_roles_come_from_the_identities_record_when_the_certificate_has_none(
    ssh_gateway: RunningGateway, issue_cert: Callable[..., UserCert]
) -> None:
    cert = issue_cert("hana", roles_in_cert=False)
    # No identities record yet: no roles, no node.
    r = run_ssh(ssh_gateway, cert, "root@node1", "true")
    assert r.returncode == 255 and b"do not allow" in r.stderr

    record = {
        "credential_id": cert.credential_id,
        "kind": "ssh-cert",
        "identity": {"user": "hana", "roles": ["dev"], "groups": ["eng"]},
        "issued": "2026-01-01T00:00:00.000000Z",
        "expires": "2999-01-01T00:00:00.000000Z",
    }

    async def send() -> None:
        pub = Publisher(ssh_gateway.settings)
        try:
            await pub.send(IDENTITIES, cert.credential_id.encode(), orjson.dumps(record))
        finally:
            await pub.close()

    asyncio.run(send())
    r = run_ssh(ssh_gateway, cert, "root@node1", "echo via-identities")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"via-identities\n"
    # ... and the dev role still keeps hana out of production.
    r = run_ssh(ssh_gateway, cert, "root@node3", "true")
    assert r.returncode == 255 and b"node 'node3'" in r.stderr


def test_nodes_without_a_host_certificate_are_checked_against_their_pinned_key(
    make_settings: Callable[..., Settings],
    ssh_pki: Pki,
    ssh_nodes: dict[str, SshdNode],
    issue_cert: Callable[..., UserCert],
) -> None:
    """No host-CA trust at all: node1 pinned to its real key works, node2 pinned to
    node1's key is refused before any login on it."""
    settings = make_settings()
    shutil.copytree(ssh_pki.ca_dir, settings.home_dir / "ca", dirs_exist_ok=True)
    real_key = (ssh_nodes["node1"].dir / "ssh_host_ed25519_key.pub").read_text().strip()
    inventory = StaticNodes(
        Node(n.name, "127.0.0.1", n.port, n.labels, host_key=real_key) for n in ssh_nodes.values()
    )
    runner = LoopThread()
    try:
        keys = load_keys(settings, ("127.0.0.1",))
        keys.node_known_hosts = None
        svc = runner.call(
            start_service(settings, inventory, ROLES, host="127.0.0.1", port=0, keys=keys)
        )
        gw = RunningGateway(
            settings, svc.port, svc.gateway, svc.lock_view, svc.spool, runner, ssh_pki, ssh_nodes
        )
        cert = issue_cert("lena")
        ok = run_ssh(gw, cert, "root@node1", "echo pinned")
        assert (ok.returncode, ok.stdout) == (0, b"pinned\n"), ok.stderr
        bad = run_ssh(gw, cert, "root@node2", "echo never")
        assert bad.returncode == 255 and bad.stdout == b""
        assert b"cannot reach node node2" in bad.stderr
        runner.call(svc.stop())
    finally:
        runner.stop()
