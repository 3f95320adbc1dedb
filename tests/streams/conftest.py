"""A real `auditcast worker` process on the session broker, shared by a test module."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from auditcast.broker import EmbeddedBroker
from auditcast.kafka import consumer_config
from auditcast.settings import Settings
from auditcast.topics import topic
from tests.helpers.broker import isolated_settings, settings_env

AUDITCAST = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "auditcast")
WORKER_READY_TIMEOUT_S = 60.0


@dataclass
class RunningWorker:
    settings: Settings
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(s: Settings, log_path: Path, env: dict[str, str] | None = None) -> RunningWorker:
    """Start `auditcast worker` and wait for its ready file (not a sleep)."""
    out = open(log_path, "ab")
    proc = subprocess.Popen(
        [AUDITCAST, "worker"],
        env=env or {**os.environ, **settings_env(s)},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    ready = s.run_dir / "worker.ready"
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker not ready in time:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return RunningWorker(s, proc, log_path)


def stop_worker(w: RunningWorker) -> int:
    if w.proc.poll() is None:
        w.proc.send_signal(signal.SIGINT)
        try:
            w.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
    return w.proc.returncode


@pytest.fixture(scope="module")
def worker(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningWorker]:
    home = tmp_path_factory.mktemp("worker-home")
    s = isolated_settings(home, broker.bootstrap)
    w = start_worker(s, home / "worker.log")
    yield w
    stop_worker(w)


async def read_topic(
    s: Settings,
    name: str,
    until: Callable[[list[ConsumerRecord[Any, Any]]], bool],
    timeout: float = 20.0,
) -> list[ConsumerRecord[Any, Any]]:
    """Every record on a topic from the beginning, until `until(records)` or the timeout."""
    consumer = AIOKafkaConsumer(topic(s, name), **consumer_config(s.kafka or "", None))
    await consumer.start()
    got: list[ConsumerRecord[Any, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(got):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got
