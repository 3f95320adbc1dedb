"""The spool's on-disk record format: a pure codec, no I/O.

One record = a fixed header, then topic, key and value:

    magic  b"AS"        2 bytes   marks a record start, so the decoder can resync
    crc32  uint32 BE    4 bytes   over the three lengths and the three payloads
    tlen   uint16 BE    2 bytes   topic length
    klen   uint32 BE    4 bytes   key length
    vlen   uint32 BE    4 bytes   value length

A segment file is records back to back. A writer killed mid-append leaves a torn record
at the tail; a disk fault can damage one anywhere. The decoder reports both as corrupt
stretches and goes on with the next intact record: it never raises on bad bytes, so
one bad record never stops a drain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

try:  # ISA-L computes the same CRC-32 as zlib ~8x faster (SIMD); zlib is the fallback
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency, zlib always works
    from zlib import crc32

MAGIC: Final = b"AS"
_HEADER = struct.Struct(">2sIHII")
HEADER_SIZE: Final = _HEADER.size
_LENGTHS = struct.Struct(">HII")
# Kafka caps a topic name at 249 characters.
MAX_TOPIC_BYTES: Final = 249
# The spool refuses records above the Kafka request size (~1.1 MiB, auditcast.kafka), so
# a header that claims more than this is damaged, not a big record. Readers must offer
# at least this many bytes at once to be sure to make progress.
MAX_RECORD_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    topic: str
    key: bytes
    value: bytes
    end: int  # segment offset just past this record


@dataclass(frozen=True, slots=True)
class CorruptStretch:
    offset: int  # segment offset where the damage starts
    length: int  # bytes skipped
    reason: str


@dataclass
class Decoded:
    records: list[SpoolRecord] = field(default_factory=list)
    # Segment offset up to which bytes were consumed. Without `final`, an incomplete
    # record at the end stays unconsumed, so the reader decodes it once it is whole.
    consumed: int = 0
    corrupt: list[CorruptStretch] = field(default_factory=list)


def encode_head(topic: str, key: bytes, value: bytes) -> bytes:
    """Everything of the record but `value` (header, topic, key): written with `value`
    in one `os.writev`, a large value is not copied into a joined record first."""
    t = topic.encode()
    if len(t) > MAX_TOPIC_BYTES:
        raise ValueError(f"topic name of {len(t)} bytes is longer than Kafka allows")
    lengths = _LENGTHS.pack(len(t), len(key), len(value))
    crc = crc32(value, crc32(key, crc32(t, crc32(lengths))))
    return b"".join((_HEADER.pack(MAGIC, crc, len(t), len(key), len(value)), t, key))


def encode_record(topic: str, key: bytes, value: bytes) -> bytes:
    return encode_head(topic, key, value) + value


def decode_records(buf: bytes | memoryview, base: int = 0, final: bool = False) -> Decoded:
    """Decode the records in `buf`, which starts at segment offset `base`.

    `final` says `buf` runs to the end of everything the writer appended (its writes
    are whole records, or it is dead): an incomplete record at the end is then a torn
    tail, reported and consumed. Without `final` it is left for a later call.
    """
    data = buf if isinstance(buf, bytes) else bytes(buf)
    view = memoryview(data)
    out = Decoded(consumed=base)
    n = len(data)
    pos = 0
    bad_from: int | None = None  # start of the corrupt stretch being skipped
    bad_reason = ""

    def skip(reason: str) -> int:
        nonlocal bad_from, bad_reason
        if bad_from is None:
            bad_from, bad_reason = pos, reason
        nxt = data.find(MAGIC, pos + 1)
        return n if nxt < 0 else nxt

    def close_stretch(at: int) -> None:
        nonlocal bad_from
        if bad_from is not None:
            out.corrupt.append(CorruptStretch(base + bad_from, at - bad_from, bad_reason))
            bad_from = None

    while pos < n:
        if n - pos < HEADER_SIZE:
            if not final:
                break
            pos = skip(f"torn record header ({n - pos} bytes at the end)")
            continue
        magic, crc, tlen, klen, vlen = _HEADER.unpack_from(view, pos)
        if magic != MAGIC:
            pos = skip("no record marker")
            continue
        if tlen > MAX_TOPIC_BYTES or tlen + klen + vlen > MAX_RECORD_BYTES:
            pos = skip("impossible record length")
            continue
        end = pos + HEADER_SIZE + tlen + klen + vlen
        if end > n:
            if not final:
                break
            pos = skip("torn record (the writer died mid-append)")
            continue
        lengths = _LENGTHS.pack(tlen, klen, vlen)
        t = view[pos + HEADER_SIZE : pos + HEADER_SIZE + tlen]
        k = view[pos + HEADER_SIZE + tlen : pos + HEADER_SIZE + tlen + klen]
        v = view[pos + HEADER_SIZE + tlen + klen : end]
        if crc32(v, crc32(k, crc32(t, crc32(lengths)))) != crc:
            pos = skip("checksum mismatch")
            continue
        try:
            topic = bytes(t).decode()
        except UnicodeDecodeError:
            pos = skip("topic is not UTF-8")
            continue
        close_stretch(pos)
        out.records.append(SpoolRecord(topic, bytes(k), bytes(v), base + end))
        pos = end
    # Bytes before a (possibly incomplete) record start are damaged for certain.
    close_stretch(pos)
    out.consumed = base + pos
    return out
