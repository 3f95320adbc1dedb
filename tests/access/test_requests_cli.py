"""`auditcast request` end to end: the real CLI, the served API, the broker, a webhook."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from auditcast.settings import Settings
from tests.access._lock_fixtures import AUDITCAST, ApiServer, access_app

pytestmark = pytest.mark.timeout(120)

ADMIN = "test-identity alice admin"
CAROL = "test-identity carol contractor"
DAVE = "test-identity dave contractor"


class SlackHook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        SlackHook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A Slack incoming webhook stand-in on a free port (stdlib HTTP server, real HTTP)."""
    SlackHook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlackHook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/x", SlackHook.received
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(
    make_settings: Callable[..., Settings], webhook: tuple[str, list[dict[str, Any]]]
) -> Iterator[tuple[ApiServer, Settings]]:
    settings = make_settings(request_webhook_url=webhook[0])
    server = ApiServer(access_app(settings)).start()
    yield server, settings
    server.stop()


def cli(
    api: tuple[ApiServer, Settings],
    cli_env: Callable[[Settings], dict[str, str]],
    token: str,
    *args: str,
) -> subprocess.CompletedProcess[str]:
    server, settings = api
    env = {**cli_env(settings), "AUDITCAST_API_URL": server.url, "AUDITCAST_TOKEN": token}
    return subprocess.run([AUDITCAST, *args], env=env, capture_output=True, text=True, timeout=60)


def test_contractor_requests_devrole_admin_approves_with_notifications(
    api: tuple[ApiServer, Settings],
    cli_env: Callable[[Settings], dict[str, str]],
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    server, _ = api
    made = cli(
        api,
        cli_env,
        CAROL,
        "request",
        "create",
        "--roles",
        "devrole",
        "--reason",
        "fix staging",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    req = orjson.loads(made.stdout)
    assert (req["user"], req["roles"], req["state"]) == ("carol", ["devrole"], "pending")
    link = f"{server.url}/requests/{req['id']}"
    assert webhook[1][0]["text"].startswith("carol requested devrole: fix staging")
    assert link in webhook[1][0]["text"]

    # another contractor neither sees nor may approve it
    assert orjson.loads(cli(api, cli_env, DAVE, "request", "ls", "--json").stdout) == []
    denied = cli(api, cli_env, DAVE, "request", "review", req["id"], "--approve")
    assert denied.returncode == 7
    assert "may not review requests for devrole" in denied.stderr
    # nor may the requester
    own = cli(api, cli_env, CAROL, "request", "review", req["id"], "--approve")
    assert own.returncode == 7 and "your own access request" in own.stderr

    listed = cli(api, cli_env, ADMIN, "request", "ls")
    assert req["id"] in listed.stdout and "pending" in listed.stdout
    ok = cli(api, cli_env, ADMIN, "request", "review", req["id"], "--approve", "--reason", "go")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"request {req['id']} approved"
    assert webhook[1][1]["text"].startswith("alice approved carol's request for devrole: go")

    again = cli(api, cli_env, ADMIN, "request", "review", req["id"], "--deny")
    assert again.returncode == 8 and "is approved, not pending" in again.stderr
    mine = orjson.loads(cli(api, cli_env, CAROL, "request", "ls", "--json").stdout)
    assert mine[0]["state"] == "approved" and mine[0]["reviewer"] == "alice"


def test_requesting_a_role_not_allowed_is_refused(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    res = cli(api, cli_env, CAROL, "request", "create", "--roles", "admin", "--reason", "x")
    assert res.returncode == 7
    assert "may not request admin" in res.stderr
    res = cli(api, cli_env, CAROL, "request", "create", "--roles", "nosuch", "--reason", "x")
    assert res.returncode == 6 and "no role named nosuch" in res.stderr


def test_review_needs_approve_or_deny(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    res = cli(api, cli_env, ADMIN, "request", "review", "some-id")
    assert res.returncode == 2 and "say --approve or --deny" in res.stderr
