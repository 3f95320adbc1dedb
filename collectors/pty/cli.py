"""`auditcast rec`: record a local terminal session into the audit pipeline.

Like `asciinema rec`, but the recording goes through the collector spool to Kafka as
`session.start`, frames and `session.end`, so it lands in the same audit log as kube
and SSH sessions. Works without a broker: the spool keeps the session until
`auditcast up` (or the next `auditcast rec`) delivers it.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import click

from auditcast.cli._util import json_option, print_json
from auditcast.collectors.pty.command import (
    CommandConflict,
    RecCommand,
    child_env,
    describe_exit,
    resolve_command,
)
from auditcast.collectors.pty.recorder import CommandNotRunnable, PtySession
from auditcast.collectors.pty.terminal import get_window_size, raw_mode, terminal_fd
from auditcast.events import Source
from auditcast.logs import setup_logging
from auditcast.settings import Settings, load_settings

if TYPE_CHECKING:
    from auditcast.collectors.spool import Spool

log = logging.getLogger("auditcast.rec")

# How long rec waits at the end for the broker to take the session. A broker that is
# up takes even a 50 MB session in a few seconds...
DRAIN_TIMEOUT_S: Final = 60.0
# ...but one that cannot be reached should not keep the user at a dead prompt: the
# spool keeps the session for the drainer (`auditcast up`, `auditcast spool drain`).
UNREACHABLE_GIVE_UP_S: Final = 5.0
DRAIN_POLL_S: Final = 0.25
# rec lets the spool connect before it starts the command: a local broker takes ~0.1 s,
# a refused connection ends the wait at once, and an unresponsive one costs the user at
# most this much at start (the session then starts and the spool keeps connecting).
CONNECT_WAIT_S: Final = 1.0
# The spool does its file I/O in worker threads. With CPython's default 5 ms GIL switch
# interval a keystroke echo could wait that long behind one of them (measured: p99
# echo +2-7 ms); 0.2 ms keeps the user's terminal ahead of the outbox.
GIL_SWITCH_INTERVAL_S: Final = 0.0002
# Unless the user chose (AUDITCAST_SPOOL_SENDER or the config file), rec's spool sends
# from a child process: the Kafka client's work then never runs between a key and its
# echo. Measured with bench_recorder (2 cores, load 1-4): on-loop work other than the
# echo 44 -> 16 ms per second of typing, loop stalls > 0.2 ms 1.4 % -> 0.5 % of keys;
# added echo p99 0.08-0.51 ms in five runs (inline 0.05-1.20), throughput ratio median
# 0.70 (inline 0.64). It costs ~20 % more CPU in all, which a session of typing does
# not notice.
SPOOL_SENDER: Final = "process"


# rec's objects from start-up (imports, settings, the Kafka client) live for the whole
# session. Frozen, collections never walk them again, and with a young generation this
# big the few collections that run find little. Measured (bench_recorder, 500 keys per
# rec): a 2-3 ms gen-1 collection held the loop once per run before, none after.
GC_THRESHOLDS: Final = (20_000, 10, 10)


@dataclass(frozen=True)
class RecResult:
    session_id: str
    exit_code: int
    delivered: bool
    bytes_out: int
    bytes_in: int


def summary_line(result: RecResult) -> str:
    return f"session {result.session_id} recorded ({describe_exit(result.exit_code)})"


def undelivered_notice() -> str:
    return (
        "notice: the broker is unreachable; the session is kept in the spool and is "
        "delivered when the pipeline is back (`auditcast up`)"
    )


def _settle_gc() -> None:
    """Collect start-up's garbage once, then keep collections off the keystroke path."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _stdin_fd() -> int | None:
    try:
        os.fstat(0)
    except OSError:  # started with stdin closed
        return None
    return 0


def _log_to_file(settings: Settings) -> None:
    """Logs go to a file: the user's terminal belongs to the recorded command."""
    stream = open(settings.log_dir / "rec.log", "a", buffering=1)
    setup_logging(settings.log_level, stream=stream)


