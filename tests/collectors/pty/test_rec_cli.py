"""`auditcast rec` end to end: a real subprocess on real PTYs, recording through the
spool into the session broker, read back from `session.frames` and `events.raw`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pexpect
import pytest

from auditcast.broker import free_port
from auditcast.events import Event, Frame, decode_event, decode_frames
from auditcast.kafka import start_consumer
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES
from tests.collectors.pty.bare_pty import bare_pty_output

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
SUMMARY = re.compile(rb"session (\S+) recorded \(exit code (\d+)")


def run_rec(
    env: dict[str, str], *args: str, timeout: float = 120, stdin: int = subprocess.DEVNULL
) -> subprocess.CompletedProcess[bytes]:
    """`auditcast rec ARGS` with stdin /dev/null and stdout a pipe (no terminal at all)."""
    return subprocess.run(
        [AUDITCAST, "rec", *args],
        stdin=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def session_id_of(stderr: bytes) -> str:
    m = SUMMARY.search(stderr)
    assert m, f"no session summary in {stderr!r}"
    return m.group(1).decode()


async def read_frames(settings: Settings, session_id: str, timeout: float = 60) -> list[Frame]:
    """All frames of one session from `session.frames`, in seq order, up to its `x`."""
    consumer = await start_consumer(settings, [SESSION_FRAMES], group_id=None)
    frames: dict[int, Frame] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batches.values():
                for rec in records:
                    for f in decode_frames(rec.value):
                        if f.session_id == session_id:
                            frames[f.seq] = f
            if any(f.kind == "x" for f in frames.values()):
                last = max(frames)
                if len(frames) == last + 1:  # every seq from 0 to the exit frame
                    break
    finally:
        await consumer.stop()
    ordered = [frames[s] for s in sorted(frames)]
    assert ordered and ordered[-1].kind == "x", "the recording never ended on the topic"
    assert [f.seq for f in ordered] == list(range(len(ordered))), "frames lost"
    return ordered


async def read_events(settings: Settings, session_id: str, timeout: float = 60) -> list[Event]:
    consumer = await start_consumer(settings, [EVENTS_RAW], group_id=None)
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not any(e.type == "session.end" for e in events):
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                events += [
                    e for r in records if (e := decode_event(r.value)).session_id == session_id
                ]
    finally:
        await consumer.stop()
    return events


def output_of(frames: list[Frame]) -> bytes:
    return b"".join(f.data for f in frames if f.kind == "o")


@pytest.fixture
def rec_env(
    make_settings: Callable[..., Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> tuple[Settings, dict[str, str]]:
    s = make_settings()
    return s, cli_env(s)


async def test_rec_exits_with_the_command_code_and_records_exactly_its_output(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = rec_env
    argv = ["bash", "-c", 'printf "hello\\n"; exit 3']
    done = await asyncio.to_thread(run_rec, env, "--title", "greeting", "--", *argv)
    assert done.returncode == 3, done.stderr
    bare, _ = bare_pty_output(argv)
    assert bare == b"hello\r\n"
    assert done.stdout == bare  # what the user saw
    session_id = session_id_of(done.stderr)
    assert b"(exit code 3)" in done.stderr

    frames = await read_frames(settings, session_id)
    assert output_of(frames) == bare
    assert frames[-1].kind == "x" and frames[-1].data == b"3"
    assert not [f for f in frames if f.kind == "i"]

    events = await read_events(settings, session_id)
    start = next(e for e in events if e.type == "session.start")
    end = next(e for e in events if e.type == "session.end")
    assert start.user == os.environ.get("USER", start.user) and start.source is not None
    assert start.source.collector == "pty"
    extra = start.model_extra or {}
    assert extra.get("command") == "bash -c 'printf \"hello\\n\"; exit 3'"
    assert extra.get("title") == "greeting"
    assert (end.model_extra or {}).get("exit_code") == 3


async def test_invalid_utf8_and_escape_sequences_survive_byte_exact(
    rec_env: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, env = rec_env
    payload = b"\xff\xfe\xc3(\x1b[1;31mbold red\x1b[0m\x1b]0;t\x07\xe2\x82\n\x00\x9b\x1bP+q\x1b\\"
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    argv = ["bash", "-c", f"cat {src}; printf '\\xc3'; printf '\\xa9\\n'"]
    done = await asyncio.to_thread(run_rec, env, "--", *argv)
    assert done.returncode == 0, done.stderr
    bare, _ = bare_pty_output(argv)
    assert b"\r\n" in bare and b"\xff\xfe" in bare  # the PTY's own translation, kept as is
    frames = await read_frames(settings, session_id_of(done.stderr))
    assert output_of(frames) == bare == done.stdout


async def test_50_mb_burst_arrives_complete_in_seq_order(
    rec_env: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, env = rec_env
    src = tmp_path / "burst.bin"
    src.write_bytes(os.urandom(50 * 1024 * 1024))
    # Raw output mode: the PTY passes every byte through, so the recording must equal
    # the file itself. Stdin stays open (a pipe nobody writes to): at EOF of stdin rec
    # types ^D into the PTY, and if that lands before `stty raw` the line discipline
    # echoes "^D" in front of the file (seen once in CI: the terminal and the recording
    # both began with it, correctly, but then they do not equal the file).
    quiet_stdin, keep_open = os.pipe()
    try:
        done = await asyncio.to_thread(
            run_rec, env, "--", "bash", "-c", f"stty raw; cat {src}", stdin=quiet_stdin
        )
    finally:
        os.close(quiet_stdin)
        os.close(keep_open)
    assert done.returncode == 0, done.stderr[-500:]
    expected = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(done.stdout).hexdigest() == expected
    frames = await read_frames(settings, session_id_of(done.stderr), timeout=120)
    recorded = output_of(frames)
    assert len(recorded) == src.stat().st_size
    assert hashlib.sha256(recorded).hexdigest() == expected
    assert all(a.t <= b.t for a, b in itertools.pairwise(frames))


def spawn_rec(env: dict[str, str], *args: str) -> pexpect.spawn:
    """`auditcast rec ARGS` on a terminal of its own (80x24), like a user runs it."""
    return pexpect.spawn(AUDITCAST, ["rec", *args], env=env, dimensions=(24, 80), timeout=30)


async def test_resize_is_recorded_and_seen_by_the_command(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = rec_env
    child = spawn_rec(env, "--", "bash", "-c", "stty size; read -r x; stty size")
    await asyncio.to_thread(child.expect_exact, "24 80")
    child.setwinsize(30, 100)  # the terminal emulator resized: SIGWINCH to rec
    await asyncio.sleep(0.3)
    child.sendline("go")
    await asyncio.to_thread(child.expect_exact, "30 100")
    await asyncio.to_thread(child.expect, pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    session_id = session_id_of(child.before)
    frames = await read_frames(settings, session_id)
    assert [f.data for f in frames if f.kind == "r"] == [b"100x30"]
    out = output_of(frames)
    assert out.startswith(b"24 80\r\n") and out.endswith(b"30 100\r\n")
    r_at = next(i for i, f in enumerate(frames) if f.kind == "r")
    assert b"30 100" in b"".join(f.data for f in frames[r_at:] if f.kind == "o")


async def test_stdin_flag_records_typed_input_and_its_absence_records_none(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = rec_env
    script = 'read -r x; echo "got $x"'
    seen: dict[bool, list[Frame]] = {}
    for capture in (True, False):
        args = ["--stdin"] if capture else []
        child = spawn_rec(env, *args, "--", "bash", "-c", script)
        await asyncio.sleep(0.3)
        child.sendline("typed-secret")
        await asyncio.to_thread(child.expect_exact, "got typed-secret")
        await asyncio.to_thread(child.expect, pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        seen[capture] = await read_frames(settings, session_id_of(child.before))
    typed = b"".join(f.data for f in seen[True] if f.kind == "i")
    assert typed == b"typed-secret\n"
    assert not [f for f in seen[False] if f.kind == "i"]
    assert b"got typed-secret" in output_of(seen[False])  # output is recorded either way


async def test_json_flag_prints_the_session_for_scripts(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    _, env = rec_env
    done = await asyncio.to_thread(run_rec, env, "--json", "--", "bash", "-c", "exit 7")
    assert done.returncode == 7
    doc = orjson.loads(done.stdout)
    assert doc["exit_code"] == 7 and doc["delivered"] is True
    assert re.fullmatch(r"[0-9a-f-]{36}", doc["session_id"])


async def test_both_command_forms_at_once_is_a_usage_error(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    _, env = rec_env
    done = await asyncio.to_thread(run_rec, env, "--command", "true", "--", "true")
    assert done.returncode == 2
    assert b"either with --command or after --" in done.stderr


async def test_unknown_command_says_so_and_exits_127(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    _, env = rec_env
    done = await asyncio.to_thread(run_rec, env, "--", "no-such-command-xyz")
    assert done.returncode == 127
    assert b"cannot run no-such-command-xyz" in done.stderr


async def test_rec_works_with_the_broker_unreachable_and_keeps_the_session_spooled(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = rec_env
    offline = {**env, "AUDITCAST_KAFKA": f"127.0.0.1:{free_port()}"}
    t0 = time.monotonic()
    done = await asyncio.to_thread(run_rec, offline, "--", "bash", "-c", "echo offline; exit 5")
    assert done.returncode == 5, done.stderr
    assert done.stdout == b"offline\r\n"
    assert time.monotonic() - t0 < 30
    session_id = session_id_of(done.stderr)
    assert b"broker is unreachable" in done.stderr

    # The session waits in the spool: a later run with the broker back delivers it.
    later = await asyncio.to_thread(run_rec, env, "--", "true")
    assert later.returncode == 0
    frames = await read_frames(settings, session_id)
    assert output_of(frames) == b"offline\r\n" and frames[-1].data == b"5"


async def test_ctrl_c_reaches_the_command_and_the_terminal_is_restored_after(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    _, env = rec_env
    # A shell on the user's terminal runs rec, then shows the terminal's mode after it.
    shell = pexpect.spawn(
        "bash",
        ["-c", f"{AUDITCAST} rec -- bash -c 'echo ready; sleep 30'; echo rc=$?; stty -a"],
        env=env,
        dimensions=(24, 80),
        timeout=30,
    )
    await asyncio.to_thread(shell.expect_exact, "ready")
    shell.sendintr()  # Ctrl-C: a plain byte in raw mode, SIGINT on the command's PTY
    await asyncio.to_thread(shell.expect_exact, "rc=130")
    await asyncio.to_thread(shell.expect, pexpect.EOF)
    modes = shell.before.decode()
    assert re.search(r"(?<!-)icanon", modes) and re.search(r"(?<!-)echo\b", modes), modes
    assert re.search(r"(?<!-)opost", modes), modes
    shell.close()


async def test_rec_with_a_sender_process_records_and_keeps_the_terminal_clean(
    rec_env: tuple[Settings, dict[str, str]],
) -> None:
    """`spool_sender = "process"`: the same recording; the sender's logs go to rec.log,
    never onto the user's terminal."""
    settings, env = rec_env
    env = {**env, "AUDITCAST_SPOOL_SENDER": "process"}
    argv = ["bash", "-c", 'printf "hello\\n"; exit 3']
    done = await asyncio.to_thread(run_rec, env, "--", *argv)
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"hello\r\n"
    frames = await read_frames(settings, session_id_of(done.stderr))
    assert output_of(frames) == b"hello\r\n" and frames[-1].data == b"3"

    offline = {**env, "AUDITCAST_KAFKA": f"127.0.0.1:{free_port()}"}
    done = await asyncio.to_thread(run_rec, offline, "--", "true")
    assert done.returncode == 0
    assert b"cannot reach the broker" not in done.stdout + done.stderr
    log_text = (settings.log_dir / "rec.log").read_text()
    assert "spool cannot reach the broker" in log_text
