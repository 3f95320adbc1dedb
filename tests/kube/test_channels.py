"""The remotecommand channel framing: bytes in, events out, and back."""

from __future__ import annotations

import pytest

from auditcast.collectors.kube.channels import (
    V1_BASE64,
    V4,
    V4_BASE64,
    V5,
    Channel,
    ChannelCodec,
    ChannelEvent,
    MalformedFrame,
    exit_code_from_status,
    exit_status,
    negotiate,
    parse_protocol_header,
)


def test_stdout_stdin_and_stderr_frames_decode_to_their_channel() -> None:
    codec = ChannelCodec(V5)
    assert codec.decode(b"\x00ls\r") == ChannelEvent(Channel.STDIN, b"ls\r")
    assert codec.decode(b"\x01total 0\r\n") == ChannelEvent(Channel.STDOUT, b"total 0\r\n")
    assert codec.decode(b"\x02oops") == ChannelEvent(Channel.STDERR, b"oops")


def test_resize_frame_gives_width_and_height() -> None:
    ev = ChannelCodec(V4).decode(b'\x04{"Width":120,"Height":40}')
    assert (ev.channel, ev.width, ev.height) == (Channel.RESIZE, 120, 40)


def test_v5_close_names_the_closed_channel_and_v4_rejects_it() -> None:
    ev = ChannelCodec(V5).decode(b"\xff\x00")
    assert ev.channel is Channel.CLOSE and ev.closed is Channel.STDIN
    with pytest.raises(MalformedFrame, match="not part of v4"):
        ChannelCodec(V4).decode(b"\xff\x00")


def test_error_channel_status_carries_the_exit_code() -> None:
    codec = ChannelCodec(V5)
    assert codec.decode(b"\x03" + exit_status(0)).exit_code == 0
    assert codec.decode(b"\x03" + exit_status(42)).exit_code == 42
    # a failure that is not a process exit (e.g. container not found) has no exit code
    assert exit_code_from_status(b'{"status":"Failure","reason":"NotFound"}') is None


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "empty message"),
        (b"\x07abc", "unknown channel 7"),
        (b"\x04not json", "resize payload"),
        (b'\x04{"Width":1}', "resize payload"),
        (b'\x04{"Width":-1,"Height":5}', "out of range"),
        (b"\xff", "exactly one channel"),
        (b"\xff\x09", "close of unknown channel 9"),
        (b"\x03{", "not a JSON Status"),
        ("0aGk=", "text message on binary"),
    ],
)
def test_malformed_frames_raise_a_specific_error(message: bytes | str, error: str) -> None:
    codec = ChannelCodec(V5)
    with pytest.raises(MalformedFrame, match=error):
        ev = codec.decode(message)
        ev.exit_code  # noqa: B018 - the error channel payload is parsed lazily


def test_base64_variant_round_trips_and_rejects_garbage() -> None:
    codec = ChannelCodec(V4_BASE64)
    msg = codec.encode(ChannelEvent(Channel.STDOUT, b"\x1b[31mred\x1b[0m"))
    assert msg == "1G1szMW1yZWQbWzBt"
    assert codec.decode(msg) == ChannelEvent(Channel.STDOUT, b"\x1b[31mred\x1b[0m")
    with pytest.raises(MalformedFrame, match="not valid base64"):
        codec.decode("1!!!")
    with pytest.raises(MalformedFrame, match="not a digit"):
        ChannelCodec(V1_BASE64).decode("x")


def test_encode_is_the_inverse_of_decode() -> None:
    codec = ChannelCodec(V5)
    for ev in (
        ChannelEvent(Channel.STDIN, b"exit\n"),
        ChannelEvent(Channel.ERROR, exit_status(3)),
        ChannelEvent(Channel.CLOSE, closed=Channel.STDIN),
    ):
        assert codec.decode(codec.encode(ev)) == ev
    resize = codec.decode(codec.encode(ChannelEvent(Channel.RESIZE, width=80, height=24)))
    assert (resize.width, resize.height) == (80, 24)


def test_negotiation_takes_the_clients_first_known_protocol() -> None:
    offered = parse_protocol_header("v6.channel.k8s.io, v5.channel.k8s.io,v4.channel.k8s.io")
    assert negotiate(offered) == V5
    assert negotiate(["bogus.k8s.io"]) is None
    with pytest.raises(MalformedFrame):
        ChannelCodec("bogus.k8s.io")
