"""`auditcast store`: run the audit store and the recording store consumers."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Final

import click

from auditcast import gc_tuning
from auditcast.aio import run_until_signalled, stop_other_tasks
from auditcast.cli._util import settings
from auditcast.logs import setup_logging

log = logging.getLogger(__name__)

# A stop waits this long for the consumers to wind down (their Kafka clients get 5 s),
# then up to a third of it for what was left behind: 8 s in all, inside the 10 s that
# `auditcast up` (and the tests) give a child between SIGTERM and SIGKILL.
STOP_GRACE_S: Final = 6.0


async def _serve() -> None:
    from auditcast.storage.sink import StoreSink

    gc_tuning.for_batches()
    sink = StoreSink(settings())
    stopped = await run_until_signalled(sink.run(), grace=STOP_GRACE_S)
    if not (stopped and await stop_other_tasks(grace=STOP_GRACE_S / 3)):
        # Every write the offsets cover is committed (SQLite FULL sync, fsynced
        # recordings), so leaving now loses nothing; waiting would hang the stop.
        log.error("the store did not stop within %.0f s of the signal; exiting", STOP_GRACE_S)
        logging.shutdown()
        os._exit(1)


@click.command()
def store() -> None:
    """Consume events.audit into the SQLite audit log and session.frames into recordings.

    Writes go to $AUDITCAST_HOME/audit.db and $AUDITCAST_HOME/recordings; offsets are
    committed only after the data is on disk. Stop with Ctrl-C or SIGTERM.
    """
    setup_logging(settings().log_level)
    asyncio.run(_serve())
