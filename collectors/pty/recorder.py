"""Record a command on a new PTY: the byte pump between the user's terminal and the child.

The loop only moves bytes. Reads on the PTY master and on stdin are asyncio readers
(`loop.add_reader`, no threads); each read is written on with `os.write` and handed,
the same bytes object, to the sink (`SessionRecorder` in production). Nothing is
decoded: recordings are byte-exact, invalid UTF-8 and escape sequences included.

The session is over when the PTY master reports EIO (every holder of the slave has
closed it, after the kernel handed us all remaining output) and the child has exited.
If the child exits while a background process keeps the slave open, we stop once the
output has been quiet for `ORPHAN_IDLE_S`.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import select
import signal
import subprocess
import termios
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

from auditcast.collectors.pty.command import exit_code_from_returncode
from auditcast.collectors.pty.terminal import (
    DEFAULT_SIZE,
    WindowSize,
    get_window_size,
    set_window_size,
)
from auditcast.errors import AuditcastError

log = logging.getLogger(__name__)

# One read of stdin moves at most this much. The tty layer hands out at most a few KiB
# per read, so this only bounds pastes and pipes; it costs nothing when less is ready.
READ_SIZE: Final = 64 * 1024
# A read at least this big means a burst is under way (see _on_master_readable); one
# callback then gathers up to BURST_BYTES. The spool's sender shares our event loop and
# can hold it for tens of ms; a large gather lets the pump catch up after each such
# stall (bench: throughput ratio ~0.5 at 256 KiB, ~0.8 at 1 MiB). At ~60 MB/s it
# delays a key typed during a flood by at most ~16 ms.
BURST_READ: Final = 1024
BURST_BYTES: Final = 1024 * 1024
# Child gone but the slave still open (a background job holds it): stop after this long
# without output rather than wait forever, as `script` would.
ORPHAN_IDLE_S: Final = 0.5
# Signals that, sent to `auditcast rec`, are meant for the recorded command.
FORWARDED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class RecordingSink(Protocol):
    """Where the recorded streams go; `collectors.session.SessionRecorder` is one."""

    def output(self, data: bytes) -> None: ...

    def input(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...


class CommandNotRunnable(AuditcastError):
    exit_code = 127
    hint = "check the command name and your PATH"


class PtySession:
    """One recorded command on its own PTY, session and controlling terminal."""

    def __init__(
        self,
        argv: Sequence[str],
        sink: RecordingSink,
        *,
        env: Mapping[str, str] | None = None,
        stdin_fd: int | None = 0,
        stdout_fd: int = 1,
        capture_input: bool = False,
        size: WindowSize | None = None,
        winch_fd: int | None = None,
    ) -> None:
        """`winch_fd`: the terminal whose size we follow on SIGWINCH (None: fixed size)."""
        if not argv:
            raise ValueError("empty command")
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.sink = sink
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.capture_input = capture_input
        self.winch_fd = winch_fd
        self.size = size or (get_window_size(winch_fd) if winch_fd is not None else DEFAULT_SIZE)
        self.bytes_out = 0
        self.bytes_in = 0

        self._master = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master_done: asyncio.Future[None] | None = None
        self._child_done: asyncio.Future[int] | None = None
        # Reads land in buffers kept for the session (see _on_master_readable).
        self._out_view = memoryview(bytearray(BURST_BYTES))
        self._in_view = memoryview(bytearray(READ_SIZE))
        self._pending_in = b""  # stdin bytes the PTY could not take yet
        self._stdin_open = False
        self._stdin_pollable = True
        self._stdin_paused = False
        self._stdout_ok = True
        self._last_in_byte = b"\n"
        self._idle_timer: asyncio.TimerHandle | None = None
        self._failure: BaseException | None = None
        self._signals: list[signal.Signals] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def run(self) -> int:
        """Spawn, pump until the session is over, return the command's exit code."""
        loop = self._loop = asyncio.get_running_loop()
        self._master_done = loop.create_future()
        self._child_done = loop.create_future()
        self._spawn()
        try:
            self._install(loop)
            await self._master_done
            exit_code = await self._child_done
        finally:
            self._uninstall(loop)
        if self._failure is not None:
            raise self._failure
        return exit_code

    # -- set-up and tear-down ------------------------------------------------------

    def _spawn(self) -> None:
        master, slave = os.openpty()
        try:
            # Size the PTY before the child exists, so its first TIOCGWINSZ is right.
            set_window_size(slave, self.size)
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=_take_controlling_tty,
                )
            except OSError as e:
                raise CommandNotRunnable(f"cannot run {self.argv[0]}: {e.strerror}") from None
        except BaseException:
            os.close(master)
            raise
        finally:
            # Only the child may hold the slave: its last close is what gives us EIO.
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        log.debug("spawned", extra={"fields": {"pid": self._proc.pid, "argv": self.argv}})

    def _install(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._proc is not None
        self._pidfd = os.pidfd_open(self._proc.pid)
        loop.add_reader(self._pidfd, self._guard, self._on_child_exit)
        loop.add_reader(self._master, self._guard, self._on_master_readable)
        if self.stdin_fd is not None:
            self._stdin_open = True
            try:
                loop.add_reader(self.stdin_fd, self._guard, self._on_stdin_readable)
            except PermissionError:
                # epoll refuses regular files and /dev/null: they are always readable,
                # so read them in turns with the other callbacks instead.
                self._stdin_pollable = False
                loop.call_soon(self._poll_stdin)
            except (OSError, ValueError):  # closed stdin (`<&-`): no input at all
                self._stdin_open = False
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self._forward_signal, sig)
            self._signals.append(sig)
        if self.winch_fd is not None:
            loop.add_signal_handler(signal.SIGWINCH, self._guard, self._on_winch)
            self._signals.append(signal.SIGWINCH)

    def _uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._stop_stdin()
        if self._master >= 0:
            loop.remove_reader(self._master)
            loop.remove_writer(self._master)
            os.close(self._master)
            self._master = -1
        if self._pidfd >= 0:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        proc = self._proc
        if proc is not None and proc.returncode is None:
            # Only on an error path: don't leave the command running unrecorded.
            _hangup(proc.pid)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _guard(self, callback: Callable[[], None]) -> None:
        """Run a loop callback; a failure (e.g. SpoolFull from the sink) ends the session.

        An audit recorder fails closed: if it cannot record, the command is hung up.
        """
        try:
            callback()
        except BaseException as e:
            if self._failure is None:
                self._failure = e
                log.error("recording failed, hanging up the command", exc_info=e)
            self._stop_stdin()
            if self._proc is not None and self._proc.returncode is None:
                _hangup(self._proc.pid)
            self._finish_master()

    # -- the child's output ----------------------------------------------------------

    def _on_master_readable(self) -> None:
        view = self._out_view
        size = 0
        closed = False
        # The tty layer hands out output a few KiB at a time. In a burst, keep reading
        # while reads come back big, so one write and one frame carry many of them; a
        # keystroke echo (a short read) goes out at once, with no extra syscall. Reads
        # land in one buffer kept for the session: an `os.read` of 256 KiB allocated
        # (and gave back) that much per read, and a join copied the burst again
        # (measured: a 4 KiB PTY read took 45-60 us of CPU so, 11-16 us into a buffer;
        # a keystroke's callbacks 53 -> 39 us at the median).
        while size < BURST_BYTES:
            try:
                n = os.readv(self._master, (view[size:],))
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                closed = True  # Linux: EIO once the last slave holder closed, all read
                break
            if not n:
                closed = True
                break
            size += n
            if n < BURST_READ:
                break
        if size:
            data = view[:size].tobytes()
            self.bytes_out += size
            if self._stdout_ok:
                self._write_stdout(data)
            self.sink.output(data)
            if self._idle_timer is not None:
                self._arm_idle_timer()
        if closed:
            self._finish_master()

    def _write_stdout(self, data: bytes) -> None:
        """Blocking write to the user's terminal: its speed is the session's speed."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.stdout_fd, view)
            except BlockingIOError:  # someone made our stdout non-blocking
                select.select([], [self.stdout_fd], [])
                continue
            except OSError as e:  # terminal gone or reader closed: keep recording
                log.warning("stdout closed, recording continues", extra={"fields": {"err": e}})
                self._stdout_ok = False
                return
            view = view[n:]

    def _finish_master(self) -> None:
        assert self._loop is not None and self._master_done is not None
        if self._master >= 0:
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
        self._stop_stdin()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self._master_done.done():
            self._master_done.set_result(None)

    # -- the child's exit ----------------------------------------------------------

    def _on_child_exit(self) -> None:
        assert self._loop is not None and self._proc is not None and self._child_done is not None
        self._loop.remove_reader(self._pidfd)
        returncode = self._proc.wait()
        if not self._child_done.done():
            self._child_done.set_result(exit_code_from_returncode(returncode))
        if self._master_done is not None and not self._master_done.done():
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        assert self._loop is not None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self._loop.call_later(ORPHAN_IDLE_S, self._on_orphan_idle)

    def _on_orphan_idle(self) -> None:
        # A starved event loop can fire this timer while output is still waiting in the
        # PTY: read it first, and only stop if nothing came (else the read re-arms us).
        before = self.bytes_out
        self._on_master_readable()
        if self.bytes_out != before or (self._master_done is not None and self._master_done.done()):
            return
        log.info("command exited; a background process still holds the terminal, stopping")
        self._finish_master()

    # -- the user's input ------------------------------------------------------------

    def _on_stdin_readable(self) -> None:
        assert self.stdin_fd is not None
        try:
            n = os.readv(self.stdin_fd, (self._in_view,))
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: our terminal hung up
                raise
            n = 0
        if not n:
            self._stop_stdin()
            self._send_eof()
            return
        data = self._in_view[:n].tobytes()
        self.bytes_in += n
        if self.capture_input:
            self.sink.input(data)
        self._last_in_byte = data[-1:]
        self._write_master(data)

    def _write_master(self, data: bytes) -> None:
        if self._master < 0 or (self._master_done is not None and self._master_done.done()):
            return
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            if e.errno == errno.EIO:
                return  # the child is gone; its input no longer matters
            raise
        if n < len(data):
            # The command is not reading: hold the rest and stop reading stdin until the
            # PTY takes it, so a paste can never grow our memory.
            assert self._loop is not None
            self._pending_in = data[n:]
            self._pause_stdin()
            self._loop.add_writer(self._master, self._guard, self._on_master_writable)

    def _on_master_writable(self) -> None:
        assert self._loop is not None
        data, self._pending_in = self._pending_in, b""
        self._loop.remove_writer(self._master)
        self._write_master(data)
        if not self._pending_in:
            self._resume_stdin()

    def _poll_stdin(self) -> None:
        if self._stdin_open and not self._stdin_paused:
            self._guard(self._on_stdin_readable)
            if self._stdin_open and not self._stdin_paused and self._loop is not None:
                self._loop.call_soon(self._poll_stdin)

    def _pause_stdin(self) -> None:
        if self._stdin_open and not self._stdin_paused and self._loop is not None:
            self._stdin_paused = True
            if self._stdin_pollable and self.stdin_fd is not None:
                self._loop.remove_reader(self.stdin_fd)

    def _resume_stdin(self) -> None:
        if self._stdin_open and self._stdin_paused and self._loop is not None:
            self._stdin_paused = False
            if not self._stdin_pollable:
                self._loop.call_soon(self._poll_stdin)
            elif self.stdin_fd is not None:
                self._loop.add_reader(self.stdin_fd, self._guard, self._on_stdin_readable)

    def _stop_stdin(self) -> None:
        if self._stdin_open and self._stdin_pollable and self._loop is not None:
            if self.stdin_fd is not None:
                self._loop.remove_reader(self.stdin_fd)
        self._stdin_open = False

    def _send_eof(self) -> None:
        """End of our stdin (a pipe or file ran out): tell the command, like `script` does.

        In canonical mode the PTY's EOF character ends the command's read; a partial
        line needs one EOF to flush it and another to signal the end. In raw mode
        there is no such thing, so we send nothing.
        """
        if self._master < 0 or self._pending_in:
            return
        try:
            attrs = termios.tcgetattr(self._master)
        except termios.error:
            return
        if not attrs[3] & termios.ICANON:
            return
        veof = attrs[6][termios.VEOF]
        eof = veof if isinstance(veof, bytes) else bytes([veof])
        self._write_master(eof if self._last_in_byte == b"\n" else eof + eof)

    # -- window size and signals ------------------------------------------------------

    def _on_winch(self) -> None:
        size = get_window_size(self.winch_fd)
        if size == self.size or self._master < 0:
            return
        self.size = size
        set_window_size(self._master, size)
        self.sink.resize(size.cols, size.rows)

    def _forward_signal(self, sig: signal.Signals) -> None:
        """A signal for `auditcast rec` goes to the command's foreground job instead."""
        if self._proc is None or self._proc.returncode is not None:
            return
        try:
            pgrp = os.tcgetpgrp(self._master) if self._master >= 0 else self._proc.pid
        except OSError:
            pgrp = self._proc.pid
        try:
            os.killpg(pgrp, sig)
        except ProcessLookupError:
            pass


def _take_controlling_tty() -> None:
    """In the child, after setsid: make the PTY slave (now fd 0) its controlling tty."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _hangup(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGHUP)
    except (ProcessLookupError, PermissionError):
        pass


async def record_pty(
    argv: Sequence[str],
    sink: RecordingSink,
    **options: object,
) -> int:
    """Record `argv` on a new PTY into `sink`; the command's exit code."""
    return await PtySession(argv, sink, **options).run()  # type: ignore[arg-type]
