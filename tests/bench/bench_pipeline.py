"""Store pipeline benchmark: events/s from producer to SQLite row, against raw aiokafka
produce→consume of the same messages on the same (fresh, embedded) broker; plus the
recording size on disk against uncompressed asciicast for a typical interactive session.

All legs produce the same N small envelopes with the same producer settings and are
timed the same way, from the first produce to the moment the Nth record is visible:

- raw: producer → a topic → an aiokafka consumer (already joined) reads N records.
- store: producer → `events.audit` → a real `auditcast store` process (ready before the
  clock starts) → N rows in the SQLite audit log (polled read-only, like the CLI reads).
- pipeline (end to end): producer → `events.raw` → a real `auditcast worker`
  (attribution against the `identities` records of the events' credentials) →
  `events.audit` → `auditcast store` → N rows. Worker and store are ready before the
  clock starts; both share the 2 cores with the broker and the producer.

`python -m tests.bench.bench_pipeline [N]` prints one JSON object. Every leg produces
the same way: `BENCH_PRODUCER=batch` (default) as the collectors' spool does, or
`BENCH_PRODUCER=send` with one `producer.send` per record (the figures before 2026-11-29).
Targets (issue 3): pipeline ≥ 20,000 events/s and pipeline/raw ≥ 0.3; recording <= 0.15
of asciicast.
`BENCH_WORKER_CMD` / `BENCH_STORE_CMD` replace `auditcast worker` / `auditcast store`
(e.g. to run them under a profiler).

Each timed leg also reports the CPU time every process spent on it, in µs per event
(`cpu_us_per_event`: the bench process itself = producer (+ consumer in the raw leg),
the broker, the worker, the store). On 2 cores the sum bounds the rate: 20,000 events/s
needs all of it under ~100 µs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.partitioner import DefaultPartitioner

from auditcast.broker import EmbeddedBroker
from auditcast.events import Event, Frame, Source
from auditcast.kafka import BatchSender, _admin, consumer_config, ensure_topics, producer_config
from auditcast.lifeline import die_with_parent
from auditcast.settings import Settings
from auditcast.storage.recordings import RecordingStore, to_asciicast
from auditcast.topics import EVENTS_AUDIT, EVENTS_RAW, IDENTITIES, topic
from tests.bench import figure, target

DEFAULT_N = 200_000
AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
RAW_TOPIC = "bench.raw"
CREDENTIALS = 50


def make_events(n: int) -> list[tuple[bytes, bytes]]:
    src = Source(collector="kube", instance="gw-1", remote_addr="10.0.0.7")
    out = []
    for i in range(n):
        ev = Event(
            type="kube.request",
            user=f"user{i % 50}",
            credential_id=f"cred-{i % CREDENTIALS}",
            cluster="prod",
            source=src,
            verb="get",
            resource="pods",
            namespace="default",
            request_path=f"/api/v1/namespaces/default/pods/web-{i % 997}",
            response_code=200,
            latency_ms=3,
        )
        out.append((ev.key, ev.to_json()))
    return out


# How the bench produces: "batch" (default) like the collectors' spool, record batches
# per partition through auditcast.kafka.BatchSender, SPOOL_CHUNK records at a time;
# "send" is a `producer.send` per record (~35 µs of the bench's CPU each on 2 cores).
PRODUCER_MODE = os.environ.get("BENCH_PRODUCER", "batch")
SPOOL_CHUNK = 5000


async def produce(s: Settings, name: str, msgs: list[tuple[bytes, bytes]]) -> None:
    p = AIOKafkaProducer(**producer_config(s, s.kafka or "", idempotent=False))
    await p.start()
    try:
        if PRODUCER_MODE == "send":
            futs = [await p.send(name, v, key=k) for k, v in msgs]
        else:
            futs = await produce_batched(p, name, msgs)
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def produce_batched(
    p: AIOKafkaProducer, name: str, msgs: list[tuple[bytes, bytes]]
) -> list[asyncio.Future[Any]]:
    """What the spool does: each key on its default partition, one batch per partition."""
    parts = sorted(await p.partitions_for(name))
    partitioner = DefaultPartitioner()
    partition_of: dict[bytes, int] = {}
    futs: list[asyncio.Future[Any]] = []
    for i in range(0, len(msgs), SPOOL_CHUNK):
        out = BatchSender(p)
        for k, v in msgs[i : i + SPOOL_CHUNK]:
            part = partition_of.get(k)
            if part is None:
                part = partition_of[k] = partitioner(k, parts, parts)
            await out.add(name, part, k, v)
        futs += await out.send()
    return futs


async def raw_leg(s: Settings, msgs: list[tuple[bytes, bytes]], cpu: CpuMeter) -> float:
    name = topic(s, RAW_TOPIC)
    c = AIOKafkaConsumer(name, **consumer_config(s.kafka or "", "bench-raw"))
    await c.start()
    try:
        while not c.assignment():  # joined before the clock starts
            await c.getmany(timeout_ms=200)
        cpu.start()
        t0 = time.perf_counter()
        prod = asyncio.create_task(produce(s, name, msgs))
        seen = 0
        while seen < len(msgs):
            for recs in (await c.getmany(timeout_ms=500, max_records=10_000)).values():
                seen += len(recs)
        elapsed = time.perf_counter() - t0
        await prod
        cpu.stop()
        return elapsed
    finally:
        await c.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc), children excluded."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of named processes between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start_cpu: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.start_cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.used = {
            name: cpu_seconds(pid) - self.start_cpu[name] for name, pid in self.pids.items()
        }

    def per_event_us(self, n: int) -> dict[str, float]:
        out = {name: round(sec / n * 1e6, 1) for name, sec in self.used.items()}
        out["total"] = round(sum(self.used.values()) / n * 1e6, 1)
        return out


def rows(db: Path, *, exact: bool = True) -> int:
    """Rows in the audit log; `exact=False` reads the highest row number instead, which
    costs ~0.25 ms instead of a count's ~4 ms per 100,000 rows, so polling for it 20
    times a second takes no CPU from the store it measures. With no duplicate in the
    bench, both agree (a duplicate leaves a gap in the numbers, never a second row)."""
    sql = "SELECT count(*) FROM events" if exact else "SELECT coalesce(max(seq), 0) FROM events"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def spawn(verb: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    cmd = os.environ.get(f"BENCH_{verb.upper()}_CMD", f"{AUDITCAST} {verb}").split()
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a bench stopped midway leaves no store behind
        )


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while not ready.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(log_path.read_text()[-2000:])
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def rows_leg(
    s: Settings, produce_to: str, msgs: list[tuple[bytes, bytes]], cpu: CpuMeter
) -> float:
    """Produce `msgs` to `produce_to`; seconds until all are rows in the audit log."""
    cpu.start()
    t0 = time.perf_counter()
    prod = asyncio.create_task(produce(s, produce_to, msgs))
    while rows(s.db_path, exact=False) < len(msgs):
        await asyncio.sleep(0.05)
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"only {rows(s.db_path)} rows after 600 s")
    elapsed = time.perf_counter() - t0
    await prod
    cpu.stop()
    if (stored := rows(s.db_path)) != len(msgs):
        raise RuntimeError(f"{stored} rows for {len(msgs)} events")
    return elapsed


async def store_leg(
    s: Settings, env: dict[str, str], msgs: list[tuple[bytes, bytes]], cpu: CpuMeter
) -> float:
    store = spawn("store", env, s.home / "store.log")
    cpu.pids["store"] = store.pid
    try:
        await asyncio.to_thread(wait_ready, store, s.run_dir / "store.ready", s.home / "store.log")
        return await rows_leg(s, topic(s, EVENTS_AUDIT), msgs, cpu)
    finally:
        stop(store)


async def pipeline_leg(
    s: Settings, env: dict[str, str], msgs: list[tuple[bytes, bytes]], cpu: CpuMeter
) -> float:
    # the credentials the events carry are known, as after `auditcast login`
    identities = [
        (
            f"cred-{i}".encode(),
            json.dumps(
                {
                    "credential_id": f"cred-{i}",
                    "kind": "kube-token",
                    "identity": {"user": f"user{i}", "roles": ["devrole"]},
                }
            ).encode(),
        )
        for i in range(CREDENTIALS)
    ]
    await produce(s, topic(s, IDENTITIES), identities)
    worker = spawn("worker", env, s.home / "worker.log")
    store = spawn("store", env, s.home / "store.log")
    cpu.pids.update(worker=worker.pid, store=store.pid)
    try:
        for proc, name in ((worker, "worker"), (store, "store")):
            await asyncio.to_thread(
                wait_ready, proc, s.run_dir / f"{name}.ready", s.home / f"{name}.log"
            )
        return await rows_leg(s, topic(s, EVENTS_RAW), msgs, cpu)
    finally:
        stop(worker)
        stop(store)


def typical_session(sid: str) -> list[Frame]:
    """About 10 minutes of shell work: prompts, typed commands echoed a key at a time,
    ls/git/log output, an editor redraw, colour escapes."""
    rnd = random.Random(7)
    frames: list[Frame] = []
    t = 0.0
    words = "deploy service config pods namespace kubectl logs status error warning".split()
    prompt = b"\x1b[01;32malice@node1\x1b[00m:\x1b[01;34m~/src/app\x1b[00m$ "

    def emit(kind: str, data: bytes, dt: float) -> None:
        nonlocal t
        t += dt
        frames.append(Frame(session_id=sid, seq=len(frames), t=round(t, 6), kind=kind, data=data))  # type: ignore[arg-type]

    emit("r", b"120x40", 0.0)
    for _ in range(200):
        emit("o", prompt, rnd.uniform(0.5, 4.0))
        cmd = " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 4)))
        for ch in cmd:
            emit("o", ch.encode(), rnd.uniform(0.05, 0.25))
        emit("o", b"\r\n", 0.1)
        lines = []
        for _ in range(rnd.randint(1, 40)):
            lines.append(
                f"{rnd.choice(['-rw-r--r--', 'drwxr-xr-x'])} 1 alice staff "
                f"{rnd.randint(10, 99999):>6} "
                f"Nov {rnd.randint(1, 28):2d} {rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d} "
                f"\x1b[0;3{rnd.randint(1, 6)}m{rnd.choice(words)}-{rnd.randint(1, 999)}"
                ".yaml\x1b[0m\r\n"
            )
        emit("o", "".join(lines).encode(), rnd.uniform(0.01, 0.3))
    emit("x", b"0", 0.5)
    return frames


def recording_size(root: Path) -> dict[str, Any]:
    rs = RecordingStore(root)
    frames = typical_session("typical")
    for i in range(0, len(frames), 20):  # batches like a collector's 50 ms flushes
        rs.add(frames[i : i + 20])
    cast = "".join(line + "\n" for line in to_asciicast(rs.frames("typical"))).encode()
    disk = rs.disk_bytes("typical")
    return {
        "frames": len(frames),
        "asciicast_bytes": len(cast),
        "disk_bytes": disk,
        "ratio": round(disk / len(cast), 4),
        "target_ratio": 0.15,
    }


def leg_settings(root: Path, bootstrap: str, prefix: str) -> tuple[Settings, dict[str, str]]:
    s = Settings(home=root / prefix.strip("."), kafka=bootstrap, topic_prefix=prefix)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AUDITCAST_HOME": str(s.home),
        "AUDITCAST_KAFKA": bootstrap,
        "AUDITCAST_TOPIC_PREFIX": s.topic_prefix,
        "AUDITCAST_LOG_LEVEL": "WARNING",
    }
    return s, env


async def run(n: int) -> dict[str, Any]:
    msgs = make_events(n)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        broker = EmbeddedBroker(log_path=Path(tmp) / "broker.log", die_with_parent=True)
        await broker.start()
        try:
            # each leg has its own topics and audit log
            s, env = leg_settings(Path(tmp), broker.bootstrap, "bench.")
            e2e, e2e_env = leg_settings(Path(tmp), broker.bootstrap, "benche2e.")
            await ensure_topics(s)
            await ensure_topics(e2e)
            admin = await _admin(broker.bootstrap, 10)
            try:
                await admin.create_topics(
                    [NewTopic(topic(s, RAW_TOPIC), s.partitions, replication_factor=1)]
                )
            finally:
                await admin.close()
            assert broker.proc is not None
            pids = {"bench": os.getpid(), "broker": broker.proc.pid}
            cpu = {leg: CpuMeter(dict(pids)) for leg in ("raw", "store", "pipeline")}
            raw_s = await raw_leg(s, msgs, cpu["raw"])
            store_s = await store_leg(s, env, msgs, cpu["store"])
            pipeline_s = await pipeline_leg(e2e, e2e_env, msgs, cpu["pipeline"])
        finally:
            broker.stop()
        rec = recording_size(Path(tmp) / "rec")
    raw_rate, store_rate, pipeline_rate = n / raw_s, n / store_s, n / pipeline_s
    return {
        "n": n,
        "producer": PRODUCER_MODE,
        "raw_events_per_s": round(raw_rate),
        "store_only_events_per_s": round(store_rate),
        "ratio_store_only_to_raw": round(store_rate / raw_rate, 3),
        "pipeline_events_per_s": round(pipeline_rate),
        "ratio_pipeline_to_raw": round(pipeline_rate / raw_rate, 3),
        "target_events_per_s": 20_000,
        "target_ratio": 0.3,
        "cpu_us_per_event": {leg: m.per_event_us(n) for leg, m in cpu.items()},
        "recording": rec,
        "loadavg": os.getloadavg(),
        "summary": [
            target("pipeline: producer to SQLite row", pipeline_rate, ">=", 20_000, "ev/s"),
            target("pipeline / raw aiokafka", pipeline_rate / raw_rate, ">=", 0.3),
            figure("store only / raw aiokafka", store_rate / raw_rate),
            target("recording on disk / asciicast", rec["ratio"], "<=", 0.15),
        ],
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_N
    print(json.dumps(asyncio.run(run(n)), indent=2))


if __name__ == "__main__":
    main()
