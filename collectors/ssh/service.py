"""Assemble a running SSH gateway from settings: keys, spool, lock view, MFA, inventory."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import asyncssh

from auditcast.collectors.ssh.audit import SpoolAudit
from auditcast.collectors.ssh.gateway import GatewayKeys, GatewayPolicy, SSHGateway
from auditcast.collectors.ssh.identities import IdentityRoles
from auditcast.collectors.ssh.ports import NodeDirectory
from auditcast.errors import ConfigError, MFAInvalid, MFARequired
from auditcast.settings import Settings

log = logging.getLogger(__name__)

SPOOL_NAME: Final = "ssh-gateway"
# The gateway's host certificate is re-signed at every start; a day outlives any run
# between restarts of a lab setup and still expires soon after the CA is rotated.
HOST_CERT_TTL: Final = timedelta(days=1)


def load_keys(settings: Settings, host_names: tuple[str, ...] = ()) -> GatewayKeys:
    """The user CA from access.ca (created on first use), and a fresh gateway host key
    certified by the host CA for the names users connect to."""
    from auditcast.access.ca import load_ca

    ca = load_ca(settings)
    try:
        user_ca = asyncssh.read_private_key(ca.dir / "user_ca")
    except (OSError, asyncssh.KeyImportError) as e:
        raise ConfigError(f"cannot read the auditcast user CA in {ca.dir}: {e}") from None
    # After `auditcast ca rotate user` the previous key stays trusted for the grace
    # period, so certificates issued before the rotation keep working until they expire.
    try:
        previous = tuple(
            (asyncssh.import_public_key(line), until)
            for line, until in ca.trusted_user_ca_keys()
            if until is not None
        )
    except asyncssh.KeyImportError as e:
        raise ConfigError(f"cannot read a previous user CA key in {ca.dir}: {e}") from None
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    names = host_names or ("localhost", "127.0.0.1", socket.gethostname())
    line = ca.sign_host_cert(
        host_key.export_public_key().decode(),
        principals=list(names),
        ttl=HOST_CERT_TTL,
        key_id="auditcast-ssh-gateway",
    )
    return GatewayKeys(
        user_ca=user_ca,
        previous_user_cas=previous,
        host_key=host_key,
        host_cert=asyncssh.import_certificate(line),
        node_known_hosts=ca.host_ca_known_hosts_line() + "\n",
    )


class SessionMFA:
    """access.mfa's per-session check as the gateway's yes/no question."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def verify(self, user: str, code: str, **context: str | None) -> bool:
        from auditcast.access.mfa import verify_session_mfa

        try:
            await verify_session_mfa(user, code, settings=self.settings, collector="ssh", **context)
        except (MFAInvalid, MFARequired) as e:
            log.info("session MFA refused for %s: %s", user, e.message, extra={"user": user})
            return False
        return True


@dataclass
class GatewayService:
    settings: Settings
    gateway: SSHGateway
    lock_view: Any
    spool: Any
    identities: IdentityRoles

    @property
    def port(self) -> int:
        return self.gateway.port

    async def stop(self) -> None:
        await self.gateway.close()
        await self.lock_view.stop()
        await self.identities.stop()
        await self.spool.close(10.0)


async def start_service(
    settings: Settings,
    nodes: NodeDirectory,
    roles: Mapping[str, Any],
    *,
    host: str | None = None,
    port: int | None = None,
    keys: GatewayKeys | None = None,
    instance: str = "ssh-gateway",
) -> GatewayService:
    from auditcast.access.locks import LockView
    from auditcast.collectors.spool import Spool

    keys = keys or load_keys(settings)
    spool = Spool(settings, SPOOL_NAME)
    await spool.start()
    view = LockView(settings)
    grants = IdentityRoles(settings, roles)
    try:
        await grants.start()
        await view.start()
        policy = GatewayPolicy(nodes=nodes, grants=grants, locks=view, mfa=SessionMFA(settings))
        gw = SSHGateway(keys, policy, SpoolAudit(spool), instance=instance)
        await gw.start(host or settings.bind_host, settings.ssh_port if port is None else port)
    except BaseException:
        await view.stop()
        await grants.stop()
        await spool.close(5.0)
        raise
    log.info("ssh gateway listening on %s:%d", host or settings.bind_host, gw.port)
    return GatewayService(settings, gw, view, spool, grants)
