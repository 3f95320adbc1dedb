"""`auditcast store` against the real broker: at-least-once in, exactly-once rows out,
malformed records dead-lettered with their offsets while good ones keep flowing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from auditcast.events import Event, Frame, encode_frames
from auditcast.kafka import consumer_config, start_producer
from auditcast.settings import Settings
from auditcast.storage.sink import EVENTS_GROUP, MAX_WRITE_RECORDS
from auditcast.storage.sqlite import SQLiteAuditStore
from auditcast.topics import DEAD_LETTER, EVENTS_AUDIT, SESSION_FRAMES, topic

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))


def wait_for(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def store_proc(make_settings, cli_env, tmp_path):
    s: Settings = make_settings()
    log = open(tmp_path / "store.log", "wb")
    proc = subprocess.Popen([AUDITCAST, "store"], env=cli_env(s), stdout=log, stderr=log)
    assert wait_for(lambda: (s.run_dir / "store.ready").exists(), 40), (
        tmp_path / "store.log"
    ).read_text()
    yield s, proc
    proc.terminate()
    proc.wait(10)
    log.close()


def rows(s: Settings) -> int:
    try:
        return SQLiteAuditStore(s.db_path, readonly=True).count()
    except Exception:
        return 0


async def produce(s: Settings, items: list[tuple[str, bytes | None, bytes]]) -> None:
    p = await start_producer(s)
    try:
        for name, key, value in items:
            await p.send_and_wait(topic(s, name), value, key=key)
    finally:
        await p.stop()


async def dead_letters(s: Settings, expect: int) -> list:
    c = AIOKafkaConsumer(topic(s, DEAD_LETTER), **consumer_config(s.kafka or "", None))
    await c.start()
    out: list = []
    try:
        async with asyncio.timeout(20):
            while len(out) < expect:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    out.extend(msgs)
    except TimeoutError:
        pass
    finally:
        await c.stop()
    return out


def test_duplicate_delivery_is_one_row_and_one_frame(store_proc, cli_env) -> None:
    s, _ = store_proc
    start = Event(type="session.start", session_id="dup-1", user="alice", command="echo hi")
    end = Event(type="session.end", session_id="dup-1", user="alice", exit_code=0)
    fr = encode_frames([Frame(session_id="dup-1", seq=0, t=0.0, kind="o", data=b"hi\r\n"),
                        Frame(session_id="dup-1", seq=1, t=0.1, kind="x", data=b"0")])  # fmt: skip
    msgs = [(EVENTS_AUDIT, b"dup-1", start.to_json()), (SESSION_FRAMES, b"dup-1", fr),
            (EVENTS_AUDIT, b"dup-1", end.to_json())]  # fmt: skip
    asyncio.run(produce(s, msgs + msgs))  # the same messages delivered twice
    assert wait_for(lambda: rows(s) == 2)
    time.sleep(1.0)
    assert rows(s) == 2
    out = tmp = s.home_dir / "dup.cast"
    done = subprocess.run([AUDITCAST, "export", "dup-1", "-o", str(out)], env=cli_env(s),
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(x) for x in tmp.read_text().splitlines()]
    assert [ln[1:] for ln in lines[1:]] == [["o", "hi\r\n"]]
    ls = subprocess.run(
        [AUDITCAST, "sessions", "ls", "--json"], env=cli_env(s), capture_output=True
    )
    assert [r["exit_code"] for r in orjson.loads(ls.stdout)] == [0]


def test_malformed_records_are_dead_lettered_and_the_store_keeps_going(store_proc) -> None:
    s, proc = store_proc
    good = Event(type="user.login", user="bob")
    unsafe_id = encode_frames([Frame(session_id="../../etc", seq=0, t=0, kind="o", data=b"x")])
    bad = [
        (EVENTS_AUDIT, b"k", b"\x00not json"),
        (EVENTS_AUDIT, b"k", b'{"type": "session.start", "time": "yesterday"}'),
        (EVENTS_AUDIT, b"k", orjson.dumps({"id": "x", "type": "no.such"})),
        (SESSION_FRAMES, b"k", b"\xc1\xc1"),
        (SESSION_FRAMES, b"k", msgpack.packb([{"session_id": "s", "seq": "one"}])),
        (SESSION_FRAMES, b"k", msgpack.packb([{"session_id": "s", "seq": 1}])),  # no t/kind/data
        (EVENTS_AUDIT, b"k", orjson.dumps({"id": "no-type", "user": "bob"})),
        (EVENTS_AUDIT, b"k", b"[1, 2, 3]"),
        (SESSION_FRAMES, b"k", unsafe_id),
        (EVENTS_AUDIT, b"k", b'{"type":"user.login","pad":"' + b"x" * (1024 * 1024) + b'"}'),
    ]
    asyncio.run(produce(s, [*bad, (EVENTS_AUDIT, b"bob", good.to_json())]))
    assert wait_for(lambda: rows(s) == 1), "the good event after the bad ones was not stored"
    dl = asyncio.run(dead_letters(s, len(bad)))
    assert len(dl) == len(bad)
    headers = [dict(m.headers) for m in dl]
    assert {h["source_topic"].decode() for h in headers} == {
        topic(s, EVENTS_AUDIT),
        topic(s, SESSION_FRAMES),
    }
    assert all(h["source_offset"].decode().isdigit() and h["error"] for h in headers)
    assert any(b"exceeds" in h["error"] for h in headers)
    assert rows(s) == 1  # nothing malformed became a row
    assert proc.poll() is None  # still running


async def committed(s: Settings, group: str, name: str) -> int | None:
    """The offset `group` committed on partition 0 of `name` (None: nothing yet)."""
    c = AIOKafkaConsumer(**consumer_config(s.kafka or "", group))
    await c.start()
    try:
        return await c.committed(TopicPartition(topic(s, name), 0))
    finally:
        await c.stop()


async def flood(s: Settings, values: list[bytes]) -> None:
    """Produce without waiting for each acknowledgement, so a backlog builds up."""
    p = await start_producer(s)
    try:
        acks = [await p.send(topic(s, EVENTS_AUDIT), v, key=b"k") for v in values]
        await asyncio.gather(*acks)
    finally:
        await p.stop()


def test_a_backlog_is_stored_once_and_committed_to_its_end(store_proc) -> None:
    """More events than one write takes, produced faster than the store writes, with
    malformed records among them: while a write runs, the next polls are parsed into
    the next write; every good event is one row, every bad one a dead letter, and the
    group's offset ends at the log's end (a restart would re-read nothing)."""
    s, proc = store_proc
    n = MAX_WRITE_RECORDS + 7_000
    values = [Event(type="user.login", user=f"u{i % 97}").to_json() for i in range(n)]
    bad = [b"\x00not json", b"[1, 2, 3]", orjson.dumps({"id": "x", "type": "no.such"})]
    for i, b in enumerate(bad):  # one early, one in the middle, one near the end
        values.insert((i + 1) * n // 4, b)
    asyncio.run(flood(s, values))
    assert wait_for(lambda: rows(s) == n, 120), f"{rows(s)} rows of {n}"
    assert len(asyncio.run(dead_letters(s, len(bad)))) == len(bad)
    assert wait_for(lambda: asyncio.run(committed(s, EVENTS_GROUP, EVENTS_AUDIT)) == len(values))
    time.sleep(1.0)
    assert rows(s) == n
    assert proc.poll() is None


def test_unknown_session_is_a_clear_error(make_settings, cli_env) -> None:
    s = make_settings()
    out = subprocess.run([AUDITCAST, "export", "nope", "-o", os.devnull], env=cli_env(s),
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 6 and "no audit log yet" in out.stderr


def test_store_survives_a_broker_restart_and_replays_are_harmless(tmp_path, cli_env) -> None:
    """Our own embedded broker (not the session one): stopped, restarted empty on the
    same port; the store reconnects, reads the new log from its start, and the spool-like
    replay of the old events makes no second row."""
    from auditcast.broker import EmbeddedBroker
    from auditcast.kafka import ensure_topics

    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    asyncio.run(broker.start())
    s = Settings(home=tmp_path / "home", kafka=broker.bootstrap, topic_prefix="rs.")
    asyncio.run(ensure_topics(s))
    log = open(tmp_path / "store.log", "wb")
    proc = subprocess.Popen([AUDITCAST, "store"], env=cli_env(s), stdout=log, stderr=log)
    try:
        assert wait_for(lambda: (s.run_dir / "store.ready").exists(), 40)
        before = [Event(type="user.login", user=f"u{i}") for i in range(3)]
        frames = [Frame(session_id="rs-1", seq=i, t=i / 10, kind="o", data=b"%d\n" % i)
                  for i in range(4)]  # fmt: skip
        asyncio.run(produce(s, [(EVENTS_AUDIT, b"k", e.to_json()) for e in before]
                            + [(SESSION_FRAMES, b"rs-1", encode_frames(frames[:2]))]))  # fmt: skip
        assert wait_for(lambda: rows(s) == 3)

        broker.stop()
        time.sleep(2.0)  # the store notices the broker is gone
        asyncio.run(broker.start())  # same port, empty, new cluster id
        asyncio.run(ensure_topics(s))
        after = [Event(type="user.login", user="late")]
        exit_frame = Frame(session_id="rs-1", seq=4, t=0.5, kind="x", data=b"0")
        replay = encode_frames([*frames, exit_frame])  # frames 0-1 again, as a spool would
        asyncio.run(produce(s, [(EVENTS_AUDIT, b"k", e.to_json()) for e in before + after]
                            + [(SESSION_FRAMES, b"rs-1", replay)]))  # fmt: skip
        assert wait_for(lambda: rows(s) == 4, 60), (tmp_path / "store.log").read_text()[-3000:]
        time.sleep(1.0)
        assert rows(s) == 4 and proc.poll() is None
        raw = tmp_path / "rs.raw"
        done = subprocess.run([AUDITCAST, "export", "rs-1", "--raw", "-o", str(raw)],
                              env=cli_env(s), capture_output=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert raw.read_bytes() == b"0\n1\n2\n3\n"  # each frame once, in order
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        broker.stop()
