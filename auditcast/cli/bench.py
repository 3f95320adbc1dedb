"""`auditcast bench`: run the benchmarks in tests/bench and report ratios against baselines.

Each `tests/bench/bench_<area>.py` has a `main()` that measures auditcast against a
baseline in the same run and prints one JSON object (on one line or indented), whose
`summary` rows (`tests/bench/__init__.py`) are shown as a table. Benchmarks run one at a
time, in their own process (so one's threads or brokers never skew another's figures).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from auditcast.cli._util import json_option, print_json

BENCH_TIMEOUT_S = 30 * 60


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last JSON object in a benchmark's output, printed on one line or indented over
    many (what comes before it, log lines say, is skipped); None if there is none."""
    lines = text.splitlines()
    decoder = json.JSONDecoder()
    for i in range(len(lines) - 1, -1, -1):
        if not lines[i].startswith("{"):  # an object's first line (indented ones nest)
            continue
        try:  # the object from here; whatever follows it is not read
            doc, _ = decoder.raw_decode("\n".join(lines[i:]))
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, value, target, verdict) for each headline row of each result,
    or one row saying why a benchmark gave none."""
    out = []
    for name, res in results.items():
        if "error" in res:
            out.append((name, "failed", res["error"], "", "error"))
            continue
        rows = res.get("summary") or []
        if not rows:
            out.append((name, "(no summary: see --json)", "", "", ""))
        for r in rows:
            value, unit = r.get("value"), r.get("unit")
            shown = "-" if value is None else _number(value) + (f" {unit}" if unit else "")
            verdict = {True: "met", False: "MISSED", None: ""}[r.get("met")]
            out.append((name, r["figure"], shown, r.get("target") or "", verdict))
    return out


def _number(value: float) -> str:
    """27,501 / 312 / 21.9 / 0.239: whole numbers from 100 up, else 3 significant digits."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def bench_dir() -> Path:
    """tests/bench in the source checkout this install came from, or under the cwd."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "tests" / "bench"
        if candidate.is_dir():
            return candidate
    raise click.ClickException(
        "tests/bench not found: run `auditcast bench` from an auditcast source checkout"
    )


@click.command()
@click.argument("names", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), help="Also write the results here.")
@json_option
def bench(names: tuple[str, ...], out: Path | None, as_json: bool) -> None:
    """Run benchmarks (all, or the NAMES given, e.g. `auditcast bench pipeline kube`).

    Each prints its figures next to the baseline measured in the same run.
    """
    d = bench_dir()
    files = sorted(d.glob("bench_*.py"))
    if names:
        files = [f for f in files if f.stem.removeprefix("bench_") in names]
        if not files:
            raise click.ClickException(f"no benchmark named {', '.join(names)} in {d}")
    root = d.parent.parent
    results: dict[str, Any] = {}
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarks", total=len(files))
        for f in files:
            name = f.stem.removeprefix("bench_")
            progress.update(task, description=f"bench {name}")
            t0 = time.monotonic()
            module = f"tests.bench.{f.stem}"
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", f"import {module} as m; m.main()"],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    timeout=BENCH_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                results[name] = {"error": f"timed out after {BENCH_TIMEOUT_S}s"}
                progress.advance(task)
                continue
            doc = last_json_object(proc.stdout) if proc.returncode == 0 else None
            if doc is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                what = f"exit {proc.returncode}" if proc.returncode else "printed no JSON object"
                results[name] = {"error": what, "tail": tail}
            else:
                results[name] = doc
            console.log(f"{name}: done in {time.monotonic() - t0:.1f}s")
            progress.advance(task)
    if out:
        out.write_text(json.dumps(results, indent=2))
    if as_json:
        print_json(results)
    else:
        table = Table("benchmark", "figure", "this run", "target", "result")
        for row in summary_rows(results):
            table.add_row(*row)
        # piped (a CI log, a file): wide enough that figure names do not wrap
        Console(width=None if sys.stdout.isatty() else 140).print(table)
        console.print("every figure and its baseline: --json, or --out FILE")
    failed = [name for name, res in results.items() if "error" in res]
    if failed:
        raise click.ClickException(f"benchmark(s) failed: {', '.join(failed)}")
