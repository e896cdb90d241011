"""The restore drill (bench/drill.py) on a small workload: a backup restored to a named point on a fresh
node holds exactly the runs completed before the point, keeps the invariants, serves again, and
leaves nothing behind. The drill itself is slow (about a minute and a half): ``pytest -m slow``, a step
of .ci/run; the checks of its parts are quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from support import require_program

from bench import drill

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_restore_to_a_named_point_holds_the_runs_before_it_and_none_after(tmp_path):
    require_program("pgbackrest")
    pg_bin = Path(os.environ.get("TOLSTOY_DRILL_PG_BIN", drill.PG_BIN_DEFAULT))
    require_program("initdb", str(pg_bin / "initdb"))
    before = set(Path(tempfile.gettempdir()).glob("tolstoy-drill-*"))

    # The documented command, from the checkout.
    finished = subprocess.run([sys.executable, "-m", "bench.drill", "--runs", "8", "--pg-bin", str(pg_bin),
                               "--results", str(tmp_path), "--no-docs", "--prove-checks"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "RPO " in finished.stdout and "RTO " in finished.stdout
    (path,) = tmp_path.glob("drill-*.json")
    result = json.loads(path.read_text())
    assert result["problems"] == [] and result["passed"], result["problems"]
    runs = result["runs"]
    # Runs on both sides of the point, and some in flight at it: the checks had something to check.
    assert runs["completed_before_point"] >= 9 and runs["created_after_point"] >= 5, runs
    assert result["rpo_seconds"] is not None and result["rto_seconds"] > 0
    # The same checks against a restore past the point (the end of the archive) find the runs of after it.
    wrong = result["wrong_target_problems"]
    assert any("created after the point" in problem for problem in wrong), wrong
    assert any("finished after the point" in problem for problem in wrong), wrong
    # Nothing left: no work folder, no PostgreSQL or Tolstoy process of the drill.
    assert set(Path(tempfile.gettempdir()).glob("tolstoy-drill-*")) == before
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if any("tolstoy-drill-" in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []


def test_the_result_goes_to_a_json_file_and_a_row_of_the_reliability_table(tmp_path):
    docs = tmp_path / "reliability.md"
    docs.write_text(f"# R\n\n{drill.TABLE_START}\n| date | … |\n|---|\n| 2026-01-01 | old |\n{drill.TABLE_END}\nafter\n")
    result = {"date": "2026-12-07", "postgres": "15.18", "pgbackrest": "pgBackRest 2.45", "rpo_seconds": 0.02,
              "rto_seconds": 14.2, "restore_seconds": 8.5, "passed": True,
              "runs": {"total": 74, "completed_before_point": 33, "created_after_point": 35}}
    path = drill.record(result, tmp_path / "results", docs)
    drill.record(result, tmp_path / "results", docs)  # the same day again replaces its row
    assert path.name == "drill-2026-12-07.json"
    text = docs.read_text()
    assert text.count("| 2026-12-07 |") == 1 and "| 2026-01-01 | old |" in text and text.endswith("after\n")
    assert "| 0.02 | 14.2 | 8.5 | passed |" in text


def test_compare_names_runs_missing_and_runs_from_after_the_point():
    before = {"a": None, "b": None}
    existing_after = {"a": "completed", "b": "completed", "c": "running"}
    restored = {"a": {"status": "completed"}, "c": {"status": "completed"}, "d": {"status": "queued"}}
    problems = drill.compare(before, existing_after, {"d"}, {"c"}, restored)
    assert len(problems) == 3, problems
    assert "['b']" in problems[0] and "['d']" in problems[1] and "['c']" in problems[2]
    assert drill.compare(before, existing_after, {"d"}, {"c"},
                         {"a": {"status": "completed"}, "b": {"status": "completed"}, "c": {"status": "running"}}) == []
