"""cancel_and_wait: a stop that finishes even when a loop swallows its cancellation;
run_service: the gateways' loop is the one the `event_loop` setting names."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from auditcast.aio import cancel_and_wait, run_service, run_until_signalled, stop_other_tasks
from auditcast.settings import Settings


class Stubborn:
    """A loop that swallows the first cancel, as 3.11's wait_for / aiokafka can."""

    def __init__(self) -> None:
        self.swallowed = 0
        self.started = asyncio.Event()

    async def run(self) -> None:
        self.started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1


async def test_a_loop_that_swallows_the_first_cancel_is_cancelled_again() -> None:
    stubborn = Stubborn()
    task = asyncio.create_task(stubborn.run())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled() and stubborn.swallowed == 1


async def test_a_task_that_never_stops_is_left_behind_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def immortal() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(cancel_and_wait(task, grace=0.5), 5)
    assert not task.done()
    assert "immortal did not stop" in caplog.text
    task.get_coro().close()  # type: ignore[union-attr]


async def test_a_failure_of_the_task_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken(), name="broken")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await cancel_and_wait(task)
    assert "broken had failed: RuntimeError('boom')" in caplog.text
    await cancel_and_wait(None)  # nothing to stop is fine


async def test_a_signal_stops_a_main_that_swallows_the_first_cancel() -> None:
    """What `auditcast store` once did: SIGTERM cancelled its task once, a reconnect loop
    swallowed that, and the process ran on for minutes after the signal."""
    stubborn = Stubborn()
    runner = asyncio.create_task(run_until_signalled(stubborn.run(), grace=5))
    await stubborn.started.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(runner, 5) is True
    assert stubborn.swallowed == 1
    # the handler is gone again: SIGTERM has its default action back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_main_that_ends_by_itself_returns_and_its_error_is_raised() -> None:
    async def fine() -> None:
        await asyncio.sleep(0)

    async def broken() -> None:
        raise RuntimeError("no broker")

    assert await run_until_signalled(fine()) is True
    with pytest.raises(RuntimeError, match="no broker"):
        await run_until_signalled(broken())


async def test_stop_other_tasks_reports_one_that_never_ends() -> None:
    release = False

    async def immortal() -> None:
        while not release:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    polite = asyncio.create_task(asyncio.sleep(3600))
    stuck = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    assert await stop_other_tasks(grace=0.5) is False  # not in wait_for: its task would count
    assert polite.cancelled() and not stuck.done()
    release = True
    assert await stop_other_tasks(grace=0.5) is True
    assert stuck.done()


async def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def test_services_run_on_uvloop_unless_the_setting_names_asyncio(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Settings(home=tmp_path).event_loop == "uvloop"
    assert run_service(_loop_kind(), Settings(home=tmp_path).event_loop) == "uvloop"
    monkeypatch.setenv("AUDITCAST_EVENT_LOOP", "asyncio")
    assert run_service(_loop_kind(), Settings(home=tmp_path).event_loop) == "asyncio"
