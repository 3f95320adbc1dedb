"""WebSocket (RFC 6455) frames followed as they pass through the gateway, without I/O.

The gateway relays an exec/attach/port-forward WebSocket byte for byte: kubectl's frames
go to the API server as kubectl masked them (any mask is a valid client mask), the
server's frames come back as the server wrote them. Nothing is decoded and re-encoded;
pings, pongs and the close handshake pass end to end. `FrameScanner` follows one
direction: it checks every frame header as the peer's role requires (client frames
masked, server frames not, no reserved bits or opcodes since no extension is
negotiated, control frames whole and short, messages within a size limit), holds back
the bytes of a frame that has not fully arrived (so the gateway's own frames, a lock's
close for instance, always go in between whole frames), and hands the tap the messages
that completed: data messages reassembled from their fragments, control frames.

Also the handshake's pure parts (`accept_key`, `check_client_handshake`,
`check_server_handshake`) and `encode_frame` for the frames the gateway sends itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from auditcast.errors import MalformedMessage

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA_OPS: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_KNOWN_OPS: Final = _DATA_OPS | {OP_CLOSE, OP_PING, OP_PONG}
MAX_CONTROL_PAYLOAD: Final = 125

# Close codes (RFC 6455 §7.4.1) the gateway uses.
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FrameError(MalformedMessage):
    """A frame (or message) that breaks the WebSocket protocol; `close_code` is what
    the connection is closed with."""

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


class HandshakeError(MalformedMessage):
    """An upgrade request or answer that is not a valid WebSocket handshake."""


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message (TEXT or BINARY, fragments joined) or a control frame."""

    opcode: int
    payload: bytes
    end: int = 0  # where its last frame ends in the bytes `feed` returned with it


