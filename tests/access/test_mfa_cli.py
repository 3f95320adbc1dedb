"""`auditcast mfa add` and `/v1/mfa/verify` end to end: real CLI, served API, broker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pyotp
import pytest
import qrcode
from aiokafka import AIOKafkaConsumer, TopicPartition

from auditcast.access.cli_mfa import terminal_qr
from auditcast.access.mfa import STEP_S, new_secret
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, topic
from tests.access._lock_fixtures import AUDITCAST, ApiServer, access_app

pytestmark = pytest.mark.timeout(120)

CAROL = "test-identity carol contractor"


@pytest.fixture
def api(make_settings: Callable[..., Settings]) -> Iterator[tuple[ApiServer, Settings]]:
    settings = make_settings()
    server = ApiServer(access_app(settings)).start()
    yield server, settings
    server.stop()


def mfa_cli(
    api: tuple[ApiServer, Settings],
    cli_env: Callable[[Settings], dict[str, str]],
    *args: str,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    server, settings = api
    env = {**cli_env(settings), "AUDITCAST_API_URL": server.url, "AUDITCAST_TOKEN": CAROL}
    return subprocess.run(
        [AUDITCAST, "mfa", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


async def events_of(settings: Settings) -> list[dict[str, object]]:
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic(settings, EVENTS_RAW), 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        end = (await c.end_offsets([tp]))[tp]
        out = []
        while await c.position(tp) < end:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out.extend(orjson.loads(r.value) for r in recs)
        return out
    finally:
        await c.stop()


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


def test_mfa_add_shows_uri_and_qr_and_asks_for_the_first_code(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    secret = new_secret()
    # the code of the previous step: the current one stays fresh for a session
    first = pyotp.TOTP(secret).at(time.time() - STEP_S)
    res = mfa_cli(api, cli_env, "add", "--name", "phone", "--secret", secret, stdin=first + "\n")
    assert res.returncode == 0, res.stderr
    assert f"otpauth://totp/auditcast:carol?secret={secret}&issuer=auditcast" in res.stdout
    assert "█" in res.stderr and "Code from the app:" in res.stderr
    assert res.stdout.strip().endswith("MFA device phone enrolled for carol")
    listed = mfa_cli(api, cli_env, "ls", "--json")
    assert [d["name"] for d in orjson.loads(listed.stdout)] == ["phone"]


def test_mfa_add_with_a_wrong_first_code_enrols_nothing(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    secret = new_secret()
    now = time.time()
    valid = {pyotp.TOTP(secret).at(now + d * STEP_S) for d in (-2, -1, 0, 1, 2)}
    wrong = next(c for c in (f"{i:06d}" for i in range(100)) if c not in valid)
    res = mfa_cli(api, cli_env, "add", "--secret", secret, "--code", wrong, "--no-qr")
    assert res.returncode == 7
    assert "error: wrong MFA code" in res.stderr
    assert mfa_cli(api, cli_env, "ls").stdout.strip().startswith("no MFA devices")


async def test_session_code_verified_once_then_refused_and_wrong_code_audited(
    api: tuple[ApiServer, Settings],
) -> None:
    server, settings = api
    secret = new_secret()
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {CAROL}"}
    ) as client:
        first = pyotp.TOTP(secret).at(time.time() - STEP_S)
        r = await client.post(
            "/mfa/devices", json={"name": "phone", "secret": secret, "code": first}
        )
        assert r.status_code == 201, r.text
        code = pyotp.TOTP(secret).now()
        r = await client.post("/mfa/verify", json={"code": code, "session_id": "sess-1"})
        assert r.status_code == 200 and r.json()["verified"] is True
        r = await client.post("/mfa/verify", json={"code": code, "session_id": "sess-2"})
        assert r.status_code == 401
        assert r.json()["detail"]["error"] == "this MFA code was already used"
        r = await client.post("/mfa/verify", json={"code": "12345"})
        assert r.status_code == 401 and "6 digits" in r.json()["detail"]["error"]
    events = await events_of(settings)
    kinds = [(e["type"], e.get("reason")) for e in events if e["type"] != "mfa.enrolled"]
    assert kinds == [
        ("mfa.verified", None),
        ("auth.failed", "mfa: code already used"),
        ("auth.failed", "mfa: an MFA code is 6 digits"),
    ]
    assert all(e["user"] == "carol" for e in events)
