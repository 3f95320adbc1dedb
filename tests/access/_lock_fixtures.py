"""A lock watcher in its own process, for tests and the lock benchmark.

Run as `python tests/access/_lock_fixtures.py view|raw BOOTSTRAP PREFIX`. It prints
`READY` once it follows the `locks` topic, then `SEEN <lock name> <unix time>` for
each new lock: through a `LockView` subscription (`view`), or a plain aiokafka
consumer with default settings (`raw`, the benchmark's baseline). It runs until killed
or its stdin closes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from auditcast.access.locks import LockView
from auditcast.broker import EmbeddedBroker
from auditcast.settings import Settings
from auditcast.topics import LOCKS, topic


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def watch_view(settings: Settings) -> None:
    view = await LockView(settings).start()
    news = view.subscribe()
    _say("READY")
    done = asyncio.ensure_future(_stdin_closed())
    try:
        while not done.done():
            get = asyncio.ensure_future(news.get())
            await asyncio.wait({get, done}, return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                _say(f"SEEN {get.result().name} {time.time():.6f}")
            else:
                get.cancel()
    finally:
        await view.stop()


async def watch_raw(settings: Settings) -> None:
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=None)
    await c.start()
    tp = TopicPartition(topic(settings, LOCKS), 0)
    c.assign([tp])
    await c.seek_to_end(tp)
    await c.position(tp)
    _say("READY")
    done = asyncio.ensure_future(_stdin_closed())
    try:
        while not done.done():
            for recs in (await c.getmany(timeout_ms=200)).values():
                now = time.time()
                for r in recs:
                    if r.value is not None and r.key is not None:
                        _say(f"SEEN {r.key.decode()} {now:.6f}")
    finally:
        await c.stop()


# The `auditcast` console script of the interpreter running the tests (the project venv).
AUDITCAST = str(Path(sys.executable).with_name("auditcast"))


class Watcher:
    """The watcher subprocess, seen from the test or benchmark."""

    def __init__(self, mode: str, settings: Settings) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), mode, str(settings.kafka), settings.topic_prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.seen: dict[str, float] = {}

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"lock watcher did not start: {line!r}")

    def read_until(self, name: str, timeout: float = 10.0) -> float:
        """The wall time the watcher saw lock `name` (blocking read of its output)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while name not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the watcher did not see {name} within {timeout}s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the lock watcher exited")
            parts = line.split()
            if len(parts) == 3 and parts[0] == "SEEN":
                self.seen[parts[1]] = float(parts[2])
        return self.seen[name]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- an `auditcast api` process with extra settings ----------------------------------


@contextmanager
def access_api_with(
    broker: EmbeddedBroker,
    idp: Any,
    tmp_path: Path,
    *,
    roles_yaml: str | None = None,
    **env_overrides: str,
) -> Iterator[Any]:
    """Access core's `running_api` (real `auditcast api`, the session's IdP) with a
    roles.yaml of our own and extra AUDITCAST_* settings such as the webhook URL."""
    # imported here: this file also runs as a script (the watcher), outside the tests package
    from tests.access.conftest import running_api
    from tests.helpers.broker import isolated_settings

    s = isolated_settings(tmp_path / "server", broker.bootstrap)
    if roles_yaml is not None:
        (s.home_dir / "roles.yaml").write_text(roles_yaml)
    with running_api(tmp_path, s, idp, **env_overrides) as api:
        yield api


def fresh_code(secret: str) -> str:
    """A TOTP code for a session right after enrolment: the NEXT step's code. Enrolment
    spends the current step's; the server accepts one step ahead, and a step boundary
    passing between here and the server cannot make it stale."""
    import pyotp

    from auditcast.access.mfa import STEP_S

    return str(pyotp.TOTP(secret).at(time.time() + STEP_S))


def main() -> None:
    mode, bootstrap, prefix = sys.argv[1:4]
    settings = Settings(kafka=bootstrap, topic_prefix=prefix)
    asyncio.run(watch_view(settings) if mode == "view" else watch_raw(settings))


if __name__ == "__main__":
    main()
