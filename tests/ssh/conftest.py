"""Fixtures for the SSH gateway: a PKI, real sshd nodes, and a running gateway.

The nodes are real Debian `sshd` processes (tests/ssh/nodes.py), started once per
session. The gateway runs in-process on its own thread and event loop with the real
spool, SessionRecorder and LockView on the session's Tansu broker, so tests can drive
the real OpenSSH client with pexpect (blocking) while the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from auditcast.events import Event
from auditcast.settings import Settings
from tests.ssh.nodes import SSH_KEYGEN, SshdNode, sshd_available, start_node

T = TypeVar("T")

NODE_LABELS = {
    "node1": {"env": "staging", "team": "web"},
    "node2": {"env": "staging", "team": "db"},
    "node3": {"env": "production", "team": "web"},
}

# Role definitions as access's roles YAML has them (logins, node_labels allow/deny, ...).
ROLES: dict[str, dict[str, Any]] = {
    "dev": {"logins": ["root"], "node_labels": {"env": ["staging"]}},
    "ops": {
        "logins": ["root", "nobody"],
        "node_labels": {"*": ["*"]},
        "allow_file_transfer": True,
        "allow_port_forwarding": True,
    },
    "web-only": {
        "logins": ["root"],
        "node_labels": {"*": ["*"]},
        "node_labels_deny": {"team": ["db"]},
    },
    "agent": {
        "logins": ["root"],
        "node_labels": {"env": ["staging"]},
        "allow_agent_forwarding": True,
    },
    "secure": {
        "logins": ["root"],
        "node_labels": {"*": ["*"]},
        "require_session_mfa": True,
    },
}

if not sshd_available():  # pragma: no cover - the README installs openssh-server
    pytest.skip("openssh-server / openssh-client not installed", allow_module_level=True)


@dataclass
class Pki:
    """The auditcast CAs (access.ca layout), shared by the nodes and every test's home."""

    ca_dir: Path
    other_ca: Path  # a CA the gateway does not trust
    known_hosts: Path  # what `auditcast login` writes: trust the host CA

    @property
    def user_ca(self) -> Path:
        return self.ca_dir / "user_ca"

    @property
    def host_ca(self) -> Path:
        return self.ca_dir / "host_ca"


@pytest.fixture(scope="session")
def ssh_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    from auditcast.access.ca import load_ca

    d = tmp_path_factory.mktemp("ssh-pki")
    ca = load_ca(Settings(home=d / "home"))
    other = d / "other_ca"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = d / "known_hosts"
    known.write_text(ca.host_ca_known_hosts_line() + "\n")
    return Pki(ca_dir=ca.dir, other_ca=other, known_hosts=known)


@pytest.fixture(scope="session")
def ssh_nodes(
    ssh_pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SshdNode]]:
    base = tmp_path_factory.mktemp("sshd-nodes")
    nodes: dict[str, SshdNode] = {}
    try:
        for name, labels in NODE_LABELS.items():
            nodes[name] = start_node(
                name, labels, base, ssh_pki.ca_dir / "user_ca.pub", ssh_pki.host_ca
            )
        yield nodes
    finally:
        for n in nodes.values():
            n.stop()


@dataclass
class UserCert:
    key: Path  # private key; `<key>-cert.pub` is the certificate ssh picks up itself
    user: str
    credential_id: str

    @property
    def cert(self) -> Path:
        return Path(f"{self.key}-cert.pub")


@pytest.fixture
def issue_cert(ssh_pki: Pki, tmp_path: Path) -> Callable[..., UserCert]:
    """Sign a user certificate the way `auditcast login` does (key id = user,
    principals = logins, credential and roles in extensions)."""
    counter = iter(range(10_000))

    def issue(
        user: str = "alice",
        *,
        principals: tuple[str, ...] = ("root",),
        roles: tuple[str, ...] = ("dev",),
        validity: str | None = None,
        ca: Path | None = None,
        credential_id: str | None = None,
        roles_in_cert: bool = True,
    ) -> UserCert:
        n = next(counter)
        key = tmp_path / f"id_{user}_{n}"
        cred = credential_id or f"cred-{user}-{n}-{os.getpid()}"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        if ca is None and validity is None:
            # What `auditcast login` does: access.ca signs with the user CA.
            from auditcast.access.ca import load_ca

            line = load_ca(Settings(home=ssh_pki.ca_dir.parent)).sign_user_cert(
                Path(f"{key}.pub").read_text(),
                key_id=user,
                principals=list(principals),
                ttl=timedelta(hours=1),
                credential_id=cred,
                roles=list(roles) if roles_in_cert else None,
            )
            Path(f"{key}-cert.pub").write_text(line + "\n")
            return UserCert(key=key, user=user, credential_id=cred)
        # Certificates access.ca would never issue (expired, foreign CA): ssh-keygen.
        subprocess.run(
            [
                SSH_KEYGEN, "-q", "-s", str(ca or ssh_pki.user_ca), "-I", user,
                "-n", ",".join(principals), "-V", validity or "-5m:+1h", "-z", str(n + 1),
                "-O", f"extension:auditcast-credential@auditcast={cred}",
                *(["-O", f"extension:auditcast-roles@auditcast={','.join(roles)}"]
                  if roles_in_cert else []),
                f"{key}.pub",
            ],
            check=True,
        )  # fmt: skip
        return UserCert(key=key, user=user, credential_id=cred)

    return issue


class LoopThread:
    """An asyncio loop on a background thread; `call(coro)` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class RunningGateway:
    settings: Settings
    port: int
    gateway: Any
    lock_view: Any
    spool: Any
    runner: LoopThread
    pki: Pki
    nodes: dict[str, SshdNode]

    def ssh_argv(self, cert: UserCert, dest: str, *command: str, tty: bool = False) -> list[str]:
        """The real OpenSSH client, configured like `auditcast ssh` does."""
        argv = [
            "ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(cert.key),
            "-o", f"CertificateFile={cert.cert}",
            "-o", f"UserKnownHostsFile={self.pki.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip
        argv += ["-tt"] if tty else ["-T"]
        return [*argv, f"{dest}@127.0.0.1", *command]

    def flush(self) -> None:
        assert self.runner.call(self.spool.flush(10.0)), "spool did not drain to the broker"

    def events(self, until: Callable[[list[Event]], bool], timeout: float = 20.0) -> list[Event]:
        """Events on `events.raw` once `until(events)` holds. Some are written when the
        gateway notices a hang-up, after the client has exited: flush and read again."""
        from tests.ssh.harness import read_events

        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            events = read_events(self.settings, until, 2.0)
            if until(events) or time.monotonic() > deadline:
                return events


@pytest.fixture
def ssh_gateway(
    make_settings: Callable[..., Settings], ssh_pki: Pki, ssh_nodes: dict[str, SshdNode]
) -> Iterator[RunningGateway]:
    from tests.ssh.harness import start_gateway

    settings = make_settings()
    runner = LoopThread()
    try:
        svc = runner.call(start_gateway(settings, ssh_pki, ssh_nodes, ROLES))
        yield RunningGateway(
            settings, svc.port, svc.gateway, svc.lock_view, svc.spool, runner, ssh_pki, ssh_nodes
        )
        runner.call(svc.stop())
    finally:
        runner.stop()
