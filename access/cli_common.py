"""What the `lock`, `request` and `mfa` verbs share: calling the API as the logged-in user.

The API URL and session token come from the profile `auditcast login` wrote (access
core's `access.profile`). Errors the API returns become the matching AuditcastError,
so the CLI root prints the message and the hint with a distinct exit code.
"""

from __future__ import annotations

import os
from typing import Any, Final

import httpx

from auditcast.errors import (
    AccessDenied,
    AuditcastError,
    BrokerUnavailable,
    LoginRequired,
    MFAInvalid,
    MFARequired,
    NotFound,
)

# The API is local or one hop away; a request taking longer than this is stuck.
API_TIMEOUT_S: Final = 15.0


class APIConflict(AuditcastError):
    exit_code = 8
    http_status = 409


class APIUnreachable(AuditcastError):
    exit_code = 3
    hint = "is the API running? start it with `auditcast up` or `auditcast api`"


_BY_STATUS: Final[dict[int, type[AuditcastError]]] = {
    401: LoginRequired,
    403: AccessDenied,
    404: NotFound,
    409: APIConflict,
    503: BrokerUnavailable,
}


def profile_endpoint() -> tuple[str, str]:
    """(API base URL, bearer token): AUDITCAST_API_URL / AUDITCAST_TOKEN (service
    accounts, CI), else the profile of the logged-in user."""
    url, token = os.environ.get("AUDITCAST_API_URL"), os.environ.get("AUDITCAST_TOKEN")
    if url and token:
        return url.rstrip("/"), token
    try:
        from auditcast.access.profile import load_profile
    except ImportError:
        raise LoginRequired("not logged in: no auditcast profile") from None
    profile = load_profile()
    return str(url or profile.api_url).rstrip("/"), str(token or profile.token)


def api_call(method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
    """One request to `/v1{path}`; returns the decoded JSON or raises AuditcastError."""
    base, token = profile_endpoint()
    url = f"{base}/v1{path}"
    try:
        with httpx.Client(timeout=API_TIMEOUT_S) as client:
            resp = client.request(
                method,
                url,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )
    except httpx.HTTPError as e:
        raise APIUnreachable(f"cannot reach the auditcast API at {base}: {e}") from None
    if resp.status_code < 400:
        return resp.json() if resp.content else None
    raise error_from_response(resp)


def error_from_response(resp: httpx.Response) -> AuditcastError:
    message, hint = f"the API answered {resp.status_code}", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = str(detail.get("error") or message)
        hint = detail.get("hint") or None
    elif isinstance(detail, str):
        message = detail
    elif isinstance(detail, list) and detail:  # FastAPI validation errors
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", [])[1:])
        message = f"invalid {loc}: {first.get('msg')}"
    elif isinstance(body, dict) and body.get("error"):
        message = str(body["error"])
        hint = body.get("hint") or None
    if resp.status_code == 401 and "MFA" in message and "requires" not in message:
        # no device, or a wrong, malformed or replayed code: say so, not "log in again"
        # ("role requires a fresh MFA code" stays LoginRequired: the kube plugin prompts)
        mfa_cls = MFARequired if "MFA device" in message else MFAInvalid
        return mfa_cls(message, hint=hint)
    cls = _BY_STATUS.get(resp.status_code, AuditcastError)
    return cls(message, hint=hint)
