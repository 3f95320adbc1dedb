"""`kubectl exec -it` through the gateway, typed into a real PTY: the recording that
reaches Kafka (spool → session.frames, events.raw) holds exactly what the user saw,
the resizes, and the exit code, and is linked to the kube.request that opened it."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pexpect

from auditcast.collectors import session as session_mod
from auditcast.collectors import spool as spool_mod
from auditcast.events import Frame, decode_frames
from auditcast.kafka import start_consumer
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES
from tests.kube.conftest import running_kube_env, wait_until


async def read_topic(
    settings: Settings, name: str, until: Callable[[list[Any]], bool]
) -> list[Any]:
    consumer = await start_consumer(settings, [name], None)
    got: list[Any] = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not until(got):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                got.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return got


def record_through_spool(env: Any, settings: Settings) -> tuple[Any, list[Any]]:
    """The gateway records through a real spool; the recorders it made, for waiting."""
    spool = spool_mod.Spool(settings, "kube-gateway-test")
    env.gateway.call(spool.start())
    recorders: list[Any] = []

    def recorder(kind: str, **fields: Any) -> Any:
        rec = session_mod.SessionRecorder(spool, kind=kind, **fields)
        recorders.append(rec)
        return rec

    env.gateway.gateway.recorder = recorder
    env.gateway.gateway.sink = spool
    return spool, recorders


def deliver_recordings(env: Any, spool: Any, recorders: list[Any]) -> None:
    """kubectl exits when it has the exit status; the gateway ends the recording when it
    sees the stream close, a moment later on its own thread. Wait for that end, then
    for the spool to deliver everything, before closing it."""
    assert recorders and wait_until(lambda: all(r.ended for r in recorders), 15)
    assert env.gateway.call(spool.flush(10))
    env.gateway.call(spool.close(5))


def test_interactive_exec_is_recorded_exactly_as_the_user_saw_it(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    with running_kube_env(tmp_path) as env:
        spool, recorders = record_through_spool(env, settings)
        kenv = env.kubeconfig(env.mint.mint("alice"))
        screen = io.BytesIO()
        sh = pexpect.spawn(
            "kubectl",
            ["exec", "-it", "-n", "dev", "web-0", "--", "sh"],
            env=kenv,
            timeout=15,
            dimensions=(24, 80),
        )
        sh.logfile_read = screen
        sh.expect_exact("web-0$ ")
        sh.sendline("echo hello $((6*7))")
        sh.expect_exact("hello 42")
        sh.setwinsize(40, 120)
        time.sleep(0.3)  # the resize travels kubectl → gateway → shell
        sh.sendline("stty size")
        sh.expect_exact("40 120")
        sh.sendline("exit 5")
        sh.expect(pexpect.EOF)
        sh.close()
        assert sh.exitstatus == 5
        deliver_recordings(env, spool, recorders)

    events = [
        orjson.loads(v)
        for v in asyncio.run(
            read_topic(settings, EVENTS_RAW, lambda got: any(b"session.end" in v for v in got))
        )
    ]
    start = next(e for e in events if e["type"] == "session.start")
    end = next(e for e in events if e["type"] == "session.end")
    opened = next(
        e
        for e in events
        if e["type"] == "kube.request"
        and e.get("subresource") == "exec"
        and e.get("phase") == "start"
    )
    assert start["kube_request_id"] == opened["id"]
    assert (start["pod"], start["namespace"], start["cluster"]) == ("web-0", "dev", "dev-cluster")
    assert start["command"] == ["sh"] and start["user"] == "alice"
    assert end["exit_code"] == 5

    sid = start["session_id"]
    raw = asyncio.run(
        read_topic(
            settings,
            SESSION_FRAMES,
            lambda got: any(f.kind == "x" for v in got for f in decode_frames(v)),
        )
    )
    frames: list[Frame] = sorted(
        (f for v in raw for f in decode_frames(v) if f.session_id == sid), key=lambda f: f.seq
    )
    output = b"".join(f.data for f in frames if f.kind == "o")
    # The terminal showed the pod's output byte for byte, then kubectl's own line about
    # the exit status (which the recording carries as session.end exit_code).
    assert screen.getvalue() == output + b"command terminated with exit code 5\r\n"
    # as an asciicast v2 file, `asciinema cat` prints exactly that output
    cast = tmp_path / "exec.cast"
    lines = [orjson.dumps({"version": 2, "width": 80, "height": 24})]
    for f in frames:
        if f.kind in ("o", "r"):
            lines.append(orjson.dumps([f.t, f.kind, f.data.decode()]))
    cast.write_bytes(b"\n".join(lines) + b"\n")
    asciinema = Path(sys.executable).with_name("asciinema")
    shown = subprocess.run([str(asciinema), "cat", str(cast)], capture_output=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == output
    typed = b"".join(f.data for f in frames if f.kind == "i")
    assert typed == b"echo hello $((6*7))\nstty size\nexit 5\n"
    resizes = [f.data for f in frames if f.kind == "r"]
    assert resizes == [b"80x24", b"120x40"]  # kubectl's initial size, then the resize


def test_non_tty_exec_is_recorded_too(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    with running_kube_env(tmp_path) as env:
        spool, recorders = record_through_spool(env, settings)
        r = subprocess.run(
            [
                "kubectl",
                "exec",
                "-n",
                "dev",
                "web-0",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            env=env.kubeconfig(env.mint.mint("alice")),
            capture_output=True,
            timeout=30,
        )
        assert r.returncode == 3 and r.stdout == b"out\n"
        deliver_recordings(env, spool, recorders)

    events = [orjson.loads(v) for v in asyncio.run(read_topic(
        settings, EVENTS_RAW, lambda got: any(b"session.end" in v for v in got)
    ))]  # fmt: skip
    start = next(e for e in events if e["type"] == "session.start")
    end = next(e for e in events if e["type"] == "session.end")
    assert start["tty"] is False and start["command"] == [
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]
    assert end["exit_code"] == 3
    raw = asyncio.run(read_topic(settings, SESSION_FRAMES, lambda got: any(
        f.kind == "x" for v in got for f in decode_frames(v)
    )))  # fmt: skip
    output = b"".join(
        f.data
        for f in sorted((f for v in raw for f in decode_frames(v)), key=lambda f: f.seq)
        if f.kind == "o" and f.session_id == start["session_id"]
    )
    assert sorted(output.splitlines()) == [b"err", b"out"]  # stdout and stderr both kept
