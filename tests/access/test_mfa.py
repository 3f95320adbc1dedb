"""Per-session TOTP: pure step logic, then the service with its events on the real broker."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyotp
import pytest

from auditcast.access.mfa import (
    STEP_S,
    MFAService,
    new_secret,
    provisioning_uri,
    totp_step,
    verify_session_mfa,
)
from auditcast.errors import MFAInvalid, MFARequired
from auditcast.settings import Settings
from tests.access._lock_fixtures import fresh_code
from tests.helpers.topics import events_on

T0 = 1_800_000_000.0  # a fixed instant, on a step boundary's far side


def test_current_code_maps_to_its_time_step() -> None:
    secret = new_secret()
    code = pyotp.TOTP(secret).at(T0)
    assert totp_step(secret, code, T0) == int(T0) // STEP_S


def test_code_from_the_previous_step_is_still_accepted_but_not_older() -> None:
    secret = new_secret()
    prev = pyotp.TOTP(secret).at(T0 - STEP_S)
    assert totp_step(secret, prev, T0) == int(T0) // STEP_S - 1
    old = pyotp.TOTP(secret).at(T0 - 3 * STEP_S)
    with pytest.raises(MFAInvalid, match="wrong MFA code"):
        totp_step(secret, old, T0)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12 34 5x"])
def test_malformed_codes_say_what_a_code_looks_like(code: str) -> None:
    with pytest.raises(MFAInvalid, match="6 digits"):
        totp_step(new_secret(), code, T0)


def test_provisioning_uri_names_the_user_and_issuer() -> None:
    uri = provisioning_uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "alice")
    assert uri.startswith("otpauth://totp/auditcast:alice?")
    assert "secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" in uri and "issuer=auditcast" in uri


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


async def enrolled(settings: Settings, user: str = "alice") -> tuple[MFAService, str]:
    service = MFAService(settings)
    secret = new_secret()
    # enrolment spends its confirming code (this step's); sessions use the next step's
    await service.enrol(user, "phone", secret, pyotp.TOTP(secret).now())
    return service, secret


def wrong_code(secret: str) -> str:
    """A well-formed code that matches none of the steps the window accepts now."""
    now = time.time()
    valid = {pyotp.TOTP(secret).at(now + d * STEP_S) for d in (-2, -1, 0, 1, 2)}
    return next(c for c in (f"{i:06d}" for i in range(1000)) if c not in valid)


async def test_totp_code_is_accepted_once_and_refused_on_replay(settings: Settings) -> None:
    service, secret = await enrolled(settings)
    try:
        code = fresh_code(secret)
        await verify_session_mfa("alice", code, service=service, session_id="s-1")
        with pytest.raises(MFAInvalid, match="already used"):
            await verify_session_mfa("alice", code, service=service, session_id="s-2")
    finally:
        await service.publisher.close()
        await service.close()
    events = await events_on(settings)
    verified = [e for e in events if e["type"] == "mfa.verified"]
    failed = [e for e in events if e["type"] == "auth.failed"]
    assert [(e["user"], e["session_id"], e["mfa_device"]) for e in verified] == [
        ("alice", "s-1", "phone")
    ]
    assert [(e["user"], e["reason"]) for e in failed] == [("alice", "mfa: code already used")]


async def test_wrong_code_is_refused_and_logged_as_auth_failed(settings: Settings) -> None:
    service, secret = await enrolled(settings)
    right = fresh_code(secret)
    wrong = wrong_code(secret)
    try:
        with pytest.raises(MFAInvalid, match="wrong MFA code"):
            await verify_session_mfa("alice", wrong, service=service, node="node1")
        # the wrong attempt did not burn the right code
        await verify_session_mfa("alice", right, service=service)
    finally:
        await service.publisher.close()
        await service.close()
    events = await events_on(settings)
    failed = [e for e in events if e["type"] == "auth.failed"]
    assert [(e["user"], e["reason"], e["code"], e["node"]) for e in failed] == [
        ("alice", "mfa: wrong code", "AC1001W", "node1")
    ]
    assert [e["type"] for e in events].count("mfa.verified") == 1


async def test_user_without_a_device_is_told_to_enrol(settings: Settings) -> None:
    service = MFAService(settings)
    try:
        with pytest.raises(MFARequired, match="no MFA device"):
            await verify_session_mfa("bob", "123456", service=service)
    finally:
        await service.publisher.close()
        await service.close()


async def test_enrolment_needs_a_correct_first_code(settings: Settings) -> None:
    service = MFAService(settings)
    secret = new_secret()
    try:
        with pytest.raises(MFAInvalid, match="wrong MFA code"):
            await service.enrol("carol", "phone", secret, wrong_code(secret))
        assert not await service.has_device("carol")
        await service.enrol("carol", "phone", secret, pyotp.TOTP(secret).now())
        assert await service.has_device("carol")
        with pytest.raises(MFAInvalid, match="already has an MFA device"):
            await service.enrol("carol", "phone", secret, pyotp.TOTP(secret).now())
    finally:
        await service.publisher.close()
        await service.close()
