"""The read-back verbs (`sessions ls`, `events search`, `play`, `export`) as a user runs
them: real `auditcast` subprocesses over stores written by the real store classes."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from auditcast.events import Event, Frame
from auditcast.settings import Settings
from auditcast.storage.recordings import RecordingStore
from auditcast.storage.sqlite import SQLiteAuditStore

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
ASCIINEMA = str(Path(sys.executable).with_name("asciinema"))


def cli_env(s: Settings) -> dict[str, str]:
    return {"AUDITCAST_HOME": str(s.home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}


def cli(s: Settings, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([AUDITCAST, *args], env=cli_env(s), capture_output=True, timeout=timeout)


def record(s: Settings, sid: str, user: str, outputs: list[tuple[float, bytes]], code: int,
           started: datetime) -> None:  # fmt: skip
    store = SQLiteAuditStore(s.db_path)
    store.add_many([
        Event(type="session.start", session_id=sid, user=user, time=started,
              command="bash", term={"cols": 100, "rows": 30}).to_dict(),
        Event(type="session.end", session_id=sid, user=user, exit_code=code,
              time=started + timedelta(seconds=outputs[-1][0]),
              bytes_out=sum(len(b) for _, b in outputs)).to_dict(),
    ])  # fmt: skip
    store.close()
    frames = [
        Frame(session_id=sid, seq=i, t=t, kind="o", data=b) for i, (t, b) in enumerate(outputs)
    ]
    frames.append(Frame(session_id=sid, seq=len(frames), t=outputs[-1][0], kind="x",
                        data=str(code).encode()))  # fmt: skip
    RecordingStore(s.recordings_dir).add(frames)


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "home")
    now = datetime.now(UTC)
    record(s, "s-alice", "alice", [(0.0, b"hello\r\n"), (5.0, b"after a pause\r\n")], 3,
           now - timedelta(minutes=5))  # fmt: skip
    record(s, "s-bob", "bob", [(0.0, b"\xff\xfe raw \x1b[31mred\x1b[0m\r\n")], 0,
           now - timedelta(hours=3))  # fmt: skip
    return s


def test_sessions_ls_json_lists_exit_codes_and_filters_by_user_and_time(home: Settings) -> None:
    out = cli(home, "sessions", "ls", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["session_id"]: r for r in orjson.loads(out.stdout)}
    assert {k: r["exit_code"] for k, r in rows.items()} == {"s-alice": 3, "s-bob": 0}
    assert rows["s-alice"]["user"] == "alice" and rows["s-alice"]["command"] == "bash"
    assert {r["recording"] for r in rows.values()} == {"complete"}
    only_bob = orjson.loads(cli(home, "sessions", "ls", "--user", "bob", "--json").stdout)
    assert [r["id"] for r in only_bob] == ["s-bob"]
    recent = orjson.loads(cli(home, "sessions", "ls", "--since", "1h", "--json").stdout)
    assert [r["id"] for r in recent] == ["s-alice"]
    table = cli(home, "sessions", "ls")
    assert b"s-alice" in table.stdout and b"alice" in table.stdout


def test_events_search_filters_and_pages_with_a_cursor(home: Settings) -> None:
    def search(*args: str) -> dict:
        out = cli(home, "events", "search", "--json", *args)
        assert out.returncode == 0, out.stderr
        return orjson.loads(out.stdout)

    alice = search("--user", "alice")["events"]
    assert [e["type"] for e in alice] == ["session.start", "session.end"]
    ends = search("--type", "session.end")["events"]
    assert [e["session_id"] for e in ends] == ["s-bob", "s-alice"]  # oldest first
    assert len(search("--session", "s-bob")["events"]) == 2
    assert search("--since", "1h")["events"][0]["session_id"] == "s-alice"
    assert [e["user"] for e in search("--q", "bash", "--user", "bob")["events"]] == ["bob"]
    first = search("--limit", "3")
    assert len(first["events"]) == 3 and first["next_cursor"]
    rest = search("--limit", "3", "--cursor", first["next_cursor"])
    assert len(rest["events"]) == 1 and rest["next_cursor"] is None
    ids = [e["id"] for e in first["events"] + rest["events"]]
    assert len(set(ids)) == 4
    bad = cli(home, "events", "search", "--cursor", "!!not-a-cursor")
    assert bad.returncode != 0 and b"invalid cursor" in bad.stderr


def test_play_keeps_timing_but_caps_idle_pauses(home: Settings) -> None:
    t0 = time.monotonic()
    out = cli(home, "play", "s-alice", "--speed", "1", "--idle-time-limit", "0.3")
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello\r\nafter a pause\r\n"
    assert took < 4.0  # the 5 s pause was cut to 0.3 s
    t0 = time.monotonic()
    slow = cli(home, "play", "s-alice", "--speed", "2")
    assert slow.stdout == b"hello\r\nafter a pause\r\n"
    assert time.monotonic() - t0 >= 2.5  # 5 s at double speed


def test_play_speed_zero_dumps_exact_bytes_even_invalid_utf8(home: Settings) -> None:
    for args in (["--speed", "0"], ["--no-wait"]):
        out = cli(home, "play", "s-bob", *args)
        assert out.stdout == b"\xff\xfe raw \x1b[31mred\x1b[0m\r\n"
    t0 = time.monotonic()
    assert cli(home, "play", "s-alice", "--no-wait").stdout == b"hello\r\nafter a pause\r\n"
    assert time.monotonic() - t0 < 4.0
    assert cli(home, "play", "s-alice", "--speed", "-1").returncode == 2


def test_export_plays_in_asciinema_and_marks_invalid_bytes(home: Settings, tmp_path: Path) -> None:
    cast = tmp_path / "alice.cast"
    assert cli(home, "export", "s-alice", "-o", str(cast)).returncode == 0
    header = orjson.loads(cast.read_text().splitlines()[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    cat = subprocess.run([ASCIINEMA, "cat", str(cast)], capture_output=True, check=True)
    assert cat.stdout == b"hello\r\nafter a pause\r\n"
    # invalid UTF-8 cannot be JSON text: asciicast carries U+FFFD per invalid sequence,
    # while `export --raw` keeps the exact bytes
    bob = tmp_path / "bob.cast"
    assert cli(home, "export", "s-bob", "-o", str(bob)).returncode == 0
    cat = subprocess.run([ASCIINEMA, "cat", str(bob)], capture_output=True, check=True)
    assert cat.stdout == "\ufffd\ufffd raw \x1b[31mred\x1b[0m\r\n".encode()
    raw = tmp_path / "bob.raw"
    assert cli(home, "export", "s-bob", "--raw", "-o", str(raw)).returncode == 0
    assert raw.read_bytes() == b"\xff\xfe raw \x1b[31mred\x1b[0m\r\n"


def test_unknown_session_says_so_and_how_to_find_one(home: Settings, tmp_path: Path) -> None:
    for args in (["play", "nope"], ["export", "nope", "-o", str(tmp_path / "x.cast")]):
        out = cli(home, *args)
        assert out.returncode != 0
        assert b"no session nope" in out.stderr and b"sessions ls" in out.stderr
    assert not (tmp_path / "x.cast").exists()


def test_export_right_after_the_end_waits_for_frames_still_arriving(tmp_path: Path) -> None:
    """session.end stored, the recording's tail still on its way (two topics, two
    consumers): export waits for the exit frame instead of cutting the recording short.
    The tail is stored once export says it is waiting (not after a fixed delay, which a
    slow start-up of the CLI could outlast)."""
    s = Settings(home=tmp_path / "home")
    start = datetime.now(UTC)
    store = SQLiteAuditStore(s.db_path)
    store.add_many([
        Event(type="session.start", session_id="late", user="eve", time=start).to_dict(),
        Event(type="session.end", session_id="late", user="eve", exit_code=0, bytes_out=4,
              time=start + timedelta(seconds=1)).to_dict(),
    ])  # fmt: skip
    frames = [Frame(session_id="late", seq=i, t=i / 10, kind="o", data=b"%d\n" % i)
              for i in range(2)]  # fmt: skip
    exit_frame = Frame(session_id="late", seq=2, t=0.3, kind="x", data=b"0")
    rs = RecordingStore(s.recordings_dir)
    rs.add(frames[:1])
    raw = tmp_path / "late.raw"
    proc = subprocess.Popen(
        [AUDITCAST, "export", "late", "--raw", "-o", str(raw)],
        env=cli_env(s),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    said = proc.stderr.readline()  # EOF instead if export did not wait
    rs.add([frames[1], exit_frame])
    _, rest = proc.communicate(timeout=30)
    assert b"waiting for the rest of the recording" in said, said + rest
    assert proc.returncode == 0, rest
    assert raw.read_bytes() == b"0\n1\n"
