"""The recording store: every session's frames, byte-exact, zstd-compressed, seekable.

Layout under `recordings_dir/<id[:2]>/<id>/`:

- `live.log` — frame batches as they arrive (length-prefixed msgpack), any order, maybe
  duplicated. Appending is all the consumer does on the hot path.
- `frames.zst` + `index.json` — written once the session's `x` (exit) frame arrived:
  frames deduplicated by `seq`, sorted, packed column-wise, in independent zstd frames
  of at most `CHUNK_BYTES` raw or `CHUNK_SECONDS` of session time; the index maps each
  chunk's start time and first seq to its byte offset, so a player can seek without
  decompressing from the start.

Byte-exact: frame data is kept as raw bytes (msgpack bin) end to end; text appears only
when exporting asciicast (see `to_asciicast` for what invalid UTF-8 becomes there).
  Frames that arrive after that (a spool replay, a late gap filler) are merged in by
  compacting again; pure duplicates are dropped without touching the file.

Gaps: a seq range still missing when the session is finished is reported as a gap
(`Gap`) and exported as an asciicast marker — never silently glued.
"""

from __future__ import annotations

import codecs
import itertools
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
import zstandard

from auditcast.errors import NotFound
from auditcast.events import Frame

# Seeking decompresses one chunk, and a chunk holds at most CHUNK_BYTES (1 MiB raw,
# a few ms to decompress), so the time bound can be long: ten minutes of an interactive
# session gives zstd the context (prompts, repeated output) that brings it to ~0.15x.
CHUNK_SECONDS: Final = 600.0
# A chunk is also cut at this many raw bytes so seeking inside a burst stays cheap.
CHUNK_BYTES: Final = 1024 * 1024
# Compaction runs once per session, off the hot path, so it can afford a strong level,
# but zstd's strong levels cost time per byte (level 19: ~5 MB/s on incompressible
# bytes). Interactive chunks are small and get level 19 (typical session: 0.132x of
# asciicast, against 0.150x at level 12; under 0.1 s per chunk); chunks of a big output
# burst (at least STRONG_BELOW raw bytes) get level 12 (~70-200 MB/s), so compacting a
# 50 MB burst takes about a second rather than about ten.
ZSTD_LEVEL: Final = 12
ZSTD_LEVEL_STRONG: Final = 19
STRONG_BELOW: Final = 512 * 1024
_LEN = struct.Struct(">I")
# Session ids are UUIDs (36) in practice; the bound keeps paths well under NAME_MAX.
MAX_SESSION_ID: Final = 128


@dataclass(frozen=True)
class Gap:
    first: int
    last: int
    t: float

    @property
    def label(self) -> str:
        span = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        return f"gap: frames {span} missing"


def _pack(frames: Iterable[Frame]) -> bytes:
    """A live-log batch: frames as they arrived (t kept as the exact float sent)."""
    return msgpack.packb([[f.seq, f.t, f.kind, f.data] for f in frames], use_bin_type=True)


def _unpack(session_id: str, raw: bytes) -> list[Frame]:
    return [
        Frame.model_construct(session_id=session_id, seq=s, t=t, kind=k, data=d)
        for s, t, k, d in msgpack.unpackb(raw, raw=False)
    ]


def _pack_chunk(frames: list[Frame]) -> bytes:
    """A compacted chunk, column by column so zstd sees like next to like: seq deltas
    (almost all 1), time deltas in microseconds (asciicast's own precision), kinds as
    one string, then the data. About half the size of
    row-wise msgpack once compressed, for typical keystroke-sized frames."""
    seqs = [f.seq for f in frames]
    us = [round(f.t * 1_000_000) for f in frames]
    return msgpack.packb(
        [
            seqs[0],
            [b - a for a, b in itertools.pairwise(seqs)],
            us[0],
            [b - a for a, b in itertools.pairwise(us)],
            "".join(f.kind for f in frames),
            [f.data for f in frames],
        ],
        use_bin_type=True,
    )


def _unpack_chunk(session_id: str, raw: bytes) -> list[Frame]:
    seq, seq_deltas, us, us_deltas, kinds, datas = msgpack.unpackb(raw, raw=False)
    out = []
    for i, (k, d) in enumerate(zip(kinds, datas, strict=True)):
        if i:
            seq += seq_deltas[i - 1]
            us += us_deltas[i - 1]
        out.append(
            Frame.model_construct(session_id=session_id, seq=seq, t=us / 1_000_000, kind=k, data=d)
        )
    return out


class RecordingStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @staticmethod
    def valid_session_id(session_id: str) -> bool:
        """Usable as a directory name: letters, digits, `-_.`, not `.`/`..`, bounded."""
        return (
            0 < len(session_id) <= MAX_SESSION_ID
            and session_id.strip(".") != ""
            and all(c.isascii() and (c.isalnum() or c in "-_.") for c in session_id)
        )

    def dir_for(self, session_id: str) -> Path:
        if not self.valid_session_id(session_id):
            raise ValueError(f"unsafe session id {session_id!r}")
        return self.root / session_id[:2] / session_id

    # ---------------------------------------------------------------- writes

    def add(self, frames: Iterable[Frame]) -> None:
        """Store frames (any sessions, any order); finish sessions whose exit arrived."""
        by_session: dict[str, list[Frame]] = {}
        for f in frames:
            by_session.setdefault(f.session_id, []).append(f)
        with self._lock:
            for sid, fs in by_session.items():
                self._add_session(sid, fs)

    def _add_session(self, sid: str, frames: list[Frame]) -> None:
        d = self.dir_for(sid)
        d.mkdir(parents=True, exist_ok=True)
        index = self._read_index(d)
        if index is not None:
            have = set(_expand(index["seqs"]))
            frames = [f for f in frames if f.seq not in have]
            if not frames:
                return  # a replayed duplicate: nothing to do
        blob = _pack(frames)
        with open(d / "live.log", "ab") as fh:
            fh.write(_LEN.pack(len(blob)) + blob)
        if index is not None or any(f.kind == "x" for f in frames):
            self._compact(sid, d)

    def _compact(self, sid: str, d: Path) -> None:
        frames: dict[int, Frame] = {}
        if (d / "frames.zst").exists():
            for f in self._iter_compacted(sid, d):
                frames[f.seq] = f
        live = d / "live.log"
        if live.exists():
            # mapped, not read: only the frames' own bytes are held, once
            for f in _read_live(sid, _map(live)):
                frames.setdefault(f.seq, f)
        ordered = [frames[s] for s in sorted(frames)]
        cctx = _Compressors()
        chunks: list[dict[str, Any]] = []
        tmp = d / "frames.zst.tmp"
        with open(tmp, "wb") as out:
            chunk: list[Frame] = []
            size = 0
            for f in ordered:
                if chunk and (f.t - chunk[0].t >= CHUNK_SECONDS or size >= CHUNK_BYTES):
                    chunks.append(_write_chunk(out, cctx, chunk))
                    chunk, size = [], 0
                chunk.append(f)
                size += len(f.data)
            if chunk:
                chunks.append(_write_chunk(out, cctx, chunk))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(d / "frames.zst")
        index = {
            "session_id": sid,
            "seqs": _ranges(frames),
            "finished": any(f.kind == "x" for f in ordered),
            "duration": ordered[-1].t if ordered else 0.0,
            "chunks": chunks,
        }
        (d / "index.json.tmp").write_text(json.dumps(index))
        (d / "index.json.tmp").replace(d / "index.json")
        live.unlink(missing_ok=True)

    # ---------------------------------------------------------------- reads

    @staticmethod
    def _read_index(d: Path) -> dict[str, Any] | None:
        try:
            return dict(json.loads((d / "index.json").read_text()))
        except FileNotFoundError:
            return None

    def _iter_compacted(self, sid: str, d: Path) -> Iterator[Frame]:
        dctx = zstandard.ZstdDecompressor()
        with open(d / "frames.zst", "rb") as fh:
            index = self._read_index(d) or {"chunks": []}
            for c in index["chunks"]:
                fh.seek(c["offset"])
                yield from _unpack_chunk(sid, dctx.decompress(fh.read(c["length"])))

    def status(self, session_id: str) -> str:
        """`complete` (exit frame stored, no seq missing), `gaps` (finished with frames
        missing), `live` (frames arriving, no exit frame yet) or `none`."""
        if not self.valid_session_id(session_id):
            return "none"
        d = self.dir_for(session_id)
        index = self._read_index(d)
        if index is None:
            return "live" if (d / "live.log").exists() else "none"
        if (d / "live.log").exists() or not index.get("finished"):
            return "live"  # a merge is pending, or no exit frame yet
        seqs = index["seqs"]
        return "complete" if len(seqs) == 1 and seqs[0][0] == 0 else "gaps"

    def exists(self, session_id: str) -> bool:
        d = self.dir_for(session_id)
        return (d / "index.json").exists() or (d / "live.log").exists()

    def frames(self, session_id: str, *, from_t: float = 0.0) -> Iterator[Frame | Gap]:
        """Frames in seq order (live sessions included), with `Gap`s where seqs are
        missing. `from_t` seeks with the time index."""
        d = self.dir_for(session_id)
        index = self._read_index(d)
        live = d / "live.log"
        if index is None and not live.exists():
            raise NotFound(f"no recording for session {session_id}")
        with self._lock:
            if index is not None and not live.exists():
                stream: Iterable[Frame] = self._seek(session_id, d, index, from_t)
            else:  # still live (or a merge pending): sort what has arrived so far
                merged = {f.seq: f for f in _read_live(session_id, _map(live))}
                if index is not None:
                    for f in self._iter_compacted(session_id, d):
                        merged.setdefault(f.seq, f)
                stream = [merged[s] for s in sorted(merged) if merged[s].t >= from_t]
            finished = bool(index and index.get("finished"))
            frames = list(stream) if not finished else stream
        yield from _with_gaps(frames, finished, seeking=from_t > 0)

    def _seek(self, sid: str, d: Path, index: dict[str, Any], from_t: float) -> Iterator[Frame]:
        chunks = index["chunks"]
        start = 0
        for i, c in enumerate(chunks):
            if c["t"] <= from_t:
                start = i
        dctx = zstandard.ZstdDecompressor()
        with open(d / "frames.zst", "rb") as fh:
            for c in chunks[start:]:
                fh.seek(c["offset"])
                for f in _unpack_chunk(sid, dctx.decompress(fh.read(c["length"]))):
                    if f.t >= from_t:
                        yield f

    def disk_bytes(self, session_id: str) -> int:
        d = self.dir_for(session_id)
        return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


