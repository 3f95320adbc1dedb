"""Process liveness as `auditcast up` and the clients judge it (`auditcast.lifeline`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from auditcast.errors import BrokerUnavailable
from auditcast.kafka import resolve_bootstrap
from auditcast.lifeline import pid_alive
from auditcast.settings import Settings


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped yet."""
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def test_a_running_process_is_alive_and_an_exited_one_is_not() -> None:
    assert pid_alive(os.getpid())
    done = subprocess.Popen(["true"])
    done.wait()
    assert not pid_alive(done.pid)


def test_a_zombie_is_not_alive() -> None:
    """What a killed `auditcast up` leaves where the container's pid 1 reaps nothing."""
    proc = _zombie()
    try:
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()


def _home_with_broker_file(tmp_path: Path, pid: int) -> Settings:
    s = Settings(home=tmp_path / "home")
    s.broker_file.parent.mkdir(parents=True, exist_ok=True)
    s.broker_file.write_text(json.dumps({"bootstrap": "127.0.0.1:9", "pid": pid}))
    return s


def test_clients_are_told_the_published_broker_is_gone(tmp_path: Path) -> None:
    proc = _zombie()
    try:
        s = _home_with_broker_file(tmp_path, proc.pid)
        with pytest.raises(BrokerUnavailable, match=f"pid {proc.pid}.* is gone"):
            resolve_bootstrap(s)
    finally:
        proc.wait()


def test_a_published_broker_that_runs_is_used(tmp_path: Path) -> None:
    s = _home_with_broker_file(tmp_path, os.getpid())
    assert resolve_bootstrap(s) == "127.0.0.1:9"
