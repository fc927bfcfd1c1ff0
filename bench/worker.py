"""One claiming worker process: fetch + report success over HTTP until the queue is empty
(or the deadline passes). Writes ``{"ids": [...], "lat": [...]}`` (latency of fetch+report
in seconds, per task) as JSON to OUT.

    python bench/worker.py URL QUEUE PASSWORD FIELDS OUT START_AT DEADLINE
"""

from __future__ import annotations

import json
import sys
import time

import httpx


def main() -> None:
    url, queue, password, fields, out = sys.argv[1:6]
    start_at, deadline = float(sys.argv[6]), float(sys.argv[7])
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


if __name__ == "__main__":
    main()
