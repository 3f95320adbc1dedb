"""`auditcast mfa add` and `/v1/mfa/verify` end to end: users signed in through the real
OpenID provider, the real `auditcast api` process, the broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import httpx
import orjson
import pyotp
import pytest
import qrcode

from auditcast.access.cli_mfa import terminal_qr
from auditcast.access.mfa import STEP_S, new_secret
from tests.access._lock_fixtures import AUDITCAST, fresh_code
from tests.helpers.topics import events_on

pytestmark = pytest.mark.timeout(180)


def mfa_cli(client: Any, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AUDITCAST, "mfa", *args],
        env=client.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def session_token(client: Any) -> str:
    return str(json.loads((client.home / "profile.json").read_text())["token"])


def test_terminal_qr_is_text_blocks() -> None:
    data = "otpauth://totp/auditcast:alice?secret=X&issuer=auditcast"
    lines = terminal_qr(data).splitlines()
    # each character is two modules stacked (upper, lower half block)
    top = {"\xa0": (0, 0), " ": (0, 0), "▀": (1, 0), "▄": (0, 1), "█": (1, 1)}
    rows: list[list[int]] = []
    for ln in lines:
        pairs = [top[ch] for ch in ln]
        rows.append([p[0] for p in pairs])
        rows.append([p[1] for p in pairs])
    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(data)
    qr.make(fit=True)
    matrix = [[int(m) for m in row] for row in qr.get_matrix()]
    drawn = rows[: len(matrix)]
    # light-on-dark terminals get the inverted picture; either way it is the same code
    assert drawn == matrix or drawn == [[1 - m for m in row] for row in matrix]


def test_mfa_add_shows_uri_and_qr_asks_a_code_and_a_wrong_one_enrols_nothing(
    access_api: Any,
) -> None:
    bob = access_api.login("bob")
    secret = new_secret()
    now = time.time()
    valid = {pyotp.TOTP(secret).at(now + d * STEP_S) for d in (-2, -1, 0, 1, 2)}
    wrong = next(c for c in (f"{i:06d}" for i in range(100)) if c not in valid)
    res = mfa_cli(bob, "add", "--secret", secret, "--code", wrong, "--no-qr")
    assert res.returncode == 7
    assert "error: wrong MFA code" in res.stderr
    assert mfa_cli(bob, "ls").stdout.strip().startswith("no MFA devices")

    # enrolment spends this step's code; a session uses the next step's (fresh_code)
    first = pyotp.TOTP(secret).now()
    res = mfa_cli(bob, "add", "--name", "phone", "--secret", secret, stdin=first + "\n")
    assert res.returncode == 0, res.stderr
    assert f"otpauth://totp/auditcast:bob?secret={secret}&issuer=auditcast" in res.stdout
    assert "█" in res.stderr and "Code from the app:" in res.stderr
    assert res.stdout.strip().endswith("MFA device phone enrolled for bob")
    listed = mfa_cli(bob, "ls", "--json")
    assert [d["name"] for d in orjson.loads(listed.stdout)] == ["phone"]


async def test_session_code_verified_once_then_refused_and_failures_audited(
    access_api: Any,
) -> None:
    bob = await asyncio.to_thread(access_api.login, "bob")
    secret = new_secret()
    async with httpx.AsyncClient(
        base_url=f"{access_api.url}/v1",
        headers={"Authorization": f"Bearer {session_token(bob)}"},
    ) as client:
        first = pyotp.TOTP(secret).now()
        r = await client.post(
            "/mfa/devices", json={"name": "phone", "secret": secret, "code": first}
        )
        assert r.status_code == 201, r.text
        code = fresh_code(secret)
        r = await client.post("/mfa/verify", json={"code": code, "session_id": "sess-1"})
        assert r.status_code == 200 and r.json()["verified"] is True
        r = await client.post("/mfa/verify", json={"code": code, "session_id": "sess-2"})
        assert r.status_code == 401
        assert r.json()["detail"]["error"] == "this MFA code was already used"
        r = await client.post("/mfa/verify", json={"code": "12345"})
        assert r.status_code == 401 and "6 digits" in r.json()["detail"]["error"]
    events = [
        e
        for e in await events_on(access_api.settings)
        if e["type"] in ("mfa.verified", "auth.failed", "mfa.enrolled")
    ]
    assert [(e["type"], e.get("reason"), e["user"]) for e in events] == [
        ("mfa.enrolled", None, "bob"),
        ("mfa.verified", None, "bob"),
        ("auth.failed", "mfa: code already used", "bob"),
        ("auth.failed", "mfa: an MFA code is 6 digits", "bob"),
    ]
