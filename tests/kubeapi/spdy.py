"""SPDY/3.1 framing for the port-forward test double (pure: bytes in, frames out).

kubectl port-forward speaks SPDY/3.1 (draft 3.1 of the SPDY protocol, as implemented by
moby/spdystream), either straight after an `Upgrade: SPDY/3.1` or tunnelled inside
WebSocket binary messages (subprotocol `SPDY/3.1+portforward.k8s.io`). Frames:

- data frame: `0|stream-id(31) flags(8) length(24) payload`;
- control frame: `1|version(15)=3 type(16) flags(8) length(24) payload`, with
  SYN_STREAM(1), SYN_REPLY(2), RST_STREAM(3), SETTINGS(4), PING(6), GOAWAY(7),
  HEADERS(8), WINDOW_UPDATE(9).

Name/value header blocks (`count(32)` then `len(32) name len(32) value` pairs) are
zlib-compressed with the SPDY/3 dictionary, one compression context per direction for
the whole connection, so the codec is stateful: one `SpdyCodec` per connection.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
FLAG_FIN = 0x01

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5

MAX_FRAME = 1 << 24

_NAMES = (
    "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control connection "
    "content-base content-encoding content-language content-length content-location "
    "content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status"
).split()
_NAMES_2 = ["version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]

# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1).
DICTIONARY = (
    b"".join(struct.pack(">I", len(n)) + n.encode() for n in _NAMES)
    + struct.pack(">I", 6)
    + b"200 OK"
    + b"".join(struct.pack(">I", len(n)) + n.encode() for n in _NAMES_2)
    + b"100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    b"502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    b"400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    b"501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept "
    b"Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,"
    b"image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    b"text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset="
    b"iso-8859-1,utf-,*,enq=0."
)


class SpdyError(ValueError):
    """The peer sent bytes that are not valid SPDY/3.1."""


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class ControlFrame:
    type: int
    flags: int
    stream_id: int = 0  # SYN_STREAM/SYN_REPLY/RST_STREAM/HEADERS/WINDOW_UPDATE
    headers: dict[str, list[str]] = field(default_factory=dict)
    value: int = 0  # RST/GOAWAY status, PING id, WINDOW_UPDATE delta

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


Frame = DataFrame | ControlFrame


def encode_header_block(headers: dict[str, list[str]]) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        n = name.lower().encode()
        v = b"\0".join(x.encode() for x in values)
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def decode_header_block(block: bytes) -> dict[str, list[str]]:
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        pos, headers = 4, {}
        for _ in range(count):
            (nlen,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4 : pos + 4 + nlen]
            pos += 4 + nlen
            (vlen,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4 : pos + 4 + vlen]
            pos += 4 + vlen
            if len(name) != nlen or len(value) != vlen or not name:
                raise SpdyError("truncated header block")
            headers[name.decode()] = value.decode().split("\0")
    except (struct.error, UnicodeDecodeError) as e:
        raise SpdyError(f"malformed header block: {e}") from e
    if pos != len(block):
        raise SpdyError("trailing bytes after the header block")
    return headers


class SpdyCodec:
    """One connection's framing state: feed() received bytes, encode frames to send."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= 8:
            (length,) = struct.unpack_from(">I", self._buf, 4)
            flags, length = length >> 24, length & 0xFFFFFF
            if len(self._buf) < 8 + length:
                break
            head = bytes(self._buf[:8])
            payload = bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            if head[0] & 0x80:
                frames.append(self._control(head, flags, payload))
            else:
                (sid,) = struct.unpack_from(">I", head, 0)
                frames.append(DataFrame(sid, payload, bool(flags & FLAG_FIN)))
        return frames

    def _headers(self, compressed: bytes) -> dict[str, list[str]]:
        try:
            block = self._inflate.decompress(compressed)
        except zlib.error as e:
            raise SpdyError(f"header block does not inflate: {e}") from e
        return decode_header_block(block)

    def _control(self, head: bytes, flags: int, payload: bytes) -> ControlFrame:
        version, ftype = struct.unpack_from(">HH", head, 0)
        if version & 0x7FFF != VERSION:
            raise SpdyError(f"unsupported SPDY version {version & 0x7FFF}")
        need = {SYN_STREAM: 10, SYN_REPLY: 4, RST_STREAM: 8, SETTINGS: 4, PING: 4}
        need |= {GOAWAY: 8, HEADERS: 4, WINDOW_UPDATE: 8}
        if len(payload) < need.get(ftype, 0):
            raise SpdyError(f"control frame type {ftype} too short ({len(payload)} bytes)")
        if ftype == SYN_STREAM:
            sid = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            return ControlFrame(ftype, flags, sid, self._headers(payload[10:]))
        if ftype in (SYN_REPLY, HEADERS):
            sid = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            return ControlFrame(ftype, flags, sid, self._headers(payload[4:]))
        if ftype in (RST_STREAM, WINDOW_UPDATE):
            sid, value = struct.unpack_from(">II", payload, 0)
            return ControlFrame(ftype, flags, sid & 0x7FFFFFFF, value=value & 0x7FFFFFFF)
        if ftype == PING:
            return ControlFrame(ftype, flags, value=struct.unpack_from(">I", payload, 0)[0])
        if ftype == GOAWAY:
            sid, status = struct.unpack_from(">II", payload, 0)
            return ControlFrame(ftype, flags, sid & 0x7FFFFFFF, value=status)
        return ControlFrame(ftype, flags)  # SETTINGS and unknown types: nothing to act on

    # encoding ------------------------------------------------------------------------
    @staticmethod
    def _frame(ftype: int, flags: int, payload: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload

    def _compress(self, headers: dict[str, list[str]]) -> bytes:
        block = encode_header_block(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, stream_id: int, headers: dict[str, list[str]], fin: bool = False) -> bytes:
        payload = struct.pack(">IIH", stream_id, 0, 0) + self._compress(headers)
        return self._frame(SYN_STREAM, FLAG_FIN if fin else 0, payload)

    def syn_reply(self, stream_id: int, headers: dict[str, list[str]], fin: bool = False) -> bytes:
        payload = struct.pack(">I", stream_id) + self._compress(headers)
        return self._frame(SYN_REPLY, FLAG_FIN if fin else 0, payload)

    def rst_stream(self, stream_id: int, status: int) -> bytes:
        return self._frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self._frame(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, last_stream_id: int, status: int = 0) -> bytes:
        return self._frame(GOAWAY, 0, struct.pack(">II", last_stream_id, status))

    @staticmethod
    def data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
        if len(data) >= MAX_FRAME:
            raise SpdyError(f"data frame of {len(data)} bytes is over the 24-bit length")
        flags = FLAG_FIN if fin else 0
        return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data
