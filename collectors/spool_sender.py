"""The spool's sender process (`spool_sender = "process"`, started by `Spool.start()`).

It runs the sending half of a `Spool` off the collector's event loop, on the other
core: the collector keeps appending to its own segments (and holds their flocks); this
process reads them back from the page cache, sends them, writes the `.ack` sidecars,
adopts dead writers' segments, prunes and replays the retention window, exactly as the
inline sender does.

Protocol, one JSON line per message:
- stdin: first `{"name", "settings", "log_level"}`, then the parent's segment state
  `[[name, size, records, closed], ...]` whenever it appended (once per loop turn).
  EOF means the parent stopped or died: we stop at once.
- stdout: `Spool.progress_report()` after each send and connection change.

We also die with the parent (PR_SET_PDEATHSIG), so a SIGKILLed collector never leaves a
sender behind that races the drainer adopting its segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys

import orjson

from auditcast.collectors.spool import REPORT_MAX_BYTES, Spool
from auditcast.logs import setup_logging
from auditcast.settings import Settings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(0)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=REPORT_MAX_BYTES)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    first = await reader.readline()
    if not first:
        return
    hello = orjson.loads(first)
    setup_logging(hello["log_level"])
    spool = Spool(Settings.model_validate(hello["settings"]), hello["name"], writer=False)
    scheduled = False

    def report() -> None:
        nonlocal scheduled
        scheduled = False
        os.write(1, orjson.dumps(spool.progress_report()) + b"\n")

    def schedule_report() -> None:
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            loop.call_soon(report)

    spool.on_progress = schedule_report
    await spool.start()
    report()  # what it adopted, before the first connection attempt
    try:
        while line := await reader.readline():
            for name, size, records, closed in orjson.loads(line):
                spool.mirror(name, size, records, closed)
    finally:
        spool.on_progress = None
        report()
        await spool.close(0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; EOF stops us
    _die_with_parent()
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
