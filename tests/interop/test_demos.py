"""The 1.x demos (our rewrite, ``tests/interop/demos``) run unchanged with the
labtasker 1.0.1 client and with ours, against our server.

Each demo gets a fresh queue and a project directory with ``./.labtasker/client.toml``; the
client's venv is first on ``PATH``, so ``labtasker`` and ``python`` in the scripts are the
client under test. Outcomes are checked over HTTP and in the files the demo jobs write.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from interop_support import (
    DEMOS,
    EVENTS_MISSING,
    Project,
    skip_module_without_v1,
    wait_for,
)

skip_module_without_v1()


@pytest.fixture
def project(client, interop_server, tmp_path) -> Project:
    project = Project.create(client, interop_server.url, tmp_path / "project", "demo")
    project.create_queue_http()
    return project


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_bash_demo(project):
    project.client.run(["bash", str(DEMOS / "bash_demo" / "submit_job.sh")], project.workdir)
    tasks = project.tasks()
    assert len(tasks) == 4
    assert {(t["args"]["lr"], t["args"]["seed"]) for t in tasks} == {
        (0.1, 1),
        (0.1, 2),
        (0.01, 1),
        (0.01, 2),
    }
    assert all(t["args"]["model"] == {"depth": 2} for t in tasks)
    assert {t["task_name"] for t in tasks} == {
        "lr0p1-seed1",
        "lr0p1-seed2",
        "lr0p01-seed1",
        "lr0p01-seed2",
    }

    project.client.run(
        ["bash", str(DEMOS / "bash_demo" / "run_job.sh")], project.workdir, timeout=180
    )
    results = {r["task_id"]: r for r in read_jsonl(project.workdir / "bash-demo-results.jsonl")}
    assert set(results) == {t["task_id"] for t in tasks}
    for task in project.tasks():
        assert task["status"] == "success", task
        result = results[task["task_id"]]
        assert (result["lr"], result["seed"], result["depth"]) == (
            task["args"]["lr"],
            task["args"]["seed"],
            2,
        )
        assert task["summary"]["accuracy"] == result["accuracy"]


def run_python_demo(project: Project) -> list[dict]:
    project.py(str(DEMOS / "python_demo" / "submit_job.py"))
    project.py(str(DEMOS / "python_demo" / "run_job.py"), timeout=180)
    return read_jsonl(project.workdir / "python-demo-results.jsonl")


def test_python_demo(project):
    results = {r["task_id"]: r for r in run_python_demo(project)}
    tasks = project.tasks()
    assert len(tasks) == 4 and set(results) == {t["task_id"] for t in tasks}
    for task in tasks:
        result = results[task["task_id"]]
        assert task["status"] == "success", task
        assert result["name"] == task["task_name"]
        assert (result["lr"], result["seed"]) == (task["args"]["lr"], task["args"]["seed"])
        assert task["summary"]["accuracy"] == result["accuracy"]
        assert task["metadata"] == {"demo": "python"}


def test_custom_resolver_demo(project):
    project.py(str(DEMOS / "custom_resolver" / "submit_job.py"))
    project.py(str(DEMOS / "custom_resolver" / "run_job.py"), timeout=180)
    results = {r["task_id"]: r for r in read_jsonl(project.workdir / "resolver-demo-results.jsonl")}
    tasks = project.tasks()
    assert len(tasks) == 3 and set(results) == {t["task_id"] for t in tasks}
    for task in tasks:
        assert task["status"] == "success", task
        result = results[task["task_id"]]
        assert result["optim"] == task["args"]["optim"]
        assert result["data"] == task["args"]["data"]
        assert result["batch_size"] == f"bs={task['args']['data']['batch_size']}"


def test_event_listener_demo(project):
    if not project.events_supported():
        pytest.skip(EVENTS_MISSING)
    listener = project.client.popen(
        [str(project.client.bindir / "python"), str(DEMOS / "event_listener" / "listen.py"), "4"],
        cwd=project.workdir,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(listener.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        wait_for(lambda: any(x.startswith("READY") for x in lines), 30, what="listener")
        results = run_python_demo(project)
        assert listener.wait(60) == 0, listener.stderr.read()[-3000:]
        reader.join(10)
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGINT)
            try:
                listener.wait(10)
            except subprocess.TimeoutExpired:
                listener.kill()
    for result in results:
        mine = [
            x.split(" ", 2)[2].strip()
            for x in lines
            if x.startswith("task ") and result["task_id"] in x
        ]
        assert mine == ["created -> pending", "pending -> running", "running -> success"], (
            result["task_id"],
            lines,
        )
