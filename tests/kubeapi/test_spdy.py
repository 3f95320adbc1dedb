"""The SPDY/3.1 codec of the port-forward test double, alone (no sockets)."""

from __future__ import annotations

import struct
import zlib

import pytest

from tests.kubeapi.spdy import (
    DICTIONARY,
    GOAWAY,
    PING,
    RST_STREAM,
    SYN_REPLY,
    SYN_STREAM,
    WINDOW_UPDATE,
    ControlFrame,
    DataFrame,
    SpdyCodec,
    SpdyError,
    decode_header_block,
    encode_header_block,
)


def test_dictionary_is_the_spdy3_one() -> None:
    # 1423 bytes; starts with the length-prefixed "options" and ends "enq=0."
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b",*,enq=0.")


def test_port_forward_streams_round_trip_with_shared_compression_state() -> None:
    client, server = SpdyCodec(), SpdyCodec()
    wire = client.syn_stream(1, {"streamType": ["error"], "port": ["80"], "requestID": ["0"]})
    wire += client.syn_stream(3, {"streamType": ["data"], "port": ["80"], "requestID": ["0"]})
    wire += client.data(3, b"GET / HTTP/1.1\r\n\r\n") + client.data(3, b"", fin=True)
    frames = server.feed(wire)
    assert frames == [
        ControlFrame(
            SYN_STREAM, 0, 1, {"streamtype": ["error"], "port": ["80"], "requestid": ["0"]}
        ),
        ControlFrame(
            SYN_STREAM, 0, 3, {"streamtype": ["data"], "port": ["80"], "requestid": ["0"]}
        ),
        DataFrame(3, b"GET / HTTP/1.1\r\n\r\n"),
        DataFrame(3, b"", fin=True),
    ]
    # the second header block reuses the first's zlib context: smaller on the wire
    fresh = SpdyCodec()
    first = fresh.syn_stream(1, {"streamType": ["error"], "port": ["80"], "requestID": ["0"]})
    second = fresh.syn_stream(3, {"streamType": ["data"], "port": ["80"], "requestID": ["0"]})
    assert len(second) < len(first)


def test_frames_split_at_any_byte_are_reassembled() -> None:
    client, server = SpdyCodec(), SpdyCodec()
    wire = client.syn_reply(5, {"a": ["1", "2"]}, fin=True) + client.ping(7) + client.data(5, b"x")
    got = [f for i in range(len(wire)) for f in server.feed(wire[i : i + 1])]
    assert got == [
        ControlFrame(SYN_REPLY, 1, 5, {"a": ["1", "2"]}),
        ControlFrame(PING, 0, value=7),
        DataFrame(5, b"x"),
    ]
    assert got[0].fin


def test_rst_goaway_and_window_update_decode() -> None:
    c = SpdyCodec()
    frames = SpdyCodec().feed(
        c.rst_stream(3, 5)
        + c.goaway(9, 1)
        + c._frame(WINDOW_UPDATE, 0, struct.pack(">II", 3, 65536))
    )
    assert frames == [
        ControlFrame(RST_STREAM, 0, 3, value=5),
        ControlFrame(GOAWAY, 0, 9, value=1),
        ControlFrame(WINDOW_UPDATE, 0, 3, value=65536),
    ]


def test_header_block_round_trip_and_truncation() -> None:
    block = encode_header_block({"Port": ["8080"], "x": ["a", "b"]})
    assert decode_header_block(block) == {"port": ["8080"], "x": ["a", "b"]}
    with pytest.raises(SpdyError, match=r"malformed header block|truncated"):
        decode_header_block(block[:-3])
    with pytest.raises(SpdyError, match="trailing bytes"):
        decode_header_block(block + b"\0")


def test_wrong_version_garbage_headers_and_short_frames_are_errors() -> None:
    with pytest.raises(SpdyError, match="unsupported SPDY version 2"):
        SpdyCodec().feed(struct.pack(">HHI", 0x8002, PING, 4) + b"\0\0\0\1")
    bogus = struct.pack(">IIH", 1, 0, 0) + b"not zlib at all"
    with pytest.raises(SpdyError, match="does not inflate"):
        SpdyCodec().feed(struct.pack(">HHI", 0x8003, SYN_STREAM, len(bogus)) + bogus)
    with pytest.raises(SpdyError, match="too short"):
        SpdyCodec().feed(struct.pack(">HHI", 0x8003, RST_STREAM, 2) + b"\0\0")


def test_header_blocks_compressed_with_another_dictionary_are_errors() -> None:
    # plain zlib (no preset dictionary) inflates; another preset dictionary does not
    plain = zlib.compress(encode_header_block({"a": ["b"]}))
    payload = struct.pack(">I", 1) + plain
    frames = SpdyCodec().feed(struct.pack(">HHI", 0x8003, SYN_REPLY, len(payload)) + payload)
    assert frames == [ControlFrame(SYN_REPLY, 0, 1, {"a": ["b"]})]
    no_dict = zlib.compressobj(zdict=b"other dictionary")
    plain = no_dict.compress(encode_header_block({"a": ["b"]})) + no_dict.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">I", 1) + plain
    with pytest.raises(SpdyError, match="does not inflate"):
        SpdyCodec().feed(struct.pack(">HHI", 0x8003, SYN_REPLY, len(payload)) + payload)


def test_oversized_data_frame_is_refused() -> None:
    with pytest.raises(SpdyError, match="24-bit"):
        SpdyCodec.data(1, b"\0" * (1 << 24))
