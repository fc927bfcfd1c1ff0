"""Concurrency and durability on a real server process and a real SQLite file."""

from __future__ import annotations

import signal
import threading
from collections import Counter

import httpx
from support.server import ServerProcess

API = "/api/v1/queues/me"


def test_16_concurrent_fetchers_never_claim_a_task_twice(server, queue_env):
    with queue_env.http() as http:
        batch = [{"args": {"i": i}} for i in range(500)]
        assert http.post(f"{API}/tasks/batch", json={"tasks": batch}).status_code == 201
    claimed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker():
        with queue_env.http() as http:
            while True:
                r = http.post(f"{API}/tasks/next", json={"required_fields": ["i"]})
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                task = r.json()["task"]
                if task is None:
                    return
                with lock:
                    claimed.append(task["task_id"])
                http.post(
                    f"{API}/tasks/{task['task_id']}/status",
                    json={"status": "success", "run_id": task["run_id"]},
                )

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    counts = Counter(claimed)
    assert len(counts) == 500 and max(counts.values()) == 1
    with queue_env.http() as http:
        done = http.post(f"{API}/tasks/search", json={"status": "success", "limit": 1000}).json()[
            "content"
        ]
    assert len(done) == 500


def test_acknowledged_writes_survive_kill_9(tmp_path, scratch_dbs):
    srv = ServerProcess(db_url=scratch_dbs.new_url(), workdir=tmp_path).start()
    try:
        created = httpx.post(
            srv.url + "/api/v1/queues", json={"queue_name": "dur", "password": "pw"}
        )
        assert created.status_code == 201
        http = httpx.Client(base_url=srv.url, auth=("dur", "pw"))
        ids = [
            http.post(f"{API}/tasks", json={"args": {"i": i}}).json()["task_id"] for i in range(20)
        ]
        task = http.post(f"{API}/tasks/next", json={}).json()["task"]
        assert (
            http.post(
                f"{API}/tasks/{task['task_id']}/status",
                json={"status": "success", "summary": {"acc": 0.9}},
            ).status_code
            == 200
        )
        assert (
            http.put(
                f"{API}/tasks",
                params={"reset_pending": False},
                json=[{"task_id": ids[5], "priority": 42}],
            ).status_code
            == 200
        )
        http.close()
        srv.kill(signal.SIGKILL)  # no graceful shutdown
        srv.start()
        http = httpx.Client(base_url=srv.url, auth=("dur", "pw"))
        tasks = {
            t["task_id"]: t
            for t in http.post(f"{API}/tasks/search", json={"limit": 100}).json()["content"]
        }
        assert set(tasks) == set(ids)
        assert tasks[task["task_id"]]["status"] == "success"
        assert tasks[task["task_id"]]["summary"] == {"acc": 0.9}
        assert tasks[ids[5]]["priority"] == 42
        http.close()
    finally:
        srv.kill()
