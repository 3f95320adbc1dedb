"""The SSH gateway: OpenSSH clients in, the node's real sshd out, everything recorded.

A user connects with their auditcast certificate as `LOGIN@NODE` (`ssh -p 3022
root@node1@gateway`). Authentication is decided here (certificate from the user CA,
valid now, login among its principals and roles, node known and allowed by labels, no
lock, MFA when a role asks for it); refusals are shown as an auth banner and become
one `auth.failed` event per connection, and no connection to the node is made. An
allowed session is relayed to the node as the requested login with a short-lived
certificate the gateway signs for itself, and recorded through the audit sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate, decode_ssh_certificate

from auditcast.access.lock_model import Lock, LockSubject
from auditcast.collectors.ssh.certs import CERT_TYPE_USER, is_certificate, parse_certificate
from auditcast.collectors.ssh.policy import (
    CREDENTIAL_EXTENSION,
    ROLES_EXTENSION,
    CertInfo,
    Destination,
    Refusal,
    Target,
    authorize,
    cert_time_refusal,
    lock_notice,
    lock_refusal,
    node_known_hosts,
    parse_destination,
)
from auditcast.collectors.ssh.ports import (
    AuditSink,
    GrantResolver,
    LockSource,
    MfaCheck,
    NodeDirectory,
)
from auditcast.collectors.ssh.scp import scp_direction
from auditcast.collectors.ssh.sftp import SftpTap, Transfer
from auditcast.errors import InvalidCertificate, Locked
from auditcast.events import Event, Source

log = logging.getLogger(__name__)

COLLECTOR: Final = "ssh"
# The certificate the gateway signs for itself per upstream connection: long enough
# for the handshake, short enough that a leaked one is useless.
UPSTREAM_CERT_TTL_S: Final = 120
# Connecting to a node that does not answer must not hold the user's terminal forever.
UPSTREAM_CONNECT_TIMEOUT_S: Final = 15.0
MFA_PROMPT: Final = "auditcast MFA code: "
# The gateway decrypts and re-encrypts every byte in one Python process. AES-GCM runs
# in OpenSSL with AES-NI in one call per packet; chacha20-poly1305 and the CTR+UMAC
# pairs cost several calls each (profiled: ~3x the per-packet work). SSH clients pick
# the first cipher of their own list that the server offers, so the gateway offers
# only AES-GCM (OpenSSH >= 6.2, PuTTY >= 0.76 support it).
CIPHERS: Final = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# Bigger flow-control windows keep the node streaming while the client leg drains.
WINDOW_BYTES: Final = 8 * 1024 * 1024
# The node may send the gateway data packets this big (OpenSSH's transport limit is
# 256 KiB per packet): a quarter of the decrypt calls, reads and relay callbacks of the
# 32 KiB default. Packets to the user stay at what the user's client accepts.
UPSTREAM_MAX_PKTSIZE: Final = 256 * 1024 - 4096


@dataclass
class GatewayKeys:
    """The user CA (to trust users and to sign the gateway's own upstream certs) and
    the gateway's host key with its certificate from the host CA."""

    user_ca: asyncssh.SSHKey
    host_key: asyncssh.SSHKey
    host_cert: asyncssh.SSHCertificate | None = None
    # Trust for node host keys: known_hosts text (e.g. `@cert-authority * <host CA>`),
    # or None to accept any node host key (test and lab setups only).
    node_known_hosts: str | None = None
    # User CA public keys trusted besides `user_ca`, each until a time (None: no end):
    # during a CA rotation the previous key, for as long as its certificates can live.
    previous_user_cas: tuple[tuple[asyncssh.SSHKey, datetime | None], ...] = ()
    _client_key: asyncssh.SSHKey = field(
        default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519")
    )

    def trusts_user_ca(self, ca: asyncssh.SSHKey, now: datetime | None = None) -> bool:
        """Whether certificates signed by `ca` are accepted now: the current user CA,
        or a previous one still inside its rotation grace period."""
        if ca.public_data == self.user_ca.public_data:
            return True
        now = now or datetime.now(UTC)
        return any(
            ca.public_data == key.public_data and (until is None or now < until)
            for key, until in self.previous_user_cas
        )

    def upstream_identity(
        self, login: str, user: str, credential_id: str
    ) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        now = int(time.time())
        cert = self.user_ca.generate_user_certificate(
            self._client_key,
            f"{user} via auditcast ({credential_id})",
            principals=[login],
            valid_after=now - 30,
            valid_before=now + UPSTREAM_CERT_TTL_S,
        )
        return self._client_key, cert


@dataclass
class GatewayPolicy:
    nodes: NodeDirectory
    grants: GrantResolver
    locks: LockSource | None = None
    mfa: MfaCheck | None = None


class SSHGateway:
    """Listens for OpenSSH clients; one `_ClientConnection` per TCP connection."""

    def __init__(
        self,
        keys: GatewayKeys,
        policy: GatewayPolicy,
        audit: AuditSink,
        *,
        instance: str = "ssh-gateway",
    ) -> None:
        self.keys = keys
        self.policy = policy
        self.audit = audit
        self.instance = instance
        self.live: set[_ClientConnection] = set()
        self._server: asyncssh.SSHAcceptor | None = None
        self._unlisten: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.get_port())

    async def start(self, host: str, port: int) -> None:
        host_keys: list[Any] = [
            (self.keys.host_key, self.keys.host_cert) if self.keys.host_cert else self.keys.host_key
        ]
        self._server = await asyncssh.listen(
            host,
            port,
            server_factory=lambda: _ClientConnection(self),
            server_host_keys=host_keys,
            encoding=None,
            # Agent forwarding is accepted at the SSH layer so every attempt is seen
            # (and recorded); the session decides whether to pass it on.
            agent_forwarding=True,
            x11_forwarding=False,
            allow_scp=False,
            login_timeout=60,
            encryption_algs=list(CIPHERS),
            compression_algs=None,
            window=WINDOW_BYTES,
            # The node does the line editing; asyncssh's editor wrapper would only add a
            # delegation hop to every write and every byte typed.
            line_editor=False,
        )
        if self.policy.locks is not None:
            # A listener runs in the view's own task the moment a lock record is read:
            # no queue hop between the lock and the sessions it ends.
            self._unlisten = self.policy.locks.add_listener(self._on_lock)

    async def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for conn in list(self.live):
            conn.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Hang-ups are delivered on the next loop turns; the session ends they start
        # must reach the spool before the caller closes it.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    def _on_lock(self, lock: Lock) -> None:
        now = datetime.now(UTC)
        for conn in list(self.live):
            if conn.target is not None and lock.matches(conn.lock_subject(), now):
                conn.terminate_for_lock(lock.name, lock.message)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task the gateway keeps a reference to until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def source(self, remote_addr: str | None) -> Source:
        return Source(collector=COLLECTOR, instance=self.instance, remote_addr=remote_addr)


