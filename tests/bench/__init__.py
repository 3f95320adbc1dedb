"""Benchmarks: each `bench_<area>.py` has a `main()` that prints one JSON object, figures
measured against a baseline in the same run.

Its `summary` (rows made by `target` and `figure`) is the headline `auditcast bench`
shows as a table: the ratio or added cost, the issue's target and whether this run met it.
"""

from __future__ import annotations

import operator
from typing import Any, Final

_OPS: Final = {"<": operator.lt, "<=": operator.le, ">=": operator.ge, ">": operator.gt}


def target(name: str, value: float | None, op: str, bound: float, unit: str = "") -> dict[str, Any]:
    """A headline figure with its target (`op` one of < <= >= >): met or not in this run
    (None when the figure is missing, e.g. that part did not run)."""
    return {
        "figure": name,
        "value": value,
        "unit": unit,
        "target": f"{op} {bound:g}{' ' + unit if unit else ''}",
        "met": None if value is None else bool(_OPS[op](value, bound)),
    }


def figure(name: str, value: float | None, unit: str = "") -> dict[str, Any]:
    """A headline figure without a target of its own."""
    return {"figure": name, "value": value, "unit": unit, "target": None, "met": None}