def unmask(data: bytes | bytearray | memoryview, key: bytes | bytearray) -> bytes:
    """`data` XOR the repeated 4-byte `key` (masking and unmasking are the same)."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def parse_head(buf: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
    """The frame header at `pos`: (first byte, payload length, header length with the
    mask key); None when it has not fully arrived."""
    size = len(buf)
    if size - pos < 2:
        return None
    b1 = buf[pos + 1]
    length, head = b1 & 0x7F, 2
    if length == 126:
        if size - pos < 4:
            return None
        length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
    elif length == 127:
        if size - pos < 10:
            return None
        length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
    if b1 & 0x80:
        head += 4
    if size - pos < head:
        return None
    return buf[pos], length, head


def check_head(b0: int, b1: int, length: int, *, masked: bool, max_message: int) -> None:
    """Raises FrameError for a header the peer may not send (`masked`: a client's)."""
    opcode = b0 & 0x0F
    if b0 & 0x70:
        raise FrameError("reserved bits set in a frame (no extension was negotiated)")
    if opcode not in _KNOWN_OPS:
        raise FrameError(f"reserved opcode {opcode:#x}")
    if bool(b1 & 0x80) != masked:
        raise FrameError("a client frame is not masked" if masked else "a server frame is masked")
    if opcode >= OP_CLOSE:
        if not b0 & 0x80:
            raise FrameError("a control frame is fragmented")
        if length > MAX_CONTROL_PAYLOAD:
            raise FrameError(f"a control frame of {length} bytes (at most 125)")
    elif length > max_message:
        raise FrameError(
            f"a frame of {length} bytes exceeds the {max_message}-byte limit", CLOSE_TOO_BIG
        )


class _Fragments:
    """The fragmentation rules of one direction: which message a data frame belongs to."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.open = False  # a message's final fragment is still to come
        self.opcode = 0
        self.size = 0

    def frame(self, opcode: int, fin: bool, length: int) -> int:
        """The opcode of the message this data frame carries; raises FrameError."""
        if opcode == OP_CONTINUATION:
            if not self.open:
                raise FrameError("a continuation frame with no message to continue")
            self.size += length
            if self.size > self.max_message:
                raise FrameError(
                    f"a message of over {self.max_message} bytes (fragments together)",
                    CLOSE_TOO_BIG,
                )
        elif self.open:
            raise FrameError("a new message began before the last one's final fragment")
        else:
            self.opcode, self.size = opcode, length
        self.open = not fin
        return self.opcode


class FrameScanner:
    """One direction of a WebSocket connection, whole frame by whole frame.

    `masked`: the sender is the client (its frames must be masked); the server's must
    not be. `tap`: keep data messages' payloads (a stream nobody decodes only needs its
    control frames and byte counts). `max_message`: the largest message, fragments
    included (FrameError 1009 beyond)."""

    def __init__(self, *, masked: bool, max_message: int, tap: bool = True) -> None:
        self.masked = masked
        self.max_message = max_message
        self.tap = tap
        self.data_bytes = 0  # payload bytes of data frames seen whole
        self._buf = bytearray()
        self._rules = _Fragments(max_message)
        self._parts: list[bytes] = []  # the fragments so far of the message in progress

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame that has not fully arrived."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, list[Message]]:
        """Take the next bytes received; return the bytes that end at a frame boundary
        (to forward untouched) and the messages they completed. Raises FrameError."""
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        messages: list[Message] = []
        end = self._scan(buf, messages)
        if buf is self._buf:
            with memoryview(self._buf) as view:
                forward = bytes(view[:end])
            del self._buf[:end]
        elif end == len(data):
            forward = data
        else:
            forward = data[:end]
            self._buf += data[end:]
        return forward, messages

    def _scan(self, buf: bytes | bytearray, messages: list[Message]) -> int:
        """Walk the whole frames at the start of `buf`; the offset where they end."""
        pos, size = 0, len(buf)
        while (head := parse_head(buf, pos)) is not None:
            b0, length, head_len = head
            check_head(b0, buf[pos + 1], length, masked=self.masked, max_message=self.max_message)
            start, end = pos + head_len, pos + head_len + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode >= OP_CLOSE or self.tap:
                payload = bytes(buf[start:end])
                if self.masked:
                    payload = unmask(payload, bytes(buf[start - 4 : start]))
            if opcode >= OP_CLOSE:
                messages.append(Message(opcode, payload, end))
            else:
                self.data_bytes += length
                message_op = self._rules.frame(opcode, bool(b0 & 0x80), length)
                if self.tap:
                    self._parts.append(payload)
                    if not self._rules.open:
                        messages.append(Message(message_op, b"".join(self._parts), end))
                        self._parts = []
            pos = end
        return pos


class StreamError(FrameError):
    """A FrameError in a stream followed by `StreamScanner`: `offset` is where the refused
    frame starts in the bytes fed (what comes before it ends at a frame boundary), None
    when it began in an earlier read; `pieces` are those of the bytes before it."""

    def __init__(
        self, message: str, close_code: int, offset: int | None, pieces: list[Piece]
    ) -> None:
        super().__init__(message, close_code)
        self.offset = offset
        self.pieces = pieces


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes of one message as they arrived: a data message comes in pieces (`first`
    and `last` mark its ends), a control frame in one. `end` is the offset in the fed
    chunk just after them; `boundary`: a frame ends there."""

    opcode: int
    data: bytes | memoryview
    first: bool
    last: bool
    end: int
    boundary: bool


