"""REST API on a real uvicorn server process and a real SQLite file."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import httpx
import pytest
from support.http import API, fetch, submit


def test_health_and_welcome(server):
    assert httpx.get(server.url + "/health").json() == {"connection": "ok"}
    assert httpx.get(server.url + "/health/full").json() == {
        "status": "healthy",
        "database": "connected",
    }
    assert httpx.get(server.url + "/").json()["versions"] == ["v1"]
    polling = httpx.get(server.url + "/api/v1/polling").json()
    assert polling["polling_interval"] == 0.5 and polling["prev_polling"] > 0


def test_queue_lifecycle(server, queue_env):
    with queue_env.http() as http:
        q = http.get(API).json()
        assert q["queue_name"] == queue_env.queue_name and q["queue_id"] == queue_env.queue_id
        assert datetime.fromisoformat(q["created_at"]).tzinfo is not None
        # auth by id works too; wrong password / no auth -> 401
        assert (
            httpx.get(server.url + API, auth=(queue_env.queue_id, queue_env.password)).status_code
            == 200
        )
        bad = httpx.get(server.url + API, auth=(queue_env.queue_name, "nope"))
        # the 1.0.1 detail, plus the machine-readable code beside it
        assert bad.status_code == 401 and bad.json() == {
            "detail": "Invalid credentials",
            "code": "invalid_credentials",
        }
        assert httpx.get(server.url + API).status_code == 401
        # duplicate create -> 409
        dup = httpx.post(
            server.url + "/api/v1/queues",
            json={"queue_name": queue_env.queue_name, "password": "x"},
        )
        assert dup.status_code == 409 and "already exists" in dup.json()["detail"]
        # metadata patch semantics
        r = http.put(API, json={"metadata_update": {"a": {"b": 1}, "c": 2}})
        assert r.json()["metadata"] == {"a": {"b": 1}, "c": 2}
        r = http.put(API, json={"metadata_update": {"a.d": 3}})
        assert r.json()["metadata"] == {"a": {"b": 1, "d": 3}, "c": 2}
        r = http.put(API, json={"metadata_update": {}})
        assert r.json()["metadata"] == {}
        # password change: old password stops working at once (auth cache keyed on hash)
        r = http.put(API, json={"new_password": "new-pw"})
        assert r.status_code == 200
        assert http.get(API).status_code == 401
    new = httpx.Client(base_url=server.url, auth=(queue_env.queue_name, "new-pw"))
    assert new.get(API).status_code == 200
    tid = submit(new, args={"x": 1})
    # without cascade_delete a queue with tasks is not deleted (1.0.1 orphaned them)
    refused = new.delete(API)
    assert refused.status_code == 409 and "1 task(s) and 0 worker(s)" in refused.json()["detail"]
    assert new.get(f"{API}/tasks/{tid}").status_code == 200
    assert new.delete(API, params={"cascade_delete": "true"}).status_code == 204
    assert new.get(API).status_code == 401


def test_concurrent_metadata_patches_all_land(queue_env):
    """Twelve metadata patches of one queue sent at once from six threads: every key is kept
    (the merge is a locked read-modify-write, so no patch overwrites another)."""
    from concurrent.futures import ThreadPoolExecutor

    def patch(i):
        with queue_env.http() as http:
            return http.put(API, json={"metadata_update": {f"k{i}": i}}).status_code

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(patch, range(12))) == {200}
    with queue_env.http() as http:
        assert http.get(API).json()["metadata"] == {f"k{i}": i for i in range(12)}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"queue_name": "bad name", "password": "x"}, "queue_name"),
        ({"queue_name": "ok", "password": ""}, "password"),
        ({"queue_name": "ok"}, "password"),
    ],
)
def test_queue_create_validation_names_field(server, body, field):
    resp = httpx.post(server.url + "/api/v1/queues", json=body)
    assert resp.status_code == 422
    assert any(field in err["loc"] for err in resp.json()["detail"])


def test_submit_get_search_delete(queue_env):
    with queue_env.http() as http:
        tid = submit(http, task_name="t1", args={"a.b": 1, "c": "x"}, metadata={"tag": "m"})
        task = http.get(f"{API}/tasks/{tid}").json()
        assert task["args"] == {"a": {"b": 1}, "c": "x"}
        assert task["status"] == "pending" and task["retries"] == 0 and task["priority"] == 10
        assert task["cmd"] == "" and task["summary"] == {} and task["max_retries"] == 3
        assert task["created_at"].endswith("Z") or "+00:00" in task["created_at"]
        ids = [submit(http, args={"i": i}) for i in range(12)]
        page1 = http.post(f"{API}/tasks/search", json={"limit": 5}).json()["content"]
        page2 = http.post(f"{API}/tasks/search", json={"limit": 5, "offset": 5}).json()["content"]
        assert [t["task_id"] for t in page1 + page2] == [tid, *ids[:9]]
        by_name = http.post(f"{API}/tasks/search", json={"task_name": "t1"}).json()
        assert [t["task_id"] for t in by_name["content"]] == [tid]
        none = http.post(f"{API}/tasks/search", json={"task_name": "zz"}).json()
        assert none == {"notification": None, "found": False, "content": [], "next_cursor": None}
        assert http.delete(f"{API}/tasks/{tid}").status_code == 204
        missing = http.get(f"{API}/tasks/{tid}")
        assert missing.status_code == 404
        assert http.delete(f"{API}/tasks/{tid}").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "Either args or cmd"),
        ({"args": {"a b": 1}}, "args"),
        ({"args": {"x": 1}, "metadata": {"$bad": 1}}, "metadata"),
        ({"args": {"x": 1}, "task_name": "has space"}, "task_name"),
        ({"args": {"x": 1}, "max_retries": None}, "max_retries"),
        ({"args": {"x": 1}, "heartbeat_timeout": -1}, "heartbeat_timeout"),
        ({"args": [1, 2]}, "args"),
    ],
)
def test_submit_rejects_bad_input_with_field_name(queue_env, body, field):
    with queue_env.http() as http:
        resp = http.post(f"{API}/tasks", json=body)
        assert resp.status_code == 422, resp.text
        assert field in resp.text
        assert http.post(f"{API}/tasks/search", json={}).json()["content"] == []


def test_submit_key_conflict_is_400_not_500(queue_env):
    with queue_env.http() as http:
        resp = http.post(f"{API}/tasks", json={"args": {"a": 1, "a.b": 2}})
        assert resp.status_code == 400 and "Conflict" in resp.json()["detail"]


def test_fetch_order_priority_then_least_recently_modified(queue_env):
    with queue_env.http() as http:
        low = submit(http, args={"n": 1}, priority=0)
        m1 = submit(http, args={"n": 2})
        m2 = submit(http, args={"n": 3})
        high = submit(http, args={"n": 4}, priority=20)
        order = [fetch(http)["task_id"] for _ in range(4)]
        assert order == [high, m1, m2, low]
        assert fetch(http) is None


def test_failed_task_goes_behind_untouched_peers(queue_env):
    with queue_env.http() as http:
        a = submit(http, args={"n": 1})
        b = submit(http, args={"n": 2})
        t = fetch(http)
        assert t["task_id"] == a
        http.post(f"{API}/tasks/{a}/status", json={"status": "failed", "run_id": t["run_id"]})
        assert fetch(http)["task_id"] == b
        assert fetch(http)["task_id"] == a


def test_fetch_required_fields_no_more_no_less(queue_env):
    with queue_env.http() as http:
        only_prompt = submit(http, args={"prompt": "a cat"})
        submit(http, args={"prompt": "a dog", "guidance_scale": 7.5})
        submit(http, args={"other": 1})
        t = fetch(http, required_fields=["prompt"])
        assert t["task_id"] == only_prompt
        assert fetch(http, required_fields=["prompt"]) is None
        assert (
            fetch(http, required_fields=["prompt", "guidance_scale"])["args"]["prompt"] == "a dog"
        )
        bad = http.post(f"{API}/tasks/next", json={"required_fields": [".x"]})
        assert bad.status_code == 400 and "required" in bad.json()["detail"].lower()


def test_fetch_extra_filter_in_on_metadata_tags(queue_env):
    with queue_env.http() as http:
        submit(http, args={"prompt": "p1"}, metadata={"tags": ["stable"]})
        tagged = submit(http, args={"prompt": "p2"}, metadata={"tags": ["x", "diffusion"]})
        flt = {"metadata.tags": {"$in": ["experimental", "diffusion"]}}
        assert fetch(http, required_fields=["prompt"], extra_filter=flt)["task_id"] == tagged
        assert fetch(http, required_fields=["prompt"], extra_filter=flt) is None


def test_fetch_eta_max_and_heartbeat_checks(queue_env):
    with queue_env.http() as http:
        submit(http, args={"x": 1})
        r = http.post(f"{API}/tasks/next", json={"eta_max": "3 weeks"})
        assert r.status_code == 400 and "eta_max" in r.json()["detail"]
        r = http.post(f"{API}/tasks/next", json={"start_heartbeat": False})
        assert r.status_code == 400
        t = fetch(http, eta_max="1h30m", start_heartbeat=False)
        assert t["task_timeout"] == 5400.0 and t["last_heartbeat"] is None


def test_worker_checks_on_fetch(queue_env):
    with queue_env.http() as http:
        submit(http, args={"x": 1})
        r = http.post(f"{API}/tasks/next", json={"worker_id": "nope"})
        assert r.status_code == 404
        wid = http.post(f"{API}/workers", json={"worker_name": "w1"}).json()["worker_id"]
        assert (
            http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"}).status_code
            == 200
        )
        r = http.post(f"{API}/tasks/next", json={"worker_id": wid})
        assert r.status_code == 403 and "suspended" in r.json()["detail"]
        http.post(f"{API}/workers/{wid}/status", json={"status": "active"})
        assert fetch(http, worker_id=wid)["worker_id"] == wid


def test_report_and_fencing(queue_env):
    with queue_env.http() as http:
        tid = submit(http, args={"x": 1}, max_retries=2)
        wid = http.post(f"{API}/workers", json={}).json()["worker_id"]
        run1 = fetch(http, worker_id=wid)["run_id"]
        # heartbeat with the current run works; report failed -> pending, retries 1
        assert (
            http.post(
                f"{API}/tasks/{tid}/heartbeat", params={"worker_id": wid, "run_id": run1}
            ).status_code
            == 204
        )
        assert (
            http.post(
                f"{API}/tasks/{tid}/status",
                json={
                    "status": "failed",
                    "worker_id": wid,
                    "run_id": run1,
                    "summary": {"err": "boom"},
                },
            ).status_code
            == 200
        )
        t = http.get(f"{API}/tasks/{tid}").json()
        assert (t["status"], t["retries"], t["worker_id"], t["run_id"]) == (
            "pending",
            1,
            None,
            None,
        )
        run2 = fetch(http, worker_id=wid)["run_id"]
        assert run2 != run1
        # stale run: heartbeat and report refused with 409, nothing changes
        assert http.post(f"{API}/tasks/{tid}/heartbeat", params={"run_id": run1}).status_code == 409
        stale = http.post(f"{API}/tasks/{tid}/status", json={"status": "success", "run_id": run1})
        assert stale.status_code == 409
        assert http.get(f"{API}/tasks/{tid}").json()["status"] == "running"
        # second failure exhausts max_retries=2 -> failed; the worker is charged once for the
        # task (the same task failing again on the same worker counts once)
        http.post(f"{API}/tasks/{tid}/status", json={"status": "failed", "run_id": run2})
        t = http.get(f"{API}/tasks/{tid}").json()
        assert (t["status"], t["retries"], t["summary"]) == ("failed", 2, {"err": "boom"})
        w = http.get(f"{API}/workers/{wid}").json()
        assert w["retries"] == 1 and w["worker_id"] == wid and w["_id"] == wid
        # heartbeat on a non-running task -> 404; success from failed -> 400
        assert http.post(f"{API}/tasks/{tid}/heartbeat").status_code == 404
        r = http.post(f"{API}/tasks/{tid}/status", json={"status": "success"})
        assert r.status_code == 400
        r = http.post(f"{API}/tasks/{tid}/status", json={"status": "running"})
        assert r.status_code == 422
        assert (
            http.post(f"{API}/tasks/{tid}/status", json={"status": "cancelled"}).status_code == 200
        )


def test_wrong_worker_report_is_409(queue_env):
    with queue_env.http() as http:
        tid = submit(http, args={"x": 1})
        w1 = http.post(f"{API}/workers", json={}).json()["worker_id"]
        w2 = http.post(f"{API}/workers", json={}).json()["worker_id"]
        fetch(http, worker_id=w1)
        r = http.post(f"{API}/tasks/{tid}/status", json={"status": "success", "worker_id": w2})
        assert r.status_code == 409
        r = http.post(f"{API}/tasks/{tid}/status", json={"status": "success", "worker_id": w1})
        assert r.status_code == 200


def test_worker_crashes_after_max_retries_and_reactivation(queue_env):
    with queue_env.http() as http:
        wid = http.post(f"{API}/workers", json={"max_retries": 2}).json()["worker_id"]
        # a lone worker (no success elsewhere): crashed at twice its max_retries
        for i in range(4):
            submit(http, args={"i": i}, max_retries=1)
            t = fetch(http, worker_id=wid)
            http.post(
                f"{API}/tasks/{t['task_id']}/status",
                json={"status": "failed", "run_id": t["run_id"]},
            )
            w = http.get(f"{API}/workers/{wid}").json()
            assert w["status"] == ("crashed" if i == 3 else "active"), (i, w)
        w = http.post(f"{API}/workers/search", json={"worker_id": wid}).json()["content"][0]
        assert (w["status"], w["retries"]) == ("crashed", 4)
        submit(http, args={"i": 9})
        assert http.post(f"{API}/tasks/next", json={"worker_id": wid}).status_code == 403
        r = http.post(f"{API}/workers/{wid}/status", json={"status": "crashed"})
        assert r.status_code == 400
        http.post(f"{API}/workers/{wid}/status", json={"status": "active"})
        w = http.get(f"{API}/workers/{wid}").json()
        assert (w["status"], w["retries"]) == ("active", 0)
        r = http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"})
        assert r.status_code == 200
        r = http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"})
        assert r.status_code == 400


def test_failure_recorded_even_when_worker_is_suspended_or_deleted(queue_env):
    """In 1.0.1 the report failed because the worker could not be charged."""
    with queue_env.http() as http:
        for action in ("suspend", "delete"):
            tid = submit(http, args={"a": action})
            wid = http.post(f"{API}/workers", json={}).json()["worker_id"]
            run = fetch(http, worker_id=wid, extra_filter={"args.a": action})["run_id"]
            if action == "suspend":
                http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"})
            else:
                assert http.delete(f"{API}/workers/{wid}").status_code == 204
            r = http.post(f"{API}/tasks/{tid}/status", json={"status": "failed", "run_id": run})
            assert r.status_code == 200, r.text
            t = http.get(f"{API}/tasks/{tid}").json()
            assert (t["status"], t["retries"]) == ("pending", 1)


def test_update_tasks_batch_is_all_or_nothing(queue_env):
    with queue_env.http() as http:
        a = submit(http, args={"x": 1, "y": {"z": 2}}, task_name="a")
        r = http.put(
            f"{API}/tasks",
            params={"reset_pending": False},
            json=[
                {"task_id": a, "args": {"y.w": 3}, "priority": 5},
            ],
        )
        assert r.status_code == 200
        t = r.json()["content"][0]
        assert t["args"] == {"x": 1, "y": {"z": 2, "w": 3}} and t["priority"] == 5
        r = http.put(
            f"{API}/tasks",
            params={"reset_pending": False},
            json=[
                {"_id": a, "task_name": "renamed"},
                {"task_id": "missing", "task_name": "zz"},
            ],
        )
        assert r.status_code == 400 and "missing" in r.json()["detail"]
        assert http.get(f"{API}/tasks/{a}").json()["task_name"] == "a"
        # replace_fields replaces the whole dict; new args shape is fetchable by it
        r = http.put(
            f"{API}/tasks",
            params={"reset_pending": False},
            json=[{"task_id": a, "args": {"only": 1}, "replace_fields": ["args"]}],
        )
        assert r.json()["content"][0]["args"] == {"only": 1}
        assert fetch(http, required_fields=["only"])["task_id"] == a
        # invalid manual transition refused, nothing written
        r = http.put(
            f"{API}/tasks",
            params={"reset_pending": False},
            json=[{"task_id": a, "status": "success", "priority": 99}],
        )
        assert r.status_code == 200  # running -> success is allowed
        r = http.put(
            f"{API}/tasks",
            params={"reset_pending": False},
            json=[{"task_id": a, "status": "running", "priority": 1}],
        )
        assert r.status_code == 400
        assert http.get(f"{API}/tasks/{a}").json()["priority"] == 99
        # reset_pending (server default) -> pending, retries 0, worker cleared
        r = http.put(f"{API}/tasks", json=[{"task_id": a}])
        t = r.json()["content"][0]
        assert (t["status"], t["retries"], t["worker_id"]) == ("pending", 0, None)
        assert http.put(f"{API}/tasks", json=[]).json() == {
            "notification": None,
            "found": False,
            "content": [],
            "next_cursor": None,
        }


def test_heartbeat_timeout_is_swept(queue_env):
    with queue_env.http() as http:
        tid = submit(http, args={"x": 1}, max_retries=2)
        wid = http.post(f"{API}/workers", json={}).json()["worker_id"]
        fetch(http, worker_id=wid, heartbeat_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            t = http.get(f"{API}/tasks/{tid}").json()
            if t["status"] != "running":
                break
            time.sleep(0.1)
        assert (t["status"], t["retries"], t["worker_id"]) == ("pending", 1, None)
        assert "timed out" in t["summary"]["labtasker_error"]
        assert http.get(f"{API}/workers/{wid}").json()["retries"] == 1


def test_search_filters_and_sort(queue_env):
    with queue_env.http() as http:
        for i in range(6):
            submit(
                http, args={"lr": i / 10, "name": f"n{i}"}, metadata={"k": i % 2}, priority=i % 3
            )

        def search(**body):
            r = http.post(f"{API}/tasks/search", json=body)
            assert r.status_code == 200, r.text
            return [t["args"]["lr"] for t in r.json()["content"]]

        assert search(extra_filter={"args.lr": {"$gt": 0.25}}) == [0.3, 0.4, 0.5]
        assert search(extra_filter={"args.lr": {"$in": [0.1, 0.2, "0.3"]}}) == [0.1, 0.2]
        assert search(extra_filter={"$or": [{"metadata.k": 1}, {"args.name": "n0"}]}) == [
            0.0,
            0.1,
            0.3,
            0.5,
        ]
        assert search(extra_filter={"args.name": {"$regex": "^N[12]$", "$options": "i"}}) == [
            0.1,
            0.2,
        ]
        assert search(extra_filter={"args.missing": None}) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
        assert search(extra_filter={"args.lr": {"$exists": False}}) == []
        assert search(extra_filter={"priority": 2}) == [0.2, 0.5]
        assert search(sort=[["args.lr", -1]], limit=2) == [0.5, 0.4]
        assert search(sort=[["priority", -1], ["args.lr", 1]], limit=3) == [0.2, 0.5, 0.1]
        since = datetime(2000, 1, 1, tzinfo=timezone.utc).isoformat()
        assert len(search(extra_filter={"created_at": {"$gt": {"_dt": since}}})) == 6
        for bad in (
            {"$where": "1"},
            {"args.x": {"$function": {}}},
            {"args.x": {"$foo": 1}},
            {"args.x') OR 1=1 --": 1},
        ):
            r = http.post(f"{API}/tasks/search", json={"extra_filter": bad})
            assert r.status_code == 400, r.text
        r = http.post(f"{API}/tasks/search", json={"sort": [["args.lr", 2]]})
        assert r.status_code == 422


def test_queues_are_isolated(server, queue_env):
    other = httpx.post(
        server.url + "/api/v1/queues",
        json={"queue_name": queue_env.queue_name + "-b", "password": "pw"},
    )
    assert other.status_code == 201
    with queue_env.http() as http:
        mine = submit(http, args={"x": 1})
    b = httpx.Client(base_url=server.url, auth=(queue_env.queue_name + "-b", "pw"))
    assert b.get(f"{API}/tasks/{mine}").status_code == 404
    assert (
        b.post(
            f"{API}/tasks/search", json={"extra_filter": {"queue_id": queue_env.queue_id}}
        ).json()["content"]
        == []
    )
    assert b.post(f"{API}/tasks/next", json={}).json()["found"] is False
    assert b.delete(f"{API}/tasks/{mine}").status_code == 404
