"""SessionRecorder through a real Spool to the real broker: start, frames, end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack

from auditcast.collectors.session import FLUSH_BYTES, SessionRecorder, _array_header
from auditcast.collectors.spool import Spool
from auditcast.events import Event, Frame, Source, decode_event, decode_frames, encode_frames
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES
from tests.collectors.test_spool import read_topic


async def recorded(
    s: Settings, events: int, min_messages: int = 1
) -> tuple[list[Event], list[list[Frame]]]:
    evs = [decode_event(v) for v in await read_topic(s, EVENTS_RAW, events)]
    raw = await read_topic(s, SESSION_FRAMES, min_messages, 3)
    messages = [decode_frames(v) for v in raw]
    # the recorder's fast path writes exactly what the kernel codec would
    assert [encode_frames(m) for m in messages] == raw
    return evs, messages


async def test_session_is_recorded_start_frames_end_byte_exact(make_settings) -> None:
    s = await asyncio.to_thread(make_settings)
    spool = Spool(s, "rec")
    await spool.start()
    rec = SessionRecorder(
        spool,
        kind="pty",
        user="alice",
        node="laptop",
        source=Source(collector="pty", instance="laptop"),
        command="bash",
        title=None,  # unset fields are left out
        term={"cols": 80, "rows": 24},
    )
    start = rec.start()
    out = [b"\x1b[1;31mred\x1b[0m\r\n", b"\xff\xfe invalid utf-8 \xc3", b"\xa9 split char\r\n"]
    rec.output(out[0])
    rec.input(b"ls -l\r")
    rec.output(out[1])
    await asyncio.sleep(0.08)  # the first batch goes by timer
    rec.resize(120, 40)
    rec.marker("checkpoint")
    rec.output(out[2])
    rec.output(b"")  # nothing: no frame
    end = rec.end(3, reason="exited")
    assert await spool.flush(20)
    await spool.close()

    evs, messages = await recorded(s, 2, 2)
    assert [e.id for e in evs] == [start.id, end.id]
    st, en = (e.model_dump(mode="json", exclude_none=True) for e in evs)
    assert st["type"] == "session.start" and st["session_id"] == rec.session_id
    assert st["user"] == "alice" and st["node"] == "laptop" and st["source"]["collector"] == "pty"
    assert st["kind"] == "pty" and st["command"] == "bash" and "title" not in st
    assert st["term"] == {"cols": 80, "rows": 24}
    frames = [f for m in messages for f in m]
    assert [f.seq for f in frames] == list(range(7))
    assert [(f.kind, f.data) for f in frames] == [
        ("o", out[0]),
        ("i", b"ls -l\r"),
        ("o", out[1]),
        ("r", b"120x40"),
        ("m", b"checkpoint"),
        ("o", out[2]),
        ("x", b"3"),
    ]
    times = [f.t for f in frames]
    assert times == sorted(times) and times[3] >= 0.08
    assert all(f.session_id == rec.session_id for f in frames)
    assert en["type"] == "session.end" and en["recording"] == rec.session_id
    assert en["exit_code"] == 3 and en["reason"] == "exited"
    assert en["bytes_out"] == sum(map(len, out)) and en["bytes_in"] == 6
    assert en["frames"] == 7 and en["duration"] >= times[-1]


async def test_many_small_outputs_travel_as_few_50ms_batches(make_settings) -> None:
    s = await asyncio.to_thread(make_settings)
    spool = Spool(s, "rec")
    await spool.start()
    rec = SessionRecorder(spool, kind="pty", user="bob")
    rec.start()
    for i in range(1000):  # a burst of one-byte echoes: one message
        rec.output(bytes([i % 256]))
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(100):  # typing, a key every 5 ms for half a second
        rec.output(b"k")
        await asyncio.sleep(0.005)
    typed_for = loop.time() - t0
    rec.end(0)
    assert await spool.flush(20)
    await spool.close()
    _, messages = await recorded(s, 2, 2)
    frames = [f for m in messages for f in m]
    assert [f.seq for f in frames] == list(range(1101))
    assert len(messages[0]) == 1000
    typing = messages[1:]
    # ~one message per 50 ms of typing, not one per key
    assert len(typing) <= typed_for / 0.05 + 2, (len(typing), typed_for)
    assert len(typing) >= 3
    for m in typing:  # a batch covers about 50 ms (a loaded machine fires timers late)
        assert m[-1].t - m[0].t <= 0.05 + 0.2


async def test_big_output_is_cut_into_32k_frames_and_messages(make_settings) -> None:
    s = await asyncio.to_thread(make_settings)
    spool = Spool(s, "rec")
    await spool.start()
    rec = SessionRecorder(spool, kind="kube-exec", user="carol", cluster="prod")
    rec.start()
    blob = bytes(range(256)) * 400 + b"tail"  # 100 KiB and a bit
    rec.output(blob)
    rec.end(None)
    assert await spool.flush(20)
    await spool.close()
    evs, messages = await recorded(s, 2, 5)
    frames = [f for m in messages for f in m]
    outs = [f for f in frames if f.kind == "o"]
    assert b"".join(f.data for f in outs) == blob
    assert [len(f.data) for f in outs] == [FLUSH_BYTES] * 3 + [len(blob) - 3 * FLUSH_BYTES]
    assert len({f.t for f in outs}) == 1  # one write, one time
    assert all(sum(len(f.data) for f in m) <= FLUSH_BYTES for m in messages)
    assert frames[-1].kind == "x" and frames[-1].data == b""  # exit status unknown
    end = evs[1].model_dump(exclude_none=True)
    assert "exit_code" not in end and end["bytes_out"] == len(blob) and end["cluster"] == "prod"


async def test_ending_twice_returns_the_first_end_and_later_frames_are_ignored(
    tmp_path: Path,
) -> None:
    s = Settings(home=tmp_path, kafka="127.0.0.1:1")
    spool = Spool(s, "rec")
    await spool.start()
    rec = SessionRecorder(spool, kind="ssh", user="dave")
    rec.start()
    rec.output(b"bye")
    first = rec.end(0)
    rec.output(b"after the end")
    assert rec.end(1) is first and rec.frames == 2 and rec.bytes_out == 3
    assert spool.stats.pending_records == 3  # start, one frame batch, end
    await spool.close(0)


async def test_full_spool_loses_frames_not_the_session(tmp_path: Path) -> None:
    """With the broker away and the spool full, the session goes on and its end
    says how many frames could not be kept."""
    s = Settings(home=tmp_path, kafka="127.0.0.1:1", spool_max_bytes=64 * 1024)
    spool = Spool(s, "rec")
    await spool.start()
    rec = SessionRecorder(spool, kind="pty", user="erin")
    rec.start()
    for _ in range(4):
        rec.output(b"x" * FLUSH_BYTES)  # each fills a batch; the spool takes one
    end = rec.end(0)
    assert rec.frames_lost >= 2
    assert end.model_extra is not None and end.model_extra["frames_lost"] == rec.frames_lost
    assert spool.stats.full_refusals >= 2
    await spool.close(0)


async def test_packed_batches_are_the_bytes_the_kernel_codec_writes_at_every_size() -> None:
    """The recorder packs frames one by one and prefixes msgpack's array header; across
    the header's size classes (fixarray < 16, array16, array32) that must equal
    `encode_frames` of the same frames, or consumers would read another batch."""

    class Packed:
        def __init__(self) -> None:
            self.values: list[bytes] = []

        def append_event(self, event: Event) -> None:
            pass

        def append_frames(self, session_id: str, frames: object) -> None:
            raise AssertionError("the packed fast path should be used")

        def append_packed_frames(self, session_id: str, value: bytes) -> None:
            self.values.append(value)

    for n in (1, 15, 16, 300):
        sink = Packed()
        rec = SessionRecorder(sink, kind="pty")
        for i in range(n):
            rec.output(bytes([i % 256]))
        rec.flush()  # before the 50 ms timer
        assert len(sink.values) == 1
        assert sink.values[0] == encode_frames(decode_frames(sink.values[0]))
        assert [f.data for f in decode_frames(sink.values[0])] == [
            bytes([i % 256]) for i in range(n)
        ]
    # A flush holds at most 32 KiB of data, so array32 is only reached by the header:
    for n in (0, 15, 16, 65535, 65536, 70000):
        assert _array_header(n) == msgpack.packb([None] * n)[: len(_array_header(n))]


def test_a_sink_without_the_packed_path_gets_the_frames() -> None:
    class Plain:
        def __init__(self) -> None:
            self.batches: list[list[Frame]] = []

        def append_event(self, event: Event) -> None:
            pass

        def append_frames(self, session_id: str, frames: list[Frame]) -> None:
            self.batches.append(list(frames))

    sink = Plain()
    rec = SessionRecorder(sink, kind="pty")
    rec.output(b"\xff raw \x1b[0m")
    rec.resize(100, 30)
    rec.end(0)
    frames = [f for b in sink.batches for f in b]
    assert [(f.seq, f.kind, f.data) for f in frames] == [
        (0, "o", b"\xff raw \x1b[0m"),
        (1, "r", b"100x30"),
        (2, "x", b"0"),
    ]
    assert all(f.session_id == rec.session_id for f in frames)
