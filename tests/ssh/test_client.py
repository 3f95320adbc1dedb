"""`auditcast ssh LOGIN@NODE [CMD]`: the OpenSSH command line it runs."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from auditcast.collectors.ssh.client import SshProfile, find_profile, ssh_argv
from auditcast.errors import LoginRequired
from auditcast.settings import Settings


def test_argv_points_ssh_at_the_gateway_with_the_login_profile(tmp_path: Path) -> None:
    p = SshProfile(tmp_path / "k", tmp_path / "k-cert.pub", tmp_path / "known_hosts")
    argv = ssh_argv(p, "root@node1", ("uname", "-a"), host="gw.example", port=3022)
    assert argv[:3] == ["ssh", "-p", "3022"]
    assert f"CertificateFile={p.cert}" in argv and f"UserKnownHostsFile={p.known_hosts}" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[-3:] == ["root@node1@gw.example", "uname", "-a"]


@pytest.mark.parametrize("dest", ["node1", "root@", "@node1"])
def test_destination_must_be_login_at_node(tmp_path: Path, dest: str) -> None:
    p = SshProfile(tmp_path / "k", tmp_path / "c", tmp_path / "h")
    with pytest.raises(click.BadParameter, match="LOGIN@NODE"):
        ssh_argv(p, dest, (), host="h", port=1)


def test_without_a_login_the_wrapper_says_to_log_in(tmp_path: Path) -> None:
    with pytest.raises(LoginRequired, match="auditcast login"):
        find_profile(Settings(home=tmp_path))
