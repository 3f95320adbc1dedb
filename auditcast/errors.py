"""One exception hierarchy for all of auditcast.

Inside the code we raise the most specific class; the CLI maps each to a one-line
message plus a hint and a distinct exit code, HTTP handlers to a status code.
"""

from __future__ import annotations


class AuditcastError(Exception):
    """Root of every error auditcast raises on purpose."""

    exit_code = 1
    http_status = 500
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(AuditcastError):
    exit_code = 2
    http_status = 500
    hint = "check AUDITCAST_* variables and the TOML settings file"


class BrokerError(AuditcastError):
    exit_code = 3
    http_status = 503


class BrokerUnavailable(BrokerError):
    hint = "start the pipeline with `auditcast up`, or point AUDITCAST_KAFKA at a reachable cluster"


class TopicMissing(BrokerError):
    hint = "create the topics with `auditcast topics create` (auditcast up does this for you)"


class SpoolError(AuditcastError):
    exit_code = 4
    http_status = 507


class SpoolFull(SpoolError):
    hint = "the broker has been away too long; restore it or raise AUDITCAST_SPOOL_MAX_BYTES"


class SpoolCorrupt(SpoolError):
    pass


class MalformedMessage(AuditcastError):
    """A record on a topic that is not a valid envelope or frame batch."""

    exit_code = 5
    http_status = 400


class NotFound(AuditcastError):
    exit_code = 6
    http_status = 404


class AccessError(AuditcastError):
    exit_code = 7
    http_status = 403


class InvalidToken(AccessError):
    http_status = 401
    hint = "sign in again with `auditcast login`"


class InvalidCertificate(AccessError):
    http_status = 401
    hint = "sign in again with `auditcast login` to get a fresh certificate"


class AccessDenied(AccessError):
    http_status = 403


class Locked(AccessError):
    http_status = 403
    hint = "ask an administrator to remove the lock (`auditcast lock ls`)"

    def __init__(self, message: str, *, lock_name: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.lock_name = lock_name


class MFARequired(AccessError):
    http_status = 401
    hint = "enter a fresh code from your authenticator app (`auditcast mfa add` to enrol one)"


class MFAInvalid(AccessError):
    http_status = 401


class LoginRequired(AccessError):
    http_status = 401
    hint = "run `auditcast login`"
