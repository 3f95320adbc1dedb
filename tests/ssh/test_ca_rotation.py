"""User CA rotation: certificates issued before `auditcast ca rotate user` keep working.

A test home gets its own copy of the CAs, rotates the user CA with the real CLI, and
a fresh sshd node trusts that home's `user_ca.pub` (which lists both keys during the
rotation, as deploy/ssh documents for TrustedUserCAKeys). Real ssh client throughout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import orjson

from auditcast.access.ca import load_ca
from auditcast.collectors.ssh.gateway import GatewayKeys
from auditcast.collectors.ssh.policy import Node
from auditcast.collectors.ssh.service import load_keys, start_service
from auditcast.collectors.ssh.wiring import StaticNodes
from auditcast.events import Event
from auditcast.settings import Settings
from tests.ssh.conftest import (
    NODE_LABELS,
    ROLES,
    SSH_KEYGEN,
    LoopThread,
    Pki,
    RunningGateway,
    UserCert,
)
from tests.ssh.nodes import start_node

AUDITCAST = str(Path(sys.executable).parent / "auditcast")


def _run_ssh(gw: RunningGateway, cert: UserCert, cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(gw.ssh_argv(cert, "root@node1", cmd), capture_output=True, timeout=60)


def _failures(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type == "auth.failed"]


def _cert_from_home(settings: Settings, key: Path, user: str) -> UserCert:
    """What `auditcast login` issues after the rotation: signed by the new user CA."""
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cred = f"cred-{user}-after"
    line = load_ca(settings).sign_user_cert(
        Path(f"{key}.pub").read_text(),
        key_id=user,
        principals=["root"],
        ttl=timedelta(hours=1),
        credential_id=cred,
        roles=["dev"],
    )
    Path(f"{key}-cert.pub").write_text(line + "\n")
    return UserCert(key=key, user=user, credential_id=cred)


def test_certificate_issued_before_a_user_ca_rotation_still_logs_in_after_it(
    make_settings: Callable[..., Settings],
    cli_env: Callable[[Settings], dict[str, str]],
    ssh_pki: Pki,
    issue_cert: Callable[..., UserCert],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    ca_dir = settings.home_dir / "ca"
    shutil.copytree(ssh_pki.ca_dir, ca_dir)
    before = issue_cert("rita")  # signed by the user CA this home holds right now

    r = subprocess.run(
        [AUDITCAST, "ca", "rotate", "user", "--json"],
        env=cli_env(settings),
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["kind"] == "user"
    assert len((ca_dir / "user_ca.pub").read_text().splitlines()) == 2

    node = start_node("node1", NODE_LABELS["node1"], tmp_path / "nodes", ca_dir / "user_ca.pub",
                      ca_dir / "host_ca")  # fmt: skip
    runner = LoopThread()
    try:
        inventory = StaticNodes([Node("node1", "127.0.0.1", node.port, NODE_LABELS["node1"])])
        keys = load_keys(settings, ("127.0.0.1", "localhost"))
        svc = runner.call(
            start_service(settings, inventory, ROLES, host="127.0.0.1", port=0, keys=keys)
        )
        gw = RunningGateway(
            settings, svc.port, svc.gateway, svc.lock_view, svc.spool, runner, ssh_pki,
            {"node1": node},
        )  # fmt: skip

        old = _run_ssh(gw, before, "echo issued-before")
        assert (old.returncode, old.stdout) == (0, b"issued-before\n"), old.stderr

        after = _cert_from_home(settings, tmp_path / "id_rita_after", "rita")
        new = _run_ssh(gw, after, "echo issued-after")
        assert (new.returncode, new.stdout) == (0, b"issued-after\n"), new.stderr

        foreign = issue_cert("mallory", ca=ssh_pki.other_ca)
        refused = _run_ssh(gw, foreign, "echo never")
        assert refused.returncode == 255 and refused.stdout == b""
        assert b"not signed by this auditcast's user CA" in refused.stderr
        events = gw.events(lambda ev: bool(_failures(ev)))
        (failed,) = _failures(events)
        assert (failed.model_extra or {}).get("reason") == "cert_untrusted_ca"
        runner.call(svc.stop())
    finally:
        runner.stop()
        node.stop()


def test_previous_user_ca_is_refused_once_its_grace_period_is_over() -> None:
    current = asyncssh.generate_private_key("ssh-ed25519")
    previous = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    until = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    keys = GatewayKeys(
        user_ca=current,
        host_key=asyncssh.generate_private_key("ssh-ed25519"),
        previous_user_cas=((previous.convert_to_public(), until),),
    )

    assert keys.trusts_user_ca(current.convert_to_public(), until + timedelta(days=9))
    assert keys.trusts_user_ca(previous.convert_to_public(), until - timedelta(seconds=1))
    assert not keys.trusts_user_ca(previous.convert_to_public(), until)
    assert not keys.trusts_user_ca(stranger.convert_to_public(), until - timedelta(hours=1))


def test_gateway_keys_list_the_rotated_out_user_ca_until_the_grace_ends(
    ssh_pki: Pki, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    shutil.copytree(ssh_pki.ca_dir, settings.home_dir / "ca")
    old_public = asyncssh.read_private_key(ssh_pki.user_ca).convert_to_public()
    assert load_keys(settings).previous_user_cas == ()

    t0 = datetime.now(UTC)
    load_ca(settings).rotate_ssh_ca("user_ca")
    keys = load_keys(settings)

    ((key, until),) = keys.previous_user_cas
    assert key.public_data == old_public.public_data
    assert until is not None
    assert timedelta(hours=23) < until - t0 <= timedelta(hours=24, seconds=5)
    assert keys.user_ca.public_data != old_public.public_data


def test_previous_user_ca_past_its_grace_is_not_listed(
    ssh_pki: Pki, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    shutil.copytree(ssh_pki.ca_dir, settings.home_dir / "ca")
    ca = load_ca(settings)
    ca.rotate_ssh_ca("user_ca")
    assert [u for _, u in ca.trusted_user_ca_keys(timedelta(0))] == [None]
