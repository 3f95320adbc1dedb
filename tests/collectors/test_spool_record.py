"""The spool record format alone: bytes in, records and corrupt stretches out."""

from __future__ import annotations

import random

import pytest

from auditcast.collectors._spool_record import (
    HEADER_SIZE,
    MAX_RECORD_BYTES,
    decode_records,
    encode_record,
)


def records(n: int) -> list[bytes]:
    return [encode_record("auditcast.events.raw", b"k%d" % i, b"v" * i) for i in range(n)]


def test_records_round_trip_with_their_end_offsets() -> None:
    recs = records(5)
    d = decode_records(b"".join(recs), final=True)
    assert [(r.topic, r.key, r.value) for r in d.records] == [
        ("auditcast.events.raw", b"k%d" % i, b"v" * i) for i in range(5)
    ]
    ends = [sum(len(r) for r in recs[: i + 1]) for i in range(5)]
    assert [r.end for r in d.records] == ends and d.consumed == ends[-1]
    assert not d.corrupt


def test_empty_key_and_value_and_binary_payload_survive() -> None:
    payload = bytes(range(256)) * 3 + b"AS" + b"\x00" * 10
    d = decode_records(encode_record("t", b"", payload) + encode_record("t", b"k", b""))
    assert [(r.key, r.value) for r in d.records] == [(b"", payload), (b"k", b"")]


def test_a_flipped_byte_costs_only_its_own_record() -> None:
    recs = records(5)
    buf = bytearray(b"".join(recs))
    start = sum(len(r) for r in recs[:2])
    buf[start + len(recs[2]) - 1] ^= 0xFF
    d = decode_records(bytes(buf), final=True)
    assert [r.key for r in d.records] == [b"k0", b"k1", b"k3", b"k4"]
    assert len(d.corrupt) == 1
    bad = d.corrupt[0]
    assert bad.offset == start and bad.length == len(recs[2]) and bad.reason == "checksum mismatch"


def test_garbage_between_records_is_one_reported_stretch() -> None:
    recs = records(2)
    junk = b"\x00garbage AS more AS\x01\x02" * 20
    d = decode_records(recs[0] + junk + recs[1], base=1000, final=True)
    assert [r.key for r in d.records] == [b"k0", b"k1"]
    assert [(c.offset, c.length) for c in d.corrupt] == [(1000 + len(recs[0]), len(junk))]


def test_torn_tail_waits_for_the_writer_unless_final() -> None:
    whole = encode_record("t", b"k", b"value")
    torn = whole + whole[:7]
    d = decode_records(torn)
    assert len(d.records) == 1 and d.consumed == len(whole) and not d.corrupt
    d = decode_records(torn + whole[7:12])  # still incomplete: still waiting
    assert d.consumed == len(whole) and not d.corrupt
    d = decode_records(torn, final=True)
    assert len(d.records) == 1 and d.consumed == len(torn)
    assert d.corrupt[0].offset == len(whole) and "torn" in d.corrupt[0].reason


def test_torn_record_followed_by_intact_ones_is_skipped_when_final() -> None:
    """A writer died mid-append, a later writer's record follows (a damaged length
    field looks the same): the decoder resyncs on the next intact record."""
    a, b = encode_record("t", b"a", b"x" * 100), encode_record("t", b"b", b"y" * 10)
    d = decode_records(a[:50] + b, final=True)
    assert [r.key for r in d.records] == [b"b"]
    assert d.corrupt[0].offset == 0 and d.corrupt[0].length == 50


def test_impossible_length_is_corruption_not_a_wait() -> None:
    rec = bytearray(encode_record("t", b"k", b"v"))
    rec[12:16] = (MAX_RECORD_BYTES + 1).to_bytes(4, "big")  # the value length
    good = encode_record("t", b"ok", b"v")
    d = decode_records(bytes(rec) + good)  # not final: must still not stall on it
    assert [r.key for r in d.records] == [b"ok"]
    assert d.corrupt[0].reason == "impossible record length"


def test_decoding_in_chunks_finds_the_same_records() -> None:
    recs = records(50)
    buf = b"".join(recs)
    out, pos, size = [], 0, 97
    while pos < len(buf):
        chunk = buf[pos : pos + size]
        d = decode_records(chunk, base=pos, final=pos + len(chunk) >= len(buf))
        out += d.records
        if d.consumed == pos:  # a record longer than the chunk: offer more
            size *= 2
        pos = d.consumed
    assert [r.key for r in out] == [b"k%d" % i for i in range(50)]


def test_random_garbage_never_raises() -> None:
    rng = random.Random(7)
    for _ in range(300):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        if rng.random() < 0.5:
            junk = junk[:20] + b"AS" + junk[20:]
        d = decode_records(junk + encode_record("t", b"end", b"!"), final=True)
        assert d.records[-1].key == b"end"
        assert d.consumed == len(junk) + HEADER_SIZE + 5


def test_topic_longer_than_kafka_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than Kafka allows"):
        encode_record("t" * 300, b"", b"")


def test_checksum_is_plain_crc32_so_segments_of_older_writers_still_decode() -> None:
    """The fast CRC (ISA-L) must give zlib's CRC-32: a segment written before the
    switch, or by a host without ISA-L, decodes the same."""
    import struct
    import zlib

    topic, key, value = "t", b"key", bytes(range(256)) * 200
    lengths = struct.pack(">HII", len(topic), len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(topic.encode(), zlib.crc32(lengths))))
    rec = encode_record(topic, key, value)
    assert rec[2:6] == struct.pack(">I", crc)
    assert decode_records(rec, final=True).records[0].value == value
