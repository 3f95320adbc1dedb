"""Read the fields of an OpenSSH user certificate blob (PROTOCOL.certkeys), no I/O.

asyncssh verifies signatures and validity but drops extensions it does not know,
and the auditcast credential id travels in one (`auditcast-credential@auditcast`).
This codec reads the wire format directly: key id, serial, principals, validity and
the extensions as a name -> text map.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from auditcast.errors import InvalidCertificate

# How many public-key fields (SSH strings/mpints) precede the serial, per key type.
_KEY_FIELDS: Final = {
    b"ssh-ed25519-cert-v01@openssh.com": 1,
    b"ssh-rsa-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    b"sk-ssh-ed25519-cert-v01@openssh.com": 2,
    b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,
}
CERT_TYPE_USER: Final = 1
CERT_TYPE_HOST: Final = 2
# OpenSSH uses 2**64-1 for "forever"; datetime cannot hold it.
_FOREVER: Final = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CertFields:
    algorithm: str
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    critical_options: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise InvalidCertificate("truncated certificate")
        (v,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(v)

    def uint64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise InvalidCertificate("truncated certificate")
        (v,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> bytes:
        n = self.uint32()
        if self.pos + n > len(self.data):
            raise InvalidCertificate("truncated certificate")
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v


def _time(v: int) -> datetime:
    try:
        return datetime.fromtimestamp(v, UTC)
    except (OverflowError, OSError, ValueError):
        return _FOREVER


def _option_map(blob: bytes) -> dict[str, str]:
    """name/data pairs; a data that is itself one SSH string is unwrapped."""
    r = _Reader(blob)
    out: dict[str, str] = {}
    while r.pos < len(blob):
        name = r.string().decode("utf-8", "replace")
        data = r.string()
        if len(data) >= 4 and struct.unpack_from(">I", data)[0] == len(data) - 4:
            data = data[4:]
        out[name] = data.decode("utf-8", "replace")
    return out


def is_certificate(blob: bytes) -> bool:
    try:
        return _Reader(blob).string() in _KEY_FIELDS
    except InvalidCertificate:
        return False


def parse_certificate(blob: bytes) -> CertFields:
    """The fields of a certificate blob, or InvalidCertificate saying what is wrong."""
    r = _Reader(blob)
    algorithm = r.string()
    fields = _KEY_FIELDS.get(algorithm)
    if fields is None:
        raise InvalidCertificate(f"unsupported certificate type {algorithm[:64]!r}")
    r.string()  # nonce
    for _ in range(fields):
        r.string()
    serial = r.uint64()
    cert_type = r.uint32()
    key_id = r.string().decode("utf-8", "replace")
    pr = _Reader(r.string())
    principals: list[str] = []
    while pr.pos < len(pr.data):
        principals.append(pr.string().decode("utf-8", "replace"))
    valid_after = _time(r.uint64())
    valid_before = _time(r.uint64())
    options = _option_map(r.string())
    extensions = _option_map(r.string())
    return CertFields(
        algorithm=algorithm.decode(),
        serial=serial,
        cert_type=cert_type,
        key_id=key_id,
        principals=tuple(principals),
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=options,
        extensions=extensions,
    )
