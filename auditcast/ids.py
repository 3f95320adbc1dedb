"""Event ids: UUIDv7 (RFC 9562) that keep to the clock and sort in the order made.

The first 48 bits are the Unix time in ms, the next 12 (after the version) the fraction
of that millisecond (RFC 9562 §6.2, method 3: ~244 ns steps), the last 62 random. In one
process the ids only grow: an id made in the same 244 ns step as the previous one takes
the next step. `uuid6.uuid7`, used before, added a whole millisecond instead, so at
thousands of events per second its ids ran seconds, then minutes, ahead of the time
they were made and stopped sorting with other processes' ids.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Final

_FRACTION_STEPS: Final = 4096  # the 12 bits after the version
_VERSION_7: Final = 0x7 << 76
_VARIANT_RFC: Final = 0b10 << 62
_RANDOM_MASK: Final = (1 << 62) - 1

_lock = threading.Lock()
_last = 0  # the last id's 60-bit stamp: ms << 12 | fraction


def stamp_of(ns: int) -> int:
    """The 60-bit time stamp of an id made at `ns` (ns since the epoch)."""
    ms, rest = divmod(ns, 1_000_000)
    return ms << 12 | rest * _FRACTION_STEPS // 1_000_000


def uuid7_from(stamp: int, random_bits: int) -> str:
    """The id's text for a 60-bit stamp and 62 random bits."""
    value = (
        (stamp >> 12) << 80
        | _VERSION_7
        | (stamp & 0xFFF) << 64
        | _VARIANT_RFC
        | (random_bits & _RANDOM_MASK)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7() -> str:
    """A new id: later than every id this process made before, random in its last 62 bits."""
    global _last
    stamp = stamp_of(time.time_ns())
    with _lock:
        if stamp <= _last:
            stamp = _last + 1
        _last = stamp
    return uuid7_from(stamp, int.from_bytes(os.urandom(8)))


def id_time_ms(event_id: str) -> int:
    """The Unix time in ms an id was made at."""
    return int(event_id.replace("-", "")[:12], 16)