def _cert_info(blob: bytes) -> CertInfo:
    f = parse_certificate(blob)
    roles_text = f.extensions.get(ROLES_EXTENSION, "")
    return CertInfo(
        user=f.key_id,
        principals=f.principals,
        credential_id=f.extensions.get(CREDENTIAL_EXTENSION, ""),
        valid_after=f.valid_after,
        valid_before=f.valid_before,
        roles=tuple(r for r in roles_text.split(",") if r),
    )


# Refusals that may still turn into a login on this connection (OpenSSH offers the
# plain key before its certificate; MFA follows the certificate): reported only if
# the connection ends unauthenticated.
_TENTATIVE: Final = frozenset({"plain_key", "mfa_required"})


def _rank(r: Refusal | None) -> int:
    """Which refusal explains a failed connection best: the most specific one seen."""
    if r is None:
        return 0
    return {"plain_key": 1, "mfa_required": 2}.get(r.reason, 3)


class _ClientConnection(asyncssh.SSHServer):
    """One user's connection: authentication, then sessions relayed to one node."""

    def __init__(self, gw: SSHGateway) -> None:
        self.gw = gw
        self.conn: asyncssh.SSHServerConnection | None = None
        self.remote_addr: str | None = None
        self.target: Target | None = None
        self.refusal: Refusal | None = None
        self.refusal_fields: dict[str, Any] = {}
        self.authenticated = False
        self.mfa_pending = False
        self.mfa_user = ""
        self._banners: set[str] = set()
        self._emitted = False
        self._upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_lock = asyncio.Lock()
        self.sessions: set[_RelaySession] = set()
        self.terminated: tuple[str, str] | None = None

    # --- connection lifecycle -------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.remote_addr = peer[0] if peer else None
        original: Callable[[str, bytes, bytes, bytes], Awaitable[bool]] = conn.validate_public_key

        async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            return await self._validate(original, username, key_data, msg, signature)

        # asyncssh checks a certificate's principals against the SSH user name, which
        # here is LOGIN@NODE; decide ourselves and let asyncssh verify against LOGIN.
        conn.validate_public_key = validate  # type: ignore[method-assign]
        self.gw.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gw.live.discard(self)
        if not self.authenticated and self.refusal is not None and not self._emitted:
            self._emit_refusal()
        if self._upstream is not None:
            self._upstream.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # --- authentication -------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self.gw.keys.trusts_user_ca(key)

    def kbdint_auth_supported(self) -> bool:
        return self.mfa_pending

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return (
            "auditcast per-session MFA",
            "Your role requires a fresh code from your authenticator app for each session.",
            "",
            [(MFA_PROMPT, False)],
        )

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        mfa = self.gw.policy.mfa
        if not self.mfa_pending or mfa is None or len(responses) != 1:
            return False
        code = responses[0].strip()
        if not code:  # a client that cannot prompt (BatchMode) answers with nothing
            return False
        node = self.target.node.name if self.target is not None else None
        ok = await mfa.verify(self.mfa_user, code, node=node, remote_addr=self.remote_addr)
        if not ok:
            self._refuse(Refusal("mfa_invalid", "auditcast: that MFA code is not valid"))
            return False
        self.mfa_pending = False
        self.refusal = None
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        self.refusal = None

    def _refuse(self, refusal: Refusal, *, banner: bool = True, **fields: Any) -> bool:
        if _rank(refusal) > _rank(self.refusal):
            self.refusal = refusal
            self.refusal_fields = fields
        if refusal.reason not in _TENTATIVE and not self._emitted:
            # One auth.failed per connection, written before the client hears "no".
            self._emit_refusal()
        # OpenSSH offers the plain key before its certificate: no banner for that, or
        # every successful login would print a warning.
        if banner and refusal.message not in self._banners and self.conn is not None:
            self._banners.add(refusal.message)
            try:
                self.conn.send_auth_banner(refusal.message + "\r\n")
            except OSError:
                pass
        return False

    def _emit_refusal(self) -> None:
        assert self.refusal is not None
        self._emitted = True
        fields: dict[str, Any] = {
            **self.refusal_fields,
            "reason": self.refusal.reason,
            "message": self.refusal.message,
        }
        event = Event(type="auth.failed", source=self.gw.source(self.remote_addr), **fields)
        self.gw.audit.emit(event)
        log.info(
            "refused %s: %s",
            self.remote_addr,
            self.refusal.reason,
            extra={
                "event_id": event.id,
                "user": event.user,
                "credential_id": event.credential_id,
                "fields": {"node": event.node, "reason": self.refusal.reason},
            },
        )

    async def _validate(
        self,
        original: Callable[[str, bytes, bytes, bytes], Awaitable[bool]],
        username: str,
        key_data: bytes,
        msg: bytes,
        signature: bytes,
    ) -> bool:
        dest = parse_destination(username)
        if not is_certificate(key_data):
            return self._refuse(
                Refusal(
                    "plain_key",
                    "auditcast: plain SSH keys are not accepted; sign in with "
                    "`auditcast login` and connect with its certificate",
                ),
                banner=False,
                login=getattr(dest, "login", None),
                node=getattr(dest, "node", None),
            )
        try:
            cert = _cert_info(key_data)
            fields = parse_certificate(key_data)
            ca = cast(SSHOpenSSHCertificate, decode_ssh_certificate(key_data)).signing_key
        except (asyncssh.KeyImportError, InvalidCertificate) as e:
            return self._refuse(Refusal("cert_invalid", f"auditcast: unreadable certificate: {e}"))
        base: dict[str, Any] = {"user": cert.user or None, "credential_id": cert.credential_id}
        if isinstance(dest, Destination):
            base.update(login=dest.login, node=dest.node)
        if not self.gw.keys.trusts_user_ca(ca):
            return self._refuse(
                Refusal(
                    "cert_untrusted_ca",
                    "auditcast: your certificate is not signed by this auditcast's user CA; "
                    "run `auditcast login` against this gateway",
                ),
                **base,
            )
        if fields.cert_type != CERT_TYPE_USER:
            return self._refuse(
                Refusal("cert_invalid", "auditcast: not a user certificate"), **base
            )
        expired = cert_time_refusal(cert)
        if expired is not None:
            return self._refuse(expired, **base)
        if isinstance(dest, Refusal):
            return self._refuse(dest, **base)
        node = self.gw.policy.nodes.get(dest.node)
        grant = await self.gw.policy.grants.grant_for(cert)
        decision = authorize(cert, dest, node, grant)
        if node is not None:
            base["labels"] = dict(node.labels)
        if isinstance(decision, Refusal):
            return self._refuse(decision, roles=list(grant.roles), **base)
        locks = self.gw.policy.locks
        if locks is not None:
            lock = _check_lock(locks, _subject(decision))
            if lock is not None:
                return self._refuse(lock_refusal(lock.name, lock.message), lock=lock.name, **base)
        # Signature, validity and principal (= login) checked by asyncssh itself.
        if not await original(dest.login, key_data, msg, signature):
            return False
        if not signature:
            return True
        self.target = decision
        if grant.require_session_mfa and self.gw.policy.mfa is not None:
            self.mfa_pending = True
            self.mfa_user = cert.user
            self._refuse(
                Refusal("mfa_required", "auditcast: your role requires a per-session MFA code"),
                **base,
            )
            return False
        return True

    # --- sessions -------------------------------------------------------------------
    def lock_subject(self) -> LockSubject:
        assert self.target is not None
        return _subject(self.target)

    def session_requested(self) -> asyncssh.SSHServerSession[bytes] | bool:
        if self.target is None or self.terminated is not None:
            return False
        locks = self.gw.policy.locks
        if locks is not None:
            lock = _check_lock(locks, self.lock_subject())
            if lock is not None:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                    lock_refusal(lock.name, lock.message).message,
                )
        return _RelaySession(self)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        allowed = self.target is not None and self.target.grant.allow_port_forwarding
        self._event(
            "ssh.port_forward",
            direction="local",
            dest_host=dest_host,
            dest_port=dest_port,
            allowed=allowed,
        )
        if not allowed:
            return False
        return self._forward_connection(dest_host, dest_port)

    async def _forward_connection(self, dest_host: str, dest_port: int) -> Any:
        upstream = await self.upstream()
        return await upstream.forward_connection(dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._event(
            "ssh.port_forward",
            direction="remote",
            listen_host=listen_host,
            listen_port=listen_port,
            allowed=False,
        )
        # Remote (-R) forwards would open a listener on the node: never relayed.
        return False

    def _event(self, type_: str, **fields: Any) -> None:
        t = self.target
        base: dict[str, Any] = {}
        if t is not None:
            base = {
                "user": t.cert.user,
                "credential_id": t.cert.credential_id,
                "node": t.node.name,
                "labels": dict(t.node.labels),
                "login": t.login,
            }
        self.gw.audit.emit(
            Event(type=type_, source=self.gw.source(self.remote_addr), **base, **fields)
        )

    async def upstream(self, agent_path: str | None = None) -> asyncssh.SSHClientConnection:
        """The connection to the node, opened once per user connection; `agent_path`
        (the user's forwarded agent, when the role allows it) is offered to the node."""
        assert self.target is not None
        async with self._upstream_lock:
            if self._upstream is None:
                t = self.target
                key, cert = self.gw.keys.upstream_identity(
                    t.login, t.cert.user, t.cert.credential_id
                )
                known = node_known_hosts(self.gw.keys.node_known_hosts, t.node)
                self._upstream = await asyncio.wait_for(
                    asyncssh.connect(
                        t.node.address,
                        t.node.port,
                        username=t.login,
                        client_keys=[(key, cert)],
                        known_hosts=asyncssh.import_known_hosts(known) if known else None,
                        agent_path=None,  # the gateway authenticates with its own cert
                        # a path: forward the node's agent requests to that socket
                        agent_forwarding=agent_path or False,
                        encoding=None,
                        preferred_auth=["publickey"],
                        encryption_algs=list(CIPHERS),
                        compression_algs=None,
                        window=WINDOW_BYTES,
                        max_pktsize=UPSTREAM_MAX_PKTSIZE,
                    ),
                    UPSTREAM_CONNECT_TIMEOUT_S,
                )
            return self._upstream

    def terminate_for_lock(self, name: str, message: str) -> None:
        if self.terminated is not None:
            return
        self.terminated = (name, message)
        notice = lock_notice(name, message)
        log.info(
            "lock %s ends session", name, extra={"user": self.target and self.target.cert.user}
        )
        for s in list(self.sessions):
            s.terminate(notice)
        if not self.sessions:
            self.close()


def _subject(t: Target) -> LockSubject:
    return LockSubject.of(
        user=t.cert.user,
        roles=t.grant.roles,
        login=t.login,
        node=t.node.name,
        credential=t.cert.credential_id,
    )


@dataclass(frozen=True)
class _StaleView:
    """Stands for a lock when a strict-mode view is stale: refuse with its reason."""

    name: str
    message: str


def _check_lock(locks: LockSource, subject: LockSubject) -> Lock | _StaleView | None:
    try:
        return locks.check(subject)
    except Locked as e:
        return _StaleView("strict-mode", e.message)


class _RelaySession(asyncssh.SSHServerSession[bytes]):
    """One channel from the user, relayed to one channel on the node."""

    def __init__(self, owner: _ClientConnection) -> None:
        self.owner = owner
        assert owner.target is not None
        self.t: Target = owner.target
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.up: asyncssh.SSHClientChannel[bytes] | None = None
        self.mode = "shell"
        self.command: str | None = None
        self.subsystem: str | None = None
        self.term_type: str | None = None
        self.term_size: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.term_modes: Mapping[int, int] = {}
        self.rec: Any = None
        self.sftp: SftpTap | None = None
        self.scp: tuple[str, str] | None = None
        self.scp_bytes = 0
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.pending: list[tuple[bytes, int | None]] = []
        self.pending_eof = False
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self.notice: str | None = None

    # --- requests from the user -----------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        self.owner.sessions.add(self)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self.term_type, self.term_size, self.term_modes = term_type, term_size, term_modes
        return True

    def shell_requested(self) -> bool:
        self.mode = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.mode = "exec"
        self.command = command
        direction = scp_direction(command)
        if direction is not None:
            if not self.t.grant.allow_file_transfer:
                self._transfer_event(Transfer(direction, direction[1], 0, allowed=False))
                return False
            self.scp = direction
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.mode = "subsystem"
        self.subsystem = subsystem
        if subsystem == "sftp":
            if not self.t.grant.allow_file_transfer:
                self._transfer_event(Transfer("sftp", "", 0, allowed=False))
                return False
            self.sftp = SftpTap()
        return True

    def session_started(self) -> None:
        assert self.chan is not None
        # Hold the user's input in the SSH window until the node side is open, rather
        # than in an unbounded list here.
        self.chan.pause_reading()
        self.task = asyncio.create_task(self._open_upstream())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.bytes_in += len(data)
        if self.rec is not None and (self.mode == "shell" or self.term_type):
            self.rec.input(data)  # keystrokes; stdin of a command without a PTY is data
        if self.sftp is not None:
            for tr in self.sftp.client_data(data):
                self._transfer_event(tr)
        if self.scp is not None and self.scp[0] == "upload":
            self.scp_bytes += len(data)
        if self.up is None:
            self.pending.append((data, datatype))
            return
        self.up.write(data, datatype)

    def eof_received(self) -> bool:
        if self.up is None:
            self.pending_eof = True
        else:
            self.up.write_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.term_size = (width, height, pixwidth, pixheight)
        if self.rec is not None:
            self.rec.resize(width, height)
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self.up is not None:
            self.up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.up is not None:
            self.up.send_break(msec)
        return True

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.sessions.discard(self)
        if self.up is not None:
            self.up.close()
        if not self.done:
            self.done = True
            self.owner.gw.spawn(self._finish())
        if self.owner.terminated is not None and not self.owner.sessions:
            self.owner.close()

    # --- the node side --------------------------------------------------------------
    async def _open_upstream(self) -> None:
        assert self.chan is not None
        chan = self.chan
        t = self.t
        agent = chan.get_agent_path()
        agent_allowed = agent is not None and t.grant.allow_agent_forwarding
        if agent is not None:
            self.owner._event("ssh.agent_forward", allowed=agent_allowed)
        self.rec = self._make_recorder()
        if self.rec is not None:
            await self.rec.start()
            if self.term_type:
                self.rec.resize(self.term_size[0], self.term_size[1])
        log.info(
            "%s session for %s as %s on %s",
            self.mode,
            t.cert.user,
            t.login,
            t.node.name,
            extra={
                "user": t.cert.user,
                "credential_id": t.cert.credential_id,
                "session_id": getattr(self.rec, "session_id", None),
                "fields": {"node": t.node.name, "login": t.login, "command": self.command},
            },
        )
        try:
            conn = await self.owner.upstream(agent if agent_allowed else None)
            kwargs: dict[str, Any] = {"env": chan.get_environment() or {}, "encoding": None}
            if self.term_type:
                kwargs.update(
                    term_type=self.term_type,
                    term_size=self.term_size,
                    term_modes=self.term_modes,
                )
            if self.mode == "exec":
                kwargs["command"] = self.command
            elif self.mode == "subsystem":
                kwargs["subsystem"] = self.subsystem
            up, _ = await conn.create_session(lambda: _UpstreamSession(self), **kwargs)
        except Exception as e:  # any failure must end the user's session, not hang it
            msg = f"auditcast: cannot reach node {t.node.name}: {e or type(e).__name__}\r\n"
            log.warning(
                "cannot reach node %s: %s",
                t.node.name,
                e,
                extra={"user": t.cert.user, "credential_id": t.cert.credential_id},
            )
            chan.write_stderr(msg.encode()) if self.term_type is None else chan.write(msg.encode())
            self.exit_status = 255
            chan.exit(255)
            return
        self.up = up
        if self.done:  # the user hung up while the node side was opening
            up.close()
            return
        if self.notice is not None:
            self.terminate(self.notice)
            return
        for data, datatype in self.pending:
            up.write(data, datatype)
        self.pending.clear()
        if self.pending_eof:
            up.write_eof()
        chan.resume_reading()

    def _make_recorder(self) -> Any:
        if self.mode == "subsystem" or self.scp is not None:
            return None  # file transfers: events only, never file contents
        t = self.t
        fields: dict[str, Any] = {
            "user": t.cert.user,
            "credential_id": t.cert.credential_id,
            "node": t.node.name,
            "labels": dict(t.node.labels),
            "login": t.login,
            "source": self.owner.gw.source(self.owner.remote_addr),
        }
        if self.mode == "exec":
            return self.owner.gw.audit.recorder("ssh.exec", command=self.command, **fields)
        return self.owner.gw.audit.recorder(
            "ssh", term=self.term_type, cols=self.term_size[0], rows=self.term_size[1], **fields
        )

    def output(self, data: bytes, datatype: int | None) -> None:
        assert self.chan is not None
        self.bytes_out += len(data)
        if self.rec is not None:
            self.rec.output(data)
        if self.sftp is not None:
            for tr in self.sftp.server_data(data):
                self._transfer_event(tr)
        if self.scp is not None and self.scp[0] == "download":
            self.scp_bytes += len(data)
        self.chan.write(data, datatype)

    def upstream_closed(self) -> None:
        assert self.chan is not None
        if self.exit_signal is not None:
            sig, core, msg, lang = self.exit_signal
            self.chan.exit_with_signal(sig, core, msg, lang)
        else:
            self.chan.exit(self.exit_status if self.exit_status is not None else 255)

    def terminate(self, notice: str) -> None:
        """A lock ends this session: tell the user why, then close both sides."""
        self.notice = notice
        if self.chan is None:
            return
        line = f"\r\n{notice}\r\n".encode()
        if self.rec is not None:
            self.rec.output(line)
        try:
            if self.term_type:
                self.chan.write(line)
            else:
                self.chan.write_stderr(line)
            self.exit_status = 255
            self.chan.exit(255)
        except (OSError, asyncssh.Error):
            self.chan.close()
        if self.up is not None:
            self.up.close()

    def _transfer_event(self, tr: Transfer) -> None:
        self.owner._event(
            "ssh.file_transfer",
            protocol="sftp" if self.sftp is not None or tr.direction == "sftp" else "scp",
            direction=tr.direction,
            path=tr.path,
            size=tr.size,
            allowed=tr.allowed,
        )

    async def _finish(self) -> None:
        exit_code = self.exit_status
        if self.exit_signal is not None and exit_code is None:
            exit_code = 128 + _signal_number(self.exit_signal[0])
        extra: dict[str, Any] = {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out}
        if self.owner.terminated is not None:
            extra["terminated_by_lock"] = self.owner.terminated[0]
        if self.exit_signal is not None:
            extra["exit_signal"] = self.exit_signal[0]
        if self.rec is not None:
            # The recorder keeps its own byte counters for session.end.
            end_fields = {k: v for k, v in extra.items() if k not in ("bytes_in", "bytes_out")}
            try:
                await self.rec.end(exit_code, **end_fields)
            except Exception:
                log.exception("recording end failed")
        if self.mode == "exec" and self.command is not None:
            if self.scp is not None and self.scp_bytes:
                self._transfer_event(
                    Transfer(self.scp[0], self.scp[1], self.scp_bytes, allowed=True)
                )
            self.owner._event(
                "ssh.exec",
                command=self.command,
                exit_code=exit_code,
                session_id=getattr(self.rec, "session_id", None),
                **extra,
            )


_SIGNALS: Final = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "TERM": 15, "PIPE": 13}


def _signal_number(name: str) -> int:
    return _SIGNALS.get(name, 0)


class _UpstreamSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, down: _RelaySession) -> None:
        self.down = down

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.down.output(data, datatype)

    def eof_received(self) -> bool:
        if self.down.chan is not None:
            self.down.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.down.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.down.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        if self.down.chan is not None:
            self.down.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.down.chan is not None:
            self.down.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.down.notice is None and self.down.chan is not None:
            try:
                self.down.upstream_closed()
            except (OSError, asyncssh.Error):
                pass
