"""Event ids: valid UUIDv7s that carry the time they were made and sort in that order."""

from __future__ import annotations

import multiprocessing
import time
import uuid

from auditcast.events import new_event_id
from auditcast.ids import id_time_ms, stamp_of, uuid7_from


def test_an_event_id_is_an_rfc_9562_version_7_uuid() -> None:
    text = new_event_id()
    parsed = uuid.UUID(text)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == text  # the canonical lower-case form


def test_ids_made_in_a_burst_keep_to_the_clock() -> None:
    """20,000 ids in a tight loop: each carries the millisecond it was made in (the
    previous uuid6.uuid7 added a millisecond per id within the same one, so a burst like
    this ran seconds ahead of the clock)."""
    for _ in range(20_000):
        before = time.time_ns() // 1_000_000
        made = id_time_ms(new_event_id())
        after = time.time_ns() // 1_000_000
        assert before <= made <= after


def test_ids_of_one_process_sort_in_the_order_they_were_made() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_two_ids_in_the_same_instant_still_differ_and_sort() -> None:
    stamp = stamp_of(1_764_400_000_123_456_789)
    a, b = uuid7_from(stamp, 5), uuid7_from(stamp + 1, 3)
    assert a < b
    assert id_time_ms(a) == id_time_ms(b) == 1_764_400_000_123
    assert uuid.UUID(a).version == uuid.UUID(b).version == 7


def test_the_random_part_fills_the_low_62_bits_only() -> None:
    ones = uuid.UUID(uuid7_from(0, (1 << 64) - 1))
    assert ones.version == 7 and ones.variant == uuid.RFC_4122
    assert ones.int & ((1 << 62) - 1) == (1 << 62) - 1


def _ids(n: int) -> list[str]:
    return [new_event_id() for _ in range(n)]


def test_forked_processes_make_different_ids() -> None:
    """A collector's spool child is forked: the same start state must not give the same ids."""
    new_event_id()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        a, b = pool.map(_ids, [2000, 2000])
    assert not set(a) & set(b)
