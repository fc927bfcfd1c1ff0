"""Results endpoints on a real server (both backends): counts in one query, the queue
overview, requeue, progress snapshots, gone workers and prune."""

from __future__ import annotations

import pytest
from support.http import API, get_task, submit


def _batch(http, tasks: list[dict]) -> list[str]:
    resp = http.post(f"{API}/tasks/batch", json={"tasks": tasks})
    assert resp.status_code == 201, resp.text
    return resp.json()["task_ids"]


def _claim(http, worker_id=None, **fields) -> dict:
    resp = http.post(f"{API}/tasks/next", json={"worker_id": worker_id, **fields})
    assert resp.status_code == 200, resp.text
    assert resp.json()["found"], resp.text
    return resp.json()["task"]


def _report(http, task, status, summary=None):
    resp = http.post(
        f"{API}/tasks/{task['task_id']}/status",
        json={"status": status, "run_id": task["run_id"], "summary": summary},
    )
    assert resp.status_code == 200, resp.text


def _count(http, **body) -> dict:
    resp = http.post(f"{API}/tasks/count", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def sweep(queue_env):
    """12 tasks over lr x seed (one without seed); 3 claimed: 1 success, 1 failed (no retries
    left), 1 running."""
    http = queue_env.http()
    tasks = [
        {"args": {"lr": lr, "seed": seed}, "max_retries": 1}
        for lr in (0.1, 0.01, 0.001)
        for seed in range(4)
    ]
    tasks[-1] = {"args": {"lr": "auto"}, "max_retries": 1}
    ids = _batch(http, tasks)
    done = [_claim(http) for _ in range(3)]
    _report(http, done[0], "success", {"accuracy": 0.9})
    _report(http, done[1], "failed")
    return http, ids, done


def test_count_by_status_adds_up(sweep):
    http, ids, _ = sweep
    answer = _count(http)
    assert answer["by"] == "status" and answer["total"] == 12 and not answer["truncated"]
    assert [(g["value"], g["count"]) for g in answer["groups"]] == [
        ("pending", 9),
        ("running", 1),
        ("success", 1),
        ("failed", 1),
        ("cancelled", 0),
    ]
    # with a filter, and grouped by a JSON path: groups ordered by value, missing first
    answer = _count(http, by="args.seed", extra_filter={"args.lr": {"$in": [0.1, "auto"]}})
    assert answer["total"] == 5
    assert [(g["value"], g["count"]) for g in answer["groups"]] == [
        (None, 1),
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    answer = _count(http, by="args.lr")
    assert [(g["value"], g["count"]) for g in answer["groups"]] == [
        (0.001, 3),
        (0.01, 4),
        (0.1, 4),
        ("auto", 1),
    ]
    assert sum(g["count"] for g in answer["groups"]) == answer["total"] == 12
    assert _count(http, by="priority", status="pending")["groups"] == [{"value": 10, "count": 9}]
    assert _count(http, by="summary.accuracy")["groups"] == [
        {"value": None, "count": 11},
        {"value": 0.9, "count": 1},
    ]


def test_count_puts_missing_and_null_in_one_group_and_python_keeps_every_group(queue_env):
    """Missing and an explicit null are one group (``value`` None), as documented; and the
    Python ``counts()`` dict keeps ``True`` apart from ``1`` (the same dict key in Python),
    so its counts add up to the total."""
    from labtasker.wire import TaskCountResponse

    http = queue_env.http()
    for args in ({"x": 1}, {"x": True}, {"x": None}, {"y": 1}, {"x": 1.5}):
        submit(http, args)
    answer = _count(http, by="args.x")
    assert [(g["value"], g["count"]) for g in answer["groups"]] == [
        (None, 2),
        (1, 1),
        (1.5, 1),
        (True, 1),
    ]
    counts = TaskCountResponse.model_validate(answer).counts()
    assert counts == {None: 2, 1: 1, 1.5: 1, "true": 1}
    assert sum(counts.values()) == answer["total"] == 5


def test_count_refuses_bad_fields(queue_env):
    http = queue_env.http()
    for by, word in (
        ("nosuch", "Unknown field"),
        ("args.a b", "Invalid field"),
        ("task_id", "cannot group"),
    ):
        resp = http.post(f"{API}/tasks/count", json={"by": by})
        assert resp.status_code == 400, resp.text
        assert "by:" in resp.json()["detail"] and word in resp.json()["detail"]


def test_overview(sweep):
    http, _, done = sweep
    resp = http.get(f"{API}/overview", params={"window_seconds": 600})
    assert resp.status_code == 200, resp.text
    ov = resp.json()
    assert ov["total"] == 12 and ov["counts"]["pending"] == 9
    assert ov["finished_recently"] == 2
    assert ov["succeeded_recently"] == 1 and ov["failed_recently"] == 1
    assert ov["throughput_per_minute"] > 0 and ov["eta_seconds"] > 0
    assert ov["mean_run_seconds"] is not None and ov["mean_run_seconds"] >= 0
    assert [r["task_id"] for r in ov["running"]] == [done[2]["task_id"]]
    assert http.get(f"{API}/overview", params={"window_seconds": 0}).status_code == 400


def test_overview_counts_runs_not_tasks(queue_env):
    """A task that failed twice and then succeeded ended three runs in the window (two of
    them failures); requeueing a failed task does not take its failed run out of the window."""
    http = queue_env.http()
    flaky, bad = _batch(
        http, [{"args": {"x": 1}, "max_retries": 3}, {"args": {"x": 2}, "max_retries": 1}]
    )
    for status in ("failed", "failed", "success"):
        _report(http, _claim(http, extra_filter={"args.x": 1}), status)
    _report(http, _claim(http, extra_filter={"args.x": 2}), "failed")

    def recent():
        ov = http.get(f"{API}/overview", params={"window_seconds": 600}).json()
        return ov["finished_recently"], ov["succeeded_recently"], ov["failed_recently"]

    assert recent() == (4, 1, 3)
    assert get_task(http, flaky)["status"] == "success"
    resp = http.post(f"{API}/tasks/requeue", json={"status": "failed"})
    assert resp.json()["task_ids"] == [bad]
    assert recent() == (4, 1, 3)  # the requeue itself is not a finished run


def test_requeue(sweep):
    http, ids, done = sweep
    pending = next(t for t in ids if t not in {d["task_id"] for d in done})
    cancelled = http.post(f"{API}/tasks/{pending}/status", json={"status": "cancelled"})
    assert cancelled.status_code == 200
    resp = http.post(f"{API}/tasks/requeue", json={"status": "failed"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "notification": None,
        "requeued": 1,
        "task_ids": [done[1]["task_id"]],
        "more": False,
    }
    task = get_task(http, done[1]["task_id"])
    assert (task["status"], task["retries"], task["worker_id"]) == ("pending", 0, None)
    # default: every ended task; limit + more, and the calls end
    resp = http.post(f"{API}/tasks/requeue", json={"limit": 1})
    assert resp.json()["requeued"] == 1 and resp.json()["more"] is True
    resp = http.post(f"{API}/tasks/requeue", json={"limit": 1})
    assert resp.json()["requeued"] == 1 and resp.json()["more"] is False
    assert _count(http)["groups"][0] == {"value": "pending", "count": 11}
    # a running task only when asked for; its run is fenced off
    resp = http.post(f"{API}/tasks/requeue", json={"task_ids": [done[2]["task_id"]]})
    assert resp.json()["requeued"] == 0
    resp = http.post(f"{API}/tasks/requeue", json={"status": "running"})
    assert resp.json()["task_ids"] == [done[2]["task_id"]]
    beat = http.post(
        f"{API}/tasks/{done[2]['task_id']}/heartbeat", params={"run_id": done[2]["run_id"]}
    )
    assert beat.status_code == 404
    resp = http.post(f"{API}/tasks/requeue", json={"status": "pending"})
    assert resp.status_code == 422 and "status" in resp.text


def test_progress_snapshot(queue_env):
    http = queue_env.http()
    submit(http, {"x": 1})
    task = _claim(http)
    url = f"{API}/tasks/{task['task_id']}/progress"
    resp = http.post(
        url, json={"step": 3, "total": 10, "metrics": {"loss": 0.5}, "run_id": task["run_id"]}
    )
    assert resp.status_code == 200, resp.text
    got = get_task(http, task["task_id"])["progress"]
    assert (got["step"], got["total"], got["metrics"]) == (3, 10, {"loss": 0.5})
    assert got["updated_at"].endswith("+00:00")
    # bad values: 422 naming the field; another run: 409
    for body, field in (
        ({"step": -1}, "step"),
        ({"step": 1, "total": 0}, "total"),
        ({"step": 1, "metrics": {"a b": 1}}, "metrics"),
    ):
        bad = http.post(url, json=body)
        assert bad.status_code == 422 and field in bad.text
    assert http.post(url, json={"step": 4, "run_id": "other"}).status_code == 409
    _report(http, task, "success")
    assert http.post(url, json={"step": 5}).status_code == 404
    assert get_task(http, task["task_id"])["progress"]["step"] == 3  # kept after the run
    # 1.0.x clients do not see the field
    legacy = http.post(f"{API}/tasks/search", json={"client_version": "1.0.1"}).json()
    assert "progress" not in legacy["content"][0]
    # a new run starts without progress
    http.post(f"{API}/tasks/requeue", json={})
    assert _claim(http)["progress"] is None


def test_gone_workers_and_prune(queue_env):
    http = queue_env.http()
    live, gone, busy = (
        http.post(f"{API}/workers", json={"worker_name": n}).json()["worker_id"]
        for n in ("live", "gone", "busy")
    )
    submit(http, {"x": 1})
    _claim(http, worker_id=busy)
    for wid in (gone, busy):
        resp = http.post(f"{API}/workers/{wid}/gone")
        assert resp.status_code == 200 and resp.json()["gone_at"], resp.text
    assert http.post(f"{API}/workers/nosuch/gone").status_code == 404
    only_gone = http.post(f"{API}/workers/search", json={"gone": True}).json()["content"]
    assert {w["worker_id"] for w in only_gone} == {gone, busy}
    legacy = http.post(f"{API}/workers/search", json={"client_version": "1.0.1"}).json()
    assert all("gone_at" not in w for w in legacy["content"])
    overview = http.get(f"{API}/overview").json()
    assert overview["workers"] == {"active": 1, "suspended": 0, "crashed": 0, "gone": 2}
    # prune keeps live workers and gone ones still running a task
    resp = http.post(f"{API}/workers/prune", json={})
    assert resp.status_code == 200 and resp.json()["worker_ids"] == [gone]
    remaining = {
        w["worker_id"] for w in http.post(f"{API}/workers/search", json={}).json()["content"]
    }
    assert remaining == {live, busy}
