"""What `auditcast rec` runs and how its end is reported: pure decisions, no I/O.

The recorder spawns an argv; these helpers turn the CLI's three ways of naming a
command (`-- CMD ARGS`, `--command "CMD"`, nothing = the user's shell) into that argv,
describe it for the `session.start` event, and turn a wait status into the exit code a
shell would report.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

# Shells report a child killed by signal N as exit code 128 + N; so do we.
SIGNAL_EXIT_BASE: Final = 128
# The shell to run when neither `--command` nor `-- CMD` is given and $SHELL is unset.
FALLBACK_SHELL: Final = "/bin/sh"
# `asciinema rec` records 80x24 when there is no terminal to ask; we do the same.
DEFAULT_COLS: Final = 80
DEFAULT_ROWS: Final = 24


class CommandConflict(ValueError):
    """`--command` and `-- CMD ARGS` name two different commands."""


@dataclass(frozen=True)
class RecCommand:
    argv: tuple[str, ...]
    # How the command is shown in `session.start` and listings (`command` field).
    display: str


def resolve_command(command: str | None, args: Sequence[str], env: Mapping[str, str]) -> RecCommand:
    """The argv to spawn: `-- CMD ARGS` as given, `--command` through `sh -c`, else $SHELL."""
    if command is not None and args:
        raise CommandConflict("give the command either with --command or after --, not both")
    if args:
        return RecCommand(tuple(args), shlex.join(args))
    if command is not None:
        if not command.strip():
            raise CommandConflict("--command is empty")
        # Like `asciinema rec -c`: the string is a shell command line.
        return RecCommand((FALLBACK_SHELL, "-c", command), command)
    shell = env.get("SHELL") or FALLBACK_SHELL
    return RecCommand((shell,), shell)


def exit_code_from_returncode(returncode: int) -> int:
    """subprocess' returncode (negative = killed by that signal) as a shell exit code."""
    if returncode < 0:
        return SIGNAL_EXIT_BASE + (-returncode)
    return returncode


def describe_exit(exit_code: int) -> str:
    """`exit code 3`, or `exit code 130 (SIGINT)` when a signal ended the command."""
    if exit_code > SIGNAL_EXIT_BASE:
        try:
            name = signal.Signals(exit_code - SIGNAL_EXIT_BASE).name
        except ValueError:
            return f"exit code {exit_code}"
        return f"exit code {exit_code} ({name})"
    return f"exit code {exit_code}"


def child_env(env: Mapping[str, str], session_id: str | None) -> dict[str, str]:
    """The recorded command's environment: ours, plus markers that it is being recorded.

    `AUDITCAST_REC=1` plays the role of asciinema's `ASCIINEMA_REC=1` (a prompt can show
    it); `AUDITCAST_SESSION_ID` lets the user quote the session in a ticket.
    """
    out = dict(env)
    out["AUDITCAST_REC"] = "1"
    if session_id:
        out["AUDITCAST_SESSION_ID"] = session_id
    else:
        out.pop("AUDITCAST_SESSION_ID", None)
    return out
