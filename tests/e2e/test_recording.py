"""One recording from a terminal to a file asciinema plays, through a real `auditcast up`
(embedded broker, worker, stores, spool drainer), including broker failures mid-session.

Everything goes through the CLI verbs a user runs: `auditcast rec`, `auditcast sessions
ls --json`, `auditcast events search --json`, `auditcast export`, and asciinema's own
`asciinema cat` reads the exported file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from auditcast.cli import COMMANDS
from tests.e2e.conftest import ASCIINEMA, AUDITCAST, Up

SUMMARY = re.compile(rb"session (\S+) recorded")
NEEDED_VERBS = ("rec", "sessions", "events", "export", "store", "spool")
# How long the pipeline may take to land a recording in the stores (broker restarts
# included: up's backoff, a fresh worker's group join, the spool's replay).
LANDING_TIMEOUT_S = 120.0


@pytest.fixture
def pipeline(up: Up) -> Up:
    missing = [v for v in NEEDED_VERBS if v not in COMMANDS]
    if missing:
        pytest.skip(f"verbs not built yet: {', '.join(missing)}")
    # A previous test may have restarted the broker: the store rejoins after it.
    deadline = time.monotonic() + 90
    while not all(up.service(n)["state"] == "ready" for n in ("worker", "store", "spool")):
        assert time.monotonic() < deadline, up.status()
        time.sleep(0.3)
    return up


def rec(
    up: Up, *command: str, timeout: float = 120
) -> tuple[str, subprocess.CompletedProcess[bytes]]:
    done = subprocess.run(
        [AUDITCAST, "rec", "--", *command],
        env=up.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    m = SUMMARY.search(done.stderr)
    assert m, done.stderr.decode(errors="replace")
    return m.group(1).decode(), done


def session_row(up: Up, session_id: str) -> dict[str, Any] | None:
    out = up.cli("sessions", "ls", "--json")
    assert out.returncode == 0, out.stderr.decode()
    doc = orjson.loads(out.stdout)
    rows = doc if isinstance(doc, list) else doc.get("sessions", [])
    for row in rows:
        if session_id in (row.get("session_id"), row.get("id")):
            return dict(row)
    return None


def wait_for_session(up: Up, session_id: str, timeout: float = LANDING_TIMEOUT_S) -> dict[str, Any]:
    """The session as `sessions ls` shows it, once it has ended (exit code known)."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        row = session_row(up, session_id)
        if row is not None and row.get("exit_code") is not None:
            return row
        time.sleep(0.5)
    raise AssertionError(
        f"session {session_id} not complete in `sessions ls`: {row}\n{up.log('store')[-3000:]}"
    )


def export_and_cat(up: Up, session_id: str, tmp_path: Path) -> bytes:
    cast = tmp_path / f"{session_id}.cast"
    out = up.cli("export", session_id, "-o", str(cast))
    assert out.returncode == 0, out.stderr.decode()
    header = orjson.loads(cast.read_bytes().split(b"\n", 1)[0])
    assert header["version"] == 2
    played = subprocess.run(
        [ASCIINEMA, "cat", str(cast)], capture_output=True, timeout=60, check=False
    )
    assert played.returncode == 0, played.stderr.decode()
    return played.stdout


