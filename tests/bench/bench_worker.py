"""Stream worker benchmark: events/s through `auditcast worker` (events.raw →
attribution + session assembly → events.audit) against raw aiokafka on the same broker.

Both legs move the same N envelopes and are timed the same way: from the first
produce until a consumer has read the Nth record back.

- baseline: aiokafka producer (acks=all) → topic → aiokafka consumer; no processing.
- worker: the same producer → `events.raw` → a real `auditcast worker` process (ready
  before the clock starts) → `events.audit` → the same kind of consumer.

Events alternate between a local recording's session.start and a kube.request with a
known credential, so both attribution paths run. The ratio worker/raw is the figure to
watch; absolute rates depend on the 2 shared cores.

`python -m tests.bench.bench_worker [N]` prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from auditcast.broker import EmbeddedBroker
from auditcast.events import Event, Source
from auditcast.kafka import consumer_config, ensure_topics, producer_config
from auditcast.settings import Settings
from auditcast.topics import EVENTS_AUDIT, EVENTS_RAW, IDENTITIES, topic
from tests.bench import figure

DEFAULT_N = 30_000
AUDITCAST = str(Path(sys.executable).with_name("auditcast"))


def make_events(n: int, credential: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        if i % 2:
            ev = Event(
                type="kube.request",
                user="alice",
                credential_id=credential,
                source=Source(collector="kube"),
                verb="get",
                resource="pods",
                request_path="/api/v1/namespaces/default/pods",
                response_code=200,
            )
        else:
            ev = Event(
                type="session.start", session_id=f"s{i}", user="bob", source=Source(collector="pty")
            )
        out.append((ev.key, ev.to_json()))
    return out


async def produce_all(bootstrap: str, name: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**producer_config(Settings(), bootstrap, idempotent=False))
    await producer.start()
    try:
        futures = [await producer.send(name, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_n(consumer: AIOKafkaConsumer, n: int, timeout: float = 600) -> None:
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {seen} of {n} records arrived")
        for recs in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
            seen += len(recs)


async def started_consumer(bootstrap: str, name: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(name, **consumer_config(bootstrap, None))
    await consumer.start()
    await consumer.getmany(timeout_ms=100)  # metadata and fetch position settled
    return consumer


async def timed_leg(
    bootstrap: str, produce_to: str, consume_from: str, records: list[tuple[bytes, bytes]]
) -> float:
    consumer = await started_consumer(bootstrap, consume_from)
    try:
        t0 = time.perf_counter()
        await asyncio.gather(
            produce_all(bootstrap, produce_to, records), consume_n(consumer, len(records))
        )
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def start_worker(s: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AUDITCAST_HOME": str(s.home),
        "AUDITCAST_KAFKA": s.kafka or "",
        "AUDITCAST_TOPIC_PREFIX": s.topic_prefix,
        "AUDITCAST_LOG_LEVEL": "WARNING",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            os.environ.get("BENCH_WORKER_CMD", f"{AUDITCAST} worker").split(),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ready = s.run_dir / "worker.ready"
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


async def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        broker = EmbeddedBroker(log_path=Path(tmp) / "tansu.log", die_with_parent=True)
        await broker.start()
        proc = None
        try:
            s = Settings(
                home=Path(tmp) / "home",
                kafka=broker.bootstrap,
                topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
            )
            await ensure_topics(s)
            credential = "bench-cred"
            identity = {
                "credential_id": credential,
                "kind": "kube-token",
                "identity": {"user": "alice", "roles": ["developer"]},
            }
            await produce_all(
                broker.bootstrap,
                topic(s, IDENTITIES),
                [(credential.encode(), json.dumps(identity).encode())],
            )
            records = make_events(n, credential)
            raw_topic = f"{s.topic_prefix}baseline"
            await produce_all(broker.bootstrap, raw_topic, records[:1])  # create it
            raw_s = await timed_leg(broker.bootstrap, raw_topic, raw_topic, records)
            proc = await asyncio.to_thread(
                start_worker, s, Path(os.environ.get("BENCH_LOG_DIR", tmp)) / "worker.log"
            )
            worker_s = await timed_leg(
                broker.bootstrap, topic(s, EVENTS_RAW), topic(s, EVENTS_AUDIT), records
            )
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            broker.stop()
    raw_rate = n / raw_s
    worker_rate = n / worker_s
    return {
        "benchmark": "worker",
        "events": n,
        "raw_aiokafka_events_per_s": round(raw_rate),
        "worker_events_per_s": round(worker_rate),
        "ratio_worker_vs_raw": round(worker_rate / raw_rate, 3),
        "raw_seconds": round(raw_s, 2),
        "worker_seconds": round(worker_s, 2),
        "summary": [figure("worker / raw aiokafka (events/s)", worker_rate / raw_rate)],
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_N
    print(json.dumps(asyncio.run(run(n))))


if __name__ == "__main__":
    main()
