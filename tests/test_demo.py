"""The digits demo job (examples/digits/job.py) runs and records its accuracy.

The full scripts/demo.sh (venv creation, server, two loop workers) is too slow for the suite;
this covers the experiment itself, run exactly as `labtasker loop` would run it: a plain child
process with $LABTASKER_LOG_DIR pointing at its run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the demo extra (scikit-learn) is not installed")

JOB = Path(__file__).resolve().parents[1] / "examples" / "digits" / "job.py"


def run_job(args: list[str], log_dir: Path | None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    for var in ("LABTASKER_TASK_ID", "LABTASKER_WORKER_ID", "LABTASKER_LOG_DIR"):
        env.pop(var, None)
    if log_dir is not None:
        env["LABTASKER_LOG_DIR"] = str(log_dir)
    return subprocess.run(
        [sys.executable, str(JOB), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_job_writes_accuracy_to_summary_json(tmp_path):
    proc = run_job(["--model", "svc", "--C", "1.0", "--scaler", "standard"], tmp_path)
    assert proc.returncode == 0, proc.stderr

    summary = json.loads((tmp_path / "summary.json").read_text())
    accuracy = summary["accuracy"]
    assert isinstance(accuracy, float)
    assert 0.0 <= accuracy <= 1.0
    # A real classifier on a fixed split: far above chance (0.1) for these settings.
    assert accuracy > 0.9
    assert f"test accuracy {accuracy:.4f}" in proc.stdout
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_job_without_log_dir_only_prints(tmp_path):
    proc = run_job(["--model", "logreg", "--C", "1.0", "--scaler", "minmax"], None)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    assert "summary written" not in proc.stdout


def test_job_rejects_unknown_model(tmp_path):
    proc = run_job(["--model", "forest", "--C", "1.0"], tmp_path)
    assert proc.returncode == 2
    assert not (tmp_path / "summary.json").exists()
