"""The PTY pump on real PTYs, in process, recording into a plain list sink.

The sink is the `RecordingSink` seam (SessionRecorder satisfies it); the end-to-end
tests through `auditcast rec`, the spool and the broker are in test_rec_cli.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from auditcast.collectors.pty.recorder import CommandNotRunnable, PtySession
from auditcast.collectors.pty.terminal import WindowSize, set_window_size
from auditcast.errors import SpoolFull
from tests.collectors.pty.bare_pty import bare_pty_output


class ListSink:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.inp: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []

    def output(self, data: bytes) -> None:
        self.out.append(data)

    def input(self, data: bytes) -> None:
        self.inp.append(data)

    def resize(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))

    @property
    def output_bytes(self) -> bytes:
        return b"".join(self.out)


async def record(
    argv: list[str], *, stdin: bytes | None = None, tmp: Path, **options: object
) -> tuple[int, ListSink, bytes]:
    """Run argv through PtySession; stdout goes to a file (a write never blocks there)."""
    sink = ListSink()
    out_path = tmp / f"stdout-{time.monotonic_ns()}"
    stdin_fd: int | None = None
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
    if stdin is not None:
        in_path = tmp / f"stdin-{time.monotonic_ns()}"
        in_path.write_bytes(stdin)
        stdin_fd = os.open(in_path, os.O_RDONLY)
    session = PtySession(argv, sink, stdin_fd=stdin_fd, stdout_fd=out_fd, **options)  # type: ignore[arg-type]
    try:
        code = await asyncio.wait_for(session.run(), 30)
    finally:
        os.close(out_fd)
        if stdin_fd is not None:
            os.close(stdin_fd)
    return code, sink, out_path.read_bytes()


async def test_exit_code_and_output_match_a_bare_pty(tmp_path: Path) -> None:
    argv = ["bash", "-c", 'printf "hello\\n"; exit 3']
    code, sink, shown = await record(argv, tmp=tmp_path)
    bare, bare_code = bare_pty_output(argv)
    assert (code, bare_code) == (3, 3)
    assert bare == b"hello\r\n"
    assert sink.output_bytes == bare
    assert shown == bare


async def test_invalid_utf8_and_escape_sequences_are_recorded_byte_exact(tmp_path: Path) -> None:
    # Raw output mode so what the command writes is what the PTY gives, byte for byte.
    payload = b"\xff\xfe\xc3(\x1b[31mred\x1b[0m\x1b]0;title\x07\xe2\x82\x00\x9b\n\r\x04"
    src = tmp_path / "payload"
    src.write_bytes(payload)
    argv = ["bash", "-c", f"stty raw -echo; cat {src}"]
    code, sink, shown = await record(argv, tmp=tmp_path)
    assert code == 0
    assert sink.output_bytes == payload == shown
    assert bare_pty_output(argv)[0] == payload


async def test_killed_command_reports_128_plus_signal(tmp_path: Path) -> None:
    code, _, _ = await record(["bash", "-c", "kill -TERM $$"], tmp=tmp_path)
    assert code == 128 + signal.SIGTERM


async def test_piped_stdin_reaches_the_command_then_eof_ends_it(tmp_path: Path) -> None:
    code, sink, _ = await record(["cat"], stdin=b"one\ntwo\n", tmp=tmp_path)
    assert code == 0
    # cooked PTY: the line discipline echoes each line, then cat prints it
    assert sink.output_bytes == b"one\r\ntwo\r\none\r\ntwo\r\n"
    assert sink.inp == []  # input is not recorded unless asked for


async def test_stdin_without_final_newline_still_ends_the_command(tmp_path: Path) -> None:
    code, sink, _ = await record(["cat"], stdin=b"partial", tmp=tmp_path)
    assert code == 0
    assert sink.output_bytes.count(b"partial") == 2


async def test_capture_input_records_what_was_typed(tmp_path: Path) -> None:
    code, sink, _ = await record(["cat"], stdin=b"secret\n", tmp=tmp_path, capture_input=True)
    assert code == 0
    assert b"".join(sink.inp) == b"secret\n"


async def test_pty_is_sized_before_the_command_starts(tmp_path: Path) -> None:
    code, sink, _ = await record(["stty", "size"], tmp=tmp_path, size=WindowSize(132, 43))
    assert code == 0
    assert sink.output_bytes == b"43 132\r\n"


async def test_window_resize_reaches_the_command_and_the_recording(tmp_path: Path) -> None:
    user_master, user_slave = os.openpty()  # stands in for the user's terminal
    set_window_size(user_slave, WindowSize(80, 24))
    r, w = os.pipe()
    sink = ListSink()
    session = PtySession(
        ["bash", "-c", "read -r x; stty size"],
        sink,
        stdin_fd=r,
        stdout_fd=os.open(os.devnull, os.O_WRONLY),
        winch_fd=user_slave,
    )
    task = asyncio.create_task(session.run())
    try:
        await asyncio.sleep(0.3)
        set_window_size(user_slave, WindowSize(100, 30))
        os.kill(os.getpid(), signal.SIGWINCH)
        await asyncio.sleep(0.2)
        os.write(w, b"go\n")
        os.close(w)
        assert await asyncio.wait_for(task, 20) == 0
    finally:
        for fd in (r, user_master, user_slave):
            os.close(fd)
    assert sink.sizes == [(100, 30)]
    assert sink.output_bytes.endswith(b"30 100\r\n")


async def test_unknown_command_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandNotRunnable, match="cannot run no-such-command-xyz"):
        await record(["no-such-command-xyz"], tmp=tmp_path)


async def test_background_job_holding_the_terminal_does_not_hang_the_recording(
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    code, sink, _ = await record(["bash", "-c", "sleep 5 & echo started; exit 4"], tmp=tmp_path)
    assert code == 4
    assert sink.output_bytes == b"started\r\n"
    assert time.monotonic() - t0 < 4


async def test_input_the_command_never_reads_does_not_block_its_output(tmp_path: Path) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(200_000))  # ~2 MB, never read
    code, sink, _ = await record(
        ["bash", "-c", "sleep 0.2; head -c 300000 /dev/zero | tr '\\0' x; exit 0"],
        stdin=lines,
        tmp=tmp_path,
    )
    assert code == 0
    assert sink.output_bytes.count(b"x") >= 300_000


class FullSink(ListSink):
    def output(self, data: bytes) -> None:
        raise SpoolFull("spool is full")


async def test_recording_failure_hangs_up_the_command(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, pytest.raises(SpoolFull):
        await asyncio.wait_for(
            PtySession(
                ["bash", "-c", "echo hi; sleep 20"],
                FullSink(),
                stdin_fd=None,
                stdout_fd=out.fileno(),
            ).run(),
            15,
        )
    assert time.monotonic() - t0 < 10


async def wait_for_output(sink: ListSink, marker: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while marker not in sink.output_bytes:
        assert time.monotonic() < deadline, f"no {marker!r} in {sink.output_bytes!r}"
        await asyncio.sleep(0.02)


async def test_sigterm_to_the_recorder_goes_to_the_command(tmp_path: Path) -> None:
    sink = ListSink()
    script = 'trap "echo terminated; exit 9" TERM; echo ready; while :; do sleep 0.05; done'
    out = os.open(os.devnull, os.O_WRONLY)
    task = asyncio.create_task(
        PtySession(["bash", "-c", script], sink, stdin_fd=None, stdout_fd=out).run()
    )
    try:
        await wait_for_output(sink, b"ready")
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler forwards it
        assert await asyncio.wait_for(task, 10) == 9
    finally:
        os.close(out)
    assert sink.output_bytes.endswith(b"terminated\r\n")


async def test_users_terminal_mode_is_restored_after_raw_mode(tmp_path: Path) -> None:
    import termios

    from auditcast.collectors.pty.terminal import raw_mode

    user_master, user_slave = os.openpty()
    try:
        before = termios.tcgetattr(user_slave)
        with pytest.raises(CommandNotRunnable), raw_mode(user_slave):
            assert not termios.tcgetattr(user_slave)[3] & termios.ICANON  # raw inside
            await PtySession(["no-such-command-xyz"], ListSink(), stdin_fd=None).run()
        assert termios.tcgetattr(user_slave) == before
    finally:
        os.close(user_master)
        os.close(user_slave)
