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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI, Header, HTTPException

from auditcast.access.locks import LockView
from auditcast.broker import free_port
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


# -- an API process for the lock, request and MFA routers ----------------------------


@dataclass(frozen=True)
class TestCaller:
    user: str
    roles: list[str]


def bearer_test_identity(authorization: str = Header(default="")) -> TestCaller:
    """Stand-in for access core's sign-in while it is not in the tree: the bearer token
    `test-identity USER ROLE,ROLE` names the caller. Only tests install it."""
    parts = authorization.removeprefix("Bearer ").split()
    if len(parts) != 3 or parts[0] != "test-identity":
        raise HTTPException(401, detail={"error": "not signed in", "hint": None})
    return TestCaller(parts[1], [r for r in parts[2].split(",") if r])


def access_app(settings: Settings, policies: Callable[[], Any] | None = None) -> FastAPI:
    """The three routers under /v1, as replay/app.py mounts them."""
    from auditcast.access import api_common, api_locks, api_mfa, api_requests

    app = FastAPI()
    app.state.settings = settings
    if policies is not None:
        app.state.role_policies = policies
    for r in (api_locks.router, api_requests.router, api_mfa.router):
        app.include_router(r, prefix="/v1")
    # These routers' own tests name the caller directly; SSO sign-in has its own tests.
    app.dependency_overrides[api_common.caller_dependency] = bearer_test_identity
    return app


class ApiServer:
    """uvicorn serving an app on a free loopback port, in a thread with its own loop."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 20.0) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def main() -> None:
    mode, bootstrap, prefix = sys.argv[1:4]
    settings = Settings(kafka=bootstrap, topic_prefix=prefix)
    asyncio.run(watch_view(settings) if mode == "view" else watch_raw(settings))


if __name__ == "__main__":
    main()