class StreamScanner:
    """A server's direction, followed without holding anything back: every byte is
    forwarded as it arrives, and the frames are tracked across reads (`boundary` says
    whether the bytes so far end a frame, where the gateway may put one of its own)."""

    def __init__(self, *, max_message: int) -> None:
        self.max_message = max_message
        self.data_bytes = 0
        self._head = b""  # the start of a header cut by a read
        self._left = -1  # payload bytes still to come of the current frame; -1: none
        self._opcode = 0  # the current frame's message opcode (or its control opcode)
        self._fin = False
        self._first = False  # the next data bytes are their message's first
        self._control = bytearray()
        self._rules = _Fragments(max_message)

    @property
    def boundary(self) -> bool:
        return self._left < 0 and not self._head

    def feed(self, data: bytes) -> list[Piece]:
        """The pieces of messages in `data` (memoryviews of it). Raises FrameError."""
        pieces: list[Piece] = []
        view = memoryview(data)
        pos, size = 0, len(data)
        while True:
            if self._left < 0:
                if pos >= size:
                    break
                buf = self._head + data[pos : pos + 14] if self._head else data
                at = 0 if self._head else pos
                head = parse_head(buf, at)
                if head is None:
                    self._head = bytes(buf[at:]) if self._head else data[pos:]
                    break
                b0, length, head_len = head
                try:
                    check_head(b0, buf[at + 1], length, masked=False, max_message=self.max_message)
                    self._start(b0, length)
                except FrameError as e:
                    # the bytes before this header end whole frames, unless the header
                    # began in an earlier read (then those bytes have gone on)
                    offset = None if self._head else pos
                    raise StreamError(e.message, e.close_code, offset, pieces) from None
                pos += head_len - len(self._head)
                self._head = b""
            take = min(self._left, size - pos)
            chunk = view[pos : pos + take]
            pos += take
            self._left -= take
            done = self._left == 0
            if done:
                self._left = -1
            if self._opcode >= OP_CLOSE:
                self._control += chunk
                if done:
                    pieces.append(Piece(self._opcode, bytes(self._control), True, True, pos, True))
                    self._control.clear()
            elif take or done:
                self.data_bytes += take
                last = done and self._fin
                pieces.append(Piece(self._opcode, chunk, self._first, last, pos, done))
                self._first = False
            if not done:
                break
        return pieces

    def _start(self, b0: int, length: int) -> None:
        opcode, self._fin, self._left = b0 & 0x0F, bool(b0 & 0x80), length
        if opcode >= OP_CLOSE:
            self._opcode = opcode
            return
        self._first = opcode != OP_CONTINUATION
        self._opcode = self._rules.frame(opcode, self._fin, length)


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame (a client's is masked with a fresh random key)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, (0x80 if mask else 0) | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, (0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, (0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def close_frame(code: int, reason: str, *, mask: bool) -> bytes:
    """A close frame; the reason is cut to fit a control frame (123 bytes of UTF-8)."""
    text = reason.encode()[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode()
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + text, mask=mask)


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` answering `Sec-WebSocket-Key: key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def check_client_handshake(headers: Mapping[str, str]) -> str:
    """The client's `Sec-WebSocket-Key`, after the checks RFC 6455 §4.2.1 asks of an
    upgrade request (the Upgrade header was checked by whoever routed it here)."""
    if "upgrade" not in headers.get("Connection", "").lower():
        raise HandshakeError("a WebSocket upgrade needs 'Connection: Upgrade'")
    version = headers.get("Sec-WebSocket-Version", "")
    if version != "13":
        raise HandshakeError(f"unsupported Sec-WebSocket-Version {version!r} (13 is spoken)")
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise HandshakeError(f"invalid Sec-WebSocket-Key {key[:40]!r}") from None
    return key


def check_server_handshake(headers: Mapping[str, str], key: str, offered: Sequence[str]) -> str:
    """The subprotocol the server chose, after checking its 101 answers our `key`."""
    if headers.get("Upgrade", "").lower() != "websocket":
        raise HandshakeError("the upgrade answer lacks 'Upgrade: websocket'")
    if headers.get("Sec-WebSocket-Accept", "") != accept_key(key):
        raise HandshakeError("the upgrade answer's Sec-WebSocket-Accept does not match")
    if headers.get("Sec-WebSocket-Extensions"):
        raise HandshakeError("the upgrade answer enables an extension nobody asked for")
    chosen = headers.get("Sec-WebSocket-Protocol", "")
    if chosen not in offered:
        raise HandshakeError(f"the upgrade answer chose subprotocol {chosen!r}, not offered")
    return chosen
