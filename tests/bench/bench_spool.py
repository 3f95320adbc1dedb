"""Spool benchmark: what the durable outbox costs a collector, against baselines measured
in the same run on the same machine.

- append: µs per `Spool.append` (checksummed record, one `os.write`) vs a bare
  `os.write` of the same bytes to a file (fsync policy `batch`, the default).
- recorder: µs per `SessionRecorder.output` of a 16-byte echo vs `list.append` (the
  least any buffering could cost).
- delivery: records/s from the first append until the broker acknowledged the last,
  vs a raw aiokafka producer (acks=all, same linger) sending the same values.

`python -m tests.bench.bench_spool [N]` prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiokafka import AIOKafkaProducer

from auditcast.broker import EmbeddedBroker
from auditcast.collectors.session import SessionRecorder
from auditcast.collectors.spool import Spool
from auditcast.events import Event
from auditcast.kafka import ensure_topics, producer_config
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, topic
from tests.bench import figure

DEFAULT_N = 20_000


def values(n: int) -> list[bytes]:
    return [
        Event(type="kube.request", user="alice", verb="get", resource="pods", n=i).to_json()
        for i in range(n)
    ]


def bench_append(home: Path, vals: list[bytes]) -> dict[str, float]:
    async def spool_leg() -> float:
        s = Settings(home=home, kafka="127.0.0.1:1", spool_max_bytes=1 << 40)
        spool = Spool(s, "bench-append")
        await spool.start()
        t0 = time.perf_counter()
        for v in vals:
            spool.append(EVENTS_RAW, b"alice", v)
        dt = time.perf_counter() - t0
        await spool.close(0)
        return dt

    spool_s = asyncio.run(spool_leg())
    fd = os.open(home / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t0 = time.perf_counter()
    for v in vals:
        os.write(fd, v)
    raw_s = time.perf_counter() - t0
    os.close(fd)
    n = len(vals)
    return {
        "append_us": round(spool_s / n * 1e6, 2),
        "raw_write_us": round(raw_s / n * 1e6, 2),
        "append_vs_raw_write": round(spool_s / raw_s, 2),
    }


def bench_recorder(home: Path, n: int) -> dict[str, float]:
    async def go() -> tuple[float, float]:
        s = Settings(home=home, kafka="127.0.0.1:1", spool_max_bytes=1 << 40)
        spool = Spool(s, "bench-rec")
        await spool.start()
        rec = SessionRecorder(spool, kind="pty", user="alice")
        rec.start()
        echo = b"\x1b[32mk\x1b[0m e c h o"
        t0 = time.perf_counter()
        for _ in range(n):
            rec.output(echo)
        rec_s = time.perf_counter() - t0
        rec.end(0)
        await spool.close(0)
        sink: list[tuple[int, bytes]] = []
        t0 = time.perf_counter()
        for i in range(n):
            sink.append((i, echo))
        return rec_s, time.perf_counter() - t0

    rec_s, list_s = asyncio.run(go())
    return {
        "output_us": round(rec_s / n * 1e6, 3),
        "list_append_us": round(list_s / n * 1e6, 3),
    }


async def bench_delivery(home: Path, vals: list[bytes]) -> dict[str, Any]:
    broker = EmbeddedBroker(log_path=home / "tansu.log", die_with_parent=True)
    await broker.start()
    try:
        s = Settings(home=home, kafka=broker.bootstrap, topic_prefix="bench.")
        await ensure_topics(s)
        producer = AIOKafkaProducer(**producer_config(s, broker.bootstrap, False))
        await producer.start()
        t0 = time.perf_counter()
        futures = [await producer.send(topic(s, EVENTS_RAW), v, key=b"alice") for v in vals]
        await asyncio.gather(*futures)
        raw_s = time.perf_counter() - t0
        await producer.stop()

        spool = Spool(s, "bench-send")
        await spool.start()
        assert await spool.flush(30)  # connected and idle before the clock starts
        t0 = time.perf_counter()
        for v in vals:
            spool.append(EVENTS_RAW, b"alice", v)
        delivered = await spool.flush(300)
        spool_s = time.perf_counter() - t0
        await spool.close()
    finally:
        broker.stop()
    n = len(vals)
    return {
        "delivered": delivered,
        "spool_records_per_s": round(n / spool_s),
        "raw_producer_records_per_s": round(n / raw_s),
        "spool_vs_raw": round(raw_s / spool_s, 2),
    }


def main(n: int = DEFAULT_N) -> dict[str, Any]:
    vals = values(n)
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        result: dict[str, Any] = {"n": n, "value_bytes": len(vals[0])}
        result["append"] = bench_append(home / "a", vals)
        result["recorder"] = bench_recorder(home / "r", n)
        result["delivery"] = asyncio.run(bench_delivery(home / "d", vals))
        result["loadavg"] = os.getloadavg()[0]
        result["summary"] = [
            figure("spool append / bare os.write (µs)", result["append"]["append_vs_raw_write"]),
            figure("delivery / raw producer (records/s)", result["delivery"]["spool_vs_raw"]),
        ]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_N)
