"""The collector's durable outbox: append locally, send to Kafka, forget only what's safe.

Every collector (`auditcast rec`, the kube and SSH gateways) writes events and frame
batches here first, so a broker outage never costs a record:

- `append*` writes one checksummed record to the process's own segment file (one
  `os.write`, cheap enough for a PTY hot path) and wakes the sender.
- The sender task reads its segments back, sends batches with acks=all, and advances a
  per-segment ack offset only after the broker acknowledged every record before it.
- Broker down: appends go on (up to `spool_max_bytes`, then `SpoolFull`); the sender
  retries with capped backoff and drains when the broker returns.
- The embedded broker is memory-only, so "acknowledged" is not "durable": fully-acked
  segments are kept as `*.sent` for `spool_retention_seconds` (capped by
  `spool_retention_max_bytes`). When the sender meets a broker with a different cluster
  id (a restart), it re-creates the topics and replays that window; stores dedupe by
  event id and (session_id, seq), so replay is harmless.
- Several processes can share a spool directory. Each holds an exclusive `flock` on its
  own segments; a segment whose writer died (lock free) is adopted by the next sender,
  e.g. the drainer that `auditcast up` runs (`drain_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from auditcast.collectors.spool_format import SpoolRecord, decode_records, encode_record
from auditcast.errors import BrokerUnavailable, SpoolError, SpoolFull
from auditcast.events import Event, Frame, encode_frames
from auditcast.kafka import (
    CONNECT_TIMEOUT_S,
    MAX_REQUEST_BYTES,
    ensure_topics,
    producer_config,
    resolve_bootstrap,
    use_idempotence,
)
from auditcast.kafka import cluster_info as fetch_cluster_info
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES, topic

log = logging.getLogger(__name__)

# A segment rotates at this size so acked data can be released in pieces.
SEGMENT_MAX_BYTES: Final = 16 * 1024 * 1024
# One send batch: large enough to amortise the round trip, small enough to bound memory.
SEND_BATCH_RECORDS: Final = 5000
SEND_BATCH_BYTES: Final = 8 * 1024 * 1024
# Retry backoff after a failed send or an unreachable broker.
BACKOFF_MIN_S: Final = 0.2
BACKOFF_MAX_S: Final = 5.0
# How often an idle sender looks for orphaned segments and re-checks the cluster id.
IDLE_POLL_S: Final = 1.0
# Before sending, the cluster id is re-checked at most this often: a broker restarted
# between two checks auto-creates topics on produce, which we want to catch quickly.
CLUSTER_CHECK_S: Final = 0.5
_ACK = struct.Struct(">Q")


@dataclass
class SpoolStats:
    pending_records: int = 0
    pending_bytes: int = 0
    retained_bytes: int = 0
    sent_records: int = 0
    replayed_records: int = 0
    corrupt_records: int = 0
    full_refusals: int = 0
    oldest_pending_s: float | None = None
    connected: bool = False
    cluster_id: str | None = None


@dataclass
class _Segment:
    path: Path
    fd: int  # read/write fd, holding the flock
    own: bool  # written by this process (else adopted from a dead writer)
    acked: int = 0  # offset up to which the broker acknowledged
    read: int = 0  # offset up to which records were read into the send queue
    size: int = 0
    closed: bool = False  # no more appends will come
    first_pending_at: float | None = None
    queue: list[SpoolRecord] = field(default_factory=list)

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(".ack")

    def write_ack(self) -> None:
        with open(self.ack_path, "wb") as f:
            f.write(_ACK.pack(self.acked))

    @staticmethod
    def read_ack(path: Path) -> int:
        try:
            data = path.with_suffix(".ack").read_bytes()
            return int(_ACK.unpack(data)[0]) if len(data) == _ACK.size else 0
        except OSError:
            return 0


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class Spool:
    """A spool directory `settings.spool_dir / name`, as writer and sender."""

    def __init__(self, settings: Settings, name: str, *, writer: bool = True) -> None:
        self.settings = settings
        self.name = name
        self.dir = settings.spool_dir / name
        self.writer = writer
        self.stats = SpoolStats()
        self._id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._cluster_id: str | None = None
        self._last_check = 0.0
        self._full_since: int = 0  # refusals not yet reported as an event
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the spool (recovering what a previous run left) and start sending."""
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._run(), name=f"spool-{self.name}")

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._adopt_orphans()
        if self.writer:
            self._rotate()
        self._prune_retained()

    async def close(self, drain_timeout: float = 5.0) -> bool:
        """Try to deliver what is pending for `drain_timeout` s, then stop.

        Returns whether everything was delivered; what wasn't stays on disk for the
        next sender (this collector restarted, or `auditcast up`'s drainer).
        """
        delivered = await self.flush(drain_timeout) if drain_timeout > 0 else False
        self._stopping = True
        self._wake.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._disconnect()
        for seg in self._segments:
            seg.closed = True
            self._finish_if_done(seg)
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self._segments.clear()
        self._active = None
        return delivered

    # ----------------------------------------------------------------- appends

    def append(self, topic_name: str, key: bytes, value: bytes) -> None:
        """Append one record for `topic_name` (unprefixed, e.g. EVENTS_RAW)."""
        if not self.writer or self._active is None:
            raise SpoolError(f"spool {self.name} is not open for writing")
        rec = encode_record(topic(self.settings, topic_name), key, value)
        if len(rec) > MAX_REQUEST_BYTES:
            raise SpoolError(
                f"record of {len(rec)} bytes for {topic_name} exceeds the "
                f"{MAX_REQUEST_BYTES}-byte message limit"
            )
        pending = self.pending_bytes()
        if pending + len(rec) > self.settings.spool_max_bytes:
            self.stats.full_refusals += 1
            self._full_since += 1
            raise SpoolFull(
                f"spool {self.dir} is full ({pending} bytes pending, cap "
                f"{self.settings.spool_max_bytes}): the broker has not acknowledged for too long"
            )
        seg = self._active
        if seg.size + len(rec) > SEGMENT_MAX_BYTES and seg.size > 0:
            seg = self._rotate()
        os.write(seg.fd, rec)
        if self.settings.spool_fsync == "always":
            os.fsync(seg.fd)
        if seg.first_pending_at is None:
            seg.first_pending_at = time.monotonic()
        seg.size += len(rec)
        self._wake.set()

    def append_event(self, event: Event) -> None:
        self.append(EVENTS_RAW, event.key, event.to_json())

    def append_frames(self, session_id: str, frames: Sequence[Frame]) -> None:
        if frames:
            self.append(SESSION_FRAMES, session_id.encode(), encode_frames(frames))

    def pending_bytes(self) -> int:
        return sum(s.size - s.acked for s in self._segments)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything appended so far is acknowledged by the broker."""
        targets = {id(s): s.size for s in self._segments}
        deadline = time.monotonic() + timeout
        while True:
            if all(s.acked >= targets.get(id(s), 0) for s in self._segments):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._acked.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(left, 0.5))

    # ----------------------------------------------------------------- segments

    def _rotate(self) -> _Segment:
        if self._active is not None:
            self._active.closed = True
        self._seq += 1
        path = self.dir / f"seg-{self._id}-{self._seq:06d}.log"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seg = _Segment(path=path, fd=fd, own=True)
        self._segments.append(seg)
        self._active = seg
        return seg

    def _adopt_orphans(self) -> None:
        """Take over segments whose writer is gone (their flock is free)."""
        known = {s.path for s in self._segments}
        for path in sorted(self.dir.glob("seg-*.log")):
            if path in known:
                continue
            fd = _try_lock(path)
            if fd is None:
                continue
            acked = _Segment.read_ack(path)
            size = os.fstat(fd).st_size
            seg = _Segment(path=path, fd=fd, own=False, acked=acked, read=acked, size=size)
            seg.closed = True
            seg.first_pending_at = time.monotonic() if size > acked else None
            self._segments.append(seg)
            log.info(
                "adopted spool segment",
                extra={"fields": {"segment": path.name, "pending_bytes": size - acked}},
            )
            if size <= acked:
                self._finish_if_done(seg)

    def _finish_if_done(self, seg: _Segment) -> None:
        """A closed, fully-acked segment becomes retained history (`*.sent`)."""
        if not seg.closed or seg.acked < seg.size or not seg.path.exists():
            return
        if seg.size == 0:
            seg.path.unlink(missing_ok=True)
        else:
            seg.path.rename(seg.path.with_suffix(".sent"))
        seg.ack_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.close(seg.fd)
        seg.fd = -1
        if seg in self._segments:
            self._segments.remove(seg)

    def _prune_retained(self) -> None:
        """Drop retained history past the window or over the size cap (oldest first)."""
        now = time.time()
        files = sorted(self.dir.glob("seg-*.sent"), key=lambda p: p.stat().st_mtime)
        total = 0
        keep: list[tuple[Path, int]] = []
        for p in files:
            st = p.stat()
            if now - st.st_mtime > self.settings.spool_retention_seconds:
                p.unlink(missing_ok=True)
            else:
                keep.append((p, st.st_size))
                total += st.st_size
        while keep and total > self.settings.spool_retention_max_bytes:
            p, size = keep.pop(0)
            p.unlink(missing_ok=True)
            total -= size
        self.stats.retained_bytes = total

    # ----------------------------------------------------------------- sending

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        last_scan = 0.0
        while not self._stopping:
            try:
                await self._ensure_connected()
                if time.monotonic() - last_scan > IDLE_POLL_S:
                    last_scan = time.monotonic()
                    await asyncio.to_thread(self._housekeeping)
                sent = await self._send_some()
                backoff = BACKOFF_MIN_S
                if sent:
                    self._acked.set()
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # broker gone, send failed: keep data, retry later
                self.stats.connected = False
                log.warning(
                    "spool send failed; will retry",
                    extra={"fields": {"spool": self.name, "error": str(e), "retry_s": backoff}},
                )
                await self._disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _housekeeping(self) -> None:
        self._adopt_orphans()
        self._prune_retained()

    async def _ensure_connected(self) -> None:
        now = time.monotonic()
        if self._producer is not None and now - self._last_check < CLUSTER_CHECK_S:
            return
        bootstrap = resolve_bootstrap(self.settings)
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(
                bootstrap_servers=bootstrap, request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000)
            )
            try:
                await asyncio.wait_for(self._admin.start(), CONNECT_TIMEOUT_S)
            except BaseException:
                admin, self._admin = self._admin, None
                await admin.close()
                raise
        desc = await asyncio.wait_for(self._admin.describe_cluster(), CONNECT_TIMEOUT_S)
        cluster_id = str(desc["cluster_id"])
        self._last_check = now
        if cluster_id != self._cluster_id:
            first = self._cluster_id is None
            await ensure_topics(self.settings, bootstrap)
            if not first:
                log.warning(
                    "new broker detected; replaying the retention window",
                    extra={"fields": {"old": self._cluster_id, "new": cluster_id}},
                )
                await asyncio.to_thread(self._replay_window)
            self._cluster_id = cluster_id
            self.stats.cluster_id = cluster_id
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
        if self._producer is None:
            info = await fetch_cluster_info(bootstrap)
            self._producer = AIOKafkaProducer(
                **producer_config(self.settings, bootstrap, use_idempotence(self.settings, info))
            )
            try:
                await asyncio.wait_for(self._producer.start(), CONNECT_TIMEOUT_S)
            except BaseException:
                producer, self._producer = self._producer, None
                await producer.stop()
                raise
        self.stats.connected = True

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    def _replay_window(self) -> None:
        """Re-send what a broker that forgot everything had acknowledged."""
        replayed = 0
        for seg in self._segments:
            replayed_bytes = seg.acked
            seg.acked = seg.read = 0
            seg.queue.clear()
            if replayed_bytes:
                seg.first_pending_at = time.monotonic()
        for path in sorted(self.dir.glob("seg-*.sent")):
            fd = _try_lock(path)
            if fd is None:
                continue
            live = path.with_suffix(".log")
            path.rename(live)  # back to pending; finishes as .sent again once acked
            size = os.fstat(fd).st_size
            seg = _Segment(path=live, fd=fd, own=False, size=size, closed=True)
            seg.first_pending_at = time.monotonic()
            self._segments.insert(0, seg)
            replayed += 1
        self.stats.replayed_records += replayed
        log.info("replaying retained segments", extra={"fields": {"segments": replayed}})

    def _fill_queue(self, seg: _Segment) -> None:
        if seg.read >= seg.size and not seg.closed:
            seg.size = max(seg.size, os.fstat(seg.fd).st_size)
        if seg.read >= seg.size:
            return
        if self.settings.spool_fsync == "batch":
            os.fsync(seg.fd)
        want = min(seg.size - seg.read, SEND_BATCH_BYTES)
        buf = os.pread(seg.fd, want, seg.read)
        final = seg.closed and not seg.own  # nobody will ever finish a torn tail
        decoded = decode_records(
            buf, base=seg.read, final=final and len(buf) == seg.size - seg.read
        )
        for offset, reason in decoded.corrupt:
            self.stats.corrupt_records += 1
            log.error(
                "corrupt spool record skipped",
                extra={"fields": {"segment": seg.path.name, "offset": offset, "reason": reason}},
            )
        seg.queue.extend(decoded.records)
        if not decoded.records and decoded.consumed > seg.read:
            # only corrupt bytes: count them as handled
            seg.acked = max(seg.acked, decoded.consumed)
        elif not decoded.records and want == SEND_BATCH_BYTES:
            raise SpoolError(f"spool record in {seg.path.name} larger than a send batch")
        seg.read = decoded.consumed

    async def _send_some(self) -> int:
        """Send one batch from the oldest segment with pending data; return records sent."""
        assert self._producer is not None
        for seg in list(self._segments):
            if not seg.queue:
                await asyncio.to_thread(self._fill_queue, seg)
            if not seg.queue:
                self._finish_if_done(seg)
                continue
            batch = seg.queue[:SEND_BATCH_RECORDS]
            futures = [await self._producer.send(r.topic, r.value, key=r.key) for r in batch]
            await asyncio.gather(*futures)
            del seg.queue[: len(batch)]
            # With the queue empty, corrupt bytes after the last record are done too.
            seg.acked = batch[-1].end if seg.queue else seg.read
            await asyncio.to_thread(seg.write_ack)
            seg.first_pending_at = time.monotonic() if seg.acked < seg.size else None
            self.stats.sent_records += len(batch)
            self._finish_if_done(seg)
            self._report_full()
            return len(batch)
        return 0

    def _report_full(self) -> None:
        """Once the broker is back, say how many appends the full spool refused."""
        if self._full_since and self.writer and self._active is not None:
            refused, self._full_since = self._full_since, 0
            with contextlib.suppress(SpoolError):
                self.append_event(
                    Event(
                        type="collector.spool_full",
                        spool=self.name,
                        refused=refused,
                        cap_bytes=self.settings.spool_max_bytes,
                    )
                )

    def snapshot(self) -> SpoolStats:
        self.stats.pending_bytes = self.pending_bytes()
        self.stats.pending_records = sum(len(s.queue) for s in self._segments)
        firsts = [s.first_pending_at for s in self._segments if s.first_pending_at]
        self.stats.oldest_pending_s = time.monotonic() - min(firsts) if firsts else None
        return self.stats


def spool_status(settings: Settings) -> list[dict[str, Any]]:
    """Pending and retained bytes per spool directory, read from disk (no broker)."""
    rows = []
    base = settings.spool_dir
    if not base.is_dir():
        return rows
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        pending = 0
        oldest: float | None = None
        for seg in d.glob("seg-*.log"):
            st = seg.stat()
            left = st.st_size - _Segment.read_ack(seg)
            if left > 0:
                pending += left
                oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
        retained = sum(p.stat().st_size for p in d.glob("seg-*.sent"))
        rows.append(
            {
                "spool": d.name,
                "pending_bytes": pending,
                "retained_bytes": retained,
                "oldest_pending_age_s": round(time.time() - oldest, 1) if oldest else None,
            }
        )
    return rows


async def drain_all(settings: Settings, *, follow: bool, idle_exit_s: float = 2.0) -> int:
    """Send what every spool directory holds that no live writer owns.

    With `follow`, keep watching (new directories, segments orphaned later) until
    cancelled; without, return once nothing is pending (or the broker stays away for
    `idle_exit_s` with nothing sent). Returns the records sent.
    """
    spools: dict[str, Spool] = {}
    try:
        while True:
            base = settings.spool_dir
            if base.is_dir():
                for d in base.iterdir():
                    if d.is_dir() and d.name not in spools:
                        sp = Spool(settings, d.name, writer=False)
                        await sp.start()
                        spools[d.name] = sp
            if not follow:
                await _until_drained_or_stuck(list(spools.values()), idle_exit_s)
                return sum(s.stats.sent_records for s in spools.values())
            await asyncio.sleep(IDLE_POLL_S)
    finally:
        for sp in spools.values():
            await sp.close(0)


async def _until_drained_or_stuck(spools: list[Spool], stuck_after_s: float) -> None:
    last_sent, last_progress = -1, time.monotonic()
    while any(s.pending_bytes() for s in spools):
        sent = sum(s.stats.sent_records for s in spools)
        if sent != last_sent:
            last_sent, last_progress = sent, time.monotonic()
        elif time.monotonic() - last_progress > stuck_after_s:
            return
        await asyncio.sleep(0.1)


__all__ = ["BrokerUnavailable", "Spool", "SpoolFull", "SpoolStats", "drain_all", "spool_status"]
