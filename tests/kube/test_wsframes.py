"""WebSocket frames as the gateway follows them (collectors/kube/wsframes.py), no I/O."""

from __future__ import annotations

import random

import pytest

from auditcast.collectors.kube.wsframes import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameScanner,
    HandshakeError,
    StreamError,
    StreamScanner,
    accept_key,
    check_client_handshake,
    check_server_handshake,
    close_frame,
    encode_frame,
    unmask,
)


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    """A frame with FIN as given (encode_frame always sets it)."""
    raw = bytearray(encode_frame(opcode, payload, mask=mask))
    if not fin:
        raw[0] &= 0x7F
    return bytes(raw)


def chunks(data: bytes, rnd: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rnd.choice([1, 2, 3, 7, 64, 1000, 70_000])
        out.append(data[pos : pos + n])
        pos += n
    return out


# A session's worth of traffic: channel messages of every size class, a ping, a
# message in three fragments with a pong between them, and a close.
MESSAGES = [
    (OP_BINARY, b"\x01" + b"x" * 10),
    (OP_BINARY, b"\x01" + bytes(range(256)) * 300),  # 76,801 bytes: 8-byte length
    (OP_BINARY, b"\x02" + b"e" * 200),  # 2-byte length
    (OP_TEXT, b"1aGVsbG8="),
    (OP_BINARY, b"\x03" + b'{"status":"Success"}'),
]


def traffic(mask: bool) -> bytes:
    out = b"".join(encode_frame(op, p, mask=mask) for op, p in MESSAGES)
    out += encode_frame(OP_PING, b"are you there", mask=mask)
    out += frame(OP_BINARY, b"\x01part one, ", fin=False, mask=mask)
    out += frame(OP_CONTINUATION, b"part two, ", fin=False, mask=mask)
    out += encode_frame(0xA, b"pong", mask=mask)
    out += frame(OP_CONTINUATION, b"part three", mask=mask)
    return out + close_frame(1000, "bye", mask=mask)


EXPECTED = [
    *MESSAGES,
    (OP_PING, b"are you there"),
    (0xA, b"pong"),
    (OP_BINARY, b"\x01part one, part two, part three"),
    (OP_CLOSE, b"\x03\xe8bye"),
]


@pytest.mark.parametrize("masked", [True, False], ids=["client", "server"])
@pytest.mark.parametrize("seed", range(6))
def test_frames_pass_untouched_and_whole_however_the_bytes_are_cut(masked: bool, seed: int) -> None:
    data = traffic(masked)
    scanner = FrameScanner(masked=masked, max_message=1 << 20)
    forwarded, messages = [], []
    for piece in chunks(data, random.Random(seed)):
        out, got = scanner.feed(piece)
        forwarded.append(out)
        messages += got
        assert scanner.pending < 14 + 76_801  # at most one frame held back
    assert b"".join(forwarded) == data  # byte for byte, masks and all
    assert scanner.pending == 0
    assert [(m.opcode, m.payload) for m in messages] == EXPECTED


def test_each_forwarded_chunk_ends_at_a_frame_boundary() -> None:
    data = traffic(True)
    scanner = FrameScanner(masked=True, max_message=1 << 20)
    check = FrameScanner(masked=True, max_message=1 << 20)
    for piece in chunks(data, random.Random(1)):
        out, _ = scanner.feed(piece)
        check.feed(out)
        assert check.pending == 0  # what went on is only whole frames


@pytest.mark.parametrize("seed", range(6))
def test_stream_scanner_forwards_at_once_and_tracks_messages_across_reads(seed: int) -> None:
    data = traffic(False)
    scanner = StreamScanner(max_message=1 << 20)
    messages: list[tuple[int, bytes]] = []
    current = bytearray()
    boundaries = 0
    for piece in chunks(data, random.Random(seed)):
        for p in scanner.feed(piece):
            assert p.end <= len(piece)
            boundaries += p.boundary
            if p.opcode >= OP_CLOSE:  # control frames come whole, between fragments too
                assert p.first and p.last
                messages.append((p.opcode, bytes(p.data)))
                continue
            if p.first:
                current = bytearray()
            current += p.data
            if p.last:
                messages.append((p.opcode, bytes(current)))
    assert messages == EXPECTED
    assert scanner.boundary
    assert boundaries == 5 + 1 + 3 + 1 + 1  # every frame, fragments and control frames


def test_stream_scanner_knows_when_it_is_inside_a_frame() -> None:
    scanner = StreamScanner(max_message=1 << 20)
    data = encode_frame(OP_BINARY, b"\x01" + b"y" * 500, mask=False)
    scanner.feed(data[:1])
    assert not scanner.boundary  # half a header
    pieces = scanner.feed(data[1:100])
    assert not scanner.boundary and pieces[0].first and not pieces[0].last
    pieces = scanner.feed(data[100:] + encode_frame(OP_BINARY, b"\x01z", mask=False)[:3])
    assert pieces[0].boundary and pieces[0].end == len(data) - 100
    assert not scanner.boundary  # the next frame has begun


@pytest.mark.parametrize(
    ("raw", "masked", "message", "code"),
    [
        (encode_frame(OP_BINARY, b"\x00ls\n", mask=False), True, "not masked", 1002),
        (encode_frame(OP_BINARY, b"\x01out", mask=True), False, "server frame is masked", 1002),
        (b"\xc2\x80" + b"\0" * 4, True, "reserved bits", 1002),  # RSV1: deflate, not agreed
        (b"\x83\x80" + b"\0" * 4, True, "reserved opcode 0x3", 1002),
        (b"\x09\x80" + b"\0" * 4, True, "control frame is fragmented", 1002),
        (b"\x89\xfe\x00\x7e" + b"\0" * 130, True, "control frame of 126 bytes", 1002),
        (frame(OP_CONTINUATION, b"x", mask=True), True, "no message to continue", 1002),
        (
            frame(OP_BINARY, b"a", fin=False, mask=True) + frame(OP_BINARY, b"b", mask=True),
            True,
            "new message began",
            1002,
        ),
        (encode_frame(OP_BINARY, b"x" * 2000, mask=True), True, "exceeds the 1024-byte", 1009),
        (
            frame(OP_BINARY, b"a" * 600, fin=False, mask=True)
            + frame(OP_CONTINUATION, b"b" * 600, mask=True),
            True,
            "fragments together",
            1009,
        ),
    ],
    ids=[
        "unmasked-client",
        "masked-server",
        "rsv",
        "opcode",
        "fragmented-ping",
        "long-ping",
        "stray-continuation",
        "interleaved-message",
        "big-frame",
        "big-message",
    ],
)
def test_protocol_violations_are_refused_with_the_close_code_to_use(
    raw: bytes, masked: bool, message: str, code: int
) -> None:
    scanner = FrameScanner(masked=masked, max_message=1024)
    with pytest.raises(FrameError) as e:
        scanner.feed(raw)
    assert message in e.value.message and e.value.close_code == code
    if not masked:  # the server's direction is checked the same way when streamed
        with pytest.raises(FrameError, match=message):
            StreamScanner(max_message=1024).feed(raw)


def test_a_huge_frame_is_refused_from_its_header_before_its_payload_arrives() -> None:
    head = b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"mask"
    with pytest.raises(FrameError) as e:
        FrameScanner(masked=True, max_message=16 << 20).feed(head)
    assert e.value.close_code == CLOSE_TOO_BIG


def test_an_untapped_stream_keeps_no_payload_but_counts_it() -> None:
    scanner = FrameScanner(masked=True, max_message=1 << 20, tap=False)
    _, messages = scanner.feed(traffic(True))
    assert [m.opcode for m in messages] == [OP_PING, 0xA, OP_CLOSE]  # control frames only
    assert (
        scanner.data_bytes
        == sum(len(p) for _, p in MESSAGES) + len("part one, part two, part three") + 1
    )


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_encoded_frames_have_the_shortest_length_form_and_round_trip(size: int) -> None:
    payload = bytes(random.Random(size).randbytes(size))
    for mask in (False, True):
        raw = encode_frame(OP_BINARY, payload, mask=mask)
        assert len(raw) == size + (2 if size < 126 else 4 if size < 65536 else 10) + 4 * mask
        _, messages = FrameScanner(masked=mask, max_message=1 << 20).feed(raw)
        assert messages[0].payload == payload


def test_close_reason_is_cut_to_fit_a_control_frame_without_breaking_utf8() -> None:
    raw = close_frame(CLOSE_PROTOCOL_ERROR, "é" * 100, mask=False)
    _, messages = FrameScanner(masked=False, max_message=1024).feed(raw)
    payload = messages[0].payload
    assert len(payload) <= 125 and payload[:2] == (1002).to_bytes(2, "big")
    assert payload[2:].decode() == "é" * 61


def test_masking_is_its_own_inverse() -> None:
    data = bytes(range(256)) * 3 + b"tail"
    assert unmask(unmask(data, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == data
    assert unmask(b"", b"abcd") == b""


def test_handshake_accept_key_is_rfc_6455s_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


GOOD = {
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Connection": "keep-alive"}, "Connection: Upgrade"),
        ({"Sec-WebSocket-Version": "8"}, "unsupported Sec-WebSocket-Version '8'"),
        ({"Sec-WebSocket-Key": "short"}, "invalid Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}, "invalid Sec-WebSocket-Key"),
    ],
)
def test_a_bad_client_handshake_says_what_is_wrong(change: dict[str, str], message: str) -> None:
    assert check_client_handshake(GOOD) == GOOD["Sec-WebSocket-Key"]
    with pytest.raises(HandshakeError, match=message):
        check_client_handshake({**GOOD, **change})


def test_the_servers_handshake_must_answer_our_key_and_offer() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    ok = {
        "Upgrade": "websocket",
        "Sec-WebSocket-Accept": accept_key(key),
        "Sec-WebSocket-Protocol": "v5.channel.k8s.io",
    }
    offered = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
    assert check_server_handshake(ok, key, offered) == "v5.channel.k8s.io"
    for bad, message in [
        ({"Sec-WebSocket-Accept": "nope"}, "does not match"),
        ({"Sec-WebSocket-Protocol": "v9.bogus"}, "not offered"),
        ({"Sec-WebSocket-Extensions": "permessage-deflate"}, "extension"),
        ({"Upgrade": "h2c"}, "Upgrade: websocket"),
    ]:
        with pytest.raises(HandshakeError, match=message):
            check_server_handshake({**ok, **bad}, key, offered)


def test_a_refused_server_frame_says_where_it_starts_and_what_came_before() -> None:
    good = encode_frame(OP_BINARY, b"\x01before", mask=False)
    bad = encode_frame(OP_BINARY, b"\x01masked", mask=True)
    scanner = StreamScanner(max_message=1024)
    with pytest.raises(StreamError) as e:
        scanner.feed(good + bad)
    assert e.value.offset == len(good)  # forward this much: it ends a whole frame
    assert [bytes(p.data) for p in e.value.pieces] == [b"\x01before"]
    # a header cut by a read has partly gone on already: no boundary to stop at
    scanner = StreamScanner(max_message=1024)
    scanner.feed(good + bad[:1])
    with pytest.raises(StreamError) as e:
        scanner.feed(bad[1:])
    assert e.value.offset is None and "server frame is masked" in e.value.message
