"""Leases a loop can hold: a heartbeat timeout too tight is refused everywhere; a job whose
queue is deleted (or whose password changed) stops within one heartbeat; ``Heartbeat.stop``
ends a beat's retries at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import API, wait_for

from labtasker import error_codes
from labtasker.client import api
from labtasker.client.heartbeat import Heartbeat
from labtasker.client.transport import LabtaskerClient, RetryPolicy
from labtasker.exceptions import LabtaskerValueError

LABTASKER = str(Path(sys.executable).parent / "labtasker")


def _cli(queue_env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LABTASKER, *args],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_heartbeat_timeout_below_twice_the_interval_is_refused_everywhere(queue_env):
    """client.toml says heartbeat_interval = 1 s: 1.5 s is refused by the loop, task submit,
    the Python API and the server's fetch, each with one line naming both values."""
    loop = _cli(queue_env, "loop", "--heartbeat-timeout", "1.5", "-c", "echo %(x)")
    assert loop.returncode == 2 and "1.5s" in loop.stderr and "(1s," in loop.stderr
    assert [line for line in loop.stderr.splitlines() if "heartbeat_timeout" in line] == [
        loop.stderr.splitlines()[-1]
    ], loop.stderr  # one line
    submit = _cli(queue_env, "task", "submit", "--heartbeat-timeout", "1.5", "--", "--x", "1")
    assert submit.returncode == 2 and "at least 2 x the heartbeat interval (1s" in submit.stderr
    assert len(submit.stderr.strip().splitlines()) == 1, submit.stderr
    with pytest.raises(LabtaskerValueError, match=r"1\.5s.*\(1s,"):
        api.submit_task(args={"x": 1}, heartbeat_timeout=1.5)
    with pytest.raises(LabtaskerValueError, match=r"tasks\[1\]"):
        api.submit_tasks([{"args": {"x": 1}}, {"args": {"x": 2}, "heartbeat_timeout": 1}])
    with queue_env.http() as http:
        refused = http.post(
            f"{API}/tasks/next", json={"heartbeat_timeout": 5, "heartbeat_interval": 3}
        )
        assert refused.status_code == 400 and "5s" in refused.json()["detail"]
        assert "(3s" in refused.json()["detail"]
        ok = http.post(f"{API}/tasks/next", json={"heartbeat_timeout": 6, "heartbeat_interval": 3})
        assert ok.status_code == 200
    assert api.submit_task(args={"x": 1}, heartbeat_timeout=2).task_id  # exactly 2 x: fine


@pytest.mark.parametrize("change", ["delete queue", "new password"])
def test_job_stops_within_a_heartbeat_when_the_queue_goes(queue_env, change):
    with queue_env.http() as http:
        http.post(f"{API}/tasks", json={"args": {"s": 60}})
        marker = queue_env.workdir / "job.pid"
        loop = subprocess.Popen(
            [LABTASKER, "loop", "-c", f"echo $$ > {marker}; exec sleep %(s)"],
            env=queue_env.env(),
            cwd=queue_env.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: marker.exists() and marker.read_text().strip(),
                timeout=60,
                what="job started",
            )
            if change == "delete queue":
                assert http.delete(API, params={"cascade_delete": "true"}).status_code == 204
            else:
                assert http.put(API, json={"new_password": "changed-pw"}).status_code == 200
            t0 = time.monotonic()
            _, err = loop.communicate(timeout=60)
            took = time.monotonic() - t0
        finally:
            if loop.poll() is None:
                loop.kill()
    assert loop.returncode == 1, err
    assert "queue was deleted or its password changed" in err.strip().splitlines()[-1], err
    assert took < 15, took  # heartbeat every 1 s; the job is stopped (SIGTERM) at once
    if change == "new password":
        # the task was handed back when the password changed: pending, no retry spent, its
        # run ended as requeued, its worker not charged (it used to wait for its heartbeat
        # timeout and spend a retry)
        with httpx.Client(
            base_url=queue_env.url, auth=(queue_env.queue_name, "changed-pw"), timeout=30
        ) as http:
            (task,) = http.post(f"{API}/tasks/search", json={}).json()["content"]
            assert (task["status"], task["retries"]) == ("pending", 0), task
            (run,) = http.get(f"{API}/tasks/{task['task_id']}/runs").json()["content"]
            assert run["status"] == "requeued" and not run["charged"], run
            assert "password changed" in run["summary"]["message"]
            (worker,) = http.post(f"{API}/workers/search", json={}).json()["content"]
            assert worker["retries"] == 0, worker
            # the same password again changes nothing
            http.post(f"{API}/tasks/next", json={"worker_id": worker["worker_id"]})
            assert http.put(API, json={"new_password": "changed-pw"}).status_code == 200
            (task,) = http.post(f"{API}/tasks/search", json={}).json()["content"]
            assert task["status"] == "running", task


def test_stop_ends_the_back_off_at_once(queue_env):
    """A heartbeat whose beats get 503 (the database is away) is asleep in its back-off when
    the run ends: ``stop()`` returns at once and no beat is sent after it."""
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(
            503,
            headers={"Retry-After": "1"},
            json={
                "detail": "Database unavailable (disk full)",
                "code": error_codes.STORAGE_UNAVAILABLE,
            },
        )

    client = LabtaskerClient(
        httpx.Client(base_url=queue_env.url, transport=httpx.MockTransport(handler)),
        retry_policy=RetryPolicy(attempts=10, budget=60),
    )
    # the first beat is one interval (3 s) after the start, then back-off waits of 0.5, 1 s
    beat = Heartbeat("t1", worker_id=None, run_id="r1", interval=3, client=client).start()
    wait_for(lambda: len(calls) >= 3, timeout=20, what="three failed beats")
    time.sleep(0.5)  # asleep in the 2 s back-off now
    t0 = time.monotonic()
    beat.stop()
    assert time.monotonic() - t0 < 0.5 and not beat.running
    sent = len(calls)
    time.sleep(2.5)
    assert len(calls) == sent  # nothing after stop()
