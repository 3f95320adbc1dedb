"""Per-session MFA with TOTP (RFC 6238, authenticator apps).

Pure part: `totp_step(secret, code, now)` says which 30 s time step a code belongs to
(or that it is wrong). Stateful part: `MFAStore` keeps enrolled devices and the
(user, time step) pairs already used in `$AUDITCAST_HOME/access.db`; claiming a pair
is one INSERT on a primary key, so a code is accepted once even when the API and a
gateway on the same host race for it. `MFAService.verify` ties them together and emits
`mfa.verified` or `auth.failed`.

Gateways and the kube credentials endpoint call `verify_session_mfa(user, code)`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import pyotp

from auditcast.access.access_db import connect
from auditcast.access.publish import Publisher, audit_event
from auditcast.errors import MFAInvalid, MFARequired
from auditcast.events import Source
from auditcast.settings import Settings, load_settings

log = logging.getLogger(__name__)

ISSUER: Final = "auditcast"
STEP_S: Final = 30
DIGITS: Final = 6
# Accept the previous and next step too: phone clocks drift and people type slowly.
VALID_WINDOW: Final = 1
# Used steps older than the window can never match again; keep a margin, then prune.
USED_STEP_RETENTION_S: Final = 10 * 60
DEVICE_NAME_MAX: Final = 64

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mfa_devices (
        user TEXT NOT NULL, name TEXT NOT NULL, secret TEXT NOT NULL, created TEXT NOT NULL,
        PRIMARY KEY (user, name))""",
    """CREATE TABLE IF NOT EXISTS mfa_used_steps (
        user TEXT NOT NULL, step INTEGER NOT NULL, used_at REAL NOT NULL,
        PRIMARY KEY (user, step))""",
)


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, user: str, issuer: str = ISSUER) -> str:
    """The otpauth:// URI an authenticator app scans."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=user, issuer_name=issuer
    )


def totp_step(secret: str, code: str, now: float) -> int:
    """The time step `code` is valid for at `now` (unix seconds), or MFAInvalid."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == DIGITS):
        raise MFAInvalid(f"an MFA code is {DIGITS} digits", hint="type the code your app shows")
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = int(now) // STEP_S
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        if hmac.compare_digest(totp.at(step * STEP_S), code):
            return step
    raise MFAInvalid("wrong MFA code", hint="type the current code from your authenticator app")


@dataclass(frozen=True)
class Device:
    user: str
    name: str
    secret: str
    created: str


