"""The spool against the real embedded broker (Tansu): nothing appended is ever lost.

Tests that stop or kill a broker start their own `EmbeddedBroker` and restart it on
the same port: "the same address, a new empty broker", as `auditcast up` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from auditcast.broker import EmbeddedBroker
from auditcast.collectors._spool_record import decode_records
from auditcast.collectors.spool import Spool, drain_all, spool_status
from auditcast.errors import SpoolError, SpoolFull
from auditcast.events import Event, Frame, decode_event, decode_frames
from auditcast.kafka import consumer_config
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES, topic
from tests.helpers.broker import settings_env

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
UNREACHABLE = "127.0.0.1:1"


async def read_topic(s: Settings, name: str, expect: int, timeout: float = 20) -> list[bytes]:
    """Every value on a topic from the beginning, until `expect` arrived or `timeout`."""
    c = AIOKafkaConsumer(topic(s, name), **consumer_config(s.kafka or "", None))
    await c.start()
    out: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < expect:
                for msgs in (await c.getmany(timeout_ms=300)).values():
                    out.extend(m.value for m in msgs)
    except TimeoutError:
        pass
    finally:
        await c.stop()
    return out


def first_seen(ids: list[str]) -> list[str]:
    """The ids in order of first arrival (a replay may deliver some twice)."""
    return list(dict.fromkeys(ids))


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A broker this test may stop, kill and restart on the same port."""
    b = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    await b.start()
    yield b
    b.stop()


def settings_on(bootstrap: str, home: Path, **kw: object) -> Settings:
    return Settings(home=home, kafka=bootstrap, topic_prefix="sp.", **kw)  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    """Poll `check` until true; fail the test after `timeout` s."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout}s: {what}")


def kube_events(n: int, start: int = 0, user: str = "alice") -> list[Event]:
    return [Event(type="kube.request", user=user, verb="get", n=start + i) for i in range(n)]


# ---------------------------------------------------------------- delivery


@pytest.mark.parametrize("fsync", ["batch", "always", "never"])
async def test_appended_events_and_frames_reach_their_topics(make_settings, fsync: str) -> None:
    s = await asyncio.to_thread(make_settings, spool_fsync=fsync)
    spool = Spool(s, "gw")
    await spool.start()
    events = [Event(type="session.start", session_id=f"s{i}") for i in range(50)]
    for e in events:
        spool.append_event(e)
    frames = [
        Frame(session_id="s0", seq=i, t=i / 10, kind="o", data=b"\xff%d" % i) for i in range(3)
    ]
    spool.append_frames("s0", frames)
    spool.append_frames("s0", [])  # nothing to send: no empty message
    assert await spool.flush(20)
    stats = spool.stats
    assert stats.connected and stats.sent_records == 51 and stats.pending_bytes == 0
    assert await spool.close()
    assert [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 50)] == [
        e.id for e in events
    ]
    batches = await read_topic(s, SESSION_FRAMES, 1)
    assert len(batches) == 1 and decode_frames(batches[0]) == frames


async def test_bursts_past_the_in_memory_handoff_arrive_once_in_order(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends are handed to the sender in memory while it keeps up, and read back
    from the file when it falls behind: bursts that switch between the two ways many
    times lose, repeat and reorder nothing."""
    import auditcast.collectors.spool as spool_mod

    monkeypatch.setattr(spool_mod, "HANDOFF_MAX_BYTES", 4096)
    s = await asyncio.to_thread(make_settings)
    spool = Spool(s, "gw")
    await spool.start()
    events = kube_events(3000)
    for i, e in enumerate(events):
        spool.append_event(e)
        if i % 250 == 0:
            await asyncio.sleep(0.02)  # let the sender catch up, then fall behind again
    assert await spool.flush(30)
    assert spool.stats.sent_records == 3000
    await spool.close()
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 3000)]
    assert got == [e.id for e in events]


