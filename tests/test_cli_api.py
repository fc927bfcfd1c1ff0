"""Tests of the client core (``labtasker.client.api`` and ``config``) in-process, against the
real server fixture: error conversion, run fencing (``TaskNotOwned``), ``WorkerSuspended``,
retries, the global client following config changes, and datetime filters."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from labtasker.client import api
from labtasker.client.config import (
    get_client_config,
    get_labtasker_client_config_path,
    get_labtasker_root,
)
from labtasker.exceptions import (
    ConfigNotFoundError,
    LabtaskerConnectError,
    LabtaskerHTTPStatusError,
    LabtaskerRuntimeError,
    LabtaskerValueError,
    TaskNotOwned,
    WorkerSuspended,
)
from labtasker.wire import TaskUpdateRequest


@pytest.fixture(autouse=True)
def _fresh_client():
    api.close_httpx_client()
    yield
    api.close_httpx_client()
    api.set_retry_policy()


def test_root_resolved_at_call_time(tmp_path, monkeypatch):
    monkeypatch.delenv("LABTASKER_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert get_labtasker_root() == tmp_path / ".labtasker"
    monkeypatch.setenv("LABTASKER_ROOT", str(tmp_path / "other"))
    assert get_labtasker_client_config_path() == tmp_path / "other" / "client.toml"
    with pytest.raises(ConfigNotFoundError, match="labtasker init"):
        get_client_config()


def test_queue_and_task_roundtrip(queue_env):
    assert api.health_check().status == "healthy"
    queue = api.get_queue()
    assert queue.queue_id == queue_env.queue_id and queue.created_at.tzinfo is not None

    tid = api.submit_task(task_name="t", args={"a.b": 1, "c": 2}, metadata={"m": 1}).task_id
    task = api.get_task(tid)
    assert task.args == {"a": {"b": 1}, "c": 2} and task.status == "pending"

    with pytest.raises(LabtaskerValueError, match="Either cmd or args"):
        api.submit_task()

    page = api.ls_tasks(task_id=tid)
    assert page.found and [t.task_id for t in page.content] == [tid]
    assert api.ls_tasks(extra_filter="args.a.b == 1").content[0].task_id == tid
    assert api.ls_tasks(extra_filter="{'metadata.m': 1}").content[0].task_id == tid
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert api.ls_tasks(extra_filter={"created_at": {"$gt": later}}).content == []
    earlier = datetime.now(timezone.utc) - timedelta(hours=1)
    assert len(api.ls_tasks(extra_filter={"created_at": {"$gt": earlier}}).content) == 1

    res = api.update_tasks([TaskUpdateRequest(task_id=tid, priority=20), {"task_id": tid}])
    assert res.content[0].priority == 20

    api.delete_task(tid)
    with pytest.raises(LabtaskerHTTPStatusError) as info:
        api.get_task(tid)
    assert info.value.status_code == 404 and "not found" in str(info.value).lower()
    assert isinstance(info.value, httpx.HTTPStatusError)


def test_numbers_json_cannot_store_are_refused_not_stored_as_null(queue_env):
    """NaN and infinity in args or metadata (at any depth) are refused with a message naming
    where they are, by submit_task, submit_tasks and submit_sweep; nothing reaches the queue
    (pydantic's JSON dump would have stored them as null)."""
    import labtasker
    from labtasker.sweep import SweepError

    nan, inf = float("nan"), float("inf")
    for kwargs, where in [
        ({"args": {"x": nan}}, "args.x is nan"),
        ({"args": {"a": {"b": [1, -inf]}}}, r"args.a.b\[1\] is -inf"),
        ({"args": {"ok": 1}, "metadata": {"m": inf}}, "metadata.m is inf"),
        ({"cmd": "echo", "metadata": {"m": [nan]}}, r"metadata.m\[0\] is nan"),
    ]:
        with pytest.raises(LabtaskerValueError, match=f"^{where}, a number JSON cannot store"):
            labtasker.submit_task(**kwargs)
    with pytest.raises(LabtaskerValueError, match=r"^tasks\[1\].args.lr is nan, a number JSON"):
        labtasker.submit_tasks([{"args": {"lr": 0.1}}, {"args": {"lr": nan}}])
    with pytest.raises(LabtaskerValueError, match=r"^tasks\[0\].metadata.m.k is inf"):
        labtasker.submit_tasks([{"args": {"lr": 0.1}, "metadata": {"m": {"k": inf}}}])
    with pytest.raises(SweepError, match="^fixed args: x is inf, a number JSON cannot store"):
        labtasker.submit_sweep(grid={"lr": [1]}, fixed={"x": inf})
    with pytest.raises(SweepError, match="^fixed args: m.n is nan"):
        labtasker.submit_sweep(grid={"lr": [1]}, fixed={"m": {"n": nan}})
    with pytest.raises(LabtaskerValueError, match="^metadata.tag is nan, a number JSON"):
        labtasker.submit_sweep(grid={"lr": [1]}, metadata={"tag": nan})
    assert api.ls_tasks(limit=10).content == []
    # finite numbers, large and small, still go through
    tid = labtasker.submit_task(args={"x": 1e308, "y": -5e-324}).task_id
    back = api.get_task(tid).args
    # (PostgreSQL's jsonb hands 1e308 back as the whole number it equals, an int)
    assert (float(back["x"]), back["y"]) == (1e308, -5e-324), back
    # the other calls that carry free-form documents: updates, workers, queues, reports
    with pytest.raises(LabtaskerValueError, match=r"^task_updates\[0\].summary.loss is nan"):
        api.update_tasks([{"task_id": tid, "summary": {"loss": nan}}])
    with pytest.raises(LabtaskerValueError, match="^metadata.gpu is inf"):
        api.create_worker(worker_name="w", metadata={"gpu": inf})
    with pytest.raises(LabtaskerValueError, match="^metadata_update.m is nan"):
        api.update_queue(metadata_update={"m": nan})
    with pytest.raises(LabtaskerValueError, match="^summary.loss is nan"):
        api.report_task_status(tid, "failed", summary={"loss": nan})
    task = api.get_task(tid)
    assert (task.status, task.summary) == ("pending", {})
    assert api.ls_workers().content == [] and api.get_queue().metadata == {}


def test_iter_tasks_pages_through_everything(queue_env):
    ids = {api.submit_task(args={"i": i}).task_id for i in range(5)}
    assert {t.task_id for t in api.iter_tasks(page_size=2)} == ids
    assert len(list(api.iter_tasks(page_size=2, offset=3))) == 2


def test_iter_workers_pages_by_offset(queue_env):
    """Worker listings have no cursor: pages of ``page_size`` until a short page."""
    requests: list[dict] = []
    client = httpx.Client(
        base_url=queue_env.url,
        auth=(queue_env.queue_name, queue_env.password),
        event_hooks={"request": [lambda r: requests.append(json.loads(r.content))]},
    )
    with client:
        ids = [api.create_worker(worker_name=f"w{i}", client=client) for i in range(5)]
        requests.clear()
        order = ["created_at:asc"]
        got = [w.worker_id for w in api.iter_workers(page_size=2, sort=order, client=client)]
        assert got == ids
        assert [r["offset"] for r in requests] == [0, 2, 4]  # 2 + 2 + 1: the short page ends it
        requests.clear()
        tail = api.iter_workers(page_size=2, offset=3, sort=order, client=client)
        assert [w.worker_id for w in tail] == ids[3:]
        assert [r["offset"] for r in requests] == [3, 5]  # a full last page needs one more
        page = api.ls_workers(limit=2, offset=1, sort=order, client=client)
        assert [w.worker_id for w in page.content] == ids[1:3]
        gen = api.iter_workers(status="sleeping", client=client)  # errors when iterated
        with pytest.raises(ValueError):
            next(gen)


def test_fetch_report_heartbeat_fencing(queue_env):
    tid = api.submit_task(args={"x": 1}).task_id
    wid = api.create_worker(worker_name="w")
    fetched = api.fetch_task(worker_id=wid, required_fields=["x"])
    assert fetched.found and fetched.task.task_id == tid
    run_id = fetched.task.run_id

    api.refresh_task_heartbeat(tid, worker_id=wid, run_id=run_id)
    with pytest.raises(TaskNotOwned) as info:
        api.refresh_task_heartbeat(tid, worker_id=wid, run_id="stale-run")
    assert info.value.status_code == 409
    with pytest.raises(TaskNotOwned):
        api.report_task_status(tid, "success", worker_id=wid, run_id="stale-run")

    api.report_task_status(tid, "success", summary={"acc": 0.9}, worker_id=wid, run_id=run_id)
    task = api.get_task(tid)
    assert task.status == "success" and task.summary == {"acc": 0.9}

    # the task is no longer running: heartbeat refused with 404 -> TaskNotOwned
    with pytest.raises(TaskNotOwned) as info:
        api.refresh_task_heartbeat(tid, worker_id=wid, run_id=run_id)
    assert info.value.status_code == 404
    assert isinstance(info.value, LabtaskerRuntimeError)

    assert not api.fetch_task(worker_id=wid).found
    with pytest.raises(LabtaskerValueError, match="Eta max"):
        api.fetch_task(start_heartbeat=False)
    with pytest.raises(LabtaskerValueError, match="eta_max"):
        api.fetch_task(eta_max="1 fortnight")


def test_cancel_task_pending_running_and_ended(queue_env):
    pending = api.submit_task(args={"p": 1}).task_id
    assert api.cancel_task(pending) == "pending"
    assert api.get_task(pending).status == "cancelled"
    assert api.cancel_task(pending) == "cancelled"  # nothing left to do

    running = api.submit_task(args={"x": 1}).task_id
    wid = api.create_worker()
    run = api.fetch_task(worker_id=wid, required_fields=["x"]).task
    assert run.task_id == running
    assert api.cancel_task(running) == "running"
    task = api.get_task(running)
    assert (task.status, task.worker_id, task.run_id) == ("cancelled", None, None)
    # the run lost its task: its heartbeat and its late report are refused
    with pytest.raises(TaskNotOwned) as info:
        api.refresh_task_heartbeat(running, worker_id=wid, run_id=run.run_id)
    assert info.value.status_code == 404
    with pytest.raises(TaskNotOwned):
        api.report_task_status(running, "failed", worker_id=wid, run_id=run.run_id)
    assert api.get_task(running).status == "cancelled"
    assert api.get_worker(wid).retries == 0  # cancelling does not charge the worker

    done = api.submit_task(args={"y": 1}).task_id
    run = api.fetch_task(worker_id=wid, required_fields=["y"]).task
    api.report_task_status(done, "success", summary={"acc": 1}, run_id=run.run_id)
    assert api.cancel_task(done) == "success"
    task = api.get_task(done)
    assert (task.status, task.summary) == ("success", {"acc": 1})  # result kept

    with pytest.raises(LabtaskerHTTPStatusError) as info:
        api.cancel_task("no-such-task")
    assert info.value.status_code == 404


@pytest.mark.parametrize("server_has_run_ids", [True, False], ids=["run_id", "worker_id"])
def test_cancel_task_does_not_overwrite_a_run_that_ends_meanwhile(queue_env, server_has_run_ids):
    """The run finishes between cancel_task's read and its cancel: the fenced cancel is
    refused, the task is read again and its success is kept. Without run ids (a 1.0.1
    server, simulated by hiding them) the fence is the worker id."""
    tid = api.submit_task(args={"x": 1}).task_id
    wid = api.create_worker()
    run = api.fetch_task(worker_id=wid, required_fields=["x"]).task
    status_path = f"/api/v1/queues/me/tasks/{tid}/status"
    cancels: list[dict] = []

    class RunEndsFirst(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path == status_path:
                cancels.append(json.loads(request.content))
                if len(cancels) == 1:  # the job reports success just before our cancel lands
                    api.report_task_status(tid, "success", worker_id=wid, run_id=run.run_id)
            response = super().handle_request(request)
            if not server_has_run_ids and request.method == "GET":
                response.read()
                data = response.json()
                data.pop("run_id", None)
                return httpx.Response(response.status_code, json=data, request=request)
            return response

    client = httpx.Client(
        base_url=queue_env.url,
        auth=(queue_env.queue_name, queue_env.password),
        transport=RunEndsFirst(),
    )
    with client:
        assert api.cancel_task(tid, client=client) == "success"
    assert api.get_task(tid).status == "success"
    assert len(cancels) == 1 and cancels[0]["status"] == "cancelled"
    if server_has_run_ids:
        assert cancels[0]["run_id"] == run.run_id
    else:
        assert "run_id" not in cancels[0] and cancels[0]["worker_id"] == wid


class _Recording(httpx.HTTPTransport):
    """A real transport that notes each request's method and path; ``refuse`` answers a
    path with 405 without sending it, as a server without that route (labtasker 1.0.1,
    whose ``/tasks/{task_id}`` takes only GET and DELETE) does."""

    def __init__(self, refuse: str | None = None):
        super().__init__()
        self.seen: list[tuple[str, str]] = []
        self.refuse = refuse

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        if request.url.path == self.refuse:
            return httpx.Response(405, json={"detail": "Method Not Allowed"}, request=request)
        return super().handle_request(request)


def _client(queue_env, transport: httpx.BaseTransport) -> httpx.Client:
    return httpx.Client(
        base_url=queue_env.url,
        auth=(queue_env.queue_name, queue_env.password),
        transport=transport,
    )


def _cancel_cases(queue_env) -> tuple[list[str], str, str, str]:
    """1,200 pending tasks, one running (its run, worker), one that succeeded."""
    pending = api.submit_tasks([{"args": {"i": i}} for i in range(1200)])
    running = api.submit_task(args={"r": 1}).task_id
    done = api.submit_task(args={"d": 1}).task_id
    wid = api.create_worker()
    run = api.fetch_task(worker_id=wid, required_fields=["d"]).task
    api.report_task_status(done, "success", summary={"acc": 1}, run_id=run.run_id)
    run = api.fetch_task(worker_id=wid, required_fields=["r"]).task
    assert run.task_id == running
    return pending, running, done, run.run_id


def _check_cancelled(pending, running, done, run_id):
    counts = {k: n for k, n in api.count_tasks().counts().items() if n}
    assert counts == {"cancelled": 1201, "success": 1}
    with pytest.raises(TaskNotOwned):  # the run is fenced off: its loop stops the job
        api.refresh_task_heartbeat(running, run_id=run_id)
    assert api.ls_task_runs(running).content[0].status == "cancelled"
    assert api.ls_task_runs(running).content[0].charged is False
    task = api.get_task(done)
    assert (task.status, task.summary) == ("success", {"acc": 1})


def test_cancel_tasks_sends_1000_ids_a_request(queue_env):
    """``cancel_tasks`` with 1,203 ids (one unknown, one repeated) makes two requests to
    ``/tasks/cancel`` and no other (``cancel_task`` per id made two per id): pending and
    running tasks are cancelled, the running one's run is fenced off and ended as cancelled
    without charging its worker, an ended task is unchanged; the answer is the status each
    had, ``None`` for the unknown id, in the order given."""
    pending, running, done, run_id = _cancel_cases(queue_env)
    asked = [running, done, "no-such-task", *pending, pending[0]]
    transport = _Recording()
    with _client(queue_env, transport) as client:
        before = api.cancel_tasks(asked, client=client)
    assert list(before) == [running, done, "no-such-task", *pending]
    assert before[running] == "running" and before[done] == "success"
    assert before["no-such-task"] is None
    assert {before[t] for t in pending} == {"pending"}
    assert transport.seen == [("POST", "/api/v1/queues/me/tasks/cancel")] * 2
    _check_cancelled(pending, running, done, run_id)
    # again: every task has ended now, nothing changes
    again = api.cancel_tasks([running, *pending[:3]])
    assert set(again.values()) == {"cancelled"}
    assert api.cancel_tasks([]) == {}


def test_cancel_tasks_falls_back_to_one_by_one(queue_env):
    """Against a server without ``/tasks/cancel`` (405), ``cancel_tasks`` cancels through
    ``cancel_task`` per id, with the same answer."""
    pending, running, done, run_id = _cancel_cases(queue_env)
    asked = [running, done, "no-such-task", *pending]
    transport = _Recording(refuse="/api/v1/queues/me/tasks/cancel")
    with _client(queue_env, transport) as client:
        before = api.cancel_tasks(asked, client=client)
    assert before == {running: "running", done: "success", "no-such-task": None} | {
        t: "pending" for t in pending
    }
    assert transport.seen[0] == ("POST", "/api/v1/queues/me/tasks/cancel")
    assert ("GET", f"/api/v1/queues/me/tasks/{pending[0]}") in transport.seen
    _check_cancelled(pending, running, done, run_id)


def test_cancel_route_bounds(queue_env):
    """``POST /tasks/cancel`` takes 1 to 1,000 ids of at most 100 characters: 422 naming
    ``task_ids`` and the limit otherwise, and nothing is cancelled."""
    tid = api.submit_task(args={"x": 1}).task_id
    with queue_env.http() as http:
        for ids, limit in (([], "at least 1"), ([tid] * 1001, "at most 1000"),
                           (["x" * 101], "at most 100")):  # fmt: skip
            resp = http.post("/api/v1/queues/me/tasks/cancel", json={"task_ids": ids})
            assert resp.status_code == 422, resp.text
            assert "task_ids" in resp.text and limit in resp.text, resp.text
        # a repeated id counts once
        resp = http.post("/api/v1/queues/me/tasks/cancel", json={"task_ids": [tid] * 1000})
        assert resp.status_code == 200, resp.text
        assert resp.json()["results"] == [{"task_id": tid, "before": "pending"}]
    assert api.get_task(tid).status == "cancelled"
    # an id no task can have is answered without a request
    assert api.cancel_tasks(["y" * 101]) == {"y" * 101: None}


def test_worker_suspended_and_fsm_errors(queue_env):
    api.submit_task(args={"x": 1})
    wid = api.create_worker()
    assert isinstance(wid, str)
    assert api.get_worker(wid).status == "active"
    api.report_worker_status(wid, "suspended")
    with pytest.raises(WorkerSuspended):
        api.fetch_task(worker_id=wid)
    with pytest.raises(LabtaskerRuntimeError, match="FSM invalid transition"):
        api.report_worker_status(wid, "suspended")
    with pytest.raises(LabtaskerValueError):
        api.report_worker_status(wid, "sleeping")
    api.report_worker_status(wid, "active")
    assert api.fetch_task(worker_id=wid).found
    assert [w.worker_id for w in api.ls_workers(status="active").content] == [wid]
    api.delete_worker(wid)
    with pytest.raises(LabtaskerHTTPStatusError):
        api.get_worker(wid)


def test_global_client_follows_config_changes(queue_env, tmp_path, monkeypatch):
    assert api.get_queue().queue_id == queue_env.queue_id
    # a second queue in another root: switching LABTASKER_ROOT switches the credentials
    other = httpx.post(
        queue_env.url + "/api/v1/queues", json={"queue_name": queue_env.queue_name + "x",
                                                "password": "pw2"},
    ).json()["queue_id"]  # fmt: skip
    root2 = tmp_path / "root2"
    root2.mkdir()
    (root2 / "client.toml").write_text(
        f'[endpoint]\napi_base_url = "{queue_env.url}/"\n'
        f'[queue]\nqueue_name = "{queue_env.queue_name}x"\npassword = "pw2"\n'
    )
    monkeypatch.setenv("LABTASKER_ROOT", str(root2))
    assert api.get_queue().queue_id == other
    # editing the file is picked up too (wrong password -> 401)
    time.sleep(0.01)
    (root2 / "client.toml").write_text(
        f'[endpoint]\napi_base_url = "{queue_env.url}/"\n'
        f'[queue]\nqueue_name = "{queue_env.queue_name}x"\npassword = "wrong"\n'
    )
    with pytest.raises(LabtaskerHTTPStatusError) as info:
        api.get_queue()
    assert info.value.status_code == 401


def test_connect_error_is_retried_then_converted(queue_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    api.set_retry_policy(attempts=3, initial=0.05, jitter=0.0)
    t0 = time.monotonic()
    with pytest.raises(LabtaskerConnectError, match="Cannot connect"):
        api.ls_tasks(client=client)
    assert 0.1 <= time.monotonic() - t0 < 5  # two back-off waits: 0.05 s + 0.1 s


def test_transient_503_is_retried_for_safe_calls(queue_env):
    calls = {"n": 0}
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(503, json={"detail": "busy"})
        return real.handle_request(request)

    client = httpx.Client(
        base_url=queue_env.url,
        auth=(queue_env.queue_name, queue_env.password),
        transport=httpx.MockTransport(handler),
    )
    api.set_retry_policy(attempts=5, initial=0.01, jitter=0.0)
    assert api.get_queue(client=client).queue_id == queue_env.queue_id
    assert calls["n"] == 3
    # a submit carries an idempotency key, so it is retried like a read
    calls["n"] = 0
    assert api.submit_task(args={"a": 1}, client=client).task_id
    assert calls["n"] == 3
    # a call that is not safe to repeat (creating a worker) is not retried on a plain 503
    calls["n"] = 0
    with pytest.raises(LabtaskerHTTPStatusError) as info:
        api.create_worker(client=client)
    assert info.value.status_code == 503 and calls["n"] == 1


class _LosesCombinedAnswer(_Recording):
    """Sends every request; the answer of a report that claims the next task is lost on the
    way back (``httpx.ReadTimeout`` after the server has handled it)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if b'"claim_next"' in request.content:
            response.close()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_report_and_claim_next(queue_env):
    """``report_task_and_claim_next`` reports and answers the next claim in one request
    (``found`` False when nothing matches). When the answer is lost, the report is sent
    again alone and counts as done (the task already has the reported status), the answer
    is ``None``; the combined request itself is not repeated."""
    tids = api.submit_tasks([{"args": {"rcn": i}} for i in range(3)])
    wid = api.create_worker()
    claim = {"worker_id": wid, "required_fields": ["rcn"]}
    first = api.fetch_task(**claim).task
    transport = _Recording()
    with _client(queue_env, transport) as client:
        nxt = api.report_task_and_claim_next(
            first.task_id, "success", {"acc": 1}, wid, first.run_id, claim=claim, client=client
        )
    assert transport.seen == [("POST", f"/api/v1/queues/me/tasks/{first.task_id}/status")]
    assert nxt is not None and nxt.found and nxt.task is not None
    second = nxt.task
    assert second.task_id in tids and second.task_id != first.task_id
    assert api.get_task(second.task_id).run_id == second.run_id
    assert api.get_task(first.task_id).summary == {"acc": 1}
    # the answer is lost: the report alone again, found stored, no second claim
    lossy = _LosesCombinedAnswer()
    with _client(queue_env, lossy) as client:
        nxt = api.report_task_and_claim_next(
            second.task_id, "success", None, wid, second.run_id, claim=claim, client=client
        )
    assert nxt is None
    status = f"/api/v1/queues/me/tasks/{second.task_id}/status"
    assert lossy.seen[:2] == [("POST", status), ("POST", status)], lossy.seen
    assert ("POST", "/api/v1/queues/me/tasks/next") not in lossy.seen
    assert api.get_task(second.task_id).status == "success"
    # the lost answer's claim holds the third task (its lease runs out as a lost fetch's)
    third = next(t for t in tids if t not in (first.task_id, second.task_id))
    assert api.get_task(third).status == "running"
    # a bad claim is refused before anything is sent
    with pytest.raises(LabtaskerValueError):
        api.report_task_and_claim_next(
            third, "success", None, wid, None, claim={"start_heartbeat": False}
        )
