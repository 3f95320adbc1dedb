"""The Kubernetes remotecommand WebSocket channel framing, without I/O.

Every WebSocket message of `exec`/`attach` carries one channel: the first byte is the
channel id, the rest is the payload (k8s.io/apimachinery/pkg/util/httpstream/wsstream):

    0 stdin   1 stdout   2 stderr   3 error (a `Status` JSON: exit code on exit)
    4 resize (JSON `{"Width": cols, "Height": rows}`)
    255 close (v5 only: payload is one byte, the channel id whose writer closed)

The `base64.*` variants send text messages: the channel id as an ASCII digit
('0'..'4') followed by the base64-encoded payload.

`ChannelCodec.decode(message)` turns one message into a `ChannelEvent`;
`ChannelCodec.encode(event)` does the reverse. A malformed message raises
`MalformedFrame` saying what is wrong.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import orjson

from auditcast.errors import MalformedMessage

V5: Final = "v5.channel.k8s.io"
V4: Final = "v4.channel.k8s.io"
V4_BASE64: Final = "v4.base64.channel.k8s.io"
V1: Final = "channel.k8s.io"
V1_BASE64: Final = "base64.channel.k8s.io"
# port-forward subprotocols: proxied as opaque bytes, not decoded into channels.
PORTFORWARD: Final = "portforward.k8s.io"
PORTFORWARD_V4: Final = "v4.portforward.k8s.io"
SPDY_PORTFORWARD_TUNNEL: Final = "SPDY/3.1+portforward.k8s.io"

CHANNEL_PROTOCOLS: Final = (V5, V4, V4_BASE64, V1, V1_BASE64)
OPAQUE_PROTOCOLS: Final = (PORTFORWARD, PORTFORWARD_V4, SPDY_PORTFORWARD_TUNNEL)
KNOWN_PROTOCOLS: Final = frozenset(CHANNEL_PROTOCOLS + OPAQUE_PROTOCOLS)

# A resize is two small integers; a larger payload is not a terminal size.
MAX_RESIZE_BYTES: Final = 256
# A Status on the error channel is a few hundred bytes; cap what we parse.
MAX_STATUS_BYTES: Final = 64 * 1024


class MalformedFrame(MalformedMessage):
    """A WebSocket message that is not a valid remotecommand channel frame."""


class Channel(IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    ERROR = 3
    RESIZE = 4
    CLOSE = 255


@dataclass(frozen=True)
class ChannelEvent:
    channel: Channel
    data: bytes = b""
    # resize
    width: int = 0
    height: int = 0
    # close: which channel the peer closed
    closed: Channel | None = None

    @property
    def exit_code(self) -> int | None:
        """For an error-channel Status: 0 on success, the process exit code otherwise."""
        if self.channel is not Channel.ERROR:
            return None
        return exit_code_from_status(self.data)


def exit_code_from_status(data: bytes) -> int | None:
    """The exit code in an error-channel Status; None when the stream failed otherwise."""
    if len(data) > MAX_STATUS_BYTES:
        raise MalformedFrame(f"error channel status of {len(data)} bytes is too large")
    try:
        status = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedFrame("error channel payload is not a JSON Status") from None
    if not isinstance(status, dict):
        raise MalformedFrame("error channel payload is not a JSON object")
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message", ""))
                except ValueError:
                    raise MalformedFrame("ExitCode cause is not an integer") from None
    return None


def exit_status(code: int) -> bytes:
    """The error-channel Status the apiserver sends when the process exits with `code`."""
    if code == 0:
        doc: dict[str, Any] = {"metadata": {}, "status": "Success"}
    else:
        doc = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    return orjson.dumps(doc)


def _parse_resize(data: bytes) -> tuple[int, int]:
    if len(data) > MAX_RESIZE_BYTES:
        raise MalformedFrame(f"resize payload of {len(data)} bytes is too large")
    try:
        size = orjson.loads(data)
        width, height = int(size["Width"]), int(size["Height"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise MalformedFrame('resize payload is not {"Width": N, "Height": N}') from None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        raise MalformedFrame(f"resize to {width}x{height} is out of range")
    return width, height


class ChannelCodec:
    """Decode/encode messages of one negotiated channel subprotocol."""

    def __init__(self, protocol: str) -> None:
        if protocol not in CHANNEL_PROTOCOLS:
            raise MalformedFrame(f"{protocol!r} is not a channel subprotocol")
        self.protocol = protocol
        self.base64 = "base64" in protocol
        self.supports_close = protocol == V5

    def decode(self, message: bytes | str) -> ChannelEvent:
        if self.base64:
            if isinstance(message, bytes):
                try:
                    message = message.decode("ascii")
                except UnicodeDecodeError:
                    raise MalformedFrame("base64 channel message is not ASCII") from None
            if not message:
                raise MalformedFrame("empty message: no channel byte")
            if not message[0].isdigit():
                raise MalformedFrame(f"base64 channel id {message[0]!r} is not a digit")
            channel_id = int(message[0])
            try:
                payload = base64.b64decode(message[1:], validate=True)
            except binascii.Error:
                raise MalformedFrame("base64 channel payload is not valid base64") from None
        else:
            if isinstance(message, str):
                raise MalformedFrame(f"text message on binary subprotocol {self.protocol}")
            if not message:
                raise MalformedFrame("empty message: no channel byte")
            channel_id, payload = message[0], bytes(message[1:])
        try:
            channel = Channel(channel_id)
        except ValueError:
            raise MalformedFrame(f"unknown channel {channel_id}") from None
        if channel is Channel.CLOSE:
            if not self.supports_close:
                raise MalformedFrame(f"close channel 255 is not part of {self.protocol}")
            if len(payload) != 1:
                raise MalformedFrame("close message must name exactly one channel")
            try:
                closed = Channel(payload[0])
            except ValueError:
                raise MalformedFrame(f"close of unknown channel {payload[0]}") from None
            return ChannelEvent(channel, closed=closed)
        if channel is Channel.RESIZE:
            width, height = _parse_resize(payload)
            return ChannelEvent(channel, payload, width=width, height=height)
        return ChannelEvent(channel, payload)

    def encode(self, event: ChannelEvent) -> bytes | str:
        if event.channel is Channel.CLOSE:
            if not self.supports_close or event.closed is None:
                raise MalformedFrame(f"close is not part of {self.protocol}")
            return bytes([Channel.CLOSE, event.closed])
        payload = event.data
        if event.channel is Channel.RESIZE and not payload:
            payload = orjson.dumps({"Width": event.width, "Height": event.height})
        if self.base64:
            return str(int(event.channel)) + base64.b64encode(payload).decode("ascii")
        return bytes([event.channel]) + payload


def negotiate(offered: list[str]) -> str | None:
    """The first subprotocol the client offered that we know, in the client's order."""
    for proto in offered:
        if proto in KNOWN_PROTOCOLS:
            return proto
    return None


def parse_protocol_header(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]
