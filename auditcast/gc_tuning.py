"""Garbage-collector settings for the processes that parse Kafka polls in bulk.

A poll of 5,000 records becomes ~50,000 young containers (dicts, lists, tuples, records)
that never form a cycle and die together when the batch is written. CPython's default
collects young objects every 700 allocations, so each one was scanned many times while
its batch was alive, and promoted to be scanned again by the older generations. Every
200,000 allocations (a few polls), most of a poll is already gone when the collector
looks. Measured on the store: at 20,000 the collector's functions were ~7 % of its CPU
in a perf profile of bench_pipeline, and A/B runs of that bench put the store at 31-34
instead of 36 µs per event. What start-up made (Faust, pydantic schemas, aiokafka) is
frozen out of every collection.
"""

from __future__ import annotations

import gc
from typing import Final

THRESHOLDS: Final = (200_000, 10, 10)


def for_batches() -> None:
    """Freeze what exists now and collect young objects every 200,000 allocations."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
