"""The spool's sender process (`spool_sender = "process"`) against the real broker.

The collector appends; a child process sends. What a collector relies on must not
change: flush() waits for the broker's acknowledgement, stats follow the child, the
cap counts what the child has not sent, and a dead child or a dead collector loses
nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

import auditcast.collectors.spool as spool_mod
from auditcast.collectors.spool import Spool, drain_all, spool_status
from auditcast.collectors.spool_sender import NICENESS
from auditcast.errors import SpoolFull
from auditcast.events import Event, Frame, decode_event, decode_frames
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES
from tests.collectors.test_spool import (
    UNREACHABLE,
    eventually,
    first_seen,
    kube_events,
    read_topic,
    settings_on,
)


async def test_flush_and_stats_follow_the_sender_process(make_settings) -> None:
    s = await asyncio.to_thread(make_settings, spool_sender="process")
    spool = Spool(s, "gw")
    await spool.start()
    assert spool.sender_pid is not None and spool.sender_pid != os.getpid()
    assert await spool.wait_connected(20)
    events = kube_events(200)
    for e in events:
        spool.append_event(e)
    frames = [Frame(session_id="s0", seq=i, t=i / 10, kind="o", data=b"x%d" % i) for i in range(3)]
    spool.append_frames("s0", frames)
    assert spool.stats.pending_records == 201  # appended, not yet acknowledged
    assert await spool.flush(20)
    stats = spool.stats
    assert stats.connected and stats.cluster_id
    assert stats.sent_records == 201 and stats.pending_records == 0 and stats.pending_bytes == 0
    assert await spool.close()
    [row] = spool_status(s)
    assert row["pending_bytes"] == 0 and row["retained_segments"] == 1
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 200)]
    assert got == [e.id for e in events]
    [batch] = await read_topic(s, SESSION_FRAMES, 1)
    assert decode_frames(batch) == frames


async def test_sender_process_yields_the_cpu_to_the_collector(make_settings) -> None:
    """Delivery runs at a lower priority than the terminal it records (NICENESS)."""
    s = await asyncio.to_thread(make_settings, spool_sender="process")
    spool = Spool(s, "rec")
    await spool.start()
    try:
        assert await spool.wait_connected(20)  # the child is past its start-up
        assert spool.sender_pid is not None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, spool.sender_pid) == min(19, ours + NICENESS)
    finally:
        assert await spool.close()


async def test_killed_sender_process_is_replaced_and_nothing_is_lost(make_settings) -> None:
    s = await asyncio.to_thread(make_settings, spool_sender="process")
    spool = Spool(s, "gw")
    await spool.start()
    before = kube_events(50)
    for e in before:
        spool.append_event(e)
    assert await spool.flush(20)
    dead = spool.sender_pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    after = kube_events(50, start=50)
    for e in after:
        spool.append_event(e)  # the collector goes on while no sender runs
    await eventually(lambda: spool.sender_pid not in (None, dead), what="a new sender")
    assert await spool.flush(20)
    assert spool.stats.sent_records >= 100 and spool.stats.pending_records == 0
    assert await spool.close()
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 100)]
    assert first_seen(got) == [e.id for e in before + after]


async def test_rotated_segments_are_finished_by_the_sender_process(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector rotates, the child sends and retires each closed segment; the
    collector lets go of it then (no `.log` and no lock left behind)."""
    monkeypatch.setattr(spool_mod, "SEGMENT_MAX_BYTES", 4096)
    s = await asyncio.to_thread(make_settings, spool_sender="process")
    spool = Spool(s, "gw")
    await spool.start()
    events = kube_events(300)
    for i, e in enumerate(events):
        spool.append_event(e)
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    assert await spool.flush(20)
    assert await spool.close()
    d = s.spool_dir / "gw"
    assert not list(d.glob("seg-*.log"))
    assert len(list(d.glob("seg-*.sent"))) > 5
    got = [decode_event(v).id for v in await read_topic(s, EVENTS_RAW, 300)]
    assert got == [e.id for e in events]


async def test_without_a_broker_records_wait_and_the_cap_holds(tmp_path: Path) -> None:
    s = settings_on(UNREACHABLE, tmp_path, spool_sender="process", spool_max_bytes=20_000)
    spool = Spool(s, "gw")
    await spool.start()
    assert not await spool.wait_connected(20)  # a refused connection ends the wait
    accepted = 0
    with pytest.raises(SpoolFull, match="is full"):
        for i in range(1000):
            spool.append_event(Event(type="kube.request", user="a", pad="x" * 100, n=i))
            accepted += 1
    assert 0 < spool.pending_bytes() <= 20_000
    assert not await spool.flush(0.5)
    stats = spool.stats
    assert not stats.connected and stats.pending_records == accepted
    assert not await spool.close(0.2)
    [row] = spool_status(s)
    assert row["pending_records"] == accepted and row["held_bytes"] == 0


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from auditcast.settings import Settings
    from auditcast.collectors.spool import Spool
    from auditcast.events import Event

    async def main():
        home, prefix, n = sys.argv[1:]
        s = Settings(home=home, kafka="127.0.0.1:1", topic_prefix=prefix,
                     spool_sender="process")
        spool = Spool(s, "gw")
        await spool.start()
        for i in range(int(n)):
            spool.append_event(Event(type="kube.request", user="dead", n=i))
        await asyncio.sleep(0.3)  # the child heard of them
        print(spool.sender_pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def spawn_writer(home: str, prefix: str, n: int) -> tuple[subprocess.Popen[str], int]:
    """A collector with a sender process, without a broker: (it, its sender's pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, home, prefix, str(n)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_sigkilled_collector_takes_its_sender_along_and_the_drainer_adopts(
    make_settings,
) -> None:
    s = await asyncio.to_thread(make_settings)
    proc, sender = await asyncio.to_thread(spawn_writer, str(s.home), s.topic_prefix, 25)
    # while the collector lives, its segment is its own: the drainer leaves it alone
    assert await drain_all(s, follow=False, idle_exit_s=1) == 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    await eventually(lambda: gone(sender), 10, "the sender process followed its parent")
    assert await drain_all(s, follow=False, idle_exit_s=5) == 25
    got = [decode_event(v).model_extra["n"] for v in await read_topic(s, EVENTS_RAW, 25)]
    assert got == list(range(25))


def test_sender_process_says_a_segment_it_cannot_find_is_finished(tmp_path: Path) -> None:
    """A sender that retired a segment and died before saying so: its successor cannot
    open it and tells the collector it is finished, so flush() does not wait for it."""
    s = settings_on(UNREACHABLE, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditcast.collectors.spool_sender"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    hello = {"name": "gw", "settings": s.model_dump(mode="json"), "log_level": "ERROR"}
    gone_name = "seg-0000000000000-1-abcdef-000001-0000000000000.log"
    proc.stdin.write(orjson.dumps(hello) + b"\n" + orjson.dumps([[gone_name, 10, 1, True]]) + b"\n")
    proc.stdin.flush()
    try:
        for _ in range(50):
            report = orjson.loads(proc.stdout.readline())
            if gone_name in report["finished"]:
                break
        else:
            pytest.fail("the missing segment was never reported finished")
        assert report["own"] == {} and not report["connected"]
    finally:
        proc.stdin.close()
        assert proc.wait(10) == 0
