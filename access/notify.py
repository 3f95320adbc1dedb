"""Access-request notifications: Slack incoming-webhook JSON, posted to a configured URL.

`request_message` is pure (the payload); `post_webhook` delivers it and never raises:
a chat outage must not block an access request, so failures are logged.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import httpx

log = logging.getLogger(__name__)

# A webhook that has not answered in this time is treated as failed.
WEBHOOK_TIMEOUT_S: Final = 5.0

_VERBS: Final = {
    "created": "requested",
    "approved": "approved",
    "denied": "denied",
}


def request_message(
    *,
    action: str,
    request_id: str,
    user: str,
    roles: list[str],
    reason: str,
    link: str,
    reviewer: str | None = None,
    review_reason: str | None = None,
) -> dict[str, Any]:
    """Slack incoming-webhook JSON: `text` for notifications, `blocks` for the message."""
    verb = _VERBS.get(action, action)
    roles_text = ", ".join(roles)
    if action == "created":
        text = f"{user} requested {roles_text}: {reason} <{link}|review request {request_id}>"
    else:
        text = (
            f"{reviewer} {verb} {user}'s request for {roles_text}"
            + (f": {review_reason}" if review_reason else "")
            + f" <{link}|request {request_id}>"
        )
    fields = [
        {"type": "mrkdwn", "text": f"*User*\n{user}"},
        {"type": "mrkdwn", "text": f"*Roles*\n{roles_text}"},
        {"type": "mrkdwn", "text": f"*Reason*\n{reason or '-'}"},
    ]
    if reviewer:
        fields.append({"type": "mrkdwn", "text": f"*Reviewer*\n{reviewer}"})
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": fields},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open request"},
                        "url": link,
                    }
                ],
            },
        ],
    }


async def post_webhook(url: str, payload: dict[str, Any]) -> bool:
    """POST the JSON; True when the webhook answered 2xx."""
    try:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
            resp = await client.post(url, json=payload)
    except httpx.HTTPError as e:
        log.warning("request webhook %s failed: %s", url, e)
        return False
    if resp.status_code // 100 != 2:
        log.warning("request webhook %s answered %d: %s", url, resp.status_code, resp.text[:200])
        return False
    return True
