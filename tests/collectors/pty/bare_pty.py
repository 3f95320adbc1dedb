"""The baseline: run a command on a bare PTY, no recorder, and collect what it printed.

A PTY is not a pipe: its line discipline turns `\\n` into `\\r\\n` and may echo input,
so "the bytes the command wrote" means what a bare PTY gives for the same command.
This runner is deliberately independent of collectors.pty (a plain blocking loop).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import termios
from collections.abc import Sequence


def spawn_on_pty(
    argv: Sequence[str], cols: int = 80, rows: int = 24, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` as session leader on a new PTY; returns (process, master fd)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    return proc, master


def read_until_eio(master: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError as e:
            if e.errno == errno.EIO:
                break
            raise
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def bare_pty_output(argv: Sequence[str], cols: int = 80, rows: int = 24) -> tuple[bytes, int]:
    """Everything `argv` printed on a bare PTY, and its exit code."""
    proc, master = spawn_on_pty(argv, cols, rows)
    try:
        out = read_until_eio(master)
    finally:
        os.close(master)
    return out, proc.wait()
