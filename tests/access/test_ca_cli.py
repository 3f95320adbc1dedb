"""`auditcast ca show` / `auditcast ca rotate`, run as the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDITCAST_HOME": str(home)}
    return subprocess.run([AUDITCAST, "ca", *args], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip


def test_rotating_the_user_ca_keeps_the_old_key_trusted_next_to_the_new(tmp_path: Path) -> None:
    home = tmp_path / "home"
    before = json.loads(cli(home, "show", "--json").stdout)
    assert len(before["user_ca"]) == 1 and len(before["token_kids"]) == 1
    rotated = json.loads(cli(home, "rotate", "user", "--json").stdout)
    after = json.loads(cli(home, "show", "--json").stdout)
    assert after["user_ca"] == [rotated["new"], before["user_ca"][0]]
    assert (home / "ca" / "user_ca.pub").read_text().splitlines() == after["user_ca"]
    assert after["known_hosts"] == before["known_hosts"]  # the host CA was not touched


def test_rotating_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    out = cli(tmp_path / "home", "rotate", "root")
    assert out.returncode == 2 and "'root' is not one of" in out.stderr
