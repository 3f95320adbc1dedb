"""The CA and short-lived tokens: what gateways trust, and every way a token is refused."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import subprocess
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auditcast.access.ca import BACKDATE, CertificateAuthority, issue_server_cert
from auditcast.access.tokens import issue_token, verify_kube_token, verify_token
from auditcast.errors import ConfigError, InvalidToken
from auditcast.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def ca(settings: Settings) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(settings)


def kube_token(ca: CertificateAuthority, **kw: object) -> str:
    args: dict = {"user": "bob", "audience": "staging-1", "ttl": dt.timedelta(minutes=5)}
    args.update(kw)
    token, _ = issue_token(ca, kind="kube", roles=["devrole"], kube_groups=["devs"], **args)
    return token


def test_ca_is_created_once_with_private_keys_locked_down(settings: Settings) -> None:
    a = CertificateAuthority.load_or_create(settings)
    b = CertificateAuthority.load_or_create(settings)
    assert a.token_kid == b.token_kid
    for name in ("user_ca", "host_ca", "token_key.pem", "tls_ca.key"):
        assert (a.dir / name).stat().st_mode & 0o777 == 0o600
    assert a.host_ca_known_hosts_line().startswith("@cert-authority * ssh-ed25519 ")


def test_valid_kube_token_carries_identity_and_groups(settings, ca) -> None:
    claims = verify_kube_token(kube_token(ca), "staging-1", settings=settings)
    assert (claims.user, claims.kube_groups, claims.roles) == ("bob", ["devs"], ["devrole"])
    assert claims.credential_id


def test_token_for_another_cluster_is_refused(settings, ca) -> None:
    with pytest.raises(InvalidToken, match="not issued for staging-2"):
        verify_kube_token(kube_token(ca), "staging-2", settings=settings)


def test_expired_token_is_refused(settings, ca) -> None:
    token = kube_token(ca, ttl=dt.timedelta(seconds=-60))
    with pytest.raises(InvalidToken, match="expired"):
        verify_kube_token(token, "staging-1", settings=settings)


def test_token_signed_by_another_key_is_refused(settings, ca) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode(
        {"sub": "bob", "aud": "staging-1", "iss": "auditcast", "exp": 2**40},
        other,
        algorithm="EdDSA",
        headers={"kid": ca.token_kid},
    )
    with pytest.raises(InvalidToken, match="signature is invalid"):
        verify_kube_token(token, "staging-1", settings=settings)


def test_alg_none_and_hmac_confusion_are_refused(settings, ca) -> None:
    unsigned = jwt.encode({"sub": "admin", "aud": "staging-1"}, None, algorithm="none")
    with pytest.raises(InvalidToken, match="'none' is not accepted"):
        verify_kube_token(unsigned, "staging-1", settings=settings)
    pub = ca.token_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    assert pub  # an attacker knows the public key; HS256 with it must not verify
    with pytest.raises(InvalidToken, match="HS256"):
        verify_kube_token(header + ".e30.sig", "staging-1", settings=settings)


def test_tampered_payload_is_refused(settings, ca) -> None:
    head, body, sig = kube_token(ca).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["kube_groups"] = ["system:masters"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="forged or tampered"):
        verify_kube_token(f"{head}.{forged}.{sig}", "staging-1", settings=settings)


def test_garbage_and_session_tokens_are_not_kube_tokens(settings, ca) -> None:
    with pytest.raises(InvalidToken, match="not a JWT"):
        verify_kube_token("not-a-token", "staging-1", settings=settings)
    session, _ = issue_token(
        ca, user="bob", audience="staging-1", ttl=dt.timedelta(minutes=5), kind="session"
    )
    with pytest.raises(InvalidToken, match="session token cannot be used"):
        verify_kube_token(session, "staging-1", settings=settings)


def test_rotated_key_keeps_old_tokens_valid_and_signs_new_ones(settings, ca) -> None:
    old = kube_token(ca)
    new_kid = ca.rotate_token_key()
    fresh = CertificateAuthority.load_or_create(settings)
    assert fresh.token_kid == new_kid
    assert verify_token(fresh, old, audience="staging-1", kind="kube").user == "bob"
    assert jwt.get_unverified_header(kube_token(fresh))["kid"] == new_kid


def test_user_certificate_is_readable_by_ssh_keygen(ca, tmp_path: Path) -> None:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cert = ca.sign_user_cert(
        (tmp_path / "id.pub").read_text(),
        key_id="bob",
        principals=["dev"],
        ttl=dt.timedelta(hours=1),
        credential_id="cred-1",
        roles=["devrole"],
    )
    (tmp_path / "id-cert.pub").write_text(cert + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(tmp_path / "id-cert.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "user certificate" in out and 'Key ID: "bob"' in out
    valid = re.search(r"Valid: from (\S+) to (\S+)", out)
    assert valid, out
    start, end = (dt.datetime.fromisoformat(v) for v in valid.groups())  # local time, naive
    assert end - start == dt.timedelta(hours=1) + BACKDATE  # backdated for clock skew
    assert abs(end - (dt.datetime.now() + dt.timedelta(hours=1))) < dt.timedelta(minutes=1)
    assert "dev" in out.split("Principals:")[1].split("Critical")[0]
    assert "auditcast-credential@auditcast" in out and "permit-pty" in out


def test_server_certificate_chains_to_the_tls_ca(settings) -> None:
    import ssl

    cert, key = issue_server_cert(settings, "kube-gateway", hosts=["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    assert b"BEGIN CERTIFICATE" in cert.read_bytes()


def test_rotated_out_key_is_distrusted_after_the_grace_period(settings, ca) -> None:
    import os

    from auditcast.access.ca import TOKEN_KEY_GRACE

    old = kube_token(ca)
    old_kid = ca.token_kid
    ca.rotate_token_key()
    rotated = ca.dir / "token_keys.old" / f"{old_kid}.pub.pem"
    past = rotated.stat().st_mtime - TOKEN_KEY_GRACE.total_seconds() - 60
    os.utime(rotated, (past, past))
    fresh = CertificateAuthority.load_or_create(settings)
    assert list(fresh.token_public_keys()) == [fresh.token_kid]
    with pytest.raises(InvalidToken):
        verify_token(fresh, old, audience="staging-1", kind="kube")


def test_public_jwks_verify_tokens_like_the_ca_does(ca) -> None:
    from auditcast.access.ca import public_jwk

    old_kid = ca.token_kid
    ca.rotate_token_key()
    jwks = [public_jwk(kid, key) for kid, key in ca.token_public_keys().items()]
    assert [k["kid"] for k in jwks] == [ca.token_kid, old_kid]  # current key first
    token = kube_token(ca)
    claims = jwt.decode(token, jwt.PyJWK(jwks[0]), algorithms=["EdDSA"], audience="staging-1")
    assert claims["sub"] == "bob"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, jwt.PyJWK(jwks[1]), algorithms=["EdDSA"], audience="staging-1")


def _fingerprint(pub_line: str, tmp_path: Path) -> str:
    f = tmp_path / "fp.pub"
    f.write_text(pub_line + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(f)], check=True, capture_output=True)
    return out.stdout.decode().split()[1]


def test_rotated_user_ca_signs_new_certs_and_old_key_stays_trusted_for_the_grace(
    settings, ca, tmp_path: Path
) -> None:
    import os

    from auditcast.access.ca import SSH_CA_GRACE

    before = ca.user_ca_line()
    new_line = ca.rotate_ssh_ca("user_ca")
    assert ca.user_ca_line() == new_line != before
    # sshd's TrustedUserCAKeys file keeps both keys: certificates from before still work
    assert ca.trusted_user_ca_lines() == [new_line, before]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")],
                   check=True)  # fmt: skip
    cert = ca.sign_user_cert((tmp_path / "id.pub").read_text(), key_id="bob", principals=["dev"],
                             ttl=dt.timedelta(minutes=5), credential_id="c", roles=[])  # fmt: skip
    (tmp_path / "id-cert.pub").write_text(cert + "\n")
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(tmp_path / "id-cert.pub")],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert _fingerprint(new_line, tmp_path) in listing  # "Signing CA: ED25519 SHA256:..."
    # after the grace period only the new key is published
    for p in (ca.dir / "user_ca.old").iterdir():
        past = p.stat().st_mtime - SSH_CA_GRACE.total_seconds() - 60
        os.utime(p, (past, past))
    fresh = CertificateAuthority.load_or_create(settings)
    assert fresh.trusted_user_ca_lines() == [new_line]


def test_host_ca_rotation_puts_both_keys_in_known_hosts(ca) -> None:
    before = ca.host_ca_known_hosts_line()
    ca.rotate_ssh_ca("host_ca")
    lines = ca.host_ca_known_hosts_line().splitlines()
    assert len(lines) == 2 and lines[1] == before
    assert all(ln.startswith("@cert-authority * ssh-ed25519 ") for ln in lines)
    with pytest.raises(ConfigError, match="no SSH CA named 'root_ca'"):
        ca.rotate_ssh_ca("root_ca")
