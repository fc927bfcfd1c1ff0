"""One claiming worker process: fetch + report success over HTTP until the queue is empty
(or the deadline passes). Writes ``{"ids": [...], "lat": [...]}`` (latency of fetch+report
in seconds, per task) as JSON to OUT.

    python bench/worker.py URL QUEUE PASSWORD FIELDS OUT START_AT DEADLINE [API]

API is ``v1`` (default: ours and labtasker 1.0.1; PASSWORD is the queue password, FIELDS the
comma list of required fields), ``combined`` (ours: each report also claims the next task,
one request a task as our loop does; the latency is that request's) or ``v2`` (labtasker 2.x's REST API v2: PASSWORD is the bearer
token, FIELDS the route; claim + complete with a fresh ``run_id`` per claim).
"""

from __future__ import annotations

import json
import secrets
import sys
import time

import httpx


def main() -> None:
    url, queue, password, fields, out = sys.argv[1:6]
    start_at, deadline = float(sys.argv[6]), float(sys.argv[7])
    if len(sys.argv) > 8 and sys.argv[8] == "v2":
        return main_v2(url, queue, password, fields, out, start_at, deadline)
    if len(sys.argv) > 8 and sys.argv[8] == "combined":
        return main_combined(url, queue, password, fields, out, start_at, deadline)
    required = fields.split(",")
    ids: list[str] = []
    lat: list[float] = []
    errors = 0
    with httpx.Client(base_url=url, auth=(queue, password), timeout=120) as client:
        client.get("/health")  # open the connection before the start signal
        time.sleep(max(0.0, start_at - time.time()))
        body = {"required_fields": required, "heartbeat_timeout": 3600, "start_heartbeat": True}
        while time.time() < deadline:
            t0 = time.perf_counter()
            resp = client.post("/api/v1/queues/me/tasks/next", json=body)
            if resp.status_code != 200:
                errors += 1
                if errors > 20:
                    break
                continue
            data = resp.json()
            if not data.get("found"):
                break
            task = data["task"]
            task_id = task.get("task_id") or task.get("_id")
            report = {"status": "success"}
            if task.get("run_id"):
                report["run_id"] = task["run_id"]
            r2 = client.post(f"/api/v1/queues/me/tasks/{task_id}/status", json=report)
            if r2.status_code >= 300:
                errors += 1
            lat.append(time.perf_counter() - t0)
            ids.append(task_id)
    end = time.time()
    with open(out, "w") as fh:
        json.dump({"ids": ids, "lat": lat, "errors": errors, "end": end}, fh)


def main_combined(
    url: str, queue: str, password: str, fields: str, out: str, start_at: float, deadline: float
) -> None:
    ids: list[str] = []
    lat: list[float] = []
    errors = 0
    claim = {"required_fields": fields.split(","), "heartbeat_timeout": 3600}
    with httpx.Client(base_url=url, auth=(queue, password), timeout=120) as client:
        client.get("/health")
        time.sleep(max(0.0, start_at - time.time()))
        answer = client.post("/api/v1/queues/me/tasks/next", json=claim).json()
        while answer and answer.get("found") and time.time() < deadline:
            task = answer["task"]
            t0 = time.perf_counter()
            report = {"status": "success", "run_id": task["run_id"], "claim_next": claim}
            resp = client.post(f"/api/v1/queues/me/tasks/{task['task_id']}/status", json=report)
            lat.append(time.perf_counter() - t0)
            ids.append(task["task_id"])
            if resp.status_code != 200:
                errors += 1
                break
            answer = resp.json()["next"]
    with open(out, "w") as fh:
        json.dump({"ids": ids, "lat": lat, "errors": errors, "end": time.time()}, fh)


def main_v2(
    url: str, queue: str, token: str, route: str, out: str, start_at: float, deadline: float
) -> None:
    ids: list[str] = []
    lat: list[float] = []
    errors = 0
    base = f"{url}/api/v2/queues/{queue}"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        client.get(url + "/health")
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < deadline:
            t0 = time.perf_counter()
            run_id = "r_" + secrets.token_urlsafe(9)
            resp = client.post("/tasks/claim", json={"route": route, "run_id": run_id})
            if resp.status_code == 204:
                break
            if resp.status_code != 200:
                errors += 1
                if errors > 20:
                    break
                continue
            task_id = resp.json()["task"]["id"]
            r2 = client.post(f"/tasks/{task_id}/complete", json={"run_id": run_id, "result": {}})
            if r2.status_code >= 300:
                errors += 1
            lat.append(time.perf_counter() - t0)
            ids.append(task_id)
    with open(out, "w") as fh:
        json.dump({"ids": ids, "lat": lat, "errors": errors, "end": time.time()}, fh)


if __name__ == "__main__":
    main()
