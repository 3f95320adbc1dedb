"""`auditcast worker` against the real broker: events.raw → events.audit, alerts, dead-letter."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

import msgpack
import orjson
import pytest

from auditcast.broker import EmbeddedBroker
from auditcast.events import Event, Frame, Source, encode_frames, new_event_id
from auditcast.kafka import start_producer
from auditcast.settings import Settings
from auditcast.topics import (
    ALERTS,
    DEAD_LETTER,
    EVENTS_AUDIT,
    EVENTS_RAW,
    IDENTITIES,
    SESSION_FRAMES,
    topic,
)
from tests.streams.conftest import RunningWorker, read_topic, start_worker, stop_worker


async def produce(s: Settings, name: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = await start_producer(s)
    try:
        for key, value in records:
            await producer.send_and_wait(topic(s, name), key=key, value=value)
    finally:
        await producer.stop()


def audited(records: list[Any], ids: set[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in records:
        doc = orjson.loads(r.value)
        if doc["id"] in ids:
            out[doc["id"]] = doc
    return out


async def test_event_with_a_known_credential_is_attributed_to_its_sso_identity(
    worker: RunningWorker,
) -> None:
    s = worker.settings
    cred = f"cred-{new_event_id()}"
    identity = {"user": "alice", "sso_subject": "sub-a", "groups": ["dev"], "roles": ["developer"]}
    record = {
        "credential_id": cred,
        "kind": "kube-token",
        "identity": identity,
        "issued": "2026-11-28T00:00:00Z",
        "expires": "2099-01-01T00:00:00Z",
    }
    # The identity is published just before its first use, as `auditcast login` does.
    await produce(s, IDENTITIES, [(cred.encode(), orjson.dumps(record))])
    ev = Event(
        type="kube.request",
        user="alice",
        credential_id=cred,
        source=Source(collector="kube"),
        verb="get",
        resource="pods",
    )
    await produce(s, EVENTS_RAW, [(ev.key, ev.to_json())])

    got = await read_topic(s, EVENTS_AUDIT, lambda rs: ev.id in audited(rs, {ev.id}))
    doc = audited(got, {ev.id})[ev.id]
    assert doc["identity"]["user"] == "alice"
    assert doc["identity"]["roles"] == ["developer"]
    assert doc["verb"] == "get" and doc["resource"] == "pods"
    key = next(r.key for r in got if orjson.loads(r.value)["id"] == ev.id)
    assert key == ev.key


async def test_local_recording_is_attributed_to_the_os_user_and_end_gets_duration(
    worker: RunningWorker,
) -> None:
    s = worker.settings
    sid = new_event_id()
    start = Event(type="session.start", session_id=sid, user="bob", source=Source(collector="pty"))
    frames = [Frame(session_id=sid, seq=i, t=0.01 * i, kind="o", data=b"hello\n") for i in range(3)]
    await produce(s, EVENTS_RAW, [(start.key, start.to_json())])
    await produce(s, SESSION_FRAMES, [(sid.encode(), encode_frames(frames))])
    # Frames are counted on their own topic; give them a head start on session.end.
    await asyncio.sleep(1.0)
    end = Event(
        type="session.end", session_id=sid, user="bob", source=Source(collector="pty"), exit_code=3
    )
    await produce(s, EVENTS_RAW, [(end.key, end.to_json())])

    ids = {start.id, end.id}
    got = await read_topic(s, EVENTS_AUDIT, lambda rs: len(audited(rs, ids)) == 2)
    docs = audited(got, ids)
    assert docs[start.id]["identity"] == {"user": "bob", "groups": [], "roles": []}
    assert docs[end.id]["exit_code"] == 3
    assert docs[end.id]["frames"] == 3
    assert docs[end.id]["duration"] >= 0


async def test_unknown_credential_passes_unattributed_with_an_alert(worker: RunningWorker) -> None:
    s = worker.settings
    ev = Event(
        type="kube.request",
        user="eve",
        credential_id=f"forged-{new_event_id()}",
        source=Source(collector="kube"),
    )
    await produce(s, EVENTS_RAW, [(ev.key, ev.to_json())])

    got = await read_topic(s, EVENTS_AUDIT, lambda rs: ev.id in audited(rs, {ev.id}))
    assert "identity" not in audited(got, {ev.id})[ev.id]

    def has_alert(rs: list[Any]) -> bool:
        return any(orjson.loads(r.value).get("event_id") == ev.id for r in rs)

    alerts = await read_topic(s, ALERTS, has_alert)
    alert = next(
        orjson.loads(r.value) for r in alerts if orjson.loads(r.value).get("event_id") == ev.id
    )
    assert alert["type"] == "audit.unattributed" and alert["code"] == "AC3100W"
    assert alert["user"] == "eve" and alert["credential_id"] == ev.credential_id


MALFORMED_EVENTS = {
    "not-json": b"\x00\x01 not json",
    "not-an-object": b"[1, 2, 3]",
    "missing-type": orjson.dumps({"id": "x", "user": "u"}),
    "wrong-type": orjson.dumps({"type": "session.start", "labels": "not-a-map"}),
    "unknown-type": orjson.dumps({"type": "no.such.event"}),
    "oversized": orjson.dumps({"type": "kube.request", "pad": "x" * (1024 * 1024 + 10)}),
    "null": None,
}


async def test_malformed_records_go_to_dead_letter_and_the_worker_keeps_going(
    worker: RunningWorker,
) -> None:
    s = worker.settings
    marker = new_event_id()
    bad_events = [(f"{marker}-{name}".encode(), v) for name, v in MALFORMED_EVENTS.items()]
    bad_frames = [
        (f"{marker}-frames-garbage".encode(), b"\xc1\xc1 not msgpack"),
        (f"{marker}-frames-fields".encode(), msgpack.packb([{"session_id": "s", "seq": -1}])),
    ]
    good = Event(
        type="session.start", session_id=marker, user="bob", source=Source(collector="pty")
    )
    await produce(s, EVENTS_RAW, [*bad_events, (good.key, good.to_json())])
    await produce(s, SESSION_FRAMES, bad_frames)

    want = len(bad_events) + len(bad_frames)

    def mine(rs: list[Any]) -> list[Any]:
        return [r for r in rs if r.key and r.key.decode().startswith(marker)]

    dead = mine(await read_topic(s, DEAD_LETTER, lambda rs: len(mine(rs)) >= want))
    assert len(dead) == want
    by_key = {r.key.decode().removeprefix(f"{marker}-"): dict(r.headers) for r in dead}
    for name in [*MALFORMED_EVENTS, "frames-garbage", "frames-fields"]:
        headers = by_key[name]
        source = SESSION_FRAMES if name.startswith("frames") else EVENTS_RAW
        assert headers["source_topic"] == topic(s, source).encode()
        assert int(headers["source_offset"]) >= 0
        assert headers["error"], name
    assert b"exceeds" in by_key["oversized"]["error"]
    not_json = next(r for r in dead if r.key.decode().endswith("-not-json"))
    assert not_json.value == MALFORMED_EVENTS["not-json"]

    # ... and the good event behind them still made it through.
    got = await read_topic(s, EVENTS_AUDIT, lambda rs: good.id in audited(rs, {good.id}))
    assert good.id in audited(got, {good.id})
    assert worker.proc.poll() is None
    assert '"offset"' in worker.log() and "malformed record sent to dead-letter" in worker.log()


@pytest.mark.slow
async def test_worker_exits_when_the_embedded_broker_comes_back_empty(tmp_path: Any) -> None:
    """The broker loses everything when it dies; the worker must not sit on dead state."""
    from tests.helpers.broker import isolated_settings

    b = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    await b.start()
    try:
        s = await asyncio.to_thread(isolated_settings, tmp_path / "home", b.bootstrap)
        w = await asyncio.to_thread(start_worker, s, tmp_path / "worker.log")
        try:
            b.kill()
            await b.start()  # same port, new cluster id, no topics
            code = await asyncio.to_thread(w.proc.wait, 60)
            assert code == 75, w.log()[-2000:]
            assert "broker restarted empty" in w.log()
            assert not (s.run_dir / "worker.ready").exists()
        finally:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait()
    finally:
        b.stop()


async def test_worker_stops_cleanly_on_sigint(broker: EmbeddedBroker, tmp_path: Any) -> None:
    from tests.helpers.broker import isolated_settings

    s = await asyncio.to_thread(isolated_settings, tmp_path / "home", broker.bootstrap)
    w = await asyncio.to_thread(start_worker, s, tmp_path / "worker.log")
    code = await asyncio.to_thread(stop_worker, w)
    assert code == 0, w.log()[-2000:]
    assert not (s.run_dir / "worker.ready").exists()
    assert isinstance(w.proc, subprocess.Popen)


async def test_two_workers_split_the_partitions_and_every_session_keeps_its_summary(
    broker: EmbeddedBroker, tmp_path: Any
) -> None:
    """The batched events.raw path follows Faust's assignment: when a second worker
    joins, each owns some partitions, no event is left behind, and a session whose
    partition moved still gets its duration (the new owner recovered the table the old
    owner's hot path wrote)."""
    import re

    from tests.helpers.broker import isolated_settings

    s = await asyncio.to_thread(
        isolated_settings, tmp_path / "home", broker.bootstrap, partitions=2
    )
    sessions = [new_event_id() for _ in range(40)]
    starts = [
        Event(type="session.start", session_id=sid, user="bob", source=Source(collector="pty"))
        for sid in sessions
    ]
    one = await asyncio.to_thread(start_worker, s, tmp_path / "one.log")
    two = None
    try:
        await produce(s, EVENTS_RAW, [(e.key, e.to_json()) for e in starts])
        got = await read_topic(s, EVENTS_AUDIT, lambda rs: len(rs) >= len(starts), timeout=30)
        assert len(audited(got, {e.id for e in starts})) == len(starts)

        two = await asyncio.to_thread(start_worker, s, tmp_path / "two.log")

        def owned(w: RunningWorker) -> set[int]:
            lines = re.findall(r"owning \S+ partitions \[([\d, ]*)\]", w.log())
            return {int(p) for p in lines[-1].split(",") if p.strip()} if lines else set()

        def split() -> bool:
            return owned(one) | owned(two) == {0, 1} and not owned(one) & owned(two)

        deadline = asyncio.get_running_loop().time() + 60
        while not (split() and owned(one) and owned(two)):
            assert asyncio.get_running_loop().time() < deadline, (
                one.log()[-1500:],
                two.log()[-1500:],
            )
            await asyncio.sleep(0.5)

        ends = [
            Event(type="session.end", session_id=sid, user="bob", source=Source(collector="pty"))
            for sid in sessions
        ]
        await produce(s, EVENTS_RAW, [(e.key, e.to_json()) for e in ends])
        ids = {e.id for e in ends}
        got = await read_topic(
            s, EVENTS_AUDIT, lambda rs: len(audited(rs, ids)) == len(ids), timeout=60
        )
        docs = audited(got, ids)
        assert len(docs) == len(ends)
        missing = [d["session_id"] for d in docs.values() if "duration" not in d]
        assert not missing, (missing, one.log()[-3000:], two.log()[-3000:])
    finally:
        for w in (one, two):
            if w is not None:
                stop_worker(w)
