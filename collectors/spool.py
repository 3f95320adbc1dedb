"""The collector's durable outbox: append locally, send to Kafka, forget only what is safe.

Every collector (`auditcast rec`, the kube and SSH gateways) writes events and frame
batches here first, so a broker outage never costs a record:

- `append*` writes one checksummed record (`_spool_record`) to this process's own
  segment file with one `os.writev` (cheap enough for a PTY hot path) and wakes the
  sender. `spool_fsync`: `always` fsyncs each append, `batch` once per send batch (and
  every retry while the broker is away) in a worker thread, `never` leaves it to the OS.
- The sender task reads segments back (what is appended while it keeps up is handed
  over in memory, up to HANDOFF_MAX_BYTES), sends batches with acks=all, and moves a
  per-segment ack offset (the `.ack` sidecar) only after the broker acknowledged every
  record before it.
- Broker away: appends go on (up to `spool_max_bytes`, then `SpoolFull`, reported as a
  `collector.spool_full` event once the broker is back); the sender retries with capped
  backoff and drains when the broker returns.
- The embedded broker is memory-only, so acknowledged is not durable: fully-acked
  segments stay as `*.sent` for `spool_retention_seconds` (capped by
  `spool_retention_max_bytes`), and each sidecar names the cluster that acknowledged it.
  A sender that meets a different cluster (the embedded broker gets a fresh id on every
  start) or finds the topics gone re-creates the topics and replays that window. Stores
  dedupe by event id and (session_id, seq), so a replay is harmless.
- Several processes share a spool directory. Each writer appends to segments of its own
  and holds an exclusive `flock` on them; the next sender (a restarted collector, the
  drainer that `auditcast up` runs) adopts the segments of a writer that died.

- `spool_sender = "process"` (opt-in; default `inline`): the sender half runs in a
  child process, `spool_sender` (a `Spool` subclass there reads this process's
  segments back from the page cache with no flock, so it is never taken for an
  adopter; sends, writes the `.ack` sidecars, adopts, prunes and replays as the
  inline sender does). `spool_process.SenderLink`, on our side, spawns it, tells it
  the segment sizes at most every NOTIFY_DELAY_S, mirrors its progress reports and
  restarts it if it dies (it resumes from the sidecars); the child stops on EOF and
  dies with us (PR_SET_PDEATHSIG), so after a SIGKILL the drainer adopts our segments
  alone. `flush()`, `stats`, `wait_connected()`, the cap and `close()` read the
  mirrored progress, so they mean what they mean inline. Measured (2 cores, shared):
  it takes ~85 % of the sending CPU off the collector's process (keystroke echo p99
  better), but costs ~20 % more CPU in total (segments read back): hence not the
  `Spool` default. `auditcast rec`, where a terminal's echo is what matters, uses it
  unless told otherwise (its figures: collectors/pty/cli.py).

Files in `spool_dir/NAME/`: `seg-<writer>-<n>.log` (pending), `.sent` (retained),
`.ack` (sidecar of either: acked offset + cluster id).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from auditcast.aio import cancel_and_wait
from auditcast.collectors._spool_record import (
    MAX_RECORD_BYTES,
    SpoolRecord,
    decode_records,
    encode_head,
)
from auditcast.errors import BrokerUnavailable, SpoolError, SpoolFull
from auditcast.events import Event, Frame, Source, encode_frames
from auditcast.kafka import (
    CONNECT_TIMEOUT_S,
    MAX_REQUEST_BYTES,
    BatchSender,
    ensure_topics,
    resolve_bootstrap,
    start_producer,
)
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES, topic

if TYPE_CHECKING:
    from auditcast.collectors.spool_process import SenderLink

log = logging.getLogger(__name__)

# A segment rotates at this size, so acked data is released (and replayed) in pieces...
SEGMENT_MAX_BYTES: Final = 16 * 1024 * 1024
# ...or at this age, so a quiet gateway's replay after a broker restart covers about the
# retention window, not everything since the gateway started.
SEGMENT_MAX_AGE_S: Final = 60.0
# One send batch: large enough to amortise the round trip, small enough to bound memory.
SEND_BATCH_RECORDS: Final = 5000
SEND_BATCH_BYTES: Final = 8 * 1024 * 1024
assert SEND_BATCH_BYTES >= MAX_RECORD_BYTES  # a read always holds at least one record
# A record appended while the sender has read everything before it is also handed to
# the sender in memory, so it is not read back and checksummed again; up to this many
# bytes wait that way per segment, beyond that the sender reads them from the file.
HANDOFF_MAX_BYTES: Final = SEND_BATCH_BYTES
# A batch the broker neither acks nor fails in this time is retried on a new connection.
SEND_TIMEOUT_S: Final = 30.0
# Retry backoff while the broker is away: quick to notice its return, gentle on a
# broker that is down for long.
BACKOFF_MIN_S: Final = 0.2
BACKOFF_MAX_S: Final = 5.0
# How often an idle sender looks for orphaned segments and prunes retained ones.
IDLE_POLL_S: Final = 1.0
# An idle sender woken by an append waits this long before it reads and sends, so a
# burst that starts (a gateway's requests, one event each) goes out as one batch rather
# than as a fill, a produce, an ack write and a sync per record. 20 ms, not 2: a kube
# gateway answering one request every ~2.5 ms sent each event alone at 2 ms, ~200 µs of
# its CPU per request; at 20 ms (alternating bench_kube --only-http, two pairs) the
# recorded gateway took 706/702 µs per GET against 787/791, and served 0.68/0.70 of the
# direct rate against 0.63/0.63. What is appended is durable at once; only delivery to
# the broker waits up to 20 ms more.
SEND_LINGER_S: Final = 0.02
# The cluster id and topics are re-checked before a send at most this often: a broker
# restarted between two checks must be caught before much is sent to it unnoticed.
CLUSTER_CHECK_S: Final = 0.5
# A half-created segment (its writer died between create and rename) older than this
# is litter.
TMP_LITTER_S: Final = 60.0
# Building a send batch gives the event loop back this often (bytes of record values).
YIELD_BYTES: Final = 256 * 1024
_ACK = struct.Struct(">Q")
_PARTITIONER: Final = DefaultPartitioner()


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
    path: Path  # always the `.log` name while this process holds it
    fd: int  # O_RDWR, holding the flock
    own: bool  # this process appends to it (else adopted or replayed)
    size: int = 0
    acked: int = 0  # offset up to which the broker `cluster` acknowledged
    read: int = 0  # offset up to which records were read into `queue`
    cluster: str | None = None
    records: int = 0  # records in the segment (as far as known)
    acked_records: int = 0
    closed: bool = False  # no more appends will come
    replayed: bool = False
    synced: int = 0  # offset up to which it was fsynced
    created: float = field(default_factory=time.monotonic)
    pending_since: float | None = None
    queue: list[SpoolRecord] = field(default_factory=list)
    queued_bytes: int = 0  # segment bytes the records in `queue` span
    filling: bool = False  # a worker thread is reading it into `queue`

    @property
    def pending(self) -> bool:
        return self.acked < self.size


# ---------------------------------------------------------------- files and locks


def _ack_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(".ack")


def _write_ack(seg_path: Path, acked: int, cluster: str | None) -> None:
    with open(_ack_path(seg_path), "wb") as f:
        f.write(_ACK.pack(acked) + (cluster or "").encode())


def _read_ack(seg_path: Path) -> tuple[int, str | None]:
    """(acked offset, cluster id); a missing or damaged sidecar means nothing acked."""
    try:
        data = _ack_path(seg_path).read_bytes()
    except OSError:
        return 0, None
    if len(data) < _ACK.size:
        return 0, None
    try:
        cluster = data[_ACK.size :].decode() or None
    except UnicodeDecodeError:
        return 0, None
    return int(_ACK.unpack_from(data)[0]), cluster


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive flock on `path`, or None if another process has it.

    The name is re-checked after locking: the holder may have renamed the file (to
    `.sent`) and let go of it between our open and our flock.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise OSError("renamed while locking")
    except OSError:
        os.close(fd)
        return None
    return fd


def _count_records(fd: int, start: int, end: int) -> tuple[int, int]:
    """(records, corrupt stretches) in `fd` between two offsets, read in chunks."""
    records = corrupt = 0
    pos = start
    while pos < end:
        buf = os.pread(fd, min(end - pos, SEND_BATCH_BYTES), pos)
        if not buf:
            break
        d = decode_records(buf, base=pos, final=pos + len(buf) >= end)
        records += len(d.records)
        corrupt += len(d.corrupt)
        if d.consumed <= pos:
            break
        pos = d.consumed
    return records, corrupt


def _open_held(path: Path, own: bool, *, replayed: bool = False) -> _Segment | None:
    """Lock a `.log` segment left by someone else and describe it, or None if held."""
    fd = _try_lock(path)
    if fd is None:
        return None
    size = os.fstat(fd).st_size
    acked, cluster = _read_ack(path)
    acked = min(acked, size)
    total, _ = _count_records(fd, 0, size)
    before, _ = _count_records(fd, 0, acked) if acked else (0, 0)
    return _Segment(
        path=path,
        fd=fd,
        own=own,
        size=size,
        acked=acked,
        read=acked,
        cluster=cluster,
        records=total,
        acked_records=before,
        closed=True,
        replayed=replayed,
        synced=size,
        pending_since=time.monotonic() if acked < size else None,
    )


class Spool:
    """The spool directory `settings.spool_dir / name`, as writer and sender.

    `writer=False` makes a sender only (the drainer): it adopts and sends what dead
    writers left, and never appends.
    """

    def __init__(self, settings: Settings, name: str, *, writer: bool = True) -> None:
        self.settings = settings
        self.name = name
        self.dir = settings.spool_dir / name
        self.writer = writer
        # Writer ids sort by start time, so replay and adoption keep each key's order.
        self._id = f"{time.time_ns() // 1_000_000:013d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._n = 0
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._stats = SpoolStats()
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._tried = asyncio.Event()  # the sender's first connection attempt is over
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._cluster_id: str | None = None
        self._last_check = 0.0
        self._unreported_refusals = 0
        self._away_since: float | None = None
        self._topics = [topic(settings, EVENTS_RAW), topic(settings, SESSION_FRAMES)]
        # One packer for the frame batches: packb would allocate its buffer per batch.
        self._packer = msgpack.Packer(use_bin_type=True)
        # `spool_sender = "process"`: a child process sends (`spool_process`); this
        # process appends and mirrors the child's progress.
        self._link: SenderLink | None = None
        if writer and settings.spool_sender == "process":
            from auditcast.collectors.spool_process import SenderLink

            self._link = SenderLink(self)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the spool, take over what dead writers left, and start the sender.

        Returns at once: the sender connects in the background, appends never wait.
        """
        if self._task is not None:
            raise SpoolError(f"spool {self.name} is already started")
        if self._link is not None:
            try:
                self._task = await self._link.start()
            except OSError as e:
                raise SpoolError(
                    f"cannot open spool {self.dir}: {e}",
                    hint="check that AUDITCAST_HOME is writable and has free space",
                ) from None
            return
        try:
            adopted = await asyncio.to_thread(self._open_dir)
            self._segments.extend(adopted)
            if self.writer:
                self._rotate()
        except OSError as e:
            raise SpoolError(
                f"cannot open spool {self.dir}: {e}",
                hint="check that AUDITCAST_HOME is writable and has free space",
            ) from None
        self._sort()
        self._task = asyncio.create_task(self._run(), name=f"spool-{self.name}")

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the sender's first attempt to reach the broker to
        end; whether it is connected. A refused connection ends the wait at once.

        A recorder calls this before it starts the session, so the connection set-up
        (bootstrap, metadata, producer id: ms of work on the shared event loop) is done
        before the user types rather than while they type.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), timeout)
        return self._stats.connected

    async def close(self, drain_timeout: float = 5.0) -> bool:
        """Deliver what is pending for up to `drain_timeout` s, then stop.

        Returns whether everything was delivered. What was not stays on disk for the
        next sender (this collector restarted, or the drainer of `auditcast up`).
        """
        delivered = await self.flush(drain_timeout) if drain_timeout > 0 else not self.pending
        task, self._task = self._task, None
        if self._link is not None:
            self._active = None  # no more appends
            await self._link.stop(task)
        await cancel_and_wait(task)
        await self._disconnect()
        segments, self._segments, self._active = self._segments, [], None
        await asyncio.to_thread(self._release, segments)
        return delivered

    def _release(self, segments: list[_Segment]) -> None:
        for seg in segments:
            seg.closed = True
            if self.settings.spool_fsync != "never" and seg.own and seg.synced < seg.size:
                with contextlib.suppress(OSError):
                    os.fsync(seg.fd)
            self._finish_if_done(seg)
            if seg.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)

    def _progress(self) -> None:
        """The sender made progress or changed state (the sender process reports it)."""

    # ----------------------------------------------------------------- appends

    def append(self, topic_name: str, key: bytes, value: bytes) -> None:
        """Append one record for `topic_name` (unprefixed, e.g. EVENTS_RAW).

        Raises SpoolFull when `spool_max_bytes` are waiting for the broker, SpoolError
        for a record Kafka would refuse or a failed disk write.
        """
        self._append(topic(self.settings, topic_name), key, value, check_cap=True)

    def append_event(self, event: Event) -> None:
        self.append(EVENTS_RAW, event.key, event.to_json())

    def append_frames(self, session_id: str, frames: Sequence[Frame]) -> None:
        """One frame batch, one Kafka message on session.frames keyed by the session."""
        if frames:
            self.append(SESSION_FRAMES, session_id.encode(), encode_frames(frames))

    def append_frame_records(self, session_id: str, records: Sequence[dict[str, Any]]) -> None:
        """`append_frames` for records already in `Frame.to_record()` shape (the
        recorder's hot path skips building models); the same bytes on the wire."""
        if records:
            value = self._packer.pack(records)
            self.append(SESSION_FRAMES, session_id.encode(), value)

    def append_packed_frames(self, session_id: str, value: bytes) -> None:
        """`append_frames` for a batch already packed as `encode_frames` packs it (a
        msgpack array of frame-record maps: `SessionRecorder` packs frames as they come)."""
        self.append(SESSION_FRAMES, session_id.encode(), value)

    def _append(self, full_topic: str, key: bytes, value: bytes, *, check_cap: bool) -> None:
        seg = self._active
        if seg is None:
            raise SpoolError(f"spool {self.name} is not open for writing (call start() first)")
        head = encode_head(full_topic, key, value)
        size = len(head) + len(value)
        if size > MAX_REQUEST_BYTES:
            raise SpoolError(
                f"record of {size} bytes for {full_topic} exceeds the "
                f"{MAX_REQUEST_BYTES}-byte Kafka message limit"
            )
        if check_cap:
            pending = self.pending_bytes()
            if pending + size > self.settings.spool_max_bytes:
                self._refuse(pending, full_topic)
        if seg.size > 0 and seg.size + size > SEGMENT_MAX_BYTES:
            try:
                seg = self._rotate()
            except OSError as e:
                raise SpoolError(f"cannot start a new spool segment in {self.dir}: {e}") from None
        try:
            written = os.writev(seg.fd, (head, value))  # one append: O_APPEND, one call
            if written != size:
                raise OSError(f"short write ({written} of {size} bytes)")
            if self.settings.spool_fsync == "always":
                os.fsync(seg.fd)
                seg.synced = seg.size + size
        except OSError as e:
            with contextlib.suppress(OSError):  # never leave half a record behind
                os.ftruncate(seg.fd, seg.size)
            raise SpoolError(f"cannot write to spool {seg.path}: {e}") from None
        end = seg.size + size
        if self._link is not None:
            seg.size = end
            seg.records += 1
            if seg.pending_since is None:
                seg.pending_since = time.monotonic()
            self._link.schedule_notify()
            return
        if (
            not seg.filling
            and seg.read == seg.size
            and seg.queued_bytes + size <= HANDOFF_MAX_BYTES
        ):
            # The sender has everything before this record: hand it over as it is.
            seg.queue.append(SpoolRecord(full_topic, key, value, end))
            seg.queued_bytes += size
            seg.read = end
        seg.size = end
        seg.records += 1
        if seg.pending_since is None:
            seg.pending_since = time.monotonic()
        self._wake.set()

    def _refuse(self, pending: int, full_topic: str) -> None:
        self._stats.full_refusals += 1
        self._unreported_refusals += 1
        if self._unreported_refusals == 1:
            log.error(
                "spool full: refusing records until the broker takes some",
                extra={"fields": {"spool": self.name, "pending_bytes": pending}},
            )
        raise SpoolFull(
            f"spool {self.dir} is full: {pending} bytes wait for the broker "
            f"(cap {self.settings.spool_max_bytes} bytes); a record for {full_topic} was refused"
        )

    # ----------------------------------------------------------------- state

    @property
    def sender_pid(self) -> int | None:
        """The sender process's pid (`spool_sender = "process"`), None inline."""
        return self._link.pid if self._link is not None else None

    def _all(self) -> list[_Segment]:
        """Every segment in line: ours, plus those the sender process adopted."""
        remote = self._link.remote if self._link is not None else None
        return [*self._segments, *remote.values()] if remote else self._segments

    def pending_bytes(self) -> int:
        return sum(s.size - s.acked for s in self._all())

    @property
    def pending(self) -> bool:
        return any(s.pending for s in self._all())

    @property
    def stats(self) -> SpoolStats:
        """A snapshot: counters since start plus what is pending right now."""
        now = time.monotonic()
        segments = self._all()
        firsts = [s.pending_since for s in segments if s.pending and s.pending_since]
        return replace(
            self._stats,
            pending_bytes=self.pending_bytes(),
            pending_records=sum(max(s.records - s.acked_records, 0) for s in segments),
            oldest_pending_s=round(now - min(firsts), 3) if firsts else None,
        )

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything appended so far is acknowledged by the current broker.

        Also waits for what a replay (new broker) put back in line. False on timeout.
        """
        deadline = time.monotonic() + timeout
        # The sender process reports what it adopted first: that is in line too.
        while self._link is not None and not self._link.reported:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(left, 0.25))
        targets = {s.path.name: s.size for s in self._all()}
        while True:
            if all(
                s.acked >= targets.get(s.path.name, s.size if s.replayed else 0)
                for s in self._all()
            ):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._acked.clear()
            if self._link is not None:
                self._link.schedule_notify(now=True)
            else:
                self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(left, 0.25))

    # ----------------------------------------------------------------- segments

    def _sort(self) -> None:
        self._segments.sort(key=lambda s: s.path.name)

    def _rotate(self) -> _Segment:
        """Start a new own segment. Created under a temporary name and renamed once
        locked, so no sender can mistake it for a dead writer's."""
        self._n += 1
        # The creation time closes the name: `spool status` reads pending ages from it.
        created_ms = time.time_ns() // 1_000_000
        path = self.dir / f"seg-{self._id}-{self._n:06d}-{created_ms:013d}.log"
        tmp = self.dir / f"tmp-{path.name}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        if self._active is not None:  # only now: a failed rotation keeps the old one open
            self._active.closed = True
        seg = _Segment(path=path, fd=fd, own=True)
        self._segments.append(seg)
        self._active = seg
        return seg

    def _open_dir(self) -> list[_Segment]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = self._find_orphans()
        self._prune_retained()
        return found

    def _find_orphans(self) -> list[_Segment]:
        """Lock and describe pending segments whose writer is gone (flock free)."""
        known = {s.path for s in self._segments}
        found: list[_Segment] = []
        for path in sorted(self.dir.glob("seg-*.log")):
            if path in known:
                continue
            seg = _open_held(path, own=False)
            if seg is None:
                continue
            if seg.acked and self._cluster_id and seg.cluster != self._cluster_id:
                self._reset(seg)  # acked by a broker that is gone
            log.info(
                "adopted spool segment of a writer that is gone",
                extra={
                    "fields": {
                        "spool": self.name,
                        "segment": path.name,
                        "pending_bytes": seg.size - seg.acked,
                    }
                },
            )
            found.append(seg)
        now = time.time()
        for tmp in self.dir.glob("tmp-seg-*.log"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > TMP_LITTER_S and (fd := _try_lock(tmp)) is not None:
                    tmp.unlink()
                    os.close(fd)
        return found

    def _finish_if_done(self, seg: _Segment) -> bool:
        """A closed, fully-acked segment becomes retained history (`.sent`)."""
        if not seg.closed or seg.pending or seg.fd < 0:
            return False
        with contextlib.suppress(OSError):
            if seg.size == 0:
                seg.path.unlink()
                _ack_path(seg.path).unlink(missing_ok=True)
            else:
                _write_ack(seg.path, seg.acked, seg.cluster)
                sent = seg.path.with_suffix(".sent")
                seg.path.rename(sent)
                os.utime(sent)  # the retention window runs from the last acknowledgement
        with contextlib.suppress(OSError):
            os.close(seg.fd)
        seg.fd = -1
        return True

    def _prune_retained(self) -> None:
        """Drop retained history past the window or over the size cap, oldest first."""
        now = time.time()
        kept: list[tuple[float, Path, int]] = []
        for p in self.dir.glob("seg-*.sent"):
            with contextlib.suppress(OSError):
                st = p.stat()
                kept.append((st.st_mtime, p, st.st_size))
        kept.sort()
        total = sum(size for _, _, size in kept)
        for mtime, p, size in kept:
            expired = now - mtime > self.settings.spool_retention_seconds
            if not expired and total <= self.settings.spool_retention_max_bytes:
                break
            fd = _try_lock(p)
            if fd is None:  # another sender is replaying it right now
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                _ack_path(p).unlink(missing_ok=True)
            os.close(fd)
            total -= size
        self._stats.retained_bytes = max(total, 0)

    def _reset(self, seg: _Segment) -> None:
        """Send the segment again from its start: its broker forgot it."""
        self._stats.replayed_records += seg.acked_records
        seg.acked = seg.read = seg.acked_records = seg.queued_bytes = 0
        seg.queue.clear()
        seg.replayed = True
        seg.pending_since = time.monotonic()

    def _collect_retained(self, cluster_id: str, force: bool) -> list[_Segment]:
        """Put back in line the `.sent` segments another broker (or a lost topic) took."""
        back: list[_Segment] = []
        for sent in sorted(self.dir.glob("seg-*.sent")):
            fd = _try_lock(sent)
            if fd is None:
                continue
            _, cluster = _read_ack(sent)
            if cluster == cluster_id and not force:
                os.close(fd)
                continue
            live = sent.with_suffix(".log")
            try:
                sent.rename(live)  # pending again; back to `.sent` once acked
            except OSError:
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            total, _ = _count_records(fd, 0, size)
            _write_ack(live, 0, None)
            back.append(
                _Segment(
                    path=live,
                    fd=fd,
                    own=False,
                    size=size,
                    records=total,
                    closed=True,
                    replayed=True,
                    synced=size,
                    pending_since=time.monotonic(),
                )
            )
        return back

    # ----------------------------------------------------------------- sending

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        last_housekeeping = time.monotonic()
        while True:
            try:
                now = time.monotonic()
                if now - last_housekeeping >= IDLE_POLL_S:
                    last_housekeeping = now
                    await self._housekeeping()
                await self._sync()
                try:
                    await self._check_broker()
                finally:
                    self._tried.set()
                    self._progress()
                sent = await self._send_some()
                if self._away_since is not None:
                    log.info(
                        "broker reachable again; draining the spool",
                        extra={"fields": {"spool": self.name, "pending": self.pending_bytes()}},
                    )
                    self._away_since = None
                backoff = BACKOFF_MIN_S
                if sent:
                    self._acked.set()
                    self._progress()
                    continue
                self._acked.set()  # nothing left: let flush() re-check now
                self._progress()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
                else:
                    await asyncio.sleep(SEND_LINGER_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # broker gone, send failed: keep the data, retry later
                self._stats.connected = False
                self._progress()
                first = self._away_since is None
                if first:
                    self._away_since = time.monotonic()
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "spool cannot reach the broker; records stay on disk and are retried",
                    extra={"fields": {"spool": self.name, "error": str(e), "retry_s": backoff}},
                )
                await self._disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _housekeeping(self) -> None:
        seg = self._active
        if seg is not None and seg.size > 0 and time.monotonic() - seg.created > SEGMENT_MAX_AGE_S:
            self._rotate()
        found = await asyncio.to_thread(self._find_orphans)
        if found:
            self._segments.extend(found)
            self._sort()
        await asyncio.to_thread(self._prune_retained)
        for s in [s for s in self._segments if s.closed and not s.pending]:
            if self._finish_if_done(s):
                self._segments.remove(s)

    async def _sync(self) -> None:
        """`batch` fsync policy: what was appended reaches the disk once per batch."""
        if self.settings.spool_fsync != "batch":
            return
        dirty = [(s, s.size) for s in self._segments if s.own and s.fd >= 0 and s.synced < s.size]
        if not dirty:
            return

        def sync() -> None:
            for s, size in dirty:
                with contextlib.suppress(OSError):
                    os.fsync(s.fd)
                    s.synced = max(s.synced, size)

        await asyncio.to_thread(sync)

    async def _check_broker(self) -> None:
        """Connect, and notice a new broker (cluster id changed or topics gone)."""
        now = time.monotonic()
        if self._producer is not None and now - self._last_check < CLUSTER_CHECK_S:
            return
        bootstrap = resolve_bootstrap(self.settings)
        if self._admin is None:
            # One long-lived admin client: a check every CLUSTER_CHECK_S through a new
            # connection each time (auditcast.kafka.cluster_info) would churn the broker.
            admin = AIOKafkaAdminClient(
                bootstrap_servers=bootstrap, request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000)
            )
            try:
                await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        desc = await asyncio.wait_for(self._admin.describe_cluster(), CONNECT_TIMEOUT_S)
        cluster_id = str(desc["cluster_id"])
        existing = set(await asyncio.wait_for(self._admin.list_topics(), CONNECT_TIMEOUT_S))
        missing = [t for t in self._topics if t not in existing]
        self._last_check = now
        if cluster_id != self._cluster_id or missing:
            if missing:
                await ensure_topics(self.settings, bootstrap)
            await self._replay(cluster_id, force=bool(missing))
            if self._producer is not None:  # a new broker: start from fresh metadata
                producer, self._producer = self._producer, None
                with contextlib.suppress(Exception):
                    await producer.stop()
        if self._producer is None:
            producer = await start_producer(self.settings, bootstrap)
            try:  # the topics' metadata now, not at the first send (a fetch per topic)
                for t in self._topics:
                    await asyncio.wait_for(producer.partitions_for(t), CONNECT_TIMEOUT_S)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        self._stats.connected = True
        self._stats.cluster_id = cluster_id

    async def _replay(self, cluster_id: str, force: bool) -> None:
        """Resend whatever a different broker (or a lost topic) acknowledged."""
        old, self._cluster_id = self._cluster_id, cluster_id
        stale = [s for s in self._segments if s.acked and (force or s.cluster != cluster_id)]
        for seg in stale:
            self._reset(seg)
        back = await asyncio.to_thread(self._collect_retained, cluster_id, force)
        self._segments.extend(back)
        self._sort()
        replayed = sum(s.records for s in back) + sum(s.records for s in stale)
        self._stats.replayed_records += sum(s.records for s in back)
        if stale or back or old is not None:
            log.warning(
                "new broker: replaying the retention window",
                extra={
                    "fields": {
                        "spool": self.name,
                        "old_cluster": old,
                        "cluster": cluster_id,
                        "topics_recreated": force,
                        "segments": len(stale) + len(back),
                        "records": replayed,
                    }
                },
            )

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    def _fill_queue(self, seg: _Segment) -> None:
        """Read the next records of `seg` (worker thread)."""
        size = seg.size  # appends land whole, so everything below `size` is complete
        if seg.read >= size:
            return
        buf = os.pread(seg.fd, min(size - seg.read, SEND_BATCH_BYTES), seg.read)
        decoded = decode_records(buf, base=seg.read, final=seg.read + len(buf) >= size)
        for bad in decoded.corrupt:
            self._stats.corrupt_records += 1
            log.error(
                "corrupt spool bytes skipped",
                extra={
                    "fields": {
                        "spool": self.name,
                        "segment": seg.path.name,
                        "offset": bad.offset,
                        "length": bad.length,
                        "reason": bad.reason,
                    }
                },
            )
        seg.queue.extend(decoded.records)
        seg.queued_bytes += decoded.consumed - seg.read
        seg.read = decoded.consumed

    async def _send_some(self) -> int:
        """Send one batch from the first segment with pending data; the records sent."""
        assert self._producer is not None
        for seg in list(self._segments):
            if not seg.queue and seg.read < seg.size:
                seg.filling = True  # appends meanwhile stay on disk for the next read
                try:
                    await asyncio.to_thread(self._fill_queue, seg)
                finally:
                    seg.filling = False
            if not seg.queue:
                if seg.acked < seg.read:  # only corrupt bytes were left
                    acked = seg.read
                    await asyncio.to_thread(_write_ack, seg.path, acked, self._cluster_id)
                    seg.acked = acked
                if self._finish_if_done(seg):
                    self._segments.remove(seg)
                continue
            batch = seg.queue[:SEND_BATCH_RECORDS]
            futures = await self._produce(batch)
            await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_S)
            del seg.queue[: len(batch)]
            # With the queue empty, corrupt bytes after the last record are done too.
            acked = batch[-1].end if seg.queue else seg.read
            # The sidecar first; then offsets and counters move together with no await
            # between them, so flush() never sees the records acked but not yet counted.
            await asyncio.to_thread(_write_ack, seg.path, acked, self._cluster_id)
            seg.acked = acked
            seg.queued_bytes = seg.read - seg.acked
            seg.acked_records += len(batch)
            seg.cluster = self._cluster_id
            seg.pending_since = time.monotonic() if seg.pending else None
            self._stats.sent_records += len(batch)
            if self._finish_if_done(seg):
                self._segments.remove(seg)
            self._report_full()
            return len(batch)
        return 0

    async def _produce(self, batch: list[SpoolRecord]) -> list[asyncio.Future[Any]]:
        """Queue `batch` on the producer as record batches, one open batch per
        partition, in order; the futures of the batches.

        A `send` per record would hash its key and queue it alone (profiled: about as
        much CPU per 32 KiB frame record as writing it to the spool). The partition is
        the one the producer's default partitioner gives the key, so each key lands
        where a `send` (and every other producer of that topic) puts it.

        Every YIELD_BYTES of values it lets the event loop run: the recorder's byte
        pump shares the loop, and a keystroke must not wait for a whole 8 MiB batch.
        """
        producer = self._producer
        assert producer is not None
        out = BatchSender(producer)
        partition_of: dict[tuple[str, bytes], int] = {}
        since_yield = 0
        for r in batch:
            since_yield += len(r.value)
            if since_yield >= YIELD_BYTES:
                since_yield = 0
                await asyncio.sleep(0)
            p = partition_of.get((r.topic, r.key))
            if p is None:
                parts = sorted(await producer.partitions_for(r.topic))
                p = partition_of[(r.topic, r.key)] = _PARTITIONER(r.key, parts, parts)
            try:
                await out.add(r.topic, p, r.key, r.value)
            except ValueError as e:
                raise SpoolError(str(e)) from None
        return await out.send()

    def _report_full(self) -> None:
        """Once the broker takes records again, say how many the full spool refused."""
        if not self._unreported_refusals or self._active is None:
            return
        event = Event.model_validate(
            {
                "type": "collector.spool_full",
                "source": Source(collector=self.name, instance=self._id),
                "spool": self.name,
                "refused": self._unreported_refusals,
                "cap_bytes": self.settings.spool_max_bytes,
            }
        )
        try:
            # Over the cap on purpose: the alert is small and must not be refused too.
            self._append(
                topic(self.settings, EVENTS_RAW), event.key, event.to_json(), check_cap=False
            )
        except SpoolError as e:
            log.error("spool_full event not spooled: %s", e)
            return
        self._unreported_refusals = 0


