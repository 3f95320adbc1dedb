"""The spool against the real embedded broker: nothing appended is ever lost.

Tests that stop or kill a broker start their own `EmbeddedBroker` on a fixed port so
the restart is "the same broker address, a new empty broker", as `auditcast up` does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from auditcast.broker import EmbeddedBroker
from auditcast.collectors.session import SessionRecorder
from auditcast.collectors.spool import Spool, drain_all, spool_status
from auditcast.collectors.spool_format import decode_records, encode_record
from auditcast.errors import SpoolError, SpoolFull
from auditcast.events import Event, decode_event, decode_frames
from auditcast.kafka import consumer_config, ensure_topics
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES, topic


async def read_all(s: Settings, name: str, expect: int, timeout: float = 30) -> list[bytes]:
    """Every value on a topic (no group, from the beginning) until `expect` arrive."""
    c = AIOKafkaConsumer(topic(s, name), **consumer_config(s.kafka or "", None))
    await c.start()
    out: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < expect:
                batch = await c.getmany(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(m.value for m in msgs)
    except TimeoutError:
        pass
    finally:
        await c.stop()
    return out


def event_ids(values: list[bytes]) -> list[str]:
    return [decode_event(v).id for v in values]


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    b = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    await b.start()
    yield b
    b.stop()


def settings_on(b: EmbeddedBroker, home: Path, **kw: object) -> Settings:
    return Settings(home=home, kafka=b.bootstrap, topic_prefix="sp.", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- pure format


def test_record_format_round_trips_and_reports_corruption() -> None:
    recs = [encode_record("t", b"k%d" % i, b"v" * i) for i in range(5)]
    buf = bytearray(b"".join(recs))
    d = decode_records(bytes(buf))
    assert [r.value for r in d.records] == [b"v" * i for i in range(5)] and not d.corrupt
    # flip a byte inside record 2: it is reported, the others survive
    start = sum(len(r) for r in recs[:2])
    buf[start + len(recs[2]) - 1] ^= 0xFF
    d = decode_records(bytes(buf))
    assert [r.key for r in d.records] == [b"k0", b"k1", b"k3", b"k4"]
    assert d.corrupt and "checksum" in d.corrupt[0][1]


def test_torn_tail_waits_for_the_writer_unless_final() -> None:
    whole = encode_record("t", b"k", b"value")
    torn = whole + whole[:7]
    d = decode_records(torn)
    assert len(d.records) == 1 and d.consumed == len(whole) and not d.corrupt
    d = decode_records(torn, final=True)
    assert len(d.records) == 1 and d.consumed == len(torn) and "torn" in d.corrupt[0][1]


# ---------------------------------------------------------------- with a broker


async def test_appended_events_and_frames_reach_their_topics(make_settings) -> None:
    s = await asyncio.to_thread(make_settings)
    spool = Spool(s, "t")
    await spool.start()
    events = [Event(type="session.start", session_id=f"s{i}") for i in range(50)]
    for e in events:
        spool.append_event(e)
    assert await spool.flush(20)
    await spool.close()
    assert event_ids(await read_all(s, EVENTS_RAW, 50)) == [e.id for e in events]


async def test_session_recorder_batches_frames_byte_exact(make_settings) -> None:
    s = await asyncio.to_thread(make_settings)
    spool = Spool(s, "rec")
    await spool.start()
    rec = SessionRecorder(spool, kind="pty", user="alice", command="bash")
    rec.start()
    chunks = [bytes([i % 256]) * 7 + b"\xff\x1b[0m" for i in range(300)]
    for c in chunks:
        rec.output(c)
    rec.resize(100, 30)
    rec.input(b"ls\r")
    await asyncio.sleep(0.1)
    end = rec.end(3)
    assert await spool.flush(20)
    await spool.close()
    evs = [decode_event(v) for v in await read_all(s, EVENTS_RAW, 2)]
    assert [e.type for e in evs] == ["session.start", "session.end"]
    assert end.model_extra and end.model_extra["exit_code"] == 3
    assert evs[1].model_extra["bytes_out"] == sum(map(len, chunks))
    assert evs[1].model_extra["bytes_in"] == 3
    messages = await read_all(s, SESSION_FRAMES, 1, timeout=5)
    frames = [f for m in messages for f in decode_frames(m)]
    # 300 small writes in a burst travel as a handful of messages, not 300
    assert len(messages) < 10
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert b"".join(f.data for f in frames if f.kind == "o") == b"".join(chunks)
    assert [(f.kind, f.data) for f in frames[-3:]] == [
        ("r", b"100x30"),
        ("i", b"ls\r"),
        ("x", b"3"),
    ]


async def test_broker_stopped_and_restarted_loses_nothing(own_broker, tmp_path) -> None:
    s = settings_on(own_broker, tmp_path)
    spool = Spool(s, "gw")
    await spool.start()
    before = [Event(type="kube.request", user="a", n=i) for i in range(100)]
    for e in before:
        spool.append_event(e)
    assert await spool.flush(20)
    own_broker.stop()  # everything acked so far dies with the memory-only broker
    during = [Event(type="kube.request", user="a", n=100 + i) for i in range(100)]
    for e in during:
        spool.append_event(e)  # the collector keeps working
    assert not await spool.flush(1.0)
    assert spool.pending_bytes() > 0
    await own_broker.start()  # same port, new empty broker, new cluster id
    await ensure_topics(s)
    assert await spool.flush(30)
    await spool.close()
    got = event_ids(await read_all(s, EVENTS_RAW, 200))
    # the retention window was replayed: what the dead broker acked is there again
    assert set(got) == {e.id for e in before + during}
    assert got.index(during[0].id) > got.index(before[-1].id)


async def test_sigkilled_broker_is_replayed_from_the_retention_window(own_broker, tmp_path) -> None:
    s = settings_on(own_broker, tmp_path)
    spool = Spool(s, "gw")
    await spool.start()
    events = [Event(type="ssh.exec", user="b", n=i) for i in range(30)]
    for e in events:
        spool.append_event(e)
    assert await spool.flush(20)
    own_broker.kill()
    await own_broker.start()
    await asyncio.sleep(1.5)  # the sender notices the new cluster id by itself
    assert await spool.flush(30)
    await spool.close()
    assert set(event_ids(await read_all(s, EVENTS_RAW, 30))) == {e.id for e in events}


async def test_full_spool_refuses_with_a_clear_error_then_reports_it(own_broker, tmp_path) -> None:
    s = settings_on(own_broker, tmp_path, spool_max_bytes=20_000)
    own_broker.stop()
    spool = Spool(s, "gw")
    await spool.start()
    accepted = 0
    with pytest.raises(SpoolFull, match=r"is full .* cap 20000"):
        for i in range(1000):
            spool.append_event(Event(type="kube.request", user="a", pad="x" * 100, n=i))
            accepted += 1
    kept = spool.pending_bytes()
    assert 0 < kept <= 20_000
    await own_broker.start()
    await ensure_topics(s)
    assert await spool.flush(30)
    await asyncio.sleep(0.2)
    assert await spool.flush(30)
    await spool.close()
    evs = [decode_event(v) for v in await read_all(s, EVENTS_RAW, 10_000, timeout=5)]
    full = [e for e in evs if e.type == "collector.spool_full"]
    assert len(full) == 1 and full[0].model_extra["refused"] == 1
    # every accepted event arrived; the refused one was reported, not silently dropped
    assert len([e for e in evs if e.type == "kube.request"]) == accepted


def test_oversized_record_is_refused_and_nothing_else_is_lost(tmp_path) -> None:
    async def go() -> None:
        s = Settings(home=tmp_path, kafka="127.0.0.1:1", topic_prefix="x.")
        spool = Spool(s, "gw")
        await spool.start()
        with pytest.raises(SpoolError, match="exceeds"):
            spool.append(EVENTS_RAW, b"k", b"x" * (2 * 1024 * 1024))
        spool.append_event(Event(type="user.login", user="a"))
        assert spool.pending_bytes() > 0
        await spool.close(0)

    asyncio.run(go())


WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from auditcast.settings import Settings
    from auditcast.collectors.spool import Spool
    from auditcast.events import Event
    async def main():
        s = Settings(home=sys.argv[1], kafka="127.0.0.1:1", topic_prefix="sp.")
        spool = Spool(s, "gw")
        await spool.start()
        for i in range(40):
            spool.append_event(Event(type="kube.request", user="dead", n=i, id=f"{i:08d}-0000-7000-8000-000000000000"))
        spool.append("events.raw", b"k", b"")  # then a torn record at the tail:
        seg = spool._active
        os.write(seg.fd, b"AS\\x00\\x00\\x00")
        print("written", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


async def test_restarted_collector_resumes_from_a_dead_writers_spool(own_broker, tmp_path) -> None:
    """A collector SIGKILLed before sending: the next sender on that dir delivers it all."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout and proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = settings_on(own_broker, tmp_path)
    assert spool_status(s)[0]["pending_bytes"] > 0
    sent = await drain_all(s, follow=False, idle_exit_s=5)
    assert sent == 41
    values = await read_all(s, EVENTS_RAW, 41)
    assert len([v for v in values if v]) == 40
    assert spool_status(s)[0]["pending_bytes"] == 0


async def test_two_writers_share_one_spool_dir(make_settings) -> None:
    s = await asyncio.to_thread(make_settings)
    a, b = Spool(s, "rec"), Spool(s, "rec")
    await a.start()
    await b.start()
    for i in range(20):
        a.append_event(Event(type="session.start", session_id=f"a{i}"))
        b.append_event(Event(type="session.start", session_id=f"b{i}"))
    assert await a.flush(20) and await b.flush(20)
    await a.close()
    await b.close()
    ids = [decode_event(v).session_id for v in await read_all(s, EVENTS_RAW, 40)]
    assert sorted(ids) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
