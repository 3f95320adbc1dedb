"""`auditcast up`: one supervised process tree on the embedded broker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from auditcast.broker import EmbeddedBroker
from auditcast.events import Event, Source
from auditcast.kafka import cluster_info, start_consumer, start_producer
from auditcast.settings import Settings
from auditcast.topics import EVENTS_AUDIT, EVENTS_RAW, topic
from tests.e2e.conftest import (
    Up,
    kill_leftovers,
    processes_of_home,
    start_up,
    stop_up,
)


def settings_of(up: Up) -> Settings:
    return Settings(home=up.home)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, StopIteration):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_up_on_a_fresh_home_starts_and_stops_on_sigint_leaving_nothing(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    assert not home.exists()
    up = start_up(home)
    try:
        rows = {r["name"]: r for r in up.started["services"]}
        assert rows["broker"]["state"] == "ready"
        assert rows["worker"]["state"] == "ready"
        assert (home / "run" / "broker.json").exists()
        assert (home / "logs" / "broker.log").exists() and (home / "logs" / "worker.log").exists()
        # Every started child is alive and recorded with its pid and log.
        for r in rows.values():
            if r["state"] in ("ready", "starting"):
                assert r["pid"] and os.path.exists(f"/proc/{r['pid']}"), r
        tree = processes_of_home(home)
        assert len(tree) >= 3, tree  # up, broker, worker at least
    finally:
        code = stop_up(up)
    time.sleep(0.2)
    left = kill_leftovers(home)
    assert left == [], f"left running after SIGINT: {left}"
    assert code == 0, up.out_path.read_text()[-2000:]
    assert not (home / "run" / "broker.json").exists()
    assert not (home / "run" / "up.json").exists()


@pytest.mark.slow
def test_up_killed_outright_takes_its_children_with_it_and_the_home_starts_again(
    tmp_path: Path,
) -> None:
    """SIGKILL runs none of `up`'s code: the kernel's parent-death signal stops the
    broker and every service (each with its ordinary SIGTERM stop), instead of leaving
    them holding the ports and the audit log; a new `up` on the same home then starts."""
    home = tmp_path / "killed"
    up = start_up(home)
    try:
        children = {r["name"]: r["pid"] for r in up.started["services"] if r["state"] == "ready"}
        assert {"broker", "worker", "store"} <= set(children), children
        up.proc.kill()
        up.proc.wait()
        # a worker's stop (Faust leaving its group) takes a few seconds
        wait_for(lambda: processes_of_home(home) == [], 30, "every child of up gone")
        # the broker.json it left names a broker that is gone: clients say so at once
        topics = up.cli("topics", "create", timeout=30)
        assert topics.returncode != 0
        assert b"is gone" in topics.stderr and b"auditcast up" in topics.stderr, topics.stderr
        again = start_up(home, AUDITCAST_BROKER_PORT=up.env["AUDITCAST_BROKER_PORT"])
        code = stop_up(again)
        assert code == 0, again.out_path.read_text()[-2000:]
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
        left = kill_leftovers(home)
    assert left == [], f"left running: {left}"


def test_a_second_up_on_the_same_home_is_refused(up: Up) -> None:
    second = up.cli("up", timeout=30)
    assert second.returncode == 2
    assert b"already running" in second.stderr
    assert up.proc.poll() is None


def test_status_json_names_what_runs_where(up: Up) -> None:
    status = up.status()
    assert status["pid"] == up.proc.pid
    names = [r["name"] for r in status["services"]]
    assert names[:2] == ["broker", "worker"]
    broker = status["services"][0]
    assert broker["address"] == f"127.0.0.1:{up.env['AUDITCAST_BROKER_PORT']}"
    for r in status["services"]:
        assert r["state"] in {
            "ready",
            "starting",
            "restarting",
            "failing",
            "not available",
            "not configured",
        }, r
        if r["state"] == "not available":
            assert r["pid"] is None and r["log"] is None


async def _attributed_roundtrip(s: Settings, ev: Event, timeout: float = 30) -> dict[str, object]:
    producer = await start_producer(s)
    try:
        await producer.send_and_wait(topic(s, EVENTS_RAW), key=ev.key, value=ev.to_json())
    finally:
        await producer.stop()
    consumer = await start_consumer(s, [EVENTS_AUDIT], group_id=None)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    doc: dict[str, object] = orjson.loads(r.value)
                    if doc["id"] == ev.id:
                        return doc
    finally:
        await consumer.stop()
    raise AssertionError(f"event {ev.id} never reached events.audit")


@pytest.mark.slow
def test_killed_embedded_broker_is_restarted_and_the_pipeline_flows_again(up: Up) -> None:
    s = settings_of(up)
    before = up.service("broker")
    old_cluster = orjson.loads((up.home / "run" / "broker.json").read_bytes())["cluster_id"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> bool:
        b = up.service("broker")
        w = up.service("worker")
        return (
            b["pid"] != before["pid"]
            and b["state"] == "ready"
            and b["restarts"] >= 1
            and w["state"] == "ready"
        )

    wait_for(restarted, 90, "broker and worker back")
    published = orjson.loads((up.home / "run" / "broker.json").read_bytes())
    assert published["cluster_id"] != old_cluster
    assert published["bootstrap"] == before["address"]
    info = asyncio.run(cluster_info(published["bootstrap"]))
    assert info.cluster_id == published["cluster_id"]
    # The topics exist again and a fresh worker moves events.
    ev = Event(
        type="session.start",
        session_id=f"after-restart-{time.time()}",
        user="carol",
        source=Source(collector="pty"),
    )
    doc = asyncio.run(_attributed_roundtrip(s, ev))
    assert doc["identity"] == {"user": "carol", "groups": [], "roles": []}
    assert "broker died" in up.log("up")


@pytest.mark.slow
def test_a_service_that_dies_is_restarted_by_up(up: Up) -> None:
    before = up.service("worker")
    assert before["state"] == "ready"
    os.killpg(before["pid"], signal.SIGKILL)  # each child leads its own process group

    def back() -> bool:
        w = up.service("worker")
        return w["pid"] not in (None, before["pid"]) and w["state"] == "ready"

    wait_for(back, 90, "worker restarted and ready")
    after = up.service("worker")
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_exit"] == -signal.SIGKILL


@pytest.mark.slow
def test_up_on_an_external_kafka_starts_no_broker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    home = tmp_path / "external"
    prefix = f"ext{time.monotonic_ns()}."
    up = start_up(home, AUDITCAST_KAFKA=broker.bootstrap, AUDITCAST_TOPIC_PREFIX=prefix)
    try:
        rows = {r["name"]: r for r in up.started["services"]}
        assert rows["broker"]["state"] == "external" and rows["broker"]["pid"] is None
        assert rows["broker"]["address"] == broker.bootstrap
        assert rows["worker"]["state"] == "ready"
        assert not (home / "run" / "broker.json").exists()
        topics = asyncio.run(_topics(broker.bootstrap))
        assert {f"{prefix}events.raw", f"{prefix}identities"} <= topics
        assert not any("tansu" in cmd for _, cmd in processes_of_home(home))
    finally:
        code = stop_up(up)
    assert kill_leftovers(home) == []
    assert code == 0


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
