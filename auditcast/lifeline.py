"""Children that end when their parent does, however the parent ends.

`auditcast up` stops its children in order on Ctrl-C or SIGTERM. Killed outright (SIGKILL,
the OOM killer, a crash), it runs no code at all, and before this its broker, worker,
store and gateways ran on as orphans holding the ports and the audit log, so the next
`auditcast up` on that home could not start. Linux's parent-death signal makes the
kernel send each child SIGTERM then, its ordinary stop.

The kernel ties that signal to the *thread* that forked the child, not to the process:
spawn from a thread that lives as long as the parent (the main thread), never from a
pool thread that may exit first (the child would be stopped with it).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Any:
    """libc's prctl, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send this process `sig` when its parent ends; False where it
    cannot (then nothing is set)."""
    prctl = _prctl()
    if prctl is None:
        return False
    prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return True


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen` that has the kernel send the child `sig`
    when this process ends; None where the kernel has no such thing (not Linux)."""
    if _prctl() is None:  # resolved here, in the parent, not in the fork
        return None
    parent = os.getpid()
    number = int(sig)

    def preexec() -> None:
        set_parent_death_signal(number)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), number)

    return preexec


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (ours to signal or not). A zombie does not:
    it has exited, and waits only for a parent to reap it, which never comes where the
    container's pid 1 is no init."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it ended just now, or there is no /proc to ask (not Linux)
        return not Path("/proc").is_dir()
    return stat.rpartition(")")[2].split()[0] != "Z"
