"""`auditcast bench`: run the benchmarks in tests/bench and report ratios against baselines.

Each `tests/bench/bench_<area>.py` has a `main()` that measures auditcast against a
baseline in the same run and prints one JSON object. Benchmarks run one at a time, in
their own process (so one's threads or brokers never skew another's figures).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from auditcast.cli._util import json_option, print_json

BENCH_TIMEOUT_S = 30 * 60


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
    results: dict[str, object] = {}
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
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                results[name] = {"error": f"exit {proc.returncode}", "tail": tail}
            else:
                try:
                    results[name] = json.loads(lines[-1])
                except ValueError:
                    results[name] = {"error": "last line was not JSON", "tail": lines[-1:]}
            console.log(f"{name}: done in {time.monotonic() - t0:.1f}s")
            progress.advance(task)
    if out:
        out.write_text(json.dumps(results, indent=2))
    if as_json:
        print_json(results)
        return
    for name, res in results.items():
        console.print(f"[bold]{name}[/bold]")
        console.print_json(json.dumps(res))