async def deliver(spool: Spool, started: float, timeout: float = DRAIN_TIMEOUT_S) -> bool:
    """Wait for the broker to acknowledge everything spooled; False if it is away.

    Gives up once the spool has gone `UNREACHABLE_GIVE_UP_S` since `started` (loop
    time) without a connection, so a long session recorded offline ends at once, and
    after `timeout` in any case; what is not delivered stays in the spool.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while True:
        if await spool.flush(DRAIN_POLL_S):
            return True
        now = loop.time()
        offline = not spool.stats.connected and now - started >= UNREACHABLE_GIVE_UP_S
        if offline or now - t0 >= timeout:
            return False


async def record_session(
    settings: Settings, cmd: RecCommand, title: str | None, capture_input: bool
) -> RecResult:
    """Record `cmd` on a PTY through the spool; returns once delivered or given up."""
    from auditcast.collectors.session import SessionRecorder
    from auditcast.collectors.spool import Spool

    term = terminal_fd(1, 0)
    size = get_window_size(term)
    host = socket.gethostname()
    term_info: dict[str, Any] = {"cols": size.cols, "rows": size.rows}
    if os.environ.get("TERM"):
        term_info["type"] = os.environ["TERM"]
    stdin_fd = _stdin_fd()
    spool = Spool(settings, "rec")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await spool.start()  # connects in the background; appends never wait for it
    try:
        recorder = SessionRecorder(
            spool,
            kind="pty",
            user=getpass.getuser(),
            node=host,
            source=Source(collector="pty", instance=host),
            command=cmd.display,
            title=title,
            term=term_info,
        )
        recorder.start()
        session_id = recorder.session_id
        # The connection set-up and the first send are done before the command starts
        # when they are quick (see CONNECT_WAIT_S): ms of work on this event loop that
        # would otherwise compete with the user's first keystrokes.
        if await spool.wait_connected(CONNECT_WAIT_S):
            await spool.flush(max(0.0, started + CONNECT_WAIT_S - loop.time()))
        bound = {"session_id": session_id}
        log.info("recording", extra={**bound, "fields": {"command": cmd.display}})
        session = PtySession(
            cmd.argv,
            recorder,
            env=child_env(os.environ, session_id),
            stdin_fd=stdin_fd,
            stdout_fd=1,
            capture_input=capture_input,
            size=size,
            winch_fd=term,
        )
        _settle_gc()  # the collector is set up: what exists now lives as long as we do
        exit_code: int | None = None
        try:
            with raw_mode(stdin_fd if stdin_fd is not None and os.isatty(stdin_fd) else None):
                exit_code = await session.run()
        except CommandNotRunnable as e:
            exit_code = e.exit_code
            raise
        finally:
            # Close the recording however it ended: the audit log shows how.
            recorder.end(exit_code)
        delivered = await deliver(spool, started)
    finally:
        await spool.close(drain_timeout=0)
    log.info(
        "recorded",
        extra={**bound, "fields": {"exit_code": exit_code, "delivered": delivered}},
    )
    return RecResult(session_id, exit_code, delivered, session.bytes_out, session.bytes_in)


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--title", "-t", help="Title of the recording.")
@click.option(
    "--command",
    "-c",
    "command",
    help="Command line to record, run by /bin/sh (default: your $SHELL).",
)
@click.option(
    "--stdin",
    "capture_stdin",
    is_flag=True,
    help="Also record what you type (passwords you type are recorded too).",
)
@json_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def rec(
    title: str | None,
    command: str | None,
    capture_stdin: bool,
    as_json: bool,
    args: tuple[str, ...],
) -> None:
    """Record a terminal session: `auditcast rec`, or `auditcast rec -- CMD ARGS...`.

    The command runs on its own PTY; everything it prints (and with --stdin, what you
    type) is recorded byte for byte with its window resizes and exit code. At the end
    rec prints the session id and exits with the command's exit code.
    """
    try:
        cmd = resolve_command(command, args, os.environ)
    except CommandConflict as e:
        raise click.UsageError(str(e)) from None
    settings = load_settings()
    if "spool_sender" not in settings.model_fields_set:
        settings = settings.model_copy(update={"spool_sender": SPOOL_SENDER})
    _log_to_file(settings)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    result = asyncio.run(record_session(settings, cmd, title, capture_stdin))
    # The terminal is restored by now: it is safe to talk to the user.
    if as_json:
        print_json(asdict(result))
    else:
        click.echo(summary_line(result), err=True)
    if not result.delivered:
        click.echo(undelivered_notice(), err=True)
    sys.stdout.flush()
    # sys.exit, not ctx.exit: the root runs click with standalone_mode=False, which
    # turns ctx.exit's code into a return value that nobody reads.
    sys.exit(result.exit_code)