class MFAStore:
    """Devices and used time steps in access.db; safe across threads and processes."""

    def __init__(self, settings: Settings) -> None:
        self._db = connect(settings)
        for stmt in _SCHEMA:
            self._db.execute(stmt)
        self._db.commit()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add_device(self, user: str, name: str, secret: str) -> Device:
        device = Device(user, name, secret, datetime.now(UTC).isoformat())
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO mfa_devices(user, name, secret, created) VALUES (?, ?, ?, ?)",
                    (user, name, secret, device.created),
                )
            except sqlite3.IntegrityError:
                raise MFAInvalid(
                    f"{user} already has an MFA device named {name}",
                    hint="pick another --name",
                ) from None
            self._db.commit()
        return device

    def devices(self, user: str) -> list[Device]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user, name, secret, created FROM mfa_devices "
                "WHERE user = ? ORDER BY created",
                (user,),
            ).fetchall()
        return [Device(*tuple(r)) for r in rows]

    def claim_step(self, user: str, step: int, now: float) -> bool:
        """Mark (user, step) used; False when it already was (a replay)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM mfa_used_steps WHERE used_at < ?", (now - USED_STEP_RETENTION_S,)
            )
            try:
                self._db.execute(
                    "INSERT INTO mfa_used_steps(user, step, used_at) VALUES (?, ?, ?)",
                    (user, step, now),
                )
            except sqlite3.IntegrityError:
                self._db.commit()
                return False
            self._db.commit()
            return True


@dataclass(frozen=True)
class Verified:
    user: str
    device: str
    step: int
    event_id: str


class MFAService:
    """Enrolment and per-session verification, with their audit events."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher | None = None,
        *,
        collector: str = "api",
    ) -> None:
        self.settings = settings
        self.store = MFAStore(settings)
        self.publisher = publisher or Publisher(settings)
        self.collector = collector

    async def close(self) -> None:
        self.store.close()

    async def enrol(self, user: str, name: str, secret: str, code: str) -> Device:
        """Store a device once the user proved their app has the secret."""
        if not name or len(name) > DEVICE_NAME_MAX:
            raise MFAInvalid(f"device name must be 1-{DEVICE_NAME_MAX} characters")
        try:
            pyotp.TOTP(secret).now()
        except Exception:
            raise MFAInvalid("the device secret must be base32 of at least 112 bits") from None
        now = time.time()
        try:
            step = totp_step(secret, code, now)
        except MFAInvalid as e:
            await self._failed(user, f"mfa enrolment: {e.message}")
            raise
        device = await asyncio.to_thread(self.store.add_device, user, name, secret)
        # The confirming code is spent: it cannot open a session right after.
        await asyncio.to_thread(self.store.claim_step, user, step, now)
        await self.publisher.emit_quietly(
            audit_event(
                "mfa.enrolled",
                user=user,
                source=Source(collector=self.collector),
                mfa_device=name,
            )
        )
        return device

    async def has_device(self, user: str) -> bool:
        return bool(await asyncio.to_thread(self.store.devices, user))

    async def verify(self, user: str, code: str, **context: str | None) -> Verified:
        """Accept a fresh code once; a wrong or replayed one raises MFAInvalid."""
        devices = await asyncio.to_thread(self.store.devices, user)
        if not devices:
            await self._failed(user, "mfa: no device enrolled", **context)
            raise MFARequired(
                f"{user} has no MFA device", hint="enrol one with `auditcast mfa add`"
            )
        now = time.time()
        for device in devices:
            try:
                step = totp_step(device.secret, code, now)
            except MFAInvalid as e:
                if "digits" in e.message:
                    await self._failed(user, f"mfa: {e.message}", **context)
                    raise
                continue
            if not await asyncio.to_thread(self.store.claim_step, user, step, now):
                await self._failed(user, "mfa: code already used", **context)
                raise MFAInvalid(
                    "this MFA code was already used", hint="wait for the next code and try again"
                )
            event = audit_event(
                "mfa.verified",
                user=user,
                source=Source(collector=self.collector, remote_addr=context.get("remote_addr")),
                mfa_device=device.name,
                session_id=context.get("session_id"),
                cluster=context.get("cluster"),
                node=context.get("node"),
            )
            await self.publisher.emit_quietly(event)
            return Verified(user, device.name, step, event.id)
        await self._failed(user, "mfa: wrong code", **context)
        raise MFAInvalid("wrong MFA code", hint="type the current code from your authenticator app")

    async def _failed(self, user: str, reason: str, **context: str | None) -> None:
        log.warning("MFA refused for %s: %s", user, reason, extra={"user": user})
        await self.publisher.emit_quietly(
            audit_event(
                "auth.failed",
                user=user,
                source=Source(collector=self.collector, remote_addr=context.get("remote_addr")),
                reason=reason,
                session_id=context.get("session_id"),
                cluster=context.get("cluster"),
                node=context.get("node"),
            )
        )


_default: dict[tuple[str, str], MFAService] = {}


def mfa_service(settings: Settings | None = None, *, collector: str = "api") -> MFAService:
    """One shared service per (home, topic prefix) in this process."""
    settings = settings or load_settings()
    key = (str(settings.home_dir), settings.topic_prefix)
    if key not in _default:
        _default[key] = MFAService(settings, collector=collector)
    return _default[key]


async def verify_session_mfa(
    user: str,
    code: str,
    *,
    settings: Settings | None = None,
    service: MFAService | None = None,
    **context: str | None,
) -> None:
    """The per-session check for gateways and the kube credentials endpoint.

    Returns None when `code` is a fresh valid code of one of `user`'s devices; raises
    MFAInvalid (wrong, malformed or replayed code) or MFARequired (no device).
    `context` (session_id, cluster, node, remote_addr) goes into the audit events;
    `collector="ssh-gateway"` names the caller in their `source`.
    """
    collector = context.pop("collector", None) or "api"
    await (service or mfa_service(settings, collector=collector)).verify(user, code, **context)
