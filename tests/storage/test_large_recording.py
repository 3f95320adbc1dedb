"""A 50 MB recording through the recording store and `auditcast export --raw`: byte-exact,
streamed (the export process never holds the recording whole), and compressed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from auditcast.events import Frame
from auditcast.settings import Settings
from auditcast.storage.recordings import RecordingStore
from auditcast.storage.sqlite import SQLiteAuditStore

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
TOTAL = 50 * 1024 * 1024
FRAME = 32 * 1024  # a collector's flush size


def burst(sid: str) -> Iterator[Frame]:
    """50 MB of output like `cat` of a big log: text, colour escapes, a split UTF-8
    character at every frame edge, and some bytes that are not UTF-8 at all."""
    line = 0
    seq = 0
    pending = b""
    while seq * FRAME < TOTAL:
        buf = bytearray(pending)
        while len(buf) < FRAME + 8:
            buf += f"{line:08d} \x1b[32mINFO\x1b[0m request ok ✓ é\r\n".encode()
            if line % 997 == 0:
                buf += b"\xff\xfe\xc3(invalid)\r\n"
            line += 1
        data, pending = bytes(buf[:FRAME]), bytes(buf[FRAME:])
        yield Frame(session_id=sid, seq=seq, t=seq * 0.001, kind="o", data=data)
        seq += 1
    yield Frame(session_id=sid, seq=seq, t=seq * 0.001, kind="x", data=b"0")


def test_fifty_megabytes_round_trip_byte_exact_and_streamed(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    SQLiteAuditStore(s.db_path).close()
    rs = RecordingStore(s.recordings_dir)
    want = hashlib.sha256()
    batch: list[Frame] = []
    for f in burst("big"):
        if f.kind == "o":
            want.update(f.data)
        batch.append(f)
        if len(batch) == 32:  # one Kafka poll's worth, then let it go
            rs.add(batch)
            batch = []
    rs.add(batch)
    assert rs.disk_bytes("big") < TOTAL * 0.15

    out = tmp_path / "big.raw"
    # run under a fresh parent so RUSAGE_CHILDREN is the export's own peak memory
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, AUDITCAST, "export", "big", "--raw", "-o", str(out)],
        env={"AUDITCAST_HOME": str(s.home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stdout.split()[-1])
    got = hashlib.sha256()
    with open(out, "rb") as fh:
        while chunk := fh.read(1 << 20):
            got.update(chunk)
    assert out.stat().st_size >= TOTAL
    assert got.hexdigest() == want.hexdigest()
    # one chunk (<= 1 MiB raw) decoded at a time, not 50 MB plus copies
    assert peak_kib < 200 * 1024, f"export peaked at {peak_kib // 1024} MiB"
