"""`auditcast request` end to end: users signed in through the real OpenID provider, the
real `auditcast api` process with a request webhook, the broker."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from auditcast.broker import EmbeddedBroker
from tests.access._lock_fixtures import access_api_with
from tests.helpers.topics import events_on

pytestmark = pytest.mark.timeout(180)


class SlackHook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.headers["Content-Type"] == "application/json"
        SlackHook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A Slack incoming-webhook stand-in: a real HTTP server on a free loopback port."""
    SlackHook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlackHook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/x", SlackHook.received
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(
    broker: EmbeddedBroker,
    idp: Any,
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
) -> Iterator[Any]:
    with access_api_with(broker, idp, tmp_path, AUDITCAST_REQUEST_WEBHOOK_URL=webhook[0]) as api:
        yield api


async def access_request_events(settings: Any) -> list[dict[str, Any]]:
    return [e for e in await events_on(settings) if e["type"].startswith("access_request.")]


def test_contractor_requests_devrole_only_a_reviewer_approves_and_slack_hears_it(
    api: Any, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    carol = api.login("carol")  # contractors -> contractor (allow_request: devrole)
    dave = api.login("dave")  # auditors -> auditor (may neither request nor review)
    alice = api.login("alice")  # admins -> admin (review: *)

    req = carol.json("request", "create", "--roles", "devrole", "--reason", "fix staging")
    assert (req["user"], req["roles"], req["state"]) == ("carol", ["devrole"], "pending")
    link = f"{api.url}/requests/{req['id']}"
    created = webhook[1][0]
    assert created["text"].startswith("carol requested devrole: fix staging")
    assert link in created["text"]
    assert created["blocks"][-1]["elements"][0]["url"] == link

    assert dave.json("request", "ls") == []
    denied = dave.run("request", "review", req["id"], "--approve", check=False)
    assert denied.returncode == 7 and "may not review requests for devrole" in denied.stderr
    own = carol.run("request", "review", req["id"], "--approve", check=False)
    assert own.returncode == 7 and "your own access request" in own.stderr

    listed = alice.run("request", "ls").stdout
    assert req["id"] in listed and "pending" in listed
    ok = alice.run("request", "review", req["id"], "--approve", "--reason", "go")
    assert ok.stdout.strip() == f"request {req['id']} approved"
    assert webhook[1][1]["text"].startswith("alice approved carol's request for devrole: go")
    again = alice.run("request", "review", req["id"], "--deny", check=False)
    assert again.returncode == 8 and "is approved, not pending" in again.stderr
    [mine] = carol.json("request", "ls")
    assert mine["state"] == "approved" and mine["reviewer"] == "alice"
    assert mine["access_expires"] is not None

    # what may not be asked for is refused with the reason
    admin = carol.run("request", "create", "--roles", "admin", "--reason", "x", check=False)
    assert admin.returncode == 7 and "may not request admin" in admin.stderr
    nosuch = carol.run("request", "create", "--roles", "nosuch", "--reason", "x", check=False)
    assert nosuch.returncode == 6 and "no role named nosuch" in nosuch.stderr
    neither = alice.run("request", "review", req["id"], check=False)
    assert neither.returncode == 2 and "say --approve or --deny" in neither.stderr

    events = asyncio.run(access_request_events(api.settings))
    assert [(e["type"], e["user"], e.get("state")) for e in events] == [
        ("access_request.created", "carol", None),
        ("access_request.reviewed", "alice", "approved"),
    ]
