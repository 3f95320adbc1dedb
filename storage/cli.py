"""`auditcast store`: run the audit store and the recording store consumers."""

from __future__ import annotations

import asyncio
import gc
import signal

import click

from auditcast.cli._util import settings
from auditcast.logs import setup_logging

# Collect young objects every 20,000 allocations instead of 700: a poll parses 5,000
# documents of ~20 containers each, none of which ever forms a cycle, and the default
# scanned them ~140 times per poll (measured: ~3 µs of the ~25 µs a parse costs).
GC_THRESHOLDS = (20_000, 10, 10)


async def _serve() -> None:
    from auditcast.storage.sink import StoreSink

    gc.freeze()  # what start-up made lives for good: full collections skip it
    gc.set_threshold(*GC_THRESHOLDS)
    s = settings()
    sink = StoreSink(s)
    task = asyncio.create_task(sink.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


@click.command()
def store() -> None:
    """Consume events.audit into the SQLite audit log and session.frames into recordings.

    Writes go to $AUDITCAST_HOME/audit.db and $AUDITCAST_HOME/recordings; offsets are
    committed only after the data is on disk. Stop with Ctrl-C or SIGTERM.
    """
    setup_logging(settings().log_level)
    asyncio.run(_serve())
