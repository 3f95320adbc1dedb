"""The lock view gateways use: a local, always-current copy of the `locks` topic.

`LockView` follows the compacted `locks` topic from the beginning (no consumer group:
every process sees every lock), keeps the active locks in a `LockIndex`, and answers
`check(subject)` from memory in microseconds. Listeners hear about every new lock so a
gateway can end the live sessions it matches.

Staleness: every `POLL_INTERVAL_S` the view asks the broker for the end offsets; when
its position has reached them it records `last_synced`. A view whose `last_synced` is
older than `settings.lock_stale_after` is `stale`; in strict mode (the settings'
`lock_mode`, the caller's, or any active lock created with `mode=strict`) a check on a
stale view raises `Locked` — it fails closed rather than guessing.

Broker restarts: the embedded broker keeps topics in memory only, so a restart comes
back empty under a new cluster id. The view notices the new id, re-reads the topic
from the beginning, and keeps the locks it knew for `REPUBLISH_GRACE_S` while the lock
authority (the API process, `access.lock_authority`) republishes its active locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from auditcast.access.lock_model import Lock, LockIndex, LockMode, LockSubject, decode_lock
from auditcast.aio import cancel_and_wait
from auditcast.errors import BrokerUnavailable, Locked, MalformedMessage
from auditcast.kafka import consumer_config, resolve_bootstrap
from auditcast.settings import Settings
from auditcast.topics import LOCKS, topic

log = logging.getLogger(__name__)

# How often the view confirms it has caught up with the broker (and notices a restart).
POLL_INTERVAL_S: Final = 1.0
# Tansu answers an idle fetch only when its max-wait runs out, so this bounds how late a
# new lock is seen (measured: 500 ms -> p50 135 ms; 50 ms -> p50 3 ms). 20 idle
# fetches a second per process is cheap.
FETCH_MAX_WAIT_MS: Final = 50
# A broker request the view makes must finish in this time, or the broker is "away".
REQUEST_TIMEOUT_S: Final = 3.0
# After a broker restart the lock authority republishes within a second or two; until
# then the view keeps the locks it knew, so a lock never blinks out.
REPUBLISH_GRACE_S: Final = 15.0
# Bounded queues for subscribers: a gateway that stops reading loses the oldest news,
# never blocks the view.
SUBSCRIBER_QUEUE_SIZE: Final = 1024
RECONNECT_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0)

LockListener = Callable[[Lock], None]


class _ClusterChanged(Exception):
    pass


class LockView:
    """A process-local view of the `locks` topic. Owned by one event loop."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None = None,
        *,
        stale_after: float | None = None,
        mode: LockMode | None = None,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self._bootstrap = bootstrap
        self.stale_after = settings.lock_stale_after if stale_after is None else stale_after
        self.mode: LockMode = mode or settings.lock_mode
        self.poll_interval = poll_interval
        self.topic = topic(settings, LOCKS)
        self.cluster_id: str | None = None
        # monotonic clock for staleness (wall time can jump), wall clock for reporting
        self._synced_mono: float | None = None
        self.last_synced: datetime | None = None
        self._index = LockIndex()
        # locks known before a broker restart, kept until the grace window ends
        self._carryover = LockIndex()
        self._carryover_until = 0.0
        self._seen: set[tuple[str, datetime]] = set()
        self._listeners: list[LockListener] = []
        self._queues: list[asyncio.Queue[Lock]] = []
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self.dropped_notifications = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, wait: float | None = 10.0) -> LockView:
        """Start following the topic; wait up to `wait` s for the first full read."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lock-view")
        if wait:
            try:
                await asyncio.wait_for(self._synced.wait(), wait)
            except TimeoutError:
                raise BrokerUnavailable(
                    f"lock view could not read {self.topic} within {wait:.0f}s"
                ) from None
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._disconnect()

    async def __aenter__(self) -> LockView:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- queries ----------------------------------------------------------------------

    @property
    def stale(self) -> bool:
        if self._synced_mono is None:
            return True
        return time.monotonic() - self._synced_mono > self.stale_after

    def locks(self, now: datetime | None = None) -> list[Lock]:
        """The locks in force now, oldest first."""
        now = now or datetime.now(UTC)
        merged = {lk.name: lk for lk in self._carry(now).active(now)}
        merged.update({lk.name: lk for lk in self._index.active(now)})
        return sorted(merged.values(), key=lambda lk: lk.created)

    def check(
        self, subject: LockSubject, *, mode: LockMode | None = None, now: datetime | None = None
    ) -> Lock | None:
        """The lock that applies to `subject`, or None.

        Raises `Locked` when the view is stale and strict mode applies. Expired locks
        never match, whether or not their tombstone has arrived yet.
        """
        now = now or datetime.now(UTC)
        lock = self._index.match(subject, now)
        if lock is None and self._carryover.locks:
            lock = self._carry(now).match(subject, now)
        if lock is None and self.stale and self._strict(mode, now):
            age = (
                "never synced"
                if self._synced_mono is None
                else f"last synced {time.monotonic() - self._synced_mono:.0f}s ago"
            )
            raise Locked(
                f"lock view is stale ({age}) and strict mode refuses access",
                lock_name="",
                hint="the gateway cannot reach the broker; restore it or ask an administrator",
            )
        return lock

    def enforce(self, subject: LockSubject, *, mode: LockMode | None = None) -> None:
        """`check`, raising `Locked` with the lock's message when one applies."""
        lock = self.check(subject, mode=mode)
        if lock is not None:
            raise Locked(
                f"access locked by {lock.name} ({lock.targets.describe()})"
                + (f": {lock.message}" if lock.message else ""),
                lock_name=lock.name,
            )

    def _strict(self, mode: LockMode | None, now: datetime) -> bool:
        return (
            (mode or self.mode) == "strict"
            or self._index.any_strict(now)
            or self._carry(now).any_strict(now)
        )

    def _carry(self, now: datetime) -> LockIndex:
        if self._carryover.locks and time.monotonic() > self._carryover_until:
            self._carryover = LockIndex()
        return self._carryover

    # -- notifications ----------------------------------------------------------------

    def subscribe(self, maxsize: int = SUBSCRIBER_QUEUE_SIZE) -> asyncio.Queue[Lock]:
        """A bounded queue that receives every new lock (oldest dropped when full)."""
        q: asyncio.Queue[Lock] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Lock]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(q)

    def add_listener(self, listener: LockListener) -> Callable[[], None]:
        """Call `listener(lock)` on every new lock; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, lock: Lock) -> None:
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                self.dropped_notifications += 1
            q.put_nowait(lock)
        for listener in list(self._listeners):
            try:
                listener(lock)
            except Exception:
                log.exception("lock listener failed", extra={"fields": {"lock": lock.name}})

    # -- applying records -------------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic: a lock, or a tombstone for its name."""
        if key is None:
            log.warning("lock record without a key ignored", extra={"topic": self.topic})
            return
        name = key.decode(errors="replace")
        if value is None:
            for index in (self._index, self._carryover):
                gone = index.remove(name)
                if gone is not None:
                    self._seen.discard((gone.name, gone.created))
            return
        try:
            lock = decode_lock(value)
        except MalformedMessage as e:
            log.warning("malformed lock record ignored: %s", e, extra={"topic": self.topic})
            return
        self._index.put(lock)
        ident = (lock.name, lock.created)
        if ident not in self._seen:
            self._seen.add(ident)
            if not lock.expired(datetime.now(UTC)):
                self._notify(lock)

    # -- the follower loop ------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._connect()
                failures = 0
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (_ClusterChanged, KafkaError, BrokerUnavailable, OSError, TimeoutError) as e:
                log.warning(
                    "lock view lost the broker: %s",
                    e or type(e).__name__,
                    extra={"topic": self.topic},
                )
            except Exception:
                log.exception("lock view failed; reconnecting", extra={"topic": self.topic})
            await self._disconnect()
            delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
            failures += 1
            await asyncio.sleep(delay)

    async def _cluster_id(self) -> str:
        assert self._admin is not None
        desc = await asyncio.wait_for(self._admin.describe_cluster(), REQUEST_TIMEOUT_S)
        return str(desc["cluster_id"])

    async def _connect(self) -> None:
        bootstrap = self._bootstrap or resolve_bootstrap(self.settings)
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000)
        )
        await asyncio.wait_for(self._admin.start(), REQUEST_TIMEOUT_S)
        cluster_id = await self._cluster_id()
        if self.cluster_id is not None and cluster_id != self.cluster_id:
            self._new_cluster(cluster_id)
        self.cluster_id = cluster_id
        consumer = AIOKafkaConsumer(
            **consumer_config(
                bootstrap,
                None,
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000) + FETCH_MAX_WAIT_MS,
                retry_backoff_ms=100,
            )
        )
        self._consumer = consumer
        await asyncio.wait_for(consumer.start(), REQUEST_TIMEOUT_S)
        parts = await asyncio.wait_for(self._partitions(consumer), REQUEST_TIMEOUT_S)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # Re-reading from the start rebuilds the index; records replace what we had.
        fresh = LockIndex()
        carried = self._index
        self._index = fresh
        self._carryover_merge(carried)

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        while True:
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                return set(parts)
            # After a broker restart the topic exists again only once created.
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                return set(parts)
            await asyncio.sleep(0.2)

    def _carryover_merge(self, carried: LockIndex) -> None:
        """Keep the locks read before a reconnect until this read has caught up."""
        for lk in carried.locks.values():
            if lk.name not in self._carryover.locks:
                self._carryover.put(lk)
        self._carryover_until = time.monotonic() + REPUBLISH_GRACE_S

    def _new_cluster(self, cluster_id: str) -> None:
        log.warning(
            "broker restarted (cluster %s -> %s); re-reading locks",
            self.cluster_id,
            cluster_id,
            extra={"topic": self.topic},
        )

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        tps = list(consumer.assignment())
        next_poll = 0.0
        caught_up_once = False
        while True:
            batches = await consumer.getmany(timeout_ms=int(self.poll_interval * 250))
            for records in batches.values():
                for rec in records:
                    self.apply(rec.key, rec.value)
            if time.monotonic() >= next_poll:
                started = time.monotonic()
                if await self._cluster_id() != self.cluster_id:
                    raise _ClusterChanged("the broker's cluster id changed")
                ends = await asyncio.wait_for(consumer.end_offsets(tps), REQUEST_TIMEOUT_S)
                # position() retries until the broker answers: bound it like the rest
                positions = dict(
                    zip(
                        tps,
                        await asyncio.wait_for(
                            asyncio.gather(*(consumer.position(tp) for tp in tps)),
                            REQUEST_TIMEOUT_S,
                        ),
                        strict=True,
                    )
                )
                if all(positions[tp] >= ends[tp] for tp in tps):
                    self._mark_synced(started)
                    if not caught_up_once:
                        caught_up_once = True
                        # A full read is now in the index: the carryover has done its job
                        # unless the new broker is still waiting for the republish.
                        if self._index.locks or not self._carryover.locks:
                            self._carryover = LockIndex()
                    next_poll = started + self.poll_interval
                else:
                    next_poll = 0.0  # still reading the backlog: check again next round

    def _mark_synced(self, mono: float) -> None:
        self._synced_mono = mono
        self.last_synced = datetime.now(UTC) - timedelta(seconds=time.monotonic() - mono)
        self._synced.set()

    async def _disconnect(self) -> None:
        consumer, self._consumer = self._consumer, None
        admin, self._admin = self._admin, None
        for close in (consumer and consumer.stop, admin and admin.close):
            if close is None:
                continue
            try:
                await asyncio.wait_for(close(), REQUEST_TIMEOUT_S)
            except asyncio.CancelledError:
                # aiokafka lets a cancelled fetch escape stop(); only our own
                # cancellation may propagate.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception as e:
                log.debug("closing a Kafka client failed: %s", e)
