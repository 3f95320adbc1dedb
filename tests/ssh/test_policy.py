"""Policy decisions, certificate fields and the sftp/scp taps, without any I/O."""

from __future__ import annotations

import struct
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auditcast.collectors.ssh.certs import CERT_TYPE_USER, is_certificate, parse_certificate
from auditcast.collectors.ssh.policy import (
    CertInfo,
    Destination,
    Node,
    Refusal,
    Target,
    authorize,
    cert_time_refusal,
    grant_from_roles,
    lock_notice,
    node_known_hosts,
    parse_destination,
)
from auditcast.collectors.ssh.scp import scp_direction
from auditcast.collectors.ssh.sftp import SftpTap, Transfer
from auditcast.errors import InvalidCertificate
from tests.ssh.conftest import ROLES

NOW = datetime.now(UTC)


def cert(principals: tuple[str, ...] = ("root",), roles: tuple[str, ...] = ("dev",)) -> CertInfo:
    return CertInfo(
        user="alice",
        principals=principals,
        credential_id="cred-1",
        valid_after=NOW - timedelta(minutes=5),
        valid_before=NOW + timedelta(hours=1),
        roles=roles,
    )


STAGING = Node("node1", "127.0.0.1", 22, {"env": "staging", "team": "web"})
DB = Node("node2", "127.0.0.1", 22, {"env": "staging", "team": "db"})
PROD = Node("node3", "127.0.0.1", 22, {"env": "production", "team": "web"})


def test_destination_is_login_before_first_at_and_node_after() -> None:
    assert parse_destination("root@node1") == Destination("root", "node1")
    assert parse_destination("root@node1.example@x") == Destination("root", "node1.example@x")


@pytest.mark.parametrize("username", ["root", "@node1", "root@", ""])
def test_destination_without_login_or_node_is_refused_with_usage(username: str) -> None:
    r = parse_destination(username)
    assert isinstance(r, Refusal) and r.reason == "bad_destination"
    assert "LOGIN@NODE" in r.message


def test_dev_role_reaches_staging_as_root() -> None:
    grant = grant_from_roles(["dev"], ROLES)
    d = authorize(cert(), Destination("root", "node1"), STAGING, grant)
    assert isinstance(d, Target) and d.node is STAGING and d.login == "root"


def test_dev_role_is_denied_production_by_labels() -> None:
    d = authorize(cert(), Destination("root", "node3"), PROD, grant_from_roles(["dev"], ROLES))
    assert isinstance(d, Refusal) and d.reason == "node_denied"
    assert "node3" in d.message and "env=production" in d.message


def test_deny_selector_wins_over_wildcard_allow() -> None:
    grant = grant_from_roles(["web-only"], ROLES)
    assert isinstance(
        authorize(cert(roles=("web-only",)), Destination("root", "node1"), STAGING, grant), Target
    )
    d = authorize(cert(roles=("web-only",)), Destination("root", "node2"), DB, grant)
    assert isinstance(d, Refusal) and d.reason == "node_denied"


def test_login_missing_from_certificate_principals_is_refused() -> None:
    d = authorize(cert(), Destination("nobody", "node1"), STAGING, grant_from_roles(["ops"], ROLES))
    assert isinstance(d, Refusal) and d.reason == "login_not_allowed"
    assert "'nobody'" in d.message and "root" in d.message


def test_login_on_certificate_but_not_in_roles_is_refused() -> None:
    c = cert(principals=("root", "nobody"))
    d = authorize(c, Destination("nobody", "node1"), STAGING, grant_from_roles(["dev"], ROLES))
    assert isinstance(d, Refusal) and d.reason == "login_not_allowed"


def test_unknown_node_is_refused_by_name() -> None:
    d = authorize(cert(), Destination("root", "node9"), None, grant_from_roles(["dev"], ROLES))
    assert isinstance(d, Refusal) and d.reason == "node_unknown" and "node9" in d.message


def test_no_roles_reach_no_node() -> None:
    d = authorize(
        cert(roles=()), Destination("root", "node1"), STAGING, grant_from_roles([], ROLES)
    )
    assert isinstance(d, Refusal)


def test_union_of_roles_adds_logins_and_flags() -> None:
    g = grant_from_roles(["dev", "ops", "secure", "unknown"], ROLES)
    assert g.roles == ("dev", "ops", "secure")
    assert g.logins == {"root", "nobody"}
    assert g.require_session_mfa and g.allow_file_transfer and g.allow_port_forwarding
    assert not g.allow_agent_forwarding


