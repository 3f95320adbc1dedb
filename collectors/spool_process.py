"""The collector's side of the spool's sender process (`spool_sender = "process"`).

A `Spool` in process mode appends to its own segments as always; the sending half runs
in a child (`python -m auditcast.collectors.spool_sender`, see that module). This
module is the link between them, in the collector's process:

- `start()` spawns the child and a task that reads its progress reports (one JSON line
  each) and restarts the child when it dies (it resumes from the `.ack` sidecars).
- After appends the child hears the segment state (`[[name, size, records, closed],
  ...]`), at most every NOTIFY_DELAY_S: bigger batches, fewer wake-ups on both sides.
- Each report is mirrored into the spool's segments (acked offsets, counters,
  connection, the segments the child adopted or replays), so `flush()`, `stats`,
  `wait_connected()`, the cap and `close()` mean what they mean inline.
- `stop()` closes the child's input: it stops and sends its last report.

It reads and moves the `Spool`'s segment bookkeeping directly: the two are one outbox
split across two modules, not two parts with a contract between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from auditcast.collectors.spool import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    IDLE_POLL_S,
    SEGMENT_MAX_AGE_S,
    _Segment,
)

if TYPE_CHECKING:
    from auditcast.collectors.spool import Spool

log = logging.getLogger("auditcast.collectors.spool")

# The longest report/state line, either way.
REPORT_MAX_BYTES: Final = 16 * 1024 * 1024
# How long a stopping child may take.
CHILD_STOP_S: Final = 5.0
# The child hears of appends at most this often: bigger batches, fewer wake-ups.
NOTIFY_DELAY_S: Final = 0.02


def _log_fd() -> int | None:
    """The file descriptor our log handler writes to, if it has one."""
    for handler in logging.getLogger().handlers:
        try:
            return int(handler.stream.fileno())  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            continue
    return None


class SenderLink:
    """The sender child of one `Spool`: spawned, fed, mirrored and restarted."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._child: asyncio.subprocess.Process | None = None
        self._notify_handle: asyncio.Handle | None = None
        self._child_base = (0, 0, 0)  # counters of the child processes before this one
        self._remote: dict[str, _Segment] = {}  # the child's adopted/replayed segments
        self._reported = False  # the child's first report came
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def reported(self) -> bool:
        """Whether the child told us what it adopted (that is in line too)."""
        return self._reported

    @property
    def remote(self) -> dict[str, _Segment]:
        """Segments the child adopted or replays, as it last reported them."""
        return self._remote

    async def start(self) -> asyncio.Task[None]:
        """Open the directory, start our first segment and the child; the task that
        supervises it (the spool's sender task)."""
        sp = self.spool
        await asyncio.to_thread(sp.dir.mkdir, parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(sp._prune_retained)
        sp._rotate()
        proc = await self._spawn_child()
        return asyncio.create_task(self._supervise(proc), name=f"spool-{sp.name}")

    async def _supervise(self, proc: asyncio.subprocess.Process | None) -> None:
        """Run the sender child, restart it if it dies."""
        backoff = BACKOFF_MIN_S
        while not self._stopping:
            began = time.monotonic()
            try:
                await self._run_child(proc or await self._spawn_child())
            except OSError as e:
                log.error("cannot start the spool sender process: %s", e)
            proc = None
            if self._stopping:
                return
            self.spool._stats.connected = False
            self.spool._tried.set()  # wait_connected() must not wait for a dead child
            log.warning(
                "spool sender process exited; starting another",
                extra={"fields": {"spool": self.spool.name, "retry_s": backoff}},
            )
            backoff = BACKOFF_MIN_S if time.monotonic() - began > 10 else backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _spawn_child(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "auditcast.collectors.spool_sender",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=_log_fd(),  # its logs go where ours go (`auditcast rec`: a file)
            limit=REPORT_MAX_BYTES,
        )
        assert proc.stdin is not None and proc.stdout is not None
        hello = {
            "name": self.spool.name,
            "settings": self.spool.settings.model_dump(mode="json"),
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        }
        proc.stdin.write(orjson.dumps(hello) + b"\n")
        self._child = proc
        self._notify()
        return proc

    async def _run_child(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        self._child = proc
        try:
            while True:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), IDLE_POLL_S)
                except TimeoutError:
                    line = None
                if line == b"":
                    break
                if line:
                    self._apply_report(orjson.loads(line))
                self._rotate_if_old()
        finally:
            self._child = None
            st = self.spool._stats
            self._child_base = (st.sent_records, st.replayed_records, st.corrupt_records)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def stop(self, task: asyncio.Task[None] | None) -> None:
        """Close the child's input (it stops) and read its last reports: wait up to
        CHILD_STOP_S for `task` (the one `start()` returned) to see the child exit."""
        self._stopping = True
        child = self._child
        if child is not None and child.stdin is not None:
            child.stdin.close()
        if task is not None and child is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), CHILD_STOP_S)

    def schedule_notify(self, now: bool = False) -> None:
        """Tell the child about new appends, at most every NOTIFY_DELAY_S (its
        batches grow, our loop and the child wake less); `now` for flush()."""
        if self._child is None:
            return
        handle = self._notify_handle
        if handle is not None:
            if not now:
                return
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._notify_handle = (
            loop.call_soon(self._notify) if now else loop.call_later(NOTIFY_DELAY_S, self._notify)
        )

    def _notify(self) -> None:
        self._notify_handle = None
        child = self._child
        if child is None or child.stdin is None or child.stdin.is_closing():
            return
        # Each message is the whole state, so one can be skipped while the child lags.
        if child.stdin.transport.get_write_buffer_size() > REPORT_MAX_BYTES:
            return
        state = [
            [s.path.name, s.size, s.records, s.closed] for s in self.spool._segments if s.fd >= 0
        ]
        child.stdin.write(orjson.dumps(state) + b"\n")

    def _apply_report(self, doc: dict[str, Any]) -> None:
        """Mirror the child's progress: acked offsets, counters, connection."""
        st = self.spool._stats
        before = st.sent_records
        sent, replayed, corrupt = self._child_base
        st.sent_records = sent + doc["sent"]
        st.replayed_records = replayed + doc["replayed"]
        st.corrupt_records = corrupt + doc["corrupt"]
        st.retained_bytes = doc["retained"]
        st.connected = doc["connected"]
        st.cluster_id = doc["cluster_id"]
        now = time.monotonic()
        own: dict[str, list[Any]] = doc["own"]
        finished = set(doc["finished"])
        for seg in list(self.spool._segments):
            name = seg.path.name
            r = own.get(name)
            if r is not None:
                seg.acked = min(r[0], seg.size)
                seg.acked_records, seg.cluster, seg.replayed = r[1], r[2], r[3]
                if not seg.pending:
                    seg.pending_since = None
                elif seg.pending_since is None:
                    seg.pending_since = now
            elif name in finished and seg is not self.spool._active:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
                seg.fd = -1
                self.spool._segments.remove(seg)
        self._remote = {
            name: _Segment(
                path=self.spool.dir / name,
                fd=-1,
                own=False,
                size=size,
                acked=acked,
                records=records,
                acked_records=acked_records,
                closed=True,
                replayed=replayed_,
                pending_since=None if age is None else now - age,
            )
            for name, size, acked, records, acked_records, replayed_, age in doc["other"]
        }
        self._reported = True
        if doc["tried"]:
            self.spool._tried.set()
        if st.sent_records > before:
            self.spool._report_full()
        self.spool._acked.set()

    def _rotate_if_old(self) -> None:
        seg = self.spool._active
        if seg is not None and seg.size > 0 and time.monotonic() - seg.created > SEGMENT_MAX_AGE_S:
            try:
                self.spool._rotate()
            except OSError as e:
                log.error("cannot start a new spool segment in %s: %s", self.spool.dir, e)
            self.schedule_notify()
