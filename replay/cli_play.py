"""`auditcast play` and `auditcast export`: a session back in the terminal, or as a file."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from auditcast.cli._util import settings


@click.command()
@click.argument("session_id")
@click.option("--speed", default=1.0, show_default=True, help="Playback speed; 0 dumps at once.")
@click.option(
    "--idle-time-limit", type=float, default=None, help="Cap pauses at this many seconds."
)
@click.option("--no-wait", is_flag=True, help="Dump the output at once (same as --speed 0).")
def play(session_id: str, speed: float, idle_time_limit: float | None, no_wait: bool) -> None:
    """Replay a session's output in this terminal, with its timing, byte-exact."""
    if speed < 0:
        raise click.BadParameter("must be 0 (no waiting) or more", param_hint="--speed")
    if no_wait:
        speed = 0
    from auditcast.replay.reading import output_frames, wait_for_recording
    from auditcast.storage.recordings import Frame

    s = settings()
    wait_for_recording(s, session_id)
    items = output_frames(s, session_id)
    out = sys.stdout.buffer
    last = 0.0
    for item in items:
        if not isinstance(item, Frame) or item.kind != "o":
            continue
        if speed > 0:
            pause = item.t - last
            if idle_time_limit is not None:
                pause = min(pause, idle_time_limit)
            if pause > 0:
                out.flush()
                time.sleep(pause / speed)
        last = item.t
        out.write(item.data)
    out.flush()


@click.command()
@click.argument("session_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--raw", is_flag=True, help="Write the exact output bytes instead of asciicast.")
@click.option("--idle-time-limit", type=float, default=None, help="Header hint for players.")
def export(session_id: str, output: Path, raw: bool, idle_time_limit: float | None) -> None:
    """Write a session as asciicast v2 (plays in `asciinema play` and asciinema-player)."""
    from auditcast.replay.reading import asciicast_lines, output_frames, wait_for_recording
    from auditcast.storage.recordings import Frame

    s = settings()
    wait_for_recording(s, session_id)
    tmp = output.with_name(output.name + ".part")
    with open(tmp, "wb") as fh:
        if raw:
            for item in output_frames(s, session_id):
                if isinstance(item, Frame) and item.kind == "o":
                    fh.write(item.data)
        else:
            for line in asciicast_lines(s, session_id, idle_time_limit):
                fh.write(line.encode() + b"\n")
    os.replace(tmp, output)
    click.echo(f"wrote {output} ({output.stat().st_size:,} bytes)", err=True)