class _Compressors:
    """The zstd level for a chunk by its raw size (see ZSTD_LEVEL_STRONG)."""

    def __init__(self) -> None:
        self._strong = zstandard.ZstdCompressor(level=ZSTD_LEVEL_STRONG)
        self._fast = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def compress(self, raw: bytes) -> bytes:
        return (self._strong if len(raw) < STRONG_BELOW else self._fast).compress(raw)


def _write_chunk(out: Any, cctx: _Compressors, chunk: list[Frame]) -> dict[str, Any]:
    data = cctx.compress(_pack_chunk(chunk))
    offset = out.tell()
    out.write(data)
    return {"t": chunk[0].t, "seq": chunk[0].seq, "offset": offset, "length": len(data)}


def _map(path: Path) -> bytes | mmap.mmap:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""


def _read_live(sid: str, raw: bytes | mmap.mmap) -> Iterator[Frame]:
    pos = 0
    while pos + _LEN.size <= len(raw):
        (n,) = _LEN.unpack_from(raw, pos)
        if pos + _LEN.size + n > len(raw):
            break  # torn tail from a crash mid-append: its batch is still on the broker
        yield from _unpack(sid, raw[pos + _LEN.size : pos + _LEN.size + n])
        pos += _LEN.size + n


def _ranges(frames: dict[int, Frame]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sorted(frames):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def _expand(ranges: list[list[int]]) -> Iterator[int]:
    for a, b in ranges:
        yield from range(a, b + 1)


def _with_gaps(
    frames: Iterable[Frame], finished: bool, seeking: bool = False
) -> Iterator[Frame | Gap]:
    """Insert a Gap wherever seqs jump (only once finished: a live tail may still come).
    When seeking, the first frame returned sets where counting starts."""
    expected: int | None = None if seeking else 0
    for f in frames:
        if expected is None:
            expected = f.seq
        if f.seq > expected and finished:
            yield Gap(expected, f.seq - 1, f.t)
        yield f
        expected = f.seq + 1


# ------------------------------------------------------------------ asciicast export


def to_asciicast(
    items: Iterable[Frame | Gap],
    *,
    width: int = 80,
    height: int = 24,
    title: str | None = None,
    timestamp: int | None = None,
    idle_time_limit: float | None = None,
) -> Iterator[str]:
    """asciicast v2 lines (header first), streamed.

    asciicast is JSON text, so bytes must become text. Output and input go through an
    incremental UTF-8 decoder per stream: a character split across frames is joined and
    emitted with the frame that completes it, so valid UTF-8 round-trips exactly
    (`asciinema cat` prints the very bytes the command wrote). Bytes that are not UTF-8
    cannot be JSON text without a lossy or non-standard escape (lone surrogates break
    `asciinema cat` and asciinema-player), so each maximal invalid sequence, as Python's
    decoder delimits it (`errors="replace"`), becomes U+FFFD, which `asciinema cat`
    prints as EF BF BD. The store itself is byte-exact: `auditcast play` and
    `auditcast export --raw` write the original bytes. The `x` frame has no v2 code: it
    ends the file."""
    header: dict[str, Any] = {"version": 2, "width": width, "height": height}
    if timestamp is not None:
        header["timestamp"] = timestamp
    if title:
        header["title"] = title
    if idle_time_limit:
        header["idle_time_limit"] = idle_time_limit
    first = True
    last_t = 0.0
    decoders = {
        "o": codecs.getincrementaldecoder("utf-8")("replace"),
        "i": codecs.getincrementaldecoder("utf-8")("replace"),
    }
    for item in items:
        if first:
            # the first resize (if it comes first) is the terminal size at start
            if isinstance(item, Frame) and item.kind == "r" and item.seq == 0:
                w, _, h = item.data.decode(errors="replace").partition("x")
                if w.isdigit() and h.isdigit():
                    header["width"], header["height"] = int(w), int(h)
            yield json.dumps(header)
            first = False
        last_t = item.t
        if isinstance(item, Gap):
            yield json.dumps([round(item.t, 6), "m", item.label])
            continue
        if item.kind in decoders:
            text = decoders[item.kind].decode(item.data)
            if text:
                yield json.dumps([round(item.t, 6), item.kind, text], ensure_ascii=False)
        elif item.kind in ("r", "m"):
            yield json.dumps([round(item.t, 6), item.kind, item.data.decode(errors="replace")])
    if first:
        yield json.dumps(header)
    for kind, dec in decoders.items():
        tail = dec.decode(b"", final=True)
        if tail:
            yield json.dumps([round(last_t, 6), kind, tail], ensure_ascii=False)