# ---------------------------------------------------------------- drain and status


def _created_at(path: Path, fallback: float) -> float:
    """When a segment was created (epoch s), from its name; its oldest record is no older."""
    try:
        return int(path.stem.rsplit("-", 1)[1]) / 1000
    except (IndexError, ValueError):
        return fallback


def spool_status(settings: Settings) -> list[dict[str, Any]]:
    """Per spool directory, read from disk (no broker): what waits and what is kept.

    `held_bytes` are pending bytes of segments a live process holds (it sends them
    itself); the rest waits for a sender to adopt it.
    """
    rows: list[dict[str, Any]] = []
    base = settings.spool_dir
    if not base.is_dir():
        return rows
    now = time.time()
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        pending = records = held = retained = 0
        oldest: float | None = None
        for path in d.glob("seg-*.log"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                acked = min(_read_ack(path)[0], st.st_size)
                if st.st_size <= acked:
                    continue
                pending += st.st_size - acked
                records += _count_records(fd, acked, st.st_size)[0]
                born = _created_at(path, st.st_mtime)
                oldest = born if oldest is None else min(oldest, born)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    held += st.st_size - acked
            finally:
                os.close(fd)
        sent = list(d.glob("seg-*.sent"))
        for p in sent:
            with contextlib.suppress(OSError):
                retained += p.stat().st_size
        rows.append(
            {
                "spool": d.name,
                "pending_records": records,
                "pending_bytes": pending,
                "held_bytes": held,
                "retained_bytes": retained,
                "retained_segments": len(sent),
                "oldest_pending_age_s": round(now - oldest, 1) if oldest is not None else None,
            }
        )
    return rows


async def drain_all(settings: Settings, *, follow: bool, idle_exit_s: float = 10.0) -> int:
    """Send what every spool directory holds that no live writer owns.

    With `follow` (the `auditcast up` service), keep watching for new directories and
    for segments orphaned later, until cancelled. Without, return once nothing adopted
    is pending, or once nothing was sent for `idle_exit_s` (broker away). Returns the
    records sent.
    """
    spools: dict[str, Spool] = {}
    try:
        while True:
            base = settings.spool_dir
            if base.is_dir():
                for d in sorted(base.iterdir()):
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
    while any(s.pending or not s.stats.connected for s in spools):
        sent = sum(s.stats.sent_records for s in spools)
        if sent != last_sent:
            last_sent, last_progress = sent, time.monotonic()
        elif time.monotonic() - last_progress > stuck_after_s:
            return
        await asyncio.sleep(0.1)


__all__ = [
    "BrokerUnavailable",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "SpoolStats",
    "drain_all",
    "spool_status",
]
