"""Recognise the legacy scp protocol in an exec request (`scp -t PATH` / `scp -f PATH`)."""

from __future__ import annotations

import os
import shlex


def scp_direction(command: str) -> tuple[str, str] | None:
    """("upload"|"download", path) for a server-side scp command, else None.

    `-t` (to) means the client sends files to the node, `-f` (from) that it fetches.
    """
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or os.path.basename(argv[0]) != "scp":
        return None
    flags = [a for a in argv[1:] if a.startswith("-")]
    paths = [a for a in argv[1:] if not a.startswith("-")]
    path = paths[-1] if paths else ""
    if any("t" in f[1:] for f in flags if not f.startswith("--")):
        return ("upload", path)
    if any("f" in f[1:] for f in flags if not f.startswith("--")):
        return ("download", path)
    return None
