"""Routes through the app in-process (httpx ``ASGITransport``, no server process): status
codes and error texts of bad input, authentication, and a task's claim and report. Runs on
every backend (``asgi_app`` uses a scratch database). The tests share one queue and keep
to their own tasks (the claim test fetches by an args shape nobody else submits)."""

from __future__ import annotations

import pytest
from support.http import API

pytestmark = pytest.mark.anyio


async def test_health_and_welcome(asgi_app):
    resp = await asgi_app.client.get("/health/full")
    assert resp.json() == {"status": "healthy", "database": "connected"}
    assert (await asgi_app.client.get("/")).json()["versions"] == ["v1"]


async def test_bad_credentials_are_401_with_basic_challenge(asgi_app):
    resp = await asgi_app.client.get(f"{API}", auth=("nobody", "x"))
    assert resp.status_code == 401
    assert resp.json() == {"detail": "Invalid credentials", "code": "invalid_credentials"}
    assert resp.headers["www-authenticate"] == "Basic"


async def test_submit_claim_report(asgi_queue):
    _, http = asgi_queue
    resp = await http.post(f"{API}/tasks", json={"args": {"inprocess_lr": 0.1}, "task_name": "t"})
    assert resp.status_code == 201
    tid = resp.json()["task_id"]
    task = (
        await http.post(f"{API}/tasks/next", json={"required_fields": ["inprocess_lr"]})
    ).json()["task"]
    assert (task["task_id"], task["status"]) == (tid, "running") and task["run_id"]
    resp = await http.post(
        f"{API}/tasks/{tid}/status", json={"status": "success", "run_id": task["run_id"]}
    )
    assert resp.status_code == 200
    done = (await http.get(f"{API}/tasks/{tid}")).json()
    assert done["status"] == "success" and done["run_id"] is None


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"eta_max": "soon"}, 400, "eta_max: Invalid duration"),
        (
            {"start_heartbeat": False},
            400,
            "Eta max must be specified when start_heartbeat is False",
        ),
        (
            {"heartbeat_timeout": 1, "heartbeat_interval": 2},
            400,
            "heartbeat_timeout (1s) must be at least 2 x heartbeat_interval (2s)",
        ),
        ({"required_fields": ["a..b"]}, 400, "Invalid required fields"),
    ],
)
async def test_fetch_refuses_bad_limits_naming_them(asgi_queue, body, status, detail):
    _, http = asgi_queue
    resp = await http.post(f"{API}/tasks/next", json=body)
    assert resp.status_code == status
    assert detail in resp.json()["detail"]


async def test_report_status_outside_the_outcomes_is_422(asgi_queue):
    _, http = asgi_queue
    tid = (await http.post(f"{API}/tasks", json={"args": {"a": 1}})).json()["task_id"]
    resp = await http.post(f"{API}/tasks/{tid}/status", json={"status": "pending"})
    assert resp.status_code == 422
    assert "'success', 'failed' or 'cancelled'" in resp.text


async def test_worker_report_crashed_is_refused(asgi_queue):
    _, http = asgi_queue
    wid = (await http.post(f"{API}/workers", json={})).json()["worker_id"]
    resp = await http.post(f"{API}/workers/{wid}/status", json={"status": "crashed"})
    assert resp.status_code == 400
    assert resp.json()["detail"] == ("Invalid worker status 'crashed': use 'active' or 'suspended'")


async def test_events_route_refuses_a_bad_last_event_id(asgi_queue):
    _, http = asgi_queue
    resp = await http.get(f"{API}/events", headers={"Last-Event-ID": "x"})
    assert resp.status_code == 400
    assert resp.json()["detail"] == "Last-Event-ID must be an integer event id"


async def _claimed(http, key: str, n: int, **claim) -> tuple[list[str], dict]:
    """Submit ``n`` tasks with args ``{key: i}``; claim one; return the ids and the claim."""
    tids = [
        (await http.post(f"{API}/tasks", json={"args": {key: i}})).json()["task_id"]
        for i in range(n)
    ]
    body = {"required_fields": [key], **claim}
    task = (await http.post(f"{API}/tasks/next", json=body)).json()["task"]
    assert task["task_id"] in tids
    return tids, task


