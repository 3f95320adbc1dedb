"""Real OpenSSH `sshd` processes as test nodes (Debian openssh-server).

Each node listens on a free loopback port with its own config directory: a host key
certified by the auditcast host CA, `TrustedUserCAKeys` = the auditcast user CA (so the
gateway's self-signed login certificates are accepted) and its own log file, which the
tests read to prove a refused user never reached the node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from auditcast.broker import free_port

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
START_TIMEOUT_S = 10.0

SSHD_CONFIG = """\
# auditcast test node {name}
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
HostCertificate {dir}/ssh_host_ed25519_key-cert.pub
PidFile {dir}/sshd.pid
UsePAM no
StrictModes no
LogLevel VERBOSE
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile none
TrustedUserCAKeys {user_ca}
# Principals on the gateway's certificate must equal the login (sshd's default
# when no AuthorizedPrincipalsFile is set).
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
# The concurrency test opens 100 sessions at once through the gateway.
MaxStartups 300
MaxSessions 50
AcceptEnv LANG LC_* AUDITCAST_TEST_*
Subsystem sftp {sftp}
"""


@dataclass
class SshdNode:
    name: str
    port: int
    labels: dict[str, str]
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connections(self) -> int:
        """How many TCP connections the node has accepted so far (from its log)."""
        return self.log_text().count("Connection from ")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_node(
    name: str, labels: dict[str, str], base: Path, user_ca_pub: Path, host_ca_key: Path
) -> SshdNode:
    d = base / name
    d.mkdir(parents=True)
    key = d / "ssh_host_ed25519_key"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(
        [
            SSH_KEYGEN,
            "-q",
            "-s",
            str(host_ca_key),
            "-h",
            "-I",
            name,
            "-n",
            f"{name},127.0.0.1,localhost",
            "-V",
            "-5m:+1d",
            f"{key}.pub",
        ],
        check=True,
    )
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        SSHD_CONFIG.format(name=name, port=port, dir=d, user_ca=user_ca_pub, sftp=SFTP_SERVER)
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config), "-E", str(d / "sshd.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(d / "sshd.stderr", "wb"),
    )
    node = SshdNode(name=name, port=port, labels=labels, dir=d, proc=proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Server listening" not in node.log_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(
                f"sshd for {name} did not start: {node.log_text()[-2000:]}"
                f"{(d / 'sshd.stderr').read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.02)
    return node


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK) and shutil.which("ssh") is not None
