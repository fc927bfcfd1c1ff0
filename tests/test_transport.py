"""``labtasker.client.transport``: error codes beside ``detail`` (real server), retries of the
server's ``503 storage_unavailable`` with ``Retry-After``, a stop event ending the back-off,
and only a labtasker answer counting as "the run is gone"."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from labtasker import error_codes
from labtasker.client import api
from labtasker.client.transport import LabtaskerClient, RetryPolicy, error_code
from labtasker.exceptions import LabtaskerHTTPStatusError, LabtaskerNetworkError, TaskNotOwned

API = "/api/v1/queues/me"


def _client(queue_env, **kw) -> LabtaskerClient:
    return LabtaskerClient.connect(queue_env.url, queue_env.queue_name, queue_env.password, **kw)


def test_error_answers_carry_a_code_beside_detail(queue_env):
    with _client(queue_env) as lc:
        http = lc.http
        tid = http.post(f"{API}/tasks", json={"args": {"x": 1}}).json()["task_id"]
        cases = {
            "task_not_found": http.get(f"{API}/tasks/nope"),
            "task_not_running": http.post(f"{API}/tasks/{tid}/heartbeat"),
            "route_not_found": http.get(f"{API}/no-such-route"),
            "invalid_request": http.post(f"{API}/tasks/search", json={"limit": -1}),
            "worker_not_found": http.get(f"{API}/workers/nope"),
        }
        bad = httpx.get(queue_env.url + API, auth=(queue_env.queue_name, "wrong"))
        cases["invalid_credentials"] = bad
        for code, response in cases.items():
            assert response.is_error and "detail" in response.json(), response.text
            assert error_code(response) == code, (code, response.text)
        wid = http.post(f"{API}/workers", json={}).json()["worker_id"]
        assert (
            http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"}).status_code
            == 200
        )
        again = http.post(f"{API}/workers/{wid}/status", json={"status": "suspended"})
        assert again.status_code == 400 and error_code(again) == "invalid_transition"
        # the function API decides by that code
        with pytest.raises(Exception, match="FSM invalid transition"):
            api.report_worker_status(wid, "suspended", client=lc)
        with pytest.raises(LabtaskerHTTPStatusError) as info:
            api.get_task("nope", client=lc)
        assert info.value.code == "task_not_found" and info.value.status_code == 404


def _flaky(queue_env, fail_first: int, response: httpx.Response):
    """A client whose first ``fail_first`` requests get ``response``; the rest reach the
    real server. Returns ``(client, calls)``."""
    calls = {"n": 0, "times": []}
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        calls["times"].append(time.monotonic())
        if calls["n"] <= fail_first:
            return response
        return real.handle_request(request)

    http = httpx.Client(
        base_url=queue_env.url,
        auth=(queue_env.queue_name, queue_env.password),
        transport=httpx.MockTransport(handler),
    )
    policy = RetryPolicy(attempts=5, initial=0.01, max_wait=2.0, jitter=0.0, budget=10)
    return LabtaskerClient(http, retry_policy=policy), calls


def test_storage_unavailable_is_retried_even_for_submit_and_honours_retry_after(queue_env):
    busy = httpx.Response(
        503,
        headers={"Retry-After": "0.3"},
        json={
            "detail": "Database unavailable (disk full)",
            "code": error_codes.STORAGE_UNAVAILABLE,
        },
    )
    lc, calls = _flaky(queue_env, 2, busy)
    tid = api.submit_task(args={"a": 1}, client=lc).task_id  # not a "safe" call, retried
    assert calls["n"] == 3 and api.get_task(tid, client=lc).status == "pending"
    first = calls["times"][:3]
    gaps = [b - a for a, b in zip(first, first[1:], strict=False)]
    assert min(gaps) >= 0.28  # waited Retry-After, not the 0.01 s back-off
    # a 503 without the labtasker code (a proxy) is retried too: a submit carries an
    # Idempotency-Key, so repeating it can never make a second task
    lc, calls = _flaky(queue_env, 1, httpx.Response(503, text="<html>busy</html>"))
    tid = api.submit_task(args={"a": 2}, client=lc).task_id
    assert calls["n"] == 2 and api.get_task(tid, client=lc).args == {"a": 2}


def test_too_many_password_checks_is_retried_for_every_call(queue_env):
    """429 ``too_many_requests`` (the server's password checks were saturated): refused
    before anything ran, so even a report is retried, after ``Retry-After``."""
    busy = httpx.Response(
        429,
        headers={"Retry-After": "0"},
        json={
            "detail": "Too many password checks in progress",
            "code": error_codes.TOO_MANY_REQUESTS,
        },
    )
    lc, calls = _flaky(queue_env, 2, busy)
    tid = api.submit_task(args={"a": 3}, client=lc).task_id
    assert calls["n"] == 3 and api.get_task(tid, client=lc).args == {"a": 3}
    # a 429 without our code (a proxy's rate limit) is not ours to repeat blindly
    lc, calls = _flaky(queue_env, 1, httpx.Response(429, text="slow down"))
    with pytest.raises(LabtaskerHTTPStatusError):
        lc.call("POST", f"{API}/tasks/x/status", json_body={"status": "success"})


def test_stop_event_ends_the_back_off(queue_env):
    down = httpx.Response(503, json={"detail": "x", "code": error_codes.STORAGE_UNAVAILABLE})
    lc, calls = _flaky(queue_env, 100, down)
    lc.retry_policy = RetryPolicy(attempts=50, initial=5.0, max_wait=5.0, jitter=0, budget=60)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(LabtaskerNetworkError, match="stopped"):
        lc.send("GET", API, safe=True, stop=stop)
    assert time.monotonic() - t0 < 3 and calls["n"] == 1


def test_only_a_labtasker_answer_means_the_run_is_gone(queue_env):
    with _client(queue_env) as lc:
        lc.retry_policy = RetryPolicy(attempts=1)
        tid = lc.http.post(f"{API}/tasks", json={"args": {"x": 1}}).json()["task_id"]
        # not running: the server says so (task_not_running) -> TaskNotOwned
        with pytest.raises(TaskNotOwned) as info:
            api.refresh_task_heartbeat(tid, client=lc)
        assert info.value.code == "task_not_running"
    # an HTML 404 from a reverse proxy is an ordinary HTTP error, not a lost task
    proxy = httpx.Response(
        404, text="<html><body>404 Not Found</body></html>", headers={"content-type": "text/html"}
    )
    lc, _ = _flaky(queue_env, 100, proxy)
    with pytest.raises(LabtaskerHTTPStatusError) as err:
        api.refresh_task_heartbeat(tid, client=lc)
    assert not isinstance(err.value, TaskNotOwned) and err.value.status_code == 404