async def test_appends_never_wait_for_the_broker(tmp_path: Path) -> None:
    """No broker at all: appending is a local write, the records wait on disk."""
    s = settings_on(UNREACHABLE, tmp_path)
    spool = Spool(s, "gw")
    await spool.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for e in kube_events(1000):
        spool.append_event(e)
    assert loop.time() - t0 < 1.0
    assert not await spool.flush(0.5)
    stats = spool.stats
    assert not stats.connected and stats.pending_records == 1000
    assert stats.oldest_pending_s is not None and stats.oldest_pending_s >= 0.5
    assert not await spool.close(0.2)
    [row] = spool_status(s)
    assert row["pending_records"] == 1000 and row["held_bytes"] == 0
    assert 0.5 <= row["oldest_pending_age_s"] < 30


async def test_broker_stopped_mid_appends_and_restarted_delivers_all_in_order(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = settings_on(own_broker.bootstrap, tmp_path)
    spool = Spool(s, "gw")
    await spool.start()
    before = kube_events(100)
    for e in before:
        spool.append_event(e)
    assert await spool.flush(20)  # acknowledged... by a memory-only broker
    own_broker.stop()
    during = kube_events(100, start=100)
    for e in during:
        spool.append_event(e)  # the collector keeps working
    assert not await spool.flush(1.0)
    assert spool.stats.pending_records >= 100 and not spool.stats.connected
    new = await own_broker.start()  # same port, new empty broker, no topics
    assert await spool.flush(30)
    assert spool.stats.cluster_id == new.cluster_id
    await spool.close()
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 200)]
    # one key (the user): the new broker has every record, in the order appended
    assert first_seen(got) == [e.id for e in before + during]


async def test_sigkilled_broker_gets_the_retention_window_replayed(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = settings_on(own_broker.bootstrap, tmp_path)
    spool = Spool(s, "gw")
    await spool.start()
    events = kube_events(30, user="bob")
    for e in events:
        spool.append_event(e)
    assert await spool.flush(20)
    own_broker.kill()
    new = await own_broker.start()
    # noticed without any new append
    await eventually(lambda: spool.stats.cluster_id == new.cluster_id, what="new cluster seen")
    assert await spool.flush(30)
    assert spool.stats.replayed_records == 30
    await spool.close()
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 30)]
    assert first_seen(got) == [e.id for e in events]