def test_expired_and_future_certificates_are_refused() -> None:
    old = CertInfo("alice", ("root",), "c", NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    r = cert_time_refusal(old, NOW)
    assert r is not None and r.reason == "cert_expired" and "auditcast login" in r.message
    future = CertInfo("alice", ("root",), "c", NOW + timedelta(hours=1), NOW + timedelta(hours=2))
    r = cert_time_refusal(future, NOW)
    assert r is not None and r.reason == "cert_not_yet_valid"
    assert cert_time_refusal(cert(), NOW) is None


def test_lock_notice_text() -> None:
    assert lock_notice("l1", "incident 42") == "session terminated: lock l1 in force: incident 42"


def test_certificate_fields_read_from_an_ssh_keygen_certificate(tmp_path: Path) -> None:
    ca, key = tmp_path / "ca", tmp_path / "id"
    for p in (ca, key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(p)], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "alice", "-n", "root,deploy", "-z", "42",
         "-V", "20260101000000:20260102000000",
         "-O", "extension:auditcast-credential@auditcast=cred-9", f"{key}.pub"],
        check=True,
    )  # fmt: skip
    blob = __import__("base64").b64decode(Path(f"{key}-cert.pub").read_text().split()[1])
    f = parse_certificate(blob)
    assert is_certificate(blob)
    assert (f.key_id, f.serial, f.cert_type) == ("alice", 42, CERT_TYPE_USER)
    assert f.principals == ("root", "deploy")
    assert f.valid_after == datetime(2026, 1, 1, tzinfo=UTC)
    assert f.extensions["auditcast-credential@auditcast"] == "cred-9"
    assert "permit-pty" in f.extensions


def test_plain_key_and_garbage_are_not_certificates() -> None:
    plain = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + b"k" * 32
    assert not is_certificate(plain)
    assert not is_certificate(b"\x00\x00")
    with pytest.raises(InvalidCertificate):
        parse_certificate(b"\x00\x00\x00\x20ssh-ed25519-cert-v01@openssh.com")


def _pkt(ptype: int, rid: int, body: bytes) -> bytes:
    payload = struct.pack(">BI", ptype, rid) + body
    return struct.pack(">I", len(payload)) + payload


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def test_sftp_upload_reports_path_and_size_not_contents() -> None:
    tap = SftpTap()
    assert tap.client_data(struct.pack(">IBI", 5, 1, 3)) == []  # INIT v3
    tap.client_data(_pkt(3, 7, _s(b"/tmp/up.bin") + struct.pack(">I", 0x1A) + b"\0\0\0\0"))
    tap.server_data(_pkt(102, 7, _s(b"H1")))
    data = b"x" * 70000
    stream = _pkt(6, 8, _s(b"H1") + struct.pack(">Q", 0) + _s(data))
    # split across reads at awkward places
    out: list[Transfer] = []
    for i in range(0, len(stream), 9999):
        out += tap.client_data(stream[i : i + 9999])
    out += tap.client_data(_pkt(4, 9, _s(b"H1")))
    assert out == [Transfer("upload", "/tmp/up.bin", 70000)]


def test_sftp_download_counts_data_replies() -> None:
    tap = SftpTap()
    tap.client_data(_pkt(3, 1, _s(b"/etc/hostname") + struct.pack(">I", 1) + b"\0\0\0\0"))
    tap.server_data(_pkt(102, 1, _s(b"H")))
    tap.client_data(_pkt(5, 2, _s(b"H") + struct.pack(">QI", 0, 32768)))
    tap.server_data(_pkt(103, 2, _s(b"hello\n")))
    assert tap.client_data(_pkt(4, 3, _s(b"H"))) == [Transfer("download", "/etc/hostname", 6)]


def test_sftp_tap_gives_up_on_oversized_packets() -> None:
    tap = SftpTap()
    assert tap.client_data(struct.pack(">IBI", 10**9, 3, 1)) == []
    assert tap.client_data(_pkt(4, 3, _s(b"H"))) == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("scp -t /tmp/x", ("upload", "/tmp/x")),
        ("scp -v -f -- /etc/passwd", ("download", "/etc/passwd")),
        ("/usr/bin/scp -pt .", ("upload", ".")),
        ("ls -t /tmp", None),
        ("scp 'unbalanced", None),
    ],
)
def test_scp_exec_direction(command: str, expected: tuple[str, str] | None) -> None:
    assert scp_direction(command) == expected


def test_node_host_key_is_pinned_next_to_the_host_ca() -> None:
    ca = "@cert-authority * ssh-ed25519 AAAACA"
    n = Node("n", "10.0.0.5", 2222, {}, host_key="ssh-ed25519 AAAAKEY")
    assert node_known_hosts(ca, n) == f"{ca}\n[10.0.0.5]:2222 ssh-ed25519 AAAAKEY\n"
    assert node_known_hosts(None, Node("n", "h", 22, {}, host_key="k")) == "h k\n"
    assert node_known_hosts(ca, Node("n", "h", 22)) == f"{ca}\n"
