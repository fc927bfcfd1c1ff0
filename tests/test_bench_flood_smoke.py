"""Smoke test of the flood benchmark: ``python -m bench.flood`` runs end to end on short
floods and prints its table. It checks that the rows are there and filled, never the
figures: those are benchmark results (docs/deployment.md, *Floods*), not test criteria."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_flood_runs(tmp_path):
    out = tmp_path / "flood.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.flood",
            "--seconds",
            "3",
            "--only",
            "none,slowloris,filters",
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("| flood | server RSS before → peak |"), proc.stdout
    rows = {row["flood"]: row for row in json.loads(out.read_text())}
    assert list(rows) == ["none", "slowloris", "filters"]
    for row in rows.values():
        assert row["requests"] > 0 and row["rss_peak_mb"] > 0 and row["p99_ms"] > 0, row
    assert rows["slowloris"]["flood_result"]["opened"] >= 1000, rows["slowloris"]
    assert rows["filters"]["flood_result"]["answers"], rows["filters"]


def test_bench_flood_refuses_an_unknown_flood():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.flood", "--only", "slowlorris"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown flood 'slowlorris'" in proc.stderr, proc.stderr
