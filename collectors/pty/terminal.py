"""The user's terminal: its window size and raw mode, restored on every way out."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from auditcast.collectors.pty.command import DEFAULT_COLS, DEFAULT_ROWS

_WINSIZE = struct.Struct("HHHH")  # rows, cols, xpixel, ypixel (struct winsize)


class WindowSize(NamedTuple):
    cols: int
    rows: int


DEFAULT_SIZE = WindowSize(DEFAULT_COLS, DEFAULT_ROWS)


def terminal_fd(*fds: int) -> int | None:
    """The first of `fds` that is a terminal (stdout first, like asciinema), or None."""
    for fd in fds:
        try:
            if os.isatty(fd):
                return fd
        except OSError:
            continue
    return None


def get_window_size(fd: int | None) -> WindowSize:
    """The size of the terminal on `fd`; 80x24 without one (pipes, tests, CI)."""
    if fd is None:
        return DEFAULT_SIZE
    try:
        rows, cols, _, _ = _WINSIZE.unpack(
            fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size)
        )
    except OSError:
        return DEFAULT_SIZE
    if cols == 0 or rows == 0:  # a terminal nobody sized yet (e.g. a fresh pty)
        return DEFAULT_SIZE
    return WindowSize(cols, rows)


def set_window_size(fd: int, size: WindowSize) -> None:
    """Size a PTY; on the master side the kernel sends SIGWINCH to the foreground job."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(size.rows, size.cols, 0, 0))


@contextmanager
def raw_mode(fd: int | None) -> Iterator[None]:
    """Put the terminal on `fd` in raw mode (no echo, no signals, no output processing).

    Every key then reaches the recorded command unchanged, as with `asciinema rec`.
    The saved mode is restored however the block ends; without a terminal, a no-op.
    """
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield
    finally:
        # TCSADRAIN: let our last output reach the screen before the mode flips back.
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
