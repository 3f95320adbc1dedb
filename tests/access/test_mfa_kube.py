"""Per-session MFA on the kube exec plugin: a role with `require_session_mfa` gets a
one-minute `mfa: true` token per fresh code, and a code works once. Real IdP sign-in,
real `auditcast api`, the real `auditcast kube credentials` verb kubectl runs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pyotp
import pytest
import yaml

from auditcast.access.mfa import new_secret
from auditcast.access.roles import EXAMPLE_ROLES
from auditcast.broker import EmbeddedBroker
from tests.access._lock_fixtures import AUDITCAST, access_api_with, fresh_code

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def mfa_api(broker: EmbeddedBroker, idp: Any, tmp_path: Path) -> Iterator[Any]:
    """The example roles, with devrole requiring a fresh MFA code per session."""
    roles = yaml.safe_load(EXAMPLE_ROLES.read_text())
    roles["roles"]["devrole"]["require_session_mfa"] = True
    with access_api_with(broker, idp, tmp_path, roles_yaml=yaml.safe_dump(roles)) as api:
        yield api


def kube_credentials(client: Any, code: str | None) -> subprocess.CompletedProcess[str]:
    env = {**client.env}
    env.pop("AUDITCAST_MFA_CODE", None)
    if code is not None:
        env["AUDITCAST_MFA_CODE"] = code
    return subprocess.run(
        [AUDITCAST, "kube", "credentials", "--cluster", "staging-1"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
    )


def test_mfa_role_gets_one_minute_token_per_fresh_code_and_a_code_works_once(
    mfa_api: Any,
) -> None:
    bob = mfa_api.login("bob")  # developers -> devrole
    assert bob.login_output["require_session_mfa"] is True

    no_device = kube_credentials(bob, "123456")
    assert no_device.returncode != 0 and "no MFA device" in no_device.stderr

    secret = new_secret()
    enrol = subprocess.run(
        [AUDITCAST, "mfa", "add", "--no-qr", "--secret", secret, "--code",
         pyotp.TOTP(secret).now()],
        env=bob.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enrol.returncode == 0, enrol.stderr

    code = fresh_code(secret)
    ok = kube_credentials(bob, code)
    assert ok.returncode == 0, ok.stderr
    cred = json.loads(ok.stdout)
    assert cred["kind"] == "ExecCredential"
    claims = jwt.decode(cred["status"]["token"], options={"verify_signature": False})
    assert claims["mfa"] is True and claims["sub"] == "bob" and claims["aud"] == "staging-1"
    assert claims["exp"] - claims["iat"] <= 60

    replay = kube_credentials(bob, code)
    assert replay.returncode == 7
    assert "this MFA code was already used" in replay.stderr

    no_tty = kube_credentials(bob, None)
    assert no_tty.returncode != 0 and "no terminal" in no_tty.stderr
