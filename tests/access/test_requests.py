"""Access requests: who may ask, who may approve, the TTL, events and the Slack webhook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from aiohttp import web

from auditcast.access.requests import (
    PENDING_TTL,
    AccessRequest,
    RequestService,
    RequestStateError,
    access_ttl,
    approved_roles,
    check_can_request,
    check_can_review,
    effective_state,
)
from auditcast.access.roles import EXAMPLE_ROLES, parse_roles
from auditcast.errors import AccessDenied, NotFound
from auditcast.settings import Settings
from tests.helpers.topics import events_on

# The shipped example roles (admin reviews everything, contractor may request devrole).
POLICIES = parse_roles(yaml.safe_load(EXAMPLE_ROLES.read_text())).roles


def test_contractor_may_request_devrole_but_not_admin() -> None:
    check_can_request(["contractor"], ["devrole"], POLICIES)
    with pytest.raises(AccessDenied, match="may not request admin"):
        check_can_request(["contractor"], ["admin"], POLICIES)
    with pytest.raises(AccessDenied, match=r"\(auditor\) may not request devrole"):
        check_can_request(["auditor"], ["devrole"], POLICIES)
    with pytest.raises(NotFound, match="no role named root"):
        check_can_request(["contractor"], ["root"], POLICIES)


def pending(user: str = "carol", roles: tuple[str, ...] = ("devrole",)) -> AccessRequest:
    return AccessRequest(user=user, roles=list(roles), reason="fix staging", access_ttl_s=3600)


def test_only_reviewers_of_the_role_may_review_and_never_their_own() -> None:
    req = pending()
    check_can_review("alice", ["admin"], req, POLICIES)
    with pytest.raises(AccessDenied, match="may not review requests for devrole"):
        check_can_review("dave", ["contractor"], req, POLICIES)
    with pytest.raises(AccessDenied, match="your own"):
        check_can_review("carol", ["admin"], req, POLICIES)


def test_access_ttl_is_capped_by_the_role() -> None:
    assert access_ttl(["devrole"], POLICIES, None) == timedelta(hours=1)
    assert access_ttl(["devrole"], POLICIES, timedelta(minutes=10)) == timedelta(minutes=10)
    assert access_ttl(["devrole"], POLICIES, timedelta(hours=5)) == timedelta(hours=1)


def test_requests_expire_when_pending_too_long_or_past_their_access_ttl() -> None:
    req = pending()
    assert effective_state(req, req.created) == "pending"
    assert effective_state(req, req.created + PENDING_TTL) == "expired"
    req.state = "approved"
    req.access_expires = req.created + timedelta(hours=1)
    assert effective_state(req, req.created + timedelta(minutes=59)) == "approved"
    assert effective_state(req, req.created + timedelta(hours=1)) == "expired"


class Webhook:
    """A tiny aiohttp server standing in for a Slack incoming webhook."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue(100)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        await self.received.put(await request.json())
        return web.Response(text="ok")


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hooks/T000/B000", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hooks/T000/B000"
    yield hook
    await runner.cleanup()


@pytest.fixture
def base_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


async def test_request_create_review_flow_with_events_and_webhook(
    base_settings: Settings, webhook: Webhook
) -> None:
    settings = base_settings.model_copy(update={"request_webhook_url": webhook.url})
    service = RequestService(settings, lambda: POLICIES)
    api = "http://auditcast.example:3080"
    try:
        req = await service.create(
            "carol", ["contractor"], ["devrole"], "debug staging", api_url=api
        )
        created = await asyncio.wait_for(webhook.received.get(), 5)
        assert f"<{api}/requests/{req.id}|" in created["text"]
        assert "carol requested devrole: debug staging" in created["text"]
        assert created["blocks"][-1]["elements"][0]["url"] == f"{api}/requests/{req.id}"

        # the contractor sees their request; another contractor cannot approve it
        assert [r.id for r in await service.visible("carol", ["contractor"])] == [req.id]
        assert await service.visible("dave", ["contractor"]) == []
        with pytest.raises(AccessDenied):
            await service.review(req.id, "dave", ["contractor"], approve=True)
        with pytest.raises(AccessDenied, match="your own"):
            await service.review(req.id, "carol", ["contractor", "admin"], approve=True)
        with pytest.raises(RequestStateError, match="pending"):
            approved_roles(req.id, "carol", settings=settings)

        # an admin sees it and approves it
        assert [r.id for r in await service.visible("alice", ["admin"])] == [req.id]
        done = await service.review(req.id, "alice", ["admin"], approve=True, reason="ok")
        assert done.state == "approved"
        reviewed = await asyncio.wait_for(webhook.received.get(), 5)
        assert reviewed["text"].startswith("alice approved carol's request for devrole: ok")

        roles, expires = approved_roles(req.id, "carol", settings=settings)
        assert roles == ["devrole"]
        assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
        with pytest.raises(AccessDenied, match="another user"):
            approved_roles(req.id, "dave", settings=settings)
        # after the access TTL the request no longer grants
        with pytest.raises(RequestStateError, match="expired"):
            approved_roles(req.id, "carol", settings=settings, now=expires)
        with pytest.raises(RequestStateError, match="approved, not pending"):
            await service.review(req.id, "alice", ["admin"], approve=False)
    finally:
        await service.close()
    events = [e for e in await events_on(settings) if e["type"].startswith("access_request.")]
    assert [(e["type"], e["user"]) for e in events] == [
        ("access_request.created", "carol"),
        ("access_request.reviewed", "alice"),
    ]
    assert events[0]["requested_roles"] == ["devrole"]
    assert events[1]["state"] == "approved" and events[1]["requester"] == "carol"


async def test_denied_request_grants_nothing(base_settings: Settings) -> None:
    service = RequestService(base_settings, lambda: POLICIES)
    try:
        req = await service.create("carol", ["contractor"], ["devrole"], "please")
        await service.review(req.id, "alice", ["admin"], approve=False, reason="not today")
        with pytest.raises(RequestStateError, match="denied"):
            approved_roles(req.id, "carol", settings=base_settings)
        with pytest.raises(NotFound):
            approved_roles("no-such-id", "carol", settings=base_settings)
    finally:
        await service.close()
