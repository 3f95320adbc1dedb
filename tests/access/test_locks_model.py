"""Lock matching and the `locks` record format, as plain data (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from auditcast.access.lock_model import (
    Lock,
    LockIndex,
    LockSubject,
    LockTargets,
    decode_lock,
    new_lock,
)
from auditcast.errors import MalformedMessage

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def lock(ttl: timedelta | None = timedelta(minutes=5), **targets: str) -> Lock:
    return new_lock(LockTargets(**targets), ttl=ttl, created_by="admin", now=NOW)


def test_user_lock_matches_that_user_anywhere() -> None:
    lk = lock(user="alice")
    assert lk.matches(LockSubject.of(user="alice", cluster="staging-1"), NOW)
    assert lk.matches(LockSubject.of(user="alice", node="node1", login="root"), NOW)
    assert not lk.matches(LockSubject.of(user="bob"), NOW)


def test_lock_with_several_targets_needs_all_of_them() -> None:
    lk = lock(user="alice", cluster="prod")
    assert lk.matches(LockSubject.of(user="alice", cluster="prod"), NOW)
    assert not lk.matches(LockSubject.of(user="alice", cluster="staging"), NOW)
    assert not lk.matches(LockSubject.of(user="bob", cluster="prod"), NOW)
    # a subject that does not say which cluster is not covered by a cluster lock
    assert not lk.matches(LockSubject.of(user="alice"), NOW)


def test_role_and_access_request_locks_match_any_of_the_subjects_values() -> None:
    by_role = lock(role="devrole")
    assert by_role.matches(LockSubject.of(user="carol", roles=["contractor", "devrole"]), NOW)
    assert not by_role.matches(LockSubject.of(user="carol", roles=["contractor"]), NOW)
    by_request = lock(access_request="req-1")
    assert by_request.matches(LockSubject.of(user="carol", access_requests=["req-1"]), NOW)


def test_expired_lock_does_not_match() -> None:
    lk = lock(ttl=timedelta(minutes=5), user="alice")
    subject = LockSubject.of(user="alice")
    assert lk.matches(subject, NOW + timedelta(minutes=4, seconds=59))
    assert not lk.matches(subject, NOW + timedelta(minutes=5))


def test_lock_without_ttl_never_expires() -> None:
    lk = lock(ttl=None, user="alice")
    assert lk.matches(LockSubject.of(user="alice"), NOW + timedelta(days=3650))


def test_lock_without_any_target_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least one target"):
        LockTargets()


def test_bad_lock_names_and_ttls_are_refused() -> None:
    with pytest.raises(ValidationError, match="lock name"):
        new_lock(LockTargets(user="a"), ttl=None, name="has space")
    with pytest.raises(ValueError, match="positive"):
        new_lock(LockTargets(user="a"), ttl=timedelta(0))


def test_record_round_trips_in_the_seams_format() -> None:
    lk = new_lock(
        LockTargets(user="alice", cluster="prod"),
        ttl=timedelta(minutes=5),
        message="incident 42",
        mode="strict",
        created_by="admin",
        name="lock-1",
        now=NOW,
    )
    raw = lk.to_record()
    doc = orjson.loads(raw)
    assert doc == {
        "name": "lock-1",
        "targets": {"user": "alice", "cluster": "prod"},
        "message": "incident 42",
        "mode": "strict",
        "created": "2026-11-28T12:00:00.000000Z",
        "created_by": "admin",
        "expires": "2026-11-28T12:05:00.000000Z",
    }
    assert decode_lock(raw) == lk


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"name": "x", "targets": {}}', "at least one target"),
        (b'{"name": "x", "targets": {"user": "a"}, "mode": "loose"}', "mode"),
        (b'{"name": "x", "targets": {"host": "a"}}', "targets.host"),
    ],
)
def test_malformed_lock_records_say_what_is_wrong(raw: bytes, error: str) -> None:
    with pytest.raises(MalformedMessage, match=error):
        decode_lock(raw)


def test_index_finds_the_lock_and_forgets_removed_ones() -> None:
    index = LockIndex()
    a = lock(user="alice")
    b = lock(role="devrole", cluster="prod")
    index.put(a)
    index.put(b)
    assert index.match(LockSubject.of(user="alice"), NOW) == a
    assert index.match(LockSubject.of(user="bob", roles=["devrole"], cluster="prod"), NOW) == b
    assert index.match(LockSubject.of(user="bob", roles=["devrole"], cluster="dev"), NOW) is None
    index.remove(a.name)
    assert index.match(LockSubject.of(user="alice"), NOW) is None
    assert len(index) == 1


def test_index_over_ten_thousand_locks_answers_like_a_scan_of_every_lock() -> None:
    """The index must find exactly what checking every lock would. How much faster it is
    (the microseconds the gateways rely on) is measured by tests/bench/bench_locks.py."""
    index = LockIndex()
    for i in range(10_000):
        index.put(lock(user=f"user{i}", cluster=f"c{i % 50}"))
    index.put(lock(role="devrole", cluster="c1", node="n2"))
    all_locks = list(index.locks.values())

    def scan(subject: LockSubject) -> Lock | None:
        return next((lk for lk in all_locks if lk.matches(subject, NOW)), None)

    subjects = {
        "user hit": LockSubject.of(user="user9999", roles=["devrole", "auditor"], cluster="c49"),
        "user on another cluster": LockSubject.of(user="user9999", cluster="c1"),
        "role+cluster+node hit": LockSubject.of(
            user="x", roles=["devrole"], cluster="c1", node="n2"
        ),
        "role miss by node": LockSubject.of(
            user="nobody", roles=["devrole"], cluster="c1", node="n1"
        ),
    }
    found = {name: index.match(subject, NOW) for name, subject in subjects.items()}
    assert found == {name: scan(subject) for name, subject in subjects.items()}
    assert found["user hit"] is not None and found["role+cluster+node hit"] is not None
    assert found["role miss by node"] is None
