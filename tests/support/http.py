"""Task requests over HTTP, asserting the expected status code (the response text is the
assertion message). ``http`` is an httpx client authenticated as a queue
(``QueueEnv.http()``)."""

from __future__ import annotations

from typing import Any

import httpx

API = "/api/v1/queues/me"


def submit(http: httpx.Client, args: dict[str, Any] | None = None, **fields: Any) -> str:
    """Submit one task (``args`` default ``{"x": 1}``); returns its id."""
    resp = http.post(f"{API}/tasks", json={"args": args or {"x": 1}, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["task_id"]


def get_task(http: httpx.Client, task_id: str) -> dict[str, Any]:
    """``GET /tasks/{id}`` (200 expected)."""
    resp = http.get(f"{API}/tasks/{task_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def fetch(http: httpx.Client, **body: Any) -> dict[str, Any] | None:
    """``POST /tasks/next`` with ``body``: the claimed task, or ``None`` when none matched."""
    resp = http.post(f"{API}/tasks/next", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["task"]
