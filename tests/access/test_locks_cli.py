"""`auditcast lock` and `/v1/locks` end to end: the real CLI, the API, the broker and a
LockView in another process."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from auditcast.settings import Settings
from tests.access._lock_fixtures import AUDITCAST, ApiServer, Watcher, access_app

pytestmark = pytest.mark.timeout(120)


ADMIN = "test-identity root admin"
CONTRACTOR = "test-identity carol contractor"


@pytest.fixture
def api(make_settings: Callable[..., Settings]) -> Iterator[tuple[ApiServer, Settings]]:
    settings = make_settings()
    server = ApiServer(access_app(settings)).start()
    yield server, settings
    server.stop()


def run_cli(
    api: tuple[ApiServer, Settings],
    cli_env: Callable[[Settings], dict[str, str]],
    *args: str,
    token: str = ADMIN,
) -> subprocess.CompletedProcess[str]:
    server, settings = api
    env = {**cli_env(settings), "AUDITCAST_API_URL": server.url, "AUDITCAST_TOKEN": token}
    return subprocess.run([AUDITCAST, *args], env=env, capture_output=True, text=True, timeout=60)


def test_lock_created_with_the_cli_is_listed_and_removed(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    made = run_cli(
        api,
        cli_env,
        "lock",
        "--user",
        "alice",
        "--ttl",
        "5m",
        "--message",
        "incident 42",
        "--name",
        "incident-42",
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("lock incident-42 created: user=alice (0h04m5")
    listed = run_cli(api, cli_env, "lock", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    [lock] = orjson.loads(listed.stdout)
    assert lock["name"] == "incident-42"
    assert lock["targets"] == {"user": "alice"}
    assert lock["created_by"] == "root" and lock["message"] == "incident 42"
    table = run_cli(api, cli_env, "lock", "ls")
    assert "incident-42" in table.stdout and "user=alice" in table.stdout
    removed = run_cli(api, cli_env, "lock", "rm", "incident-42")
    assert removed.returncode == 0, removed.stderr
    assert run_cli(api, cli_env, "lock", "ls").stdout.strip() == "no locks"


def test_lock_without_a_target_is_a_usage_error(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    res = run_cli(api, cli_env, "lock", "--ttl", "5m")
    assert res.returncode == 2
    assert "name at least one target: --user, --role" in res.stderr


def test_only_admins_may_lock(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    res = run_cli(api, cli_env, "lock", "--user", "alice", token=CONTRACTOR)
    assert res.returncode == 7
    assert "error: carol needs an admin role for this" in res.stderr
    res = run_cli(api, cli_env, "lock", "ls", token=CONTRACTOR)
    assert res.returncode == 7


def test_removing_an_unknown_lock_says_so(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    res = run_cli(api, cli_env, "lock", "rm", "nope")
    assert res.returncode == 6
    assert "error: no lock named nope" in res.stderr
    assert "hint: list the locks with `auditcast lock ls`" in res.stderr


def test_bad_ttl_is_refused_before_calling_the_api(
    api: tuple[ApiServer, Settings], cli_env: Callable[[Settings], dict[str, str]]
) -> None:
    res = run_cli(api, cli_env, "lock", "--user", "a", "--ttl", "soon")
    assert res.returncode == 2
    assert "'soon' is not a duration" in res.stderr


async def test_lock_posted_to_the_api_reaches_another_process_within_100ms(
    api: tuple[ApiServer, Settings],
) -> None:
    server, settings = api
    watcher = Watcher("view", settings)
    try:
        await asyncio.to_thread(watcher.wait_ready)
        latencies = []
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}) as client:
            for i in range(10):
                t0 = time.time()
                resp = await client.post(
                    f"{server.url}/v1/locks",
                    json={"targets": {"user": f"u{i}", "cluster": "prod"}, "name": f"p{i}"},
                )
                assert resp.status_code == 201, resp.text
                assert resp.json()["published"] is True
                seen = await asyncio.to_thread(watcher.read_until, f"p{i}", 10.0)
                latencies.append(seen - t0)
            # REST delete by query works as well as by path
            resp = await client.delete(f"{server.url}/v1/locks", params={"name": "p0"})
            assert resp.status_code == 200 and resp.json()["name"] == "p0"
    finally:
        watcher.stop()
    assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies


async def test_invalid_lock_bodies_are_refused_with_422(api: tuple[ApiServer, Settings]) -> None:
    server, _ = api
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        for body in (
            {"targets": {}},
            {"targets": {"user": "a"}, "mode": "loose"},
            {"targets": {"user": "a"}, "ttl": -5},
            {"targets": {"user": "a"}, "name": "bad name"},
        ):
            resp = await client.post(f"{server.url}/v1/locks", json=body)
            assert resp.status_code == 422, (body, resp.text)
