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
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen` that has the kernel send the child `sig`
    when this process ends; None where the kernel has no such thing (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the fork
    parent = os.getpid()
    number = int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, number, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), number)

    return preexec
