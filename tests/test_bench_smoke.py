"""Smoke test of the benchmark harness: ``python -m bench --quick`` runs end to end on tiny
sizes and prints the table. It checks that every row produced a number, never the speed:
the figures are benchmark results (docs/benchmarks.md), not test criteria."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LABTASKER_ROOT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--claim-workers", "1,2", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("| row | target | current |"), proc.stdout
    rows = json.loads(out.read_text())["current"]
    for key in (
        "submit_one",
        "claim_1",
        "claim_2",
        "claim1_1",
        "claim1_2",
        "fetch_100",
        "fetch_1000",
        "fetch_ratio",
        "fetch_other",
        "ls_1000",
        "loop",
        "rss",
        "help",
        "import",
    ):
        assert rows[key]["value"] is not None and rows[key]["value"] > 0, (key, rows[key])
    for key in ("claim_2", "claim1_2"):
        assert "0 dup" in rows[key]["text"] and "claimed" not in rows[key]["text"], rows[key]
