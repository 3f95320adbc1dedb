"""The spool's on-disk record format: a pure codec, no I/O.

One record = a fixed header then topic, key and value:

    magic  b"AS"        2 bytes   marks a record start, so a torn tail is recognisable
    crc32  uint32 BE    4 bytes   over the lengths and the three payloads
    tlen   uint16 BE    2 bytes   topic length
    klen   uint32 BE    4 bytes   key length
    vlen   uint32 BE    4 bytes   value length

A segment is records back to back. A crash can leave a partial record at the tail
(`TornTail`), and a disk fault can corrupt one in the middle (`corrupt`); the decoder
reports both and never raises on bad bytes, so one bad record never stops a drain.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

MAGIC: Final = b"AS"
_HEADER = struct.Struct(">2sIHII")
HEADER_SIZE: Final = _HEADER.size
_LENGTHS = struct.Struct(">HII")


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    topic: str
    key: bytes
    value: bytes
    end: int  # byte offset just past this record in its segment


@dataclass
class Decoded:
    records: list[SpoolRecord] = field(default_factory=list)
    # Offset up to which bytes were consumed: a torn tail stays unconsumed, so a reader
    # that comes back after the writer finished it decodes it then.
    consumed: int = 0
    # (offset, reason) of each corrupt stretch that was skipped.
    corrupt: list[tuple[int, str]] = field(default_factory=list)


def encode_record(topic: str, key: bytes, value: bytes) -> bytes:
    t = topic.encode()
    lengths = _LENGTHS.pack(len(t), len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(t, zlib.crc32(lengths))))
    return _HEADER.pack(MAGIC, crc, len(t), len(key), len(value)) + t + key + value


def decode_records(buf: bytes | memoryview, base: int = 0, final: bool = False) -> Decoded:
    """Decode records from `buf`, which starts at segment offset `base`.

    With `final=False` an incomplete record at the end is left for later (the writer
    may still be appending). With `final=True` (the writer is gone) it is reported as
    corrupt and consumed.
    """
    view = memoryview(buf)
    out = Decoded(consumed=base)
    pos = 0
    n = len(view)
    while pos < n:
        if n - pos < HEADER_SIZE:
            if final:
                out.corrupt.append((base + pos, f"torn record header ({n - pos} bytes)"))
                pos = n
            break
        magic, crc, tlen, klen, vlen = _HEADER.unpack_from(view, pos)
        if magic != MAGIC:
            nxt = _resync(view, pos + 1)
            out.corrupt.append((base + pos, "bad record marker"))
            pos = nxt
            continue
        end = pos + HEADER_SIZE + tlen + klen + vlen
        if end > n:
            if final:
                out.corrupt.append((base + pos, "torn record (writer died mid-append)"))
                pos = n
            break
        body = view[pos + HEADER_SIZE : end]
        lengths = _LENGTHS.pack(tlen, klen, vlen)
        t = body[:tlen]
        k = body[tlen : tlen + klen]
        v = body[tlen + klen :]
        if zlib.crc32(v, zlib.crc32(k, zlib.crc32(t, zlib.crc32(lengths)))) != crc:
            out.corrupt.append((base + pos, "checksum mismatch"))
            pos = _resync(view, pos + 1)
            continue
        try:
            topic = bytes(t).decode()
        except UnicodeDecodeError:
            out.corrupt.append((base + pos, "topic is not UTF-8"))
            pos = end
            continue
        out.records.append(SpoolRecord(topic, bytes(k), bytes(v), base + end))
        pos = end
    out.consumed = base + pos
    return out


def _resync(view: memoryview, start: int) -> int:
    """The next offset that looks like a record start, or the end of the buffer."""
    idx = bytes(view[start:]).find(MAGIC)
    return len(view) if idx < 0 else start + idx