async def test_report_with_claim_next_answers_the_next_task(asgi_queue):
    _, http = asgi_queue
    tids, first = await _claimed(http, "rcn_next", 2)
    resp = await http.post(
        f"{API}/tasks/{first['task_id']}/status",
        json={
            "status": "success",
            "run_id": first["run_id"],
            "claim_next": {"required_fields": ["rcn_next"]},
        },
    )
    assert resp.status_code == 200
    nxt = resp.json()["next"]
    assert nxt["found"] is True
    second = nxt["task"]
    assert second["task_id"] == next(t for t in tids if t != first["task_id"])
    assert second["status"] == "running" and second["run_id"]
    stored = (await http.get(f"{API}/tasks/{second['task_id']}")).json()
    assert (stored["status"], stored["run_id"]) == ("running", second["run_id"])
    assert (await http.get(f"{API}/tasks/{first['task_id']}")).json()["status"] == "success"
    # the last one: reported, and the claim finds nothing
    resp = await http.post(
        f"{API}/tasks/{second['task_id']}/status",
        json={
            "status": "success",
            "run_id": second["run_id"],
            "claim_next": {"required_fields": ["rcn_next"]},
        },
    )
    nxt = resp.json()["next"]
    assert (nxt["found"], nxt["task"]) == (False, None)
    assert (await http.get(f"{API}/tasks/{second['task_id']}")).json()["status"] == "success"


async def test_report_without_claim_next_answers_null(asgi_queue):
    """The 1.0.1 report body: the answer stays ``null``, nothing else is claimed."""
    _, http = asgi_queue
    tids, first = await _claimed(http, "rcn_plain", 2)
    resp = await http.post(
        f"{API}/tasks/{first['task_id']}/status",
        json={"status": "success", "run_id": first["run_id"], "client_version": "1.0.1"},
    )
    assert (resp.status_code, resp.content) == (200, b"null")
    other = next(t for t in tids if t != first["task_id"])
    assert (await http.get(f"{API}/tasks/{other}")).json()["status"] == "pending"


async def test_report_with_a_bad_claim_next_is_400_and_stores_nothing(asgi_queue):
    _, http = asgi_queue
    _, first = await _claimed(http, "rcn_bad", 1)
    resp = await http.post(
        f"{API}/tasks/{first['task_id']}/status",
        json={"status": "success", "run_id": first["run_id"], "claim_next": {"eta_max": "soon"}},
    )
    assert resp.status_code == 400
    assert "eta_max: Invalid duration" in resp.json()["detail"]
    resp = await http.post(
        f"{API}/tasks/{first['task_id']}/status",
        json={
            "status": "success",
            "run_id": first["run_id"],
            "claim_next": {"extra_filter": {"args.rcn_bad": {"$nope": 1}}},
        },
    )
    assert resp.status_code == 400, resp.text
    assert "$nope" in resp.json()["detail"]
    stored = (await http.get(f"{API}/tasks/{first['task_id']}")).json()
    assert (stored["status"], stored["run_id"]) == ("running", first["run_id"])


async def test_report_with_claim_next_of_a_suspended_worker_stores_the_report(asgi_queue):
    _, http = asgi_queue
    wid = (await http.post(f"{API}/workers", json={})).json()["worker_id"]
    tids, first = await _claimed(http, "rcn_susp", 2, worker_id=wid)
    resp = await http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"})
    assert resp.status_code < 300
    resp = await http.post(
        f"{API}/tasks/{first['task_id']}/status",
        json={
            "status": "success",
            "run_id": first["run_id"],
            "worker_id": wid,
            "claim_next": {"required_fields": ["rcn_susp"], "worker_id": wid},
        },
    )
    assert (resp.status_code, resp.json()["next"]) == (200, None)
    assert (await http.get(f"{API}/tasks/{first['task_id']}")).json()["status"] == "success"
    other = next(t for t in tids if t != first["task_id"])
    assert (await http.get(f"{API}/tasks/{other}")).json()["status"] == "pending"
