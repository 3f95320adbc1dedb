"""A real `auditcast up` on a fresh AUDITCAST_HOME with its own embedded broker.

Session-scoped: started once (readiness is read from `up --json`, never slept on),
stopped with SIGINT at the end, and then no process started for that home may be left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from auditcast.broker import free_port

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
ASCIINEMA = str(Path(sys.executable).with_name("asciinema"))
UP_READY_TIMEOUT_S = 120.0
UP_STOP_TIMEOUT_S = 60.0


def fresh_env(home: Path) -> dict[str, str]:
    """An environment for a private `auditcast up`: own home, own free ports, no
    external Kafka (the embedded broker is the point)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITCAST_")}
    env.update(
        AUDITCAST_HOME=str(home),
        AUDITCAST_BROKER_PORT=str(free_port()),
        AUDITCAST_API_PORT=str(free_port()),
        AUDITCAST_KUBE_PORT=str(free_port()),
        AUDITCAST_SSH_PORT=str(free_port()),
        AUDITCAST_WEBHOOK_PORT=str(free_port()),
    )
    return env


def processes_of_home(home: Path) -> list[tuple[int, str]]:
    """Every live process whose environment names this AUDITCAST_HOME (children inherit
    it, so this finds the whole tree, grandchildren and the broker included)."""
    needle = f"AUDITCAST_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie is already dead; its parent just has not reaped it
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(entry.name), cmd))
    return found


@dataclass
class Up:
    """A running `auditcast up`."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    out_path: Path
    started: dict[str, Any]

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads((self.home / "run" / "up.json").read_bytes())
        return doc

    def service(self, name: str) -> dict[str, Any]:
        return next(r for r in self.status()["services"] if r["name"] == name)

    def available(self, name: str) -> bool:
        return self.service(name)["state"] not in ("not available", "not configured")

    def cli(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [AUDITCAST, *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
            **kw,
        )

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_up(home: Path, **extra_env: str) -> Up:
    env = {**fresh_env(home), **extra_env}
    out_path = home.parent / f"{home.name}-up.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [AUDITCAST, "up", "--json"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + UP_READY_TIMEOUT_S
    while True:
        text = out_path.read_bytes()
        start = text.find(b"{")
        if start >= 0:
            try:
                started = orjson.loads(text[start:])
                break
            except orjson.JSONDecodeError:
                pass  # not complete yet
        if proc.poll() is not None:
            raise AssertionError(f"auditcast up exited {proc.returncode}: {text.decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"auditcast up not ready in time: {text.decode()}")
        time.sleep(0.2)
    return Up(home, env, proc, out_path, started)


def stop_up(up: Up) -> int:
    """SIGINT, as Ctrl-C would; returns the exit code."""
    if up.proc.poll() is None:
        up.proc.send_signal(signal.SIGINT)
        try:
            up.proc.wait(UP_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            up.proc.wait()
            raise AssertionError("auditcast up did not stop within a minute of SIGINT") from None
    return up.proc.returncode


def kill_leftovers(home: Path) -> list[tuple[int, str]]:
    left = processes_of_home(home)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.fixture(scope="session")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    running = start_up(home)
    try:
        yield running
    finally:
        code = stop_up(running)
        time.sleep(0.2)
        left = kill_leftovers(home)
        assert not left, f"processes left after auditcast up stopped: {left}"
        assert code == 0, running.out_path.read_text(errors="replace")[-2000:]
