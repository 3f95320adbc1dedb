"""cancel_and_wait: a stop that finishes even when a loop swallows its cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from auditcast.aio import cancel_and_wait


async def test_a_loop_that_swallows_the_first_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what 3.11 wait_for / aiokafka can do to a cancel

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled() and swallowed == 1


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
