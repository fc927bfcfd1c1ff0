"""The digits demo (examples/digits): the job records its accuracy, and the Python submitter,
one `labtasker loop` run and the report work against a real server.

The full scripts/demo.sh (venv creation, server, one `loop --parallel 2`) is too slow for the suite;
these cover its pieces: the job run exactly as `labtasker loop` runs it (a plain child process
with $LABTASKER_LOG_DIR pointing at its run directory), then the example end to end on one
task of the grid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests of the client against a real server: SQLite only (conftest, ``client_side``).
pytestmark = pytest.mark.client_side

pytest.importorskip("sklearn", reason="the demo extra (scikit-learn) is not installed")

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "digits"
JOB = EXAMPLE_DIR / "job.py"


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


def run_in_example(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=EXAMPLE_DIR, env=env, capture_output=True, text=True, timeout=180
    )


def test_digits_example_through_the_queue(queue_env):
    """submit_grid.py -> one `labtasker loop` task -> report.py, on a real server."""
    env = {**queue_env.env(), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}

    proc = run_in_example([sys.executable, "submit_grid.py"], env)
    assert proc.returncode == 0, proc.stderr
    assert "submitted 6 tasks" in proc.stdout

    with queue_env.http() as http:
        resp = http.post("/api/v1/queues/me/tasks/search", json={"limit": 100})
        resp.raise_for_status()
        tasks = resp.json()["content"]
    assert len(tasks) == 6
    assert {t["status"] for t in tasks} == {"pending"}
    assert all(set(t["args"]) == {"model", "C", "scaler"} for t in tasks)
    assert {t["metadata"].get("submitted_by") for t in tasks} == {"submit_grid.py"}

    # The demo's worker command, restricted to one task of the grid to stay fast.
    proc = run_in_example(
        [
            sys.executable,
            "-m",
            "labtasker.client.cli.main",
            "loop",
            "--extra-filter",
            '{"args.C": 1.0, "args.scaler": "minmax"}',
            "--",
            sys.executable,
            "job.py",
            "--model",
            "%(model)",
            "--C",
            "%(C)",
            "--scaler",
            "%(scaler)",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with queue_env.http() as http:
        resp = http.post("/api/v1/queues/me/tasks/search", json={"limit": 100})
        resp.raise_for_status()
        tasks = resp.json()["content"]
    done = [t for t in tasks if t["status"] == "success"]
    assert len(done) == 1, tasks
    assert done[0]["args"] == {"model": "logreg", "C": 1.0, "scaler": "minmax"}
    assert 0.9 < done[0]["summary"]["accuracy"] <= 1.0
    assert sum(t["status"] == "pending" for t in tasks) == 5

    proc = run_in_example([sys.executable, "report.py", "--page-size", "4"], env)
    assert proc.returncode == 0, proc.stderr
    assert "6 tasks" in proc.stdout
    assert "pending=5, success=1" in proc.stdout
    assert f"{done[0]['summary']['accuracy']:.4f}" in proc.stdout

    proc = run_in_example([sys.executable, "report.py", "--require-success"], env)
    assert proc.returncode == 1
    assert "not every task succeeded" in proc.stdout
