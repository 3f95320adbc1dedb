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
- stdout: `MirrorSpool.progress_report()` after each send and connection change.

We also die with the parent (PR_SET_PDEATHSIG), so a SIGKILLed collector never leaves a
sender behind that races the drainer adopting its segments.

We run at a lower CPU priority (`NICENESS`) than the collector: what the collector
spooled is durable already, so on a busy machine the terminal's bytes go first and
delivery catches up in the gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from auditcast.collectors.spool import (
    Spool,
    _count_records,
    _read_ack,
    _Segment,
)
from auditcast.collectors.spool_process import REPORT_MAX_BYTES
from auditcast.lifeline import set_parent_death_signal
from auditcast.logs import setup_logging
from auditcast.settings import Settings

# CFS gives a nice-10 process ~1/10 of a core a nice-0 one also wants (weights 110 and
# 1024), never none.
# bench_recorder (100 MB through `auditcast rec`, 2 cores, load 4-5, same hour): rec at
# 52.8-53.9 MB/s (ratio to a bare PTY 0.82-0.83) at 10 against 41.6-49.1 (0.56-0.69) at
# 0. It matters when the machine is busy; on an idle one the ratio was 0.74 either way.
NICENESS: Final = 10


class MirrorSpool(Spool):
    """A sender-only `Spool` (writer=False) that also sends the parent's segments.

    `mirror()` is told of the parent's appends; `progress_report()` is what the parent
    mirrors back; `on_progress` is called whenever there is something new to report.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        super().__init__(settings, name, writer=False)
        self._mirrored: dict[str, _Segment] = {}  # the parent's segments we send
        self._gone: set[str] = set()
        self._vanished: list[str] = []
        self.on_progress: Callable[[], None] | None = None

    def mirror(self, name: str, size: int, records: int, closed: bool) -> None:
        """The parent appended to (or closed) its segment `name`.

        The parent holds the segment's flock; we open it without locking, so no one
        can mistake us for an adopter, and we never finish it after the parent is gone.
        """
        seg = self._mirrored.get(name)
        if seg is None:
            if name in self._gone:
                return
            path = self.dir / name
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:  # finished: by us (a late message) or by the child before us
                self._gone.add(name)
                self._vanished.append(name)
                self._progress()
                return
            acked, cluster = _read_ack(path)
            acked = min(acked, size)
            before = _count_records(fd, 0, acked)[0] if acked else 0
            seg = _Segment(
                path=path,
                fd=fd,
                own=True,
                acked=acked,
                read=acked,
                cluster=cluster,
                acked_records=before,
            )
            if acked and self._cluster_id and cluster != self._cluster_id:
                self._reset(seg)
            self._mirrored[name] = seg
            self._segments.append(seg)
            self._sort()
        if seg.fd < 0:
            return
        seg.size = max(seg.size, size)
        seg.records = max(seg.records, records)
        seg.closed = closed
        if seg.pending and seg.pending_since is None:
            seg.pending_since = time.monotonic()
        self._wake.set()

    def progress_report(self) -> dict[str, Any]:
        """What the parent mirrors (`SenderLink._apply_report`)."""
        now = time.monotonic()
        own: dict[str, list[Any]] = {}
        other: list[list[Any]] = []
        for s in self._segments:
            if s.path.name in self._mirrored:
                own[s.path.name] = [s.acked, s.acked_records, s.cluster, s.replayed]
            else:
                age = None if s.pending_since is None else now - s.pending_since
                other.append(
                    [s.path.name, s.size, s.acked, s.records, s.acked_records, s.replayed, age]
                )
        finished = [n for n, s in self._mirrored.items() if s.fd < 0]
        for n in finished:
            del self._mirrored[n]
            self._gone.add(n)
        finished += self._vanished
        self._vanished = []
        st = self._stats
        return {
            "tried": self._tried.is_set(),
            "connected": st.connected,
            "cluster_id": st.cluster_id,
            "sent": st.sent_records,
            "replayed": st.replayed_records,
            "corrupt": st.corrupt_records,
            "retained": st.retained_bytes,
            "own": own,
            "other": other,
            "finished": finished,
        }

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    def _release(self, segments: list[_Segment]) -> None:
        """The parent's segments are only closed: it finishes them itself."""
        theirs = [s for s in segments if s.path.name in self._mirrored]
        for seg in theirs:
            if seg.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
                seg.fd = -1
        super()._release([s for s in segments if s.path.name not in self._mirrored])


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(NICENESS)


def _die_with_parent() -> None:
    set_parent_death_signal(signal.SIGKILL)
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
    spool = MirrorSpool(Settings.model_validate(hello["settings"]), hello["name"])
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
    _lower_priority()
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
