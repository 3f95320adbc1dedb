"""Follow an SFTP (v3) conversation just enough to report file transfers, no I/O.

Client packets OPEN/READ/WRITE/CLOSE and server replies HANDLE/DATA are parsed for
their ids, handles and lengths; file contents are counted, never kept. A transfer is
reported when its handle is closed: path, bytes moved and direction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

FXP_OPEN: Final = 3
FXP_CLOSE: Final = 4
FXP_READ: Final = 5
FXP_WRITE: Final = 6
FXP_HANDLE: Final = 102
FXP_DATA: Final = 103
# OpenSSH's sftp-server refuses packets above 256 KiB (SFTP_MAX_MSG_LENGTH); a stream
# claiming more is not SFTP we understand, so the tap stops rather than buffer it.
MAX_PACKET: Final = 256 * 1024 + 1024
# Requests in flight we remember; OpenSSH's sftp client keeps at most 64 outstanding.
MAX_PENDING: Final = 4096
# Only packets we look into are buffered whole; for others we skip the body.
_WANTED_CLIENT: Final = frozenset({FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE})
_WANTED_SERVER: Final = frozenset({FXP_HANDLE, FXP_DATA})
_HEADER: Final = 9  # uint32 length, byte type, uint32 request id


@dataclass(frozen=True)
class Transfer:
    direction: str  # "upload" | "download" | "sftp" (refused before any file)
    path: str
    size: int
    allowed: bool = True


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, pos)
    return buf[pos + 4 : pos + 4 + n], pos + 4 + n


@dataclass
class _Stream:
    """Splits one direction of the byte stream into (type, id, head) tuples.

    `head` holds at most the first `keep` body bytes: enough for the fields we read.
    """

    wanted: frozenset[int]
    buf: bytearray = field(default_factory=bytearray)
    skip: int = 0
    broken: bool = False

    def feed(self, data: bytes) -> list[tuple[int, int, bytes, int]]:
        out: list[tuple[int, int, bytes, int]] = []
        if self.broken:
            return out
        view = memoryview(data)
        if self.skip:
            n = min(self.skip, len(view))
            self.skip -= n
            view = view[n:]
        self.buf += view
        while len(self.buf) >= _HEADER:
            length, ptype, rid = struct.unpack_from(">IBI", self.buf, 0)
            if length > MAX_PACKET or length < 5:
                self.broken = True
                return out
            total = 4 + length
            # For WRITE and DATA we only need the handle / the data length, not the bytes.
            keep = total if ptype in (FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_HANDLE) else 4096
            if ptype not in self.wanted:
                keep = _HEADER
            if len(self.buf) < min(total, keep):
                break
            head = bytes(self.buf[: min(total, keep)])
            if len(self.buf) >= total:
                del self.buf[:total]
            else:
                self.skip = total - len(self.buf)
                self.buf.clear()
            if ptype in self.wanted:
                out.append((ptype, rid, head, length))
        return out


@dataclass
class _Open:
    path: str
    writing: bool
    bytes: int = 0


class SftpTap:
    def __init__(self) -> None:
        self._client = _Stream(_WANTED_CLIENT)
        self._server = _Stream(_WANTED_SERVER)
        self._open_requests: dict[int, tuple[str, bool]] = {}
        self._read_requests: dict[int, bytes] = {}
        self._handles: dict[bytes, _Open] = {}

    def client_data(self, data: bytes) -> list[Transfer]:
        out: list[Transfer] = []
        for ptype, rid, head, _length in self._client.feed(data):
            try:
                if ptype == FXP_OPEN:
                    path, pos = _string(head, _HEADER)
                    (pflags,) = struct.unpack_from(">I", head, pos)
                    # SSH_FXF_WRITE 0x02, SSH_FXF_CREAT 0x08, SSH_FXF_TRUNC 0x10
                    if len(self._open_requests) >= MAX_PENDING:
                        self._open_requests.clear()  # replies we never saw: start over
                    self._open_requests[rid] = (
                        path.decode("utf-8", "replace"),
                        bool(pflags & 0x1A),
                    )
                elif ptype == FXP_READ:
                    handle, _ = _string(head, _HEADER)
                    if len(self._read_requests) >= MAX_PENDING:
                        self._read_requests.clear()
                    self._read_requests[rid] = handle
                elif ptype == FXP_WRITE:
                    handle, pos = _string(head, _HEADER)
                    pos += 8  # offset
                    (n,) = struct.unpack_from(">I", head, pos)
                    f = self._handles.get(handle)
                    if f is not None:
                        f.bytes += n
                elif ptype == FXP_CLOSE:
                    handle, _ = _string(head, _HEADER)
                    f = self._handles.pop(handle, None)
                    if f is not None:
                        out.append(Transfer("upload" if f.writing else "download", f.path, f.bytes))
            except struct.error:
                continue  # a truncated field: not a transfer we can report
        return out

    def server_data(self, data: bytes) -> list[Transfer]:
        for ptype, rid, head, _length in self._server.feed(data):
            try:
                if ptype == FXP_HANDLE:
                    handle, _ = _string(head, _HEADER)
                    req = self._open_requests.pop(rid, None)
                    if req is not None:
                        self._handles[handle] = _Open(req[0], req[1])
                elif ptype == FXP_DATA:
                    handle_r = self._read_requests.pop(rid, None)
                    (n,) = struct.unpack_from(">I", head, _HEADER)
                    f = self._handles.get(handle_r) if handle_r is not None else None
                    if f is not None:
                        f.bytes += n
            except struct.error:
                continue
        return []