def session_events(up: Up, session_id: str) -> list[dict[str, Any]]:
    out = up.cli("events", "search", "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr.decode()
    doc = orjson.loads(out.stdout)
    rows = doc if isinstance(doc, list) else doc.get("events", [])
    return [r for r in rows if r.get("session_id") == session_id]


def test_recorded_command_shows_its_exit_code_and_exports_byte_exact(
    pipeline: Up, tmp_path: Path
) -> None:
    session_id, done = rec(pipeline, "bash", "-c", 'printf "hello\\n"; exit 3')
    assert done.returncode == 3
    row = wait_for_session(pipeline, session_id)
    assert row["exit_code"] == 3
    # The PTY turns "\n" into "\r\n": that is what the command wrote to its terminal.
    assert export_and_cat(pipeline, session_id, tmp_path) == b"hello\r\n"
    types = Counter(e["type"] for e in session_events(pipeline, session_id))
    assert types["session.start"] == 1 and types["session.end"] == 1
    end = next(e for e in session_events(pipeline, session_id) if e["type"] == "session.end")
    assert end["identity"]["user"] == end["user"]  # attributed to the OS user


def _expected_lines(n: int) -> bytes:
    return b"".join(b"line %03d\r\n" % i for i in range(1, n + 1))


LINES = 40
SCRIPT = f'for i in $(seq 1 {LINES}); do printf "line %03d\\n" $i; sleep 0.1; done'


def _broker_pid(up: Up) -> int:
    pid = up.service("broker")["pid"]
    assert pid, up.status()
    return int(pid)


def _wait_pipeline_ready(up: Up, old_broker_pid: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b, w = up.service("broker"), up.service("worker")
        if (
            b["pid"] not in (None, old_broker_pid)
            and b["state"] == "ready"
            and w["state"] == "ready"
        ):
            return
        time.sleep(0.3)
    raise AssertionError(f"pipeline not back: {up.status()}")


def _record_through_broker_failure(up: Up, failure: str) -> str:
    proc = subprocess.Popen(
        [AUDITCAST, "rec", "--", "bash", "-c", SCRIPT],
        env=up.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # a second into a four-second session
    pid = _broker_pid(up)
    if failure == "killed":
        os.kill(pid, signal.SIGKILL)
    elif failure == "stopped":
        os.kill(pid, signal.SIGTERM)
    elif failure == "paused":
        os.kill(pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out == _expected_lines(LINES)  # the user's terminal never noticed
    m = SUMMARY.search(err)
    assert m, err
    if failure in ("killed", "stopped"):
        _wait_pipeline_ready(up, pid)
    return m.group(1).decode()


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["killed", "stopped", "paused"])
def test_broker_failure_mid_recording_loses_nothing_and_stores_nothing_twice(
    pipeline: Up, tmp_path: Path, failure: str
) -> None:
    session_id = _record_through_broker_failure(pipeline, failure)
    row = wait_for_session(pipeline, session_id)
    assert row["exit_code"] == 0
    assert export_and_cat(pipeline, session_id, tmp_path) == _expected_lines(LINES)
    events = session_events(pipeline, session_id)
    ids = Counter(e["id"] for e in events)
    assert all(n == 1 for n in ids.values()), ids
    types = Counter(e["type"] for e in events)
    assert types["session.start"] == 1 and types["session.end"] == 1, types


def _read_session_from_topics(
    up: Up, session_id: str, timeout: float = 60
) -> tuple[list[dict[str, Any]], bytes]:
    """session events on `events.audit` and the output bytes on `session.frames`,
    read straight from up's embedded broker (what the stores will consume)."""
    import asyncio

    from auditcast.events import decode_frames
    from auditcast.kafka import start_consumer
    from auditcast.settings import Settings
    from auditcast.topics import EVENTS_AUDIT, SESSION_FRAMES

    async def read() -> tuple[list[dict[str, Any]], bytes]:
        s = Settings(home=up.home)
        consumer = await start_consumer(s, [EVENTS_AUDIT, SESSION_FRAMES], group_id=None)
        events: dict[str, dict[str, Any]] = {}
        frames: dict[int, Any] = {}
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                    for r in records:
                        if tp.topic.endswith(SESSION_FRAMES):
                            for f in decode_frames(r.value):
                                if f.session_id == session_id:
                                    frames[f.seq] = f
                        else:
                            doc = orjson.loads(r.value)
                            if doc.get("session_id") == session_id:
                                events[doc["id"]] = doc
                types = {e["type"] for e in events.values()}
                if {"session.start", "session.end"} <= types and any(
                    f.kind == "x" for f in frames.values()
                ):
                    break
        finally:
            await consumer.stop()
        output = b"".join(frames[k].data for k in sorted(frames) if frames[k].kind == "o")
        return list(events.values()), output

    return asyncio.run(read())


def test_recorded_session_reaches_the_audit_log_attributed_to_the_os_user(up: Up) -> None:
    if up.service("spool")["state"] == "not available":
        pytest.skip("spool drainer not built yet")
    session_id, done = rec(up, "bash", "-c", 'printf "hello\\n"; exit 3')
    assert done.returncode == 3
    events, output = _read_session_from_topics(up, session_id)
    by_type = {e["type"]: e for e in events}
    assert set(by_type) >= {"session.start", "session.end"}, events
    end = by_type["session.end"]
    assert end["exit_code"] == 3
    assert end["identity"]["user"] == end["user"]
    assert "duration" in end
    assert output == b"hello\r\n"
