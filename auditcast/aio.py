"""Small asyncio helpers shared by the long-running loops (lock view, spool, watchers)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any, Final, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
LoopKind = Literal["uvloop", "asyncio"]

# How long a stop waits for a loop to wind down before leaving it behind.
STOP_GRACE_S: Final = 10.0
_RECANCEL_S: Final = 0.2


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, grace: float = STOP_GRACE_S) -> bool:
    """Cancel `task` and wait until it has finished, cancelling again while it runs on.

    One `cancel()` is not always enough: on Python 3.11 `asyncio.wait_for` returns the
    inner result when the cancellation races with its completion, and some aiokafka calls
    catch `CancelledError`, so a reconnect loop can swallow the cancel and run on, and a
    plain `await task` would then wait forever. After `grace` seconds the task is left
    behind with a warning rather than hanging the stop. An error the task ended with is
    logged, not raised: a stop must finish. Returns whether the task has finished.
    """
    if task is None:
        return True
    deadline = asyncio.get_running_loop().time() + grace
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_S)
        if asyncio.get_running_loop().time() > deadline and not task.done():
            log.warning("task %s did not stop within %.0f s; leaving it", task.get_name(), grace)
            return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("task %s had failed: %r", task.get_name(), exc)
    return True


async def run_until_signalled(
    main: Coroutine[Any, Any, None], *, grace: float = STOP_GRACE_S
) -> bool:
    """Run `main` until it returns or SIGINT/SIGTERM asks to stop, then stop it with
    `cancel_and_wait`. A signal only sets a flag: a bare `task.cancel` from the handler
    can be swallowed by a reconnect loop (see above) and the process would ignore the
    stop for ever. Returns whether `main` has finished; an error it ended with before any
    signal is raised."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.create_task(main, name=getattr(main, "__qualname__", "main"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if task.done():
        if not task.cancelled():
            task.result()
        return True
    return await cancel_and_wait(task, grace=grace)


async def stop_other_tasks(*, grace: float = STOP_GRACE_S) -> bool:
    """`cancel_and_wait` every task but the caller's, together (what `asyncio.run` does at
    exit, but bounded: a client's stop left behind by an earlier timeout may never end).
    Returns whether all of them have finished."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    done = await asyncio.gather(*(cancel_and_wait(t, grace=grace) for t in others))
    return all(done)


def new_event_loop(kind: LoopKind = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop of `kind` (the `event_loop` setting). uvloop is a dependency;
    if it cannot be imported here the standard loop is used, with a warning."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError as e:
            log.warning("uvloop unavailable (%s); using the asyncio event loop", e)
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_service(main: Coroutine[Any, Any, T], kind: LoopKind = "uvloop") -> T:
    """`asyncio.run` on a `new_event_loop(kind)`: how the gateways run."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        return runner.run(main)
