"""The one table of event types and their stable codes.

Codes never change meaning once shipped: SIEM rules and dashboards key on them.
The suffix says the severity: I info, W warning, E error.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class EventCode(NamedTuple):
    type: str
    code: str
    description: str


EVENT_CODES: Final[tuple[EventCode, ...]] = (
    # identity and access (AC1xxx)
    EventCode("user.login", "AC1000I", "a user signed in through SSO"),
    EventCode("auth.failed", "AC1001W", "an authentication or authorization attempt was refused"),
    EventCode("cert.issued", "AC1002I", "a short-lived credential was issued"),
    EventCode("mfa.verified", "AC1003I", "a per-session MFA code was verified"),
    EventCode("mfa.enrolled", "AC1004I", "an MFA device was enrolled"),
    EventCode("access_request.created", "AC1100I", "an access request was created"),
    EventCode("access_request.reviewed", "AC1101I", "an access request was approved or denied"),
    EventCode("lock.created", "AC1200I", "a lock was created"),
    EventCode("lock.deleted", "AC1201I", "a lock was removed or expired"),
    EventCode("lock.violation", "AC1202W", "a locked target tried to act"),
    # sessions (AC2xxx)
    EventCode("session.start", "AC2000I", "an interactive session started"),
    EventCode("session.end", "AC2001I", "an interactive session ended"),
    EventCode("ssh.exec", "AC2002I", "a command ran over SSH"),
    EventCode("ssh.file_transfer", "AC2003I", "a file was transferred over sftp/scp"),
    EventCode("ssh.port_forward", "AC2004W", "a port forwarding request"),
    EventCode("ssh.agent_forward", "AC2005W", "an agent forwarding request"),
    # kubernetes (AC3xxx)
    EventCode("kube.request", "AC3000I", "a Kubernetes API request through the gateway"),
    EventCode("kube.exec", "AC3001I", "a kubectl exec/attach/port-forward stream"),
    EventCode("audit.unattributed", "AC3100W", "an API request that bypassed the gateway"),
    EventCode("kube.audit", "AC3101I", "an API server audit record received by the webhook"),
    # pipeline health (AC9xxx)
    EventCode("collector.spool_full", "AC9000E", "a collector's spool reached its size cap"),
    EventCode(
        "pipeline.dead_letter", "AC9001W", "a malformed record was sent to the dead-letter topic"
    ),
)

CODE_BY_TYPE: Final[dict[str, str]] = {c.type: c.code for c in EVENT_CODES}
TYPE_BY_CODE: Final[dict[str, str]] = {c.code: c.type for c in EVENT_CODES}


def code_for(event_type: str) -> str:
    """The stable code of an event type; unknown types are a programming error."""
    try:
        return CODE_BY_TYPE[event_type]
    except KeyError:
        raise ValueError(f"unknown event type {event_type!r}: add it to auditcast.codes") from None
