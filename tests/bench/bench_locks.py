"""Lock benchmark: how soon another process's LockView sees a new lock, and check() cost.

1. Propagation: the lock authority creates N locks one after another (SQLite row,
   `locks` record, `lock.created` event); a `LockView` in a separate process reports
   when its subscription delivers each. Baseline, same run and broker: the bare
   record produced with acks=all and read by a default aiokafka consumer in another
   process. Latency = seen time - the moment `create` was called (one machine, one
   clock).
2. check(): a LockIndex with 10,000 locks answering a hit and a miss, against a linear
   scan of the same locks.

`python -m tests.bench.bench_locks` prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from auditcast.access.lock_authority import LockAuthority
from auditcast.access.lock_model import (
    Lock,
    LockIndex,
    LockSubject,
    LockTargets,
    new_lock,
)
from auditcast.access.locks import LockView
from auditcast.access.publish import Publisher
from auditcast.broker import EmbeddedBroker
from auditcast.kafka import ensure_topics
from auditcast.settings import Settings
from auditcast.topics import LOCKS
from tests.access._lock_fixtures import Watcher
from tests.bench import figure, target

N_LOCKS = 200
# Spacing between locks: each is measured alone, as an administrator would create it.
GAP_S = 0.02


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(statistics.median(s) * 1000, 2),
        "p90_ms": round(s[int(0.90 * (len(s) - 1))] * 1000, 2),
        "p99_ms": round(s[int(0.99 * (len(s) - 1))] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


async def propagate(settings: Settings, mode: str) -> list[float]:
    watcher = Watcher(mode, settings)
    await asyncio.to_thread(watcher.wait_ready)
    authority = await LockAuthority(settings).start() if mode == "view" else None
    publisher = Publisher(settings) if mode == "raw" else None
    sent: dict[str, float] = {}
    try:
        for i in range(N_LOCKS):
            lock = new_lock(LockTargets(user=f"u{i}"), ttl=timedelta(hours=1), name=f"{mode}-{i}")
            sent[lock.name] = time.time()
            if authority is not None:
                await authority.create(lock)
            else:
                assert publisher is not None
                await publisher.send(LOCKS, lock.name.encode(), lock.to_record())
            await asyncio.sleep(GAP_S)
        last = f"{mode}-{N_LOCKS - 1}"
        await asyncio.to_thread(watcher.read_until, last, 30.0)
    finally:
        watcher.stop()
        if authority is not None:
            await authority.stop()
        if publisher is not None:
            await publisher.close()
    return [watcher.seen[name] - t for name, t in sent.items()]


def check_timing() -> dict[str, Any]:
    now = datetime.now(UTC)
    index = LockIndex()
    for i in range(10_000):
        index.put(
            new_lock(LockTargets(user=f"user{i}", cluster=f"c{i % 50}"), ttl=timedelta(hours=1))
        )
    locks: list[Lock] = list(index.locks.values())
    hit = LockSubject.of(user="user4242", roles=["devrole"], cluster="c42", node="n1")
    miss = LockSubject.of(user="nobody", roles=["devrole"], cluster="c42", node="n1")

    def timed(fn: Any, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    # The same locks behind a LockView (what gateways call): index + staleness check.
    view = LockView(Settings(kafka="127.0.0.1:1", topic_prefix="bench."), stale_after=300)
    for lk in locks:
        view.apply(lk.name.encode(), lk.to_record())
    view._mark_synced(time.monotonic())
    view_hit = timed(lambda: view.check(hit), 20_000)
    view_miss = timed(lambda: view.check(miss), 20_000)
    idx_hit = timed(lambda: index.match(hit, now), 20_000)
    idx_miss = timed(lambda: index.match(miss, now), 20_000)
    scan_miss = timed(lambda: next((lk for lk in locks if lk.matches(miss, now)), None), 20)
    return {
        "locks": len(locks),
        "view_check_hit_us": round(view_hit, 2),
        "view_check_miss_us": round(view_miss, 2),
        "indexed_hit_us": round(idx_hit, 2),
        "indexed_miss_us": round(idx_miss, 2),
        "scan_miss_us": round(scan_miss, 1),
        "speedup_vs_scan": round(scan_miss / idx_miss, 1),
    }


async def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(log_path=Path(tmp) / "tansu.log", die_with_parent=True)
        await broker.start()
        try:
            settings = Settings(home=Path(tmp) / "home", kafka=broker.bootstrap)
            await ensure_topics(settings)
            raw = await propagate(settings, "raw")
            view = await propagate(settings, "view")
        finally:
            broker.stop()
    v, r = percentiles(view), percentiles(raw)
    return {
        "lock_seen_by_other_process": v,
        "baseline_raw_record_default_consumer": r,
        "p99_ratio_vs_baseline": round(v["p99_ms"] / r["p99_ms"], 2) if r["p99_ms"] else None,
        "within_100ms": sum(1 for x in view if x < 0.1) / len(view),
        "check": check_timing(),
        "summary": [
            target("lock seen by another process: p99", v["p99_ms"], "<", 100, "ms"),
            figure("baseline: raw record, default consumer: p99", r["p99_ms"], "ms"),
        ],
    }


def main() -> None:
    print(json.dumps(asyncio.run(run())))


if __name__ == "__main__":
    main()
