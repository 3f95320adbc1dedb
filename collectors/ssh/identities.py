"""Roles of a credential from the compacted `identities` topic (docs/SEAMS.md).

Used when a certificate does not carry the `auditcast-roles@auditcast` extension:
`auditcast login` writes one `identities` record per credential (key credential_id,
value `{"credential_id", "kind", "identity": {..., "roles"}, "issued", "expires"}`),
and this view follows the topic from the beginning without a consumer group so every
gateway process sees every credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from auditcast.aio import cancel_and_wait
from auditcast.collectors.ssh.policy import CertInfo, Grant, grant_from_roles
from auditcast.kafka import resolve_bootstrap
from auditcast.settings import Settings
from auditcast.topics import IDENTITIES, topic

log = logging.getLogger(__name__)

# A login publishes the identity record just before the user connects; wait this long
# for it before deciding the credential has no roles.
LOOKUP_WAIT_S: Final = 3.0
FETCH_MAX_WAIT_MS: Final = 50
RETRY_S: Final = 1.0


def parse_identity_record(value: bytes) -> tuple[str, tuple[str, ...], datetime | None] | None:
    """(credential_id, roles, expires) from one record, or None if it is not usable."""
    try:
        doc = orjson.loads(value)
        cred = str(doc["credential_id"])
        roles = tuple(str(r) for r in (doc.get("identity") or {}).get("roles") or ())
        exp = doc.get("expires")
        expires = datetime.fromisoformat(exp.replace("Z", "+00:00")) if exp else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return cred, roles, expires


class IdentityRoles:
    """A GrantResolver: roles from the certificate, else from the `identities` topic."""

    def __init__(self, settings: Settings, roles: Any) -> None:
        self.settings = settings
        self.roles = roles
        self._known: dict[str, tuple[tuple[str, ...], datetime | None]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> IdentityRoles:
        self._task = asyncio.create_task(self._follow(), name="identity-roles")
        return self

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self._known.pop(key.decode(errors="replace"), None)
            return
        parsed = parse_identity_record(value)
        if parsed is None:
            log.warning("unusable identities record ignored")
            return
        cred, roles, expires = parsed
        self._known[cred] = (roles, expires)
        self._changed.set()

    async def roles_for(self, credential_id: str, wait: float = LOOKUP_WAIT_S) -> tuple[str, ...]:
        deadline = time.monotonic() + wait
        while True:
            hit = self._known.get(credential_id)
            if hit is not None:
                roles, expires = hit
                if expires is not None and expires <= datetime.now(UTC):
                    return ()
                return roles
            left = deadline - time.monotonic()
            if left <= 0 or self._task is None:
                return ()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def grant_for(self, cert: CertInfo) -> Grant:
        names = cert.roles or await self.roles_for(cert.credential_id)
        return grant_from_roles(names, self.roles)

    async def _follow(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                topic(self.settings, IDENTITIES),
                bootstrap_servers=resolve_bootstrap(self.settings),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
            try:
                await consumer.start()
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        for r in records:
                            self.apply(r.key, r.value)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as e:
                log.warning("identities view lost the broker: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(RETRY_S)
