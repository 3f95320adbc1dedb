"""The lock authority: the API process that creates, removes and expires locks.

Active locks live in `$AUDITCAST_HOME/access.db` (the source of truth) and on the
compacted `locks` topic (what gateways' `LockView`s read). Creating a lock writes the
row, then the record (key = lock name) and a `lock.created` event; removing or expiring
one writes a tombstone and `lock.deleted`.

The embedded broker keeps topics in memory only: when it restarts it comes back empty,
under a new cluster id. The authority checks the cluster id every `WATCH_INTERVAL_S`
and, on a new one (or after a failed publish), recreates the topics and republishes
every active lock, so the locks survive the restart. It also republishes on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any, Final

from auditcast.access.access_db import connect
from auditcast.access.lock_model import Lock, LockIndex, LockSubject, decode_lock
from auditcast.access.publish import Publisher, audit_event
from auditcast.aio import cancel_and_wait
from auditcast.errors import AuditcastError, BrokerUnavailable, NotFound
from auditcast.events import Event, Source
from auditcast.kafka import cluster_info, ensure_topics, resolve_bootstrap
from auditcast.settings import Settings
from auditcast.topics import LOCKS

log = logging.getLogger(__name__)

# How often expiry and the broker's identity are checked. A lock's tombstone is at
# most this late; views already ignore an expired lock by its own clock.
WATCH_INTERVAL_S: Final = 1.0


class LockExists(AuditcastError):
    exit_code = 8
    http_status = 409
    hint = "pick another --name, or remove the old lock with `auditcast lock rm NAME`"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    expires TEXT
)
"""


def lock_event(event_type: str, lock: Lock, actor: str, **fields: Any) -> Event:
    return audit_event(
        event_type,
        user=actor or None,
        source=Source(collector="api"),
        lock_name=lock.name,
        lock_targets=lock.targets.model_dump(exclude_none=True),
        lock_message=lock.message,
        lock_mode=lock.mode,
        lock_expires=None if lock.expires is None else lock.model_dump(mode="json")["expires"],
        **fields,
    )


