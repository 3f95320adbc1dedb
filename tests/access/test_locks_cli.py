"""`auditcast lock` and `/v1/locks` end to end: users signed in through the real OpenID
provider, the real `auditcast api` process, the broker, and a LockView in another
process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.access._lock_fixtures import Watcher

pytestmark = pytest.mark.timeout(180)


def test_admin_locks_with_the_cli_a_view_elsewhere_sees_it_and_the_user_is_refused(
    access_api: Any,
) -> None:
    alice = access_api.login("alice")  # admins -> admin
    bob = access_api.login("bob")
    watcher = Watcher("view", access_api.settings)
    try:
        watcher.wait_ready()
        made = alice.run(
            "lock", "--user", "bob", "--ttl", "5m", "--message", "incident 42",
            "--name", "incident-42",
        )  # fmt: skip
        assert made.stdout.startswith("lock incident-42 created: user=bob (0h04m5")
        watcher.read_until("incident-42", 10.0)  # another process's LockView has it
    finally:
        watcher.stop()
    [lock] = alice.json("lock", "ls")
    assert lock["name"] == "incident-42" and lock["targets"] == {"user": "bob"}
    assert lock["created_by"] == "alice" and lock["message"] == "incident 42"
    assert lock["mode"] == "best_effort"
    table = alice.run("lock", "ls").stdout
    assert "incident-42" in table and "user=bob" in table and "incident 42" in table

    # bob's session is refused while the lock is in force, with its message
    refused = bob.run("kube", "ls", check=False)
    assert refused.returncode == 7 and "incident 42" in refused.stderr
    removed = alice.run("lock", "rm", "incident-42")
    assert removed.stdout.strip() == "lock incident-42 removed (user=bob)"
    assert alice.run("lock", "ls").stdout.strip() == "no locks"
    assert [c["name"] for c in bob.json("kube", "ls")] == ["staging-1", "staging-2"]

    # what goes wrong is said plainly
    no_target = alice.run("lock", "--ttl", "5m", check=False)
    assert no_target.returncode == 2
    assert "name at least one target: --user, --role" in no_target.stderr
    bad_ttl = alice.run("lock", "--user", "bob", "--ttl", "soon", check=False)
    assert bad_ttl.returncode == 2 and "'soon' is not a duration" in bad_ttl.stderr
    unknown = alice.run("lock", "rm", "nope", check=False)
    assert unknown.returncode == 6
    assert "error: no lock named nope" in unknown.stderr
    assert "hint: list the locks with `auditcast lock ls`" in unknown.stderr

    carol = access_api.login("carol")  # contractors -> contractor: not an admin
    for args in (("lock", "--user", "bob"), ("lock", "ls"), ("lock", "rm", "x")):
        refused = carol.run(*args, check=False)
        assert refused.returncode == 7, args
        assert "error: carol needs an admin role for this" in refused.stderr


async def test_lock_posted_to_the_api_reaches_another_process_within_100ms(
    access_api: Any,
) -> None:
    alice = await asyncio.to_thread(access_api.login, "alice")
    token = json.loads((alice.home / "profile.json").read_text())["token"]
    watcher = Watcher("view", access_api.settings)
    latencies = []
    try:
        await asyncio.to_thread(watcher.wait_ready)
        async with httpx.AsyncClient(
            base_url=f"{access_api.url}/v1", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            for i in range(10):
                t0 = time.time()
                resp = await api.post(
                    "/locks",
                    json={"targets": {"user": f"u{i}", "cluster": "prod-1"}, "name": f"p{i}"},
                )
                assert resp.status_code == 201, resp.text
                assert resp.json()["published"] is True
                seen = await asyncio.to_thread(watcher.read_until, f"p{i}", 10.0)
                latencies.append(seen - t0)
            # DELETE by query works as well as by path
            resp = await api.delete("/locks", params={"name": "p0"})
            assert resp.status_code == 200 and resp.json()["name"] == "p0"
            for body in (
                {"targets": {}},
                {"targets": {"user": "a"}, "mode": "loose"},
                {"targets": {"user": "a"}, "ttl": -5},
                {"targets": {"user": "a"}, "name": "bad name"},
                {"targets": {"host": "a"}},
            ):
                resp = await api.post("/locks", json=body)
                assert resp.status_code == 422, (body, resp.text)
            listed = orjson.loads((await api.get("/locks")).content)
            assert sorted(lk["name"] for lk in listed) == [f"p{i}" for i in range(1, 10)]
    finally:
        watcher.stop()
    # every lock arrived (read_until raises otherwise); how fast is for
    # tests/bench/bench_locks.py (p50/p99 over 200 locks), not a timed assert here
    assert len(latencies) == 10
