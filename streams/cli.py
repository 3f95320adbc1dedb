"""`auditcast worker`: run the Faust stream processors (attribution, session assembly).

Readiness: once partitions are assigned and tables recovered, the worker logs
"worker ready" and writes `$AUDITCAST_HOME/run/worker.ready` (JSON: pid, cluster id,
group). `auditcast up` and test fixtures wait for that file instead of sleeping.

The embedded broker keeps everything in memory: if it dies and comes back (a new
cluster id), this worker's groups, offsets and table changelogs are gone. The worker
then exits with EXIT_BROKER_CHANGED and `auditcast up` starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Final

import click
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from auditcast import gc_tuning
from auditcast.cli._util import run, settings
from auditcast.errors import BrokerUnavailable
from auditcast.kafka import cluster_info, ensure_topics, resolve_bootstrap
from auditcast.logs import setup_logging
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES, topic

log = logging.getLogger("auditcast.streams.worker")

# Distinct from Faust's own failure exit (1): "the broker I was on is gone, restart me".
EXIT_BROKER_CHANGED: Final = 75
# How often the worker checks that its broker is still the one it started on.
WATCH_INTERVAL_S: Final = 2.0
# A stop that hangs (e.g. flushing to a broker that vanished) is cut short after this.
STOP_DEADLINE_S: Final = 15.0


def ready_file(s: Settings) -> Path:
    return s.run_dir / "worker.ready"


class BrokerChanged(BrokerUnavailable):
    """The broker answers with a different cluster id than at start: it restarted empty."""


async def _prepare(s: Settings) -> tuple[str, str, int]:
    bootstrap = resolve_bootstrap(s)
    info = await cluster_info(bootstrap)
    await ensure_topics(s, bootstrap)
    return bootstrap, info.cluster_id, await _partitions(s, bootstrap)


async def _partitions(s: Settings, bootstrap: str) -> int:
    """How many partitions `events.raw` really has: the session table and its changelog
    must match it. It can differ from settings: Tansu creates a topic a client merely
    asks about with 4 partitions, so a collector that reconnects to a restarted broker
    before the topics are made again decides the count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [topic(s, EVENTS_RAW), topic(s, SESSION_FRAMES)]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    if len(set(counts.values())) != 1:
        raise BrokerUnavailable(
            f"events.raw and session.frames must have the same partition count: {counts}",
            hint="recreate the topics (session assembly joins them by session id)",
        )
    n = counts[names[0]]
    if n != s.partitions:
        log.warning(
            "topic partition count differs from settings; following the topics",
            extra={"fields": {"topics": n, "settings": s.partitions}},
        )
    return n


def _hard_exit_later(code: int) -> None:
    """Exit even if a clean stop hangs on a broker that is gone."""

    def _exit() -> None:
        os._exit(code)

    t = threading.Timer(STOP_DEADLINE_S, _exit)
    t.daemon = True
    t.start()


def run_worker(s: Settings) -> int:
    """Run until stopped; returns the process exit code."""
    import faust  # imported here: Faust is slow to import and only this verb needs it

    from auditcast.streams.app import StreamsApp, app_id

    bootstrap, cluster_id, partitions = run(_prepare(s))
    s = s.model_copy(update={"partitions": partitions})
    gc_tuning.for_batches()
    streams = StreamsApp(s, bootstrap)
    app = streams.app
    ready = ready_file(s)
    ready.unlink(missing_ok=True)
    exit_code = 0

    async def mark_ready() -> None:
        await streams.ready.wait()
        tmp = ready.with_suffix(".tmp")
        tmp.write_bytes(
            orjson.dumps({"pid": os.getpid(), "cluster_id": cluster_id, "group": app_id(s)})
        )
        tmp.replace(ready)
        log.info("worker ready", extra={"fields": {"cluster_id": cluster_id}})

    async def watch_broker() -> None:
        nonlocal exit_code
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                now = await cluster_info(resolve_bootstrap(s), timeout=WATCH_INTERVAL_S)
            except BrokerUnavailable as e:
                log.warning("broker unreachable", extra={"fields": {"error": e.message}})
                continue
            if now.cluster_id != cluster_id:
                log.error(
                    "broker restarted empty; exiting so a fresh worker rejoins it",
                    extra={"fields": {"was": cluster_id, "now": now.cluster_id}},
                )
                exit_code = EXIT_BROKER_CHANGED
                ready.unlink(missing_ok=True)
                _hard_exit_later(EXIT_BROKER_CHANGED)
                await app.crash(BrokerChanged(f"broker {cluster_id} was replaced"))
                return

    app.task(mark_ready)
    app.task(watch_broker)
    worker = faust.Worker(app, quiet=True, loglevel=s.log_level, override_logging=False)
    setup_logging(s.log_level)
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        return exit_code or code
    finally:
        ready.unlink(missing_ok=True)
    return exit_code


@click.command()
def worker() -> None:
    """Run the stream processors: events.raw → attribution → events.audit.

    Writes $AUDITCAST_HOME/run/worker.ready once it consumes. Exits with code 75 when
    the embedded broker restarted empty (`auditcast up` restarts the worker).
    """
    s = settings()
    setup_logging(s.log_level)
    code = run_worker(s)
    with contextlib.suppress(Exception):
        logging.shutdown()
    raise SystemExit(code)
