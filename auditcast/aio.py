"""Small asyncio helpers shared by the long-running loops (lock view, spool, watchers)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

log = logging.getLogger(__name__)

# How long a stop waits for a loop to wind down before leaving it behind.
STOP_GRACE_S: Final = 10.0
_RECANCEL_S: Final = 0.2


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, grace: float = STOP_GRACE_S) -> None:
    """Cancel `task` and wait until it has finished, cancelling again while it runs on.

    One `cancel()` is not always enough: on Python 3.11 `asyncio.wait_for` returns the
    inner result when the cancellation races with its completion, and some aiokafka calls
    catch `CancelledError`, so a reconnect loop can swallow the cancel and run on, and a
    plain `await task` would then wait forever. After `grace` seconds the task is left
    behind with a warning rather than hanging the stop. An error the task ended with is
    logged, not raised: a stop must finish.
    """
    if task is None:
        return
    deadline = asyncio.get_running_loop().time() + grace
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_S)
        if asyncio.get_running_loop().time() > deadline and not task.done():
            log.warning("task %s did not stop within %.0f s; leaving it", task.get_name(), grace)
            return
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("task %s had failed: %r", task.get_name(), exc)
