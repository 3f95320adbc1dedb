"""`auditcast ssh-gateway` as its own process: inventory and roles from AUDITCAST_HOME."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from auditcast.broker import free_port
from auditcast.settings import Settings
from tests.ssh.conftest import Pki, RunningGateway, UserCert
from tests.ssh.harness import read_events
from tests.ssh.nodes import SshdNode

pytestmark = pytest.mark.timeout(90)
AUDITCAST = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "auditcast")


def test_ssh_gateway_command_serves_the_inventory_and_stops_on_sigint(
    make_settings: Callable[..., Settings],
    cli_env: Callable[[Settings], dict[str, str]],
    ssh_pki: Pki,
    ssh_nodes: dict[str, SshdNode],
    issue_cert: Callable[..., UserCert],
) -> None:
    settings = make_settings()
    home = settings.home_dir
    shutil.copytree(ssh_pki.ca_dir, home / "ca", dirs_exist_ok=True)
    nodes = [
        {"name": n.name, "address": "127.0.0.1", "port": n.port, "labels": n.labels}
        for n in ssh_nodes.values()
    ]
    (home / "nodes.yaml").write_text(yaml.safe_dump({"nodes": nodes}))
    roles = {"dev": {"logins": ["root"], "node_labels": {"env": "staging"}}}
    (home / "roles.yaml").write_text(yaml.safe_dump({"roles": roles}))
    port = free_port()
    proc = subprocess.Popen(
        [AUDITCAST, "ssh-gateway", "--port", str(port), "--json"],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line or b"{}") == {"ssh_gateway": f"127.0.0.1:{port}"}, (
            proc.stderr.read() if proc.stderr and not line else line
        )
        cert = issue_cert("ivan", roles=("dev",))
        base = [
            "ssh", "-F", "/dev/null", "-p", str(port), "-i", str(cert.key),
            "-o", f"CertificateFile={cert.cert}", "-o", f"UserKnownHostsFile={ssh_pki.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
        ]  # fmt: skip
        ok = subprocess.run([*base, "root@node2@127.0.0.1", "hostname >/dev/null; echo ok"],
                            capture_output=True, timeout=30)  # fmt: skip
        assert (ok.returncode, ok.stdout) == (0, b"ok\n"), ok.stderr
        denied = subprocess.run([*base, "root@node3@127.0.0.1", "true"], capture_output=True,
                                timeout=30)  # fmt: skip
        assert denied.returncode == 255 and b"node 'node3'" in denied.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
    assert rc == 0
    # The process drained its spool on the way out: both outcomes are on the broker.
    events = read_events(settings, lambda ev: {"ssh.exec", "auth.failed"} <= {e.type for e in ev})
    assert {"ssh.exec", "auth.failed"} <= {e.type for e in events}


def test_auditcast_ssh_runs_openssh_through_the_gateway_with_the_login_profile(
    ssh_gateway: RunningGateway,
    issue_cert: Callable[..., UserCert],
    cli_env: Callable[[Settings], dict[str, str]],
    tmp_path: Path,
) -> None:
    # What `auditcast login` leaves in $AUDITCAST_HOME/ssh/ (access.login_flow).
    home = tmp_path / "client-home"
    d = home / "ssh"
    d.mkdir(parents=True)
    cert = issue_cert("judy", roles=("dev",))
    shutil.copy(cert.key, d / "id_ed25519")
    shutil.copy(cert.cert, d / "id_ed25519-cert.pub")
    shutil.copy(ssh_gateway.pki.known_hosts, d / "known_hosts")
    env = {
        **cli_env(ssh_gateway.settings),
        "AUDITCAST_HOME": str(home),
        "AUDITCAST_SSH_PORT": str(ssh_gateway.port),
    }
    r = subprocess.run(
        [AUDITCAST, "ssh", "root@node2", "echo", "wrapped-$((40+2))"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout) == (0, b"wrapped-42\n"), r.stderr
    events = ssh_gateway.events(lambda ev: any(e.type == "ssh.exec" for e in ev))
    (ex,) = [e for e in events if e.type == "ssh.exec"]
    assert ex.user == "judy" and ex.node == "node2" and ex.credential_id == cert.credential_id

    bad = subprocess.run([AUDITCAST, "ssh", "node2"], env=env, capture_output=True, timeout=30)
    assert bad.returncode != 0 and b"LOGIN@NODE" in bad.stderr