class LockAuthority:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None = None,
        publisher: Publisher | None = None,
        *,
        watch_interval: float = WATCH_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.publisher = publisher or Publisher(settings, bootstrap)
        self._own_publisher = publisher is None
        self.watch_interval = watch_interval
        self._db = connect(settings)
        self._db.execute(_SCHEMA)
        self._db.commit()
        self._db_lock = threading.Lock()
        # The same locks in memory, for `check` on every API request; changed only on
        # the event loop, after the row is written.
        self._index = LockIndex()
        for lock in self._rows():
            self._index.put(lock)
        self._cluster_id: str | None = None
        self._needs_republish = True
        # Tombstones the broker did not take yet: retried by the watcher, or a view on a
        # broker that only blinked would keep the removed lock until it expires.
        self._pending_tombstones: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> LockAuthority:
        with contextlib.suppress(BrokerUnavailable):
            await self._watch_once()
        self._task = asyncio.create_task(self._watch(), name="lock-authority")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._own_publisher:
            await self.publisher.close()
        self._db.close()

    # -- the store --------------------------------------------------------------------

    def _rows(self) -> list[Lock]:
        with self._db_lock:
            rows = self._db.execute("SELECT spec FROM locks ORDER BY rowid").fetchall()
        return [decode_lock(r["spec"]) for r in rows]

    async def active(self, *, now: datetime | None = None) -> list[Lock]:
        """The active locks, oldest first (expired ones are being tombstoned)."""
        now = now or datetime.now(UTC)
        locks = await asyncio.to_thread(self._rows)
        return sorted((lk for lk in locks if not lk.expired(now)), key=lambda lk: lk.created)

    def check(self, subject: LockSubject, *, now: datetime | None = None) -> Lock | None:
        """The lock in force on `subject`, from memory (the API's own sign-in checks)."""
        return self._index.match(subject, now or datetime.now(UTC))

    def _insert(self, lock: Lock) -> bool:
        with self._db_lock:
            try:
                self._db.execute(
                    "INSERT INTO locks(name, spec, expires) VALUES (?, ?, ?)",
                    (
                        lock.name,
                        lock.to_record().decode(),
                        lock.expires and lock.expires.isoformat(),
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            self._db.commit()
            return True

    def _delete(self, name: str) -> Lock | None:
        with self._db_lock:
            row = self._db.execute("SELECT spec FROM locks WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM locks WHERE name = ?", (name,))
            self._db.commit()
        return decode_lock(row["spec"])

    # -- operations -------------------------------------------------------------------

    async def create(self, lock: Lock) -> bool:
        """Record and publish a lock. Returns whether the broker has it yet.

        The row is the source of truth: if the broker is away the lock is kept and
        published by the watcher as soon as the broker answers again.
        """
        if lock.expired(datetime.now(UTC)):
            raise ValueError("the lock would already be expired")
        if not await asyncio.to_thread(self._insert, lock):
            raise LockExists(f"a lock named {lock.name} already exists")
        self._index.put(lock)
        log.info("lock created", extra={"fields": {"lock": lock.name, "by": lock.created_by}})
        try:
            await self.publisher.send(LOCKS, lock.name.encode(), lock.to_record())
        except BrokerUnavailable as e:
            log.warning("lock %s saved but not yet published: %s", lock.name, e)
            self._needs_republish = True
            return False
        await self.publisher.emit_quietly(lock_event("lock.created", lock, lock.created_by))
        return True

    async def delete(self, name: str, *, by: str, reason: str = "removed") -> Lock:
        lock = await asyncio.to_thread(self._delete, name)
        if lock is None:
            raise NotFound(f"no lock named {name}", hint="list the locks with `auditcast lock ls`")
        self._index.remove(name)
        try:
            await self.publisher.send(LOCKS, name.encode(), None)
        except BrokerUnavailable as e:
            log.warning("tombstone for lock %s not published yet: %s", name, e)
            self._pending_tombstones.add(name)
        await self.publisher.emit_quietly(
            lock_event("lock.deleted", lock, by, reason=reason, deleted_by=by)
        )
        log.info("lock deleted", extra={"fields": {"lock": name, "by": by, "reason": reason}})
        return lock

    async def expire(self, now: datetime | None = None) -> list[Lock]:
        now = now or datetime.now(UTC)
        gone = []
        for lock in await asyncio.to_thread(self._rows):
            if lock.expired(now):
                with contextlib.suppress(NotFound):
                    gone.append(await self.delete(lock.name, by="auditcast", reason="expired"))
        return gone

    async def republish(self) -> int:
        locks = await self.active()
        for lock in locks:
            await self.publisher.send(LOCKS, lock.name.encode(), lock.to_record())
        return len(locks)

    # -- the watcher ------------------------------------------------------------------

    async def _watch_once(self) -> None:
        bootstrap = self.bootstrap or resolve_bootstrap(self.settings)
        info = await cluster_info(bootstrap, timeout=2.0)
        if info.cluster_id != self._cluster_id:
            if self._cluster_id is not None:
                log.warning(
                    "broker restarted (cluster %s -> %s); republishing locks",
                    self._cluster_id,
                    info.cluster_id,
                )
                await self.publisher.reset()
            await ensure_topics(self.settings, bootstrap)
            self._cluster_id = info.cluster_id
            self._needs_republish = True
        if self._needs_republish:
            n = await self.republish()
            self._needs_republish = False
            log.info("republished %d active locks", n)
        for name in sorted(self._pending_tombstones):
            if name not in self._index.locks:  # not re-created meanwhile
                await self.publisher.send(LOCKS, name.encode(), None)
            self._pending_tombstones.discard(name)
        await self.expire()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                await self._watch_once()
            except BrokerUnavailable as e:
                log.warning("lock authority cannot reach the broker: %s", e)
            except Exception:
                log.exception("lock authority watcher failed")
