"""The auditcast certificate authorities, created on first use in `$AUDITCAST_HOME/ca/`.

- `user_ca` (Ed25519, OpenSSH format): signs users' SSH certificates; nodes trust
  `user_ca.pub` with `TrustedUserCAKeys`.
- `host_ca` (Ed25519, OpenSSH format): signs the SSH gateway's host certificate; clients
  trust it with one `@cert-authority` line in known_hosts.
- `tls_ca.pem` / `tls_ca.key` (ECDSA P-256 X.509): signs the TLS server certificates of
  the kube gateway, the audit webhook and the API. P-256 rather than Ed25519 because
  browsers do not accept Ed25519 TLS certificates.
- `token_key.pem` (Ed25519): signs short-lived kube tokens and web session tokens (JWT
  EdDSA). `rotate_token_key` keeps the previous public key trusted (`token_keys.old/`)
  for TOKEN_KEY_GRACE; `public_jwk` publishes them (`GET /v1/auth/jwks`).

Private keys are 0600 in a 0700 folder. Nothing here talks to the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import NameOID

from auditcast.errors import ConfigError
from auditcast.settings import Settings

CA_DIR: Final = "ca"
CREDENTIAL_EXTENSION: Final = "auditcast-credential@auditcast"
ROLES_EXTENSION: Final = "auditcast-roles@auditcast"
MFA_EXTENSION: Final = "auditcast-mfa@auditcast"
# The standard OpenSSH permissions a shell user expects on a certificate.
DEFAULT_USER_EXTENSIONS: Final = (
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
)
# TLS server certificates are re-issued at every gateway start; 30 days covers a long run.
SERVER_CERT_TTL: Final = dt.timedelta(days=30)
TLS_CA_TTL: Final = dt.timedelta(days=3650)
# Clock skew tolerated on certificates we issue.
BACKDATE: Final = dt.timedelta(minutes=1)
# A rotated-out token key stays trusted this long: longer than any token it signed can
# live (roles.MAX_TTL caps max_session_ttl at 12 h), so rotation never cuts anyone off.
TOKEN_KEY_GRACE: Final = dt.timedelta(hours=24)
# Same reasoning for the SSH CAs: user certificates live at most MAX_TTL.
SSH_CA_GRACE: Final = dt.timedelta(hours=24)
SSH_CA_NAMES: Final = ("user_ca", "host_ca")


def ca_dir(settings: Settings) -> Path:
    d = settings.home_dir / CA_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _ssh_ca(d: Path, name: str, *, new: bool = False) -> ed25519.Ed25519PrivateKey:
    """The SSH CA key `name` (created if missing, or replaced when `new`), with its
    trusted public keys published to `{name}.pub`."""
    path = d / name
    if path.exists() and not new:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key")
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        _write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
    _publish_ssh_ca(d, name, key)
    return key


def _ssh_pub_line(name: str, key: ed25519.Ed25519PrivateKey) -> str:
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{pub.decode()} auditcast-{name}"


def _publish_ssh_ca(
    d: Path, name: str, key: ed25519.Ed25519PrivateKey, grace: dt.timedelta = SSH_CA_GRACE
) -> None:
    """`{name}.pub`: the current key's line first, then the keys rotated out less than
    `grace` ago (`{name}.old/`, rotation time = mtime). sshd's TrustedUserCAKeys and
    known_hosts `@cert-authority` accept several keys, so both keep working through a
    rotation with the same file."""
    lines = [_ssh_pub_line(name, key)]
    old_dir = d / f"{name}.old"
    if old_dir.is_dir():
        cutoff = dt.datetime.now(dt.UTC).timestamp() - grace.total_seconds()
        for p in sorted(old_dir.glob("*.pub"), key=lambda p: -p.stat().st_mtime):
            if p.stat().st_mtime >= cutoff:
                lines.append(p.read_text().strip())
    text = "\n".join(lines) + "\n"
    path = d / f"{name}.pub"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".pub.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _token_key(d: Path) -> ed25519.Ed25519PrivateKey:
    path = d / "token_key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key")
        return key
    key = ed25519.Ed25519PrivateKey.generate()
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key


def _tls_ca(d: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = d / "tls_ca.key", d / "tls_ca.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an ECDSA key")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditcast host CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + TLS_CA_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _ssh_cert_builder(
    public_key: str | bytes,
    cert_type: ssh.SSHCertificateType,
    *,
    key_id: str,
    principals: list[str],
    ttl: dt.timedelta,
) -> ssh.SSHCertificateBuilder:
    """The fields every certificate we sign has: subject key, type, key id, principals,
    a validity window backdated for clock skew, and a random serial."""
    pub = ssh.load_ssh_public_key(
        public_key.encode() if isinstance(public_key, str) else public_key
    )
    now = dt.datetime.now(dt.UTC)
    return (
        ssh.SSHCertificateBuilder()
        .public_key(pub)  # type: ignore[arg-type]
        .type(cert_type)
        .key_id(key_id.encode())
        .valid_principals([p.encode() for p in principals])
        .valid_after(int((now - BACKDATE).timestamp()))
        .valid_before(int((now + ttl).timestamp()))
        .serial(int.from_bytes(os.urandom(8), "big"))
    )


def key_id_of(public_key: ed25519.Ed25519PublicKey) -> str:
    """A stable `kid` for a token-signing key: the SHA-256 of its raw bytes, shortened."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class CertificateAuthority:
    dir: Path
    user_ca: ed25519.Ed25519PrivateKey
    host_ca: ed25519.Ed25519PrivateKey
    token_key: ed25519.Ed25519PrivateKey
    tls_key: ec.EllipticCurvePrivateKey
    tls_cert: x509.Certificate

    @classmethod
    def load_or_create(cls, settings: Settings) -> CertificateAuthority:
        d = ca_dir(settings)
        tls_key, tls_cert = _tls_ca(d)
        return cls(
            dir=d,
            user_ca=_ssh_ca(d, "user_ca"),
            host_ca=_ssh_ca(d, "host_ca"),
            token_key=_token_key(d),
            tls_key=tls_key,
            tls_cert=tls_cert,
        )

    # -------------------------------------------------------------- public parts

    @property
    def tls_ca_path(self) -> Path:
        return self.dir / "tls_ca.pem"

    def tls_cert_pem(self) -> str:
        return self.tls_cert.public_bytes(serialization.Encoding.PEM).decode()

    def user_ca_line(self) -> str:
        """The current user CA public key (`user_ca.pub` also lists rotated-out keys)."""
        return (self.dir / "user_ca.pub").read_text().splitlines()[0].strip()

    def trusted_user_ca_lines(self) -> list[str]:
        """Every user CA key a node or gateway should accept: current first, then those
        rotated out within SSH_CA_GRACE."""
        return [ln for ln in (self.dir / "user_ca.pub").read_text().splitlines() if ln.strip()]

    def trusted_user_ca_keys(
        self, grace: dt.timedelta = SSH_CA_GRACE
    ) -> list[tuple[str, dt.datetime | None]]:
        """(public key line, trusted until) for every user CA key a gateway accepts: the
        current key (None: no end), then each key rotated out less than `grace` ago,
        until its rotation time (the file's mtime) plus `grace`."""
        keys: list[tuple[str, dt.datetime | None]] = [
            (_ssh_pub_line("user_ca", self.user_ca), None)
        ]
        old = self.dir / "user_ca.old"
        now = dt.datetime.now(dt.UTC)
        if old.is_dir():
            for p in sorted(old.glob("*.pub"), key=lambda p: -p.stat().st_mtime):
                until = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC) + grace
                if until > now:
                    keys.append((p.read_text().strip(), until))
        return keys

    def host_ca_known_hosts_line(self, pattern: str = "*") -> str:
        """What makes OpenSSH trust every host the host CA signed: one `@cert-authority`
        line per trusted host CA key (two during a rotation's grace period)."""
        lines = (self.dir / "host_ca.pub").read_text().splitlines()
        return "\n".join(f"@cert-authority {pattern} {ln.strip()}" for ln in lines if ln.strip())

    @property
    def token_kid(self) -> str:
        return key_id_of(self.token_key.public_key())

    def token_public_keys(
        self, *, grace: dt.timedelta = TOKEN_KEY_GRACE
    ) -> dict[str, ed25519.Ed25519PublicKey]:
        """kid -> public key: the current key first, then those rotated out less than
        `grace` ago (the rotation time is the file's mtime)."""
        keys = {self.token_kid: self.token_key.public_key()}
        old = self.dir / "token_keys.old"
        oldest = dt.datetime.now(dt.UTC).timestamp() - grace.total_seconds()
        if old.is_dir():
            for p in sorted(old.glob("*.pub.pem"), key=lambda p: -p.stat().st_mtime):
                if p.stat().st_mtime < oldest:
                    continue
                pub = serialization.load_pem_public_key(p.read_bytes())
                if isinstance(pub, ed25519.Ed25519PublicKey):
                    keys[key_id_of(pub)] = pub
        return keys

    # -------------------------------------------------------------- signing

    def sign_user_cert(
        self,
        public_key: str | bytes,
        *,
        key_id: str,
        principals: list[str],
        ttl: dt.timedelta,
        credential_id: str,
        roles: list[str] | None = None,
        mfa: bool = False,
        permissions: tuple[str, ...] = DEFAULT_USER_EXTENSIONS,
    ) -> str:
        """An OpenSSH user certificate (one line) for `public_key`."""
        builder = _ssh_cert_builder(
            public_key, ssh.SSHCertificateType.USER, key_id=key_id, principals=principals, ttl=ttl
        )
        extensions = {p: b"" for p in permissions}
        extensions[CREDENTIAL_EXTENSION] = credential_id.encode()
        if roles:
            extensions[ROLES_EXTENSION] = ",".join(roles).encode()
        if mfa:
            extensions[MFA_EXTENSION] = b"1"
        for name in sorted(extensions):
            builder = builder.add_extension(name.encode(), extensions[name])
        cert = builder.sign(self.user_ca)
        return cert.public_bytes().decode() + f" {key_id}@auditcast"

    def sign_host_cert(
        self, public_key: str | bytes, *, principals: list[str], ttl: dt.timedelta, key_id: str
    ) -> str:
        cert = _ssh_cert_builder(
            public_key, ssh.SSHCertificateType.HOST, key_id=key_id, principals=principals, ttl=ttl
        ).sign(self.host_ca)
        return cert.public_bytes().decode()

    def issue_tls_cert(self, name: str, hosts: list[str]) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) for a TLS server known as `hosts` (DNS names or IPs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        for h in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.tls_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + SERVER_CERT_TTL)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self.tls_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    # -------------------------------------------------------------- rotation

    def rotate_ssh_ca(self, name: str) -> str:
        """New `user_ca` or `host_ca` key; the old public key stays in `{name}.pub` for
        SSH_CA_GRACE so certificates it signed keep working. Returns the new public line."""
        if name not in SSH_CA_NAMES:
            raise ConfigError(f"no SSH CA named {name!r} (one of {', '.join(SSH_CA_NAMES)})")
        old_dir = self.dir / f"{name}.old"
        old_dir.mkdir(mode=0o700, exist_ok=True)
        old_key: ed25519.Ed25519PrivateKey = getattr(self, name)
        (old_dir / f"{key_id_of(old_key.public_key())}.pub").write_text(
            _ssh_pub_line(name, old_key) + "\n"
        )
        key = _ssh_ca(self.dir, name, new=True)
        setattr(self, name, key)
        return _ssh_pub_line(name, key)

    def rotate_token_key(self) -> str:
        """New token-signing key; the old public key stays trusted. Returns the new kid."""
        old_dir = self.dir / "token_keys.old"
        old_dir.mkdir(mode=0o700, exist_ok=True)
        old_pub = self.token_key.public_key()
        (old_dir / f"{key_id_of(old_pub)}.pub.pem").write_bytes(
            old_pub.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (self.dir / "token_key.pem").unlink()
        self.token_key = _token_key(self.dir)
        return self.token_kid


def public_jwk(kid: str, key: ed25519.Ed25519PublicKey) -> dict[str, str]:
    """An Ed25519 public key as an RFC 8037 JWK (what PyJWT's PyJWK reads)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


def load_ca(settings: Settings) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(settings)


def issue_server_cert(settings: Settings, name: str, hosts: list[str]) -> tuple[Path, Path]:
    """Write a fresh TLS server certificate for `name` under the CA dir; return its paths."""
    ca = load_ca(settings)
    cert_pem, key_pem = ca.issue_tls_cert(name, [*hosts, "localhost", "127.0.0.1"])
    d = ca.dir / "servers"
    d.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = d / f"{name}.crt", d / f"{name}.key"
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem + ca.tls_cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