async def test_a_restarted_collector_replays_what_a_dead_broker_acknowledged(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The sender that sent them is gone too: the retained `.sent` segments name the
    cluster that acknowledged them, so the next sender knows to send them again."""
    s = settings_on(own_broker.bootstrap, tmp_path)
    first = Spool(s, "rec")
    await first.start()
    events = kube_events(20, user="carol")
    for e in events:
        first.append_event(e)
    assert await first.close()
    assert spool_status(s)[0]["retained_segments"] == 1
    own_broker.kill()
    await own_broker.start()
    sent = await drain_all(s, follow=False, idle_exit_s=5)
    assert sent == 20
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 20)]
    assert first_seen(got) == [e.id for e in events]
    # on the same broker a second drain has nothing to replay
    assert await drain_all(s, follow=False, idle_exit_s=2) == 0


async def test_topics_deleted_on_the_same_broker_are_recreated_and_replayed(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = settings_on(own_broker.bootstrap, tmp_path)
    spool = Spool(s, "gw")
    await spool.start()
    events = kube_events(20, user="frank")
    for e in events:
        spool.append_event(e)
    assert await spool.flush(20)
    admin = AIOKafkaAdminClient(bootstrap_servers=own_broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic(s, EVENTS_RAW)])
    finally:
        await admin.close()
    await eventually(lambda: spool.stats.replayed_records >= 20, what="replay after deletion")
    assert await spool.flush(20)
    await spool.close()
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 20)]
    assert first_seen(got) == [e.id for e in events]


async def test_retention_window_drops_old_history(make_settings) -> None:
    s = await asyncio.to_thread(make_settings, spool_retention_seconds=0.5)
    spool = Spool(s, "gw")
    await spool.start()
    spool.append_event(Event(type="user.login", user="dave"))
    assert await spool.close()
    assert spool_status(s)[0]["retained_segments"] == 1
    await asyncio.sleep(0.7)
    again = Spool(s, "gw")
    await again.start()  # prunes on open
    await again.close()
    assert spool_status(s)[0]["retained_segments"] == 0


# ---------------------------------------------------------------- limits


async def test_full_spool_refuses_with_a_clear_error_then_reports_it(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = settings_on(own_broker.bootstrap, tmp_path, spool_max_bytes=20_000)
    own_broker.stop()
    spool = Spool(s, "gw")
    await spool.start()
    accepted = 0
    with pytest.raises(SpoolFull) as err:
        for i in range(1000):
            spool.append_event(Event(type="kube.request", user="a", pad="x" * 100, n=i))
            accepted += 1
    assert "is full" in err.value.message and "cap 20000 bytes" in err.value.message
    assert "AUDITCAST_SPOOL_MAX_BYTES" in err.value.hint
    for _ in range(2):
        with pytest.raises(SpoolFull):
            spool.append_event(Event(type="user.login", user="x"))
    assert 0 < spool.pending_bytes() <= 20_000
    await own_broker.start()
    async with asyncio.timeout(30):
        while spool.stats.sent_records < accepted + 1:  # the alert comes after a batch
            assert await spool.flush(30)
            await asyncio.sleep(0.05)
    await spool.close()
    evs = [decode_event(v) for v in await read_topic(s, EVENTS_RAW, accepted + 1)]
    alerts = [e for e in evs if e.type == "collector.spool_full"]
    assert len(alerts) == 1 and alerts[0].code == "AC9000E"
    assert alerts[0].model_extra == {"spool": "gw", "refused": 3, "cap_bytes": 20_000}
    assert len([e for e in evs if e.type == "kube.request"]) == accepted


async def test_oversized_record_is_refused_and_nothing_else_is_lost(tmp_path: Path) -> None:
    s = settings_on(UNREACHABLE, tmp_path)
    spool = Spool(s, "gw")
    with pytest.raises(SpoolError, match="not open"):
        spool.append_event(Event(type="user.login", user="a"))
    await spool.start()
    with pytest.raises(SpoolError, match=r"exceeds the \d+-byte Kafka message limit"):
        spool.append(EVENTS_RAW, b"k", b"x" * (2 * 1024 * 1024))
    spool.append_event(Event(type="user.login", user="a"))
    assert spool.stats.pending_records == 1
    await spool.close(0)


async def test_unwritable_spool_dir_is_a_clear_error(tmp_path: Path) -> None:
    s = settings_on(UNREACHABLE, tmp_path)
    s.spool_dir.parent.mkdir(parents=True, exist_ok=True)
    s.spool_dir.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot open spool") as err:
        await Spool(s, "gw").start()
    assert "writable" in err.value.hint


# ---------------------------------------------------------------- several processes

WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from auditcast.settings import Settings
    from auditcast.collectors.spool import Spool
    from auditcast.events import Event

    async def main():
        home, bootstrap, prefix, name, n, tail = sys.argv[1:]
        s = Settings(home=home, kafka=bootstrap, topic_prefix=prefix)
        spool = Spool(s, name)
        await spool.start()
        for i in range(int(n)):
            spool.append_event(Event(type="kube.request", user="dead", n=i))
        if tail == "torn":  # killed in the middle of an append
            os.write(spool._active.fd, b"AS\\x00\\x00\\x00\\x07")
        print("written", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def spawn_writer(s: Settings, name: str, n: int, tail: str = "-") -> subprocess.Popen[str]:
    """A collector process that appends `n` events to spool `name` without a broker."""
    argv = [str(s.home), UNREACHABLE, s.topic_prefix, name, str(n), tail]
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    return proc


def sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


async def test_restarted_collector_resumes_from_a_killed_writers_spool(
    own_broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILLed before it could send, with a torn record and a damaged one on disk:
    the next collector on the same spool sends every intact record and reports both."""
    s = settings_on(own_broker.bootstrap, tmp_path)
    sigkill(spawn_writer(s, "gw", 40, "torn"))
    [seg] = (tmp_path / "spool" / "gw").glob("seg-*.log")
    data = bytearray(seg.read_bytes())
    second = decode_records(bytes(data)).records[0].end
    data[second + 30] ^= 0xFF  # damage record 1
    seg.write_bytes(bytes(data))
    assert spool_status(s)[0]["pending_records"] == 39  # the damaged one is not counted
    caplog.set_level(logging.ERROR, logger="auditcast.collectors.spool")
    spool = Spool(s, "gw")  # the collector, restarted
    await spool.start()
    assert await spool.flush(20)
    assert spool.stats.corrupt_records == 2
    await spool.close()
    got = [decode_event(v).model_extra["n"] for v in await read_topic(s, EVENTS_RAW, 39)]
    assert got == [0, *range(2, 40)]
    reasons = [r.__dict__["fields"]["reason"] for r in caplog.records if "corrupt" in r.msg]
    assert reasons == ["checksum mismatch", "torn record header (6 bytes at the end)"]
    assert spool_status(s)[0]["pending_bytes"] == 0


async def test_two_writers_share_a_dir_and_a_dead_ones_segments_are_adopted(
    make_settings,
) -> None:
    s = await asyncio.to_thread(make_settings)
    a, b = Spool(s, "rec"), Spool(s, "rec")
    await a.start()
    await b.start()
    for i in range(20):
        a.append_event(Event(type="session.start", session_id=f"a{i}"))
        b.append_event(Event(type="session.start", session_id=f"b{i}"))
    assert await a.flush(20) and await b.flush(20)
    assert a.stats.sent_records == 20 and b.stats.sent_records == 20  # each sends its own
    # a third writer dies without sending (its broker address was wrong): a live
    # sender in the same dir adopts its segment and delivers it
    dead = spawn_writer(s, "rec", 15)
    sigkill(dead)
    await eventually(
        lambda: a.stats.sent_records + b.stats.sent_records == 55, 10, "dead writer adopted"
    )
    await a.close()
    await b.close()
    evs = [decode_event(v) for v in await read_topic(s, EVENTS_RAW, 55)]
    assert len(evs) == 55 and len({e.id for e in evs}) == 55
    assert sorted(e.session_id for e in evs if e.session_id) == sorted(
        [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
    )
    assert [e.model_extra["n"] for e in evs if e.user == "dead"] == list(range(15))


async def test_live_writers_segments_are_left_to_it(make_settings) -> None:
    """The drainer never sends a segment a live process holds (no double sending)."""
    s = await asyncio.to_thread(make_settings)
    writer = spawn_writer(s, "gw", 10)
    try:
        [row] = spool_status(s)
        assert row["held_bytes"] == row["pending_bytes"] > 0
        assert await drain_all(s, follow=False, idle_exit_s=1) == 0
    finally:
        sigkill(writer)
    assert await drain_all(s, follow=False, idle_exit_s=5) == 10


# ---------------------------------------------------------------- CLI


def test_spool_status_and_drain_cli(make_settings) -> None:
    s = make_settings()
    sigkill(spawn_writer(s, "gw", 25))
    env = {**os.environ, **settings_env(s)}
    out = subprocess.run(
        [AUDITCAST, "spool", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["spool"] == "gw" and row["pending_records"] == 25 and row["held_bytes"] == 0
    text = subprocess.run(
        [AUDITCAST, "spool", "status"], env=env, capture_output=True, text=True, timeout=30
    )
    assert "gw" in text.stdout and "25 records" in text.stdout
    drained = subprocess.run(
        [AUDITCAST, "spool", "drain"], env=env, capture_output=True, text=True, timeout=60
    )
    assert drained.returncode == 0, drained.stderr
    assert "sent 25 record(s)" in drained.stdout
    assert spool_status(s)[0]["pending_records"] == 0
    got = asyncio.run(read_topic(s, EVENTS_RAW, 25))
    assert len(got) == 25


def test_spool_drain_cli_without_a_broker_says_what_is_left(tmp_path: Path) -> None:
    s = settings_on(UNREACHABLE, tmp_path)
    sigkill(spawn_writer(s, "gw", 5))
    env = {**os.environ, **settings_env(s)}
    drained = subprocess.run(
        [AUDITCAST, "spool", "drain", "--idle-exit", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert drained.returncode == 3
    assert "sent 0 record(s)" in drained.stdout and "5 record(s)" in drained.stdout
