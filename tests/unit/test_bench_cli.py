"""`auditcast bench`: reading what each benchmark printed, and the table of headlines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from auditcast.cli.bench import last_json_object, summary_rows
from tests.bench import figure, target

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))


def test_an_indented_result_after_log_lines_is_read_whole() -> None:
    """bench_kube, bench_pipeline and bench_ssh print indented JSON; the bench command
    used to keep only lines starting with `{` and reported them as failed."""
    doc = {"n": 3, "summary": [figure("x", 1.0)], "nested": {"a": [1, 2]}}
    out = "starting broker\nUnable to connect, retrying\n" + json.dumps(doc, indent=2) + "\n"
    assert last_json_object(out) == doc


def test_an_indented_result_followed_by_a_log_line_is_read_whole() -> None:
    doc = {"bench": "kube", "h2": {"p50_ms": 0.5}}
    assert last_json_object(json.dumps(doc, indent=2) + "\nbroker stopped\n") == doc


def test_a_one_line_result_followed_by_other_lines_is_found() -> None:
    out = '{"first": 1}\n{"bench": "spool", "v": 2}\nbye\n'
    assert last_json_object(out) == {"bench": "spool", "v": 2}


def test_output_without_a_json_object_gives_none() -> None:
    assert last_json_object("") is None
    assert last_json_object("no json here\n[1, 2]\n{broken\n") is None


def test_targets_say_whether_this_run_met_them() -> None:
    assert target("ratio", 0.31, ">=", 0.3)["met"] is True
    assert target("ratio", 0.29, ">=", 0.3)["met"] is False
    assert target("p99", 3.0, "<", 3, "ms")["met"] is False  # strict: equal is a miss
    assert target("size", 0.15, "<=", 0.15)["met"] is True
    assert target("p50", None, "<", 1, "ms")["met"] is None  # that part did not run
    assert target("p99", 0.5, "<", 3, "ms")["target"] == "< 3 ms"


def test_summary_rows_show_values_targets_verdicts_and_failures() -> None:
    results = {
        "pipeline": {
            "summary": [
                target("pipeline rate", 27501.4, ">=", 20_000, "ev/s"),
                target("pipeline / raw", 0.2391, ">=", 0.3),
                figure("store / raw", 0.35),
            ]
        },
        "kube": {"error": "exit 1", "tail": ["Traceback ..."]},
        "old": {"n": 1},
    }
    assert summary_rows(results) == [
        ("pipeline", "pipeline rate", "27,501 ev/s", ">= 20000 ev/s", "met"),
        ("pipeline", "pipeline / raw", "0.239", ">= 0.3", "MISSED"),
        ("pipeline", "store / raw", "0.35", "", ""),
        ("kube", "failed", "exit 1", "", "error"),
        ("old", "(no summary: see --json)", "", "", ""),
    ]


@pytest.mark.slow
def test_bench_command_runs_a_real_benchmark_and_shows_its_headlines(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    done = subprocess.run(
        [AUDITCAST, "bench", "spool", "--out", str(out_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "spool append / bare os.write" in done.stdout
    saved = json.loads(out_file.read_text())
    rows = saved["spool"]["summary"]
    assert {r["figure"] for r in rows} >= {"delivery / raw producer (records/s)"}
    assert all(isinstance(r["value"], float) and r["value"] > 0 for r in rows)
