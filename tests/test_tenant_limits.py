"""One tenant cannot hurt another: every bad input is a 4xx naming the field (never a 500),
nothing is half-applied, and no stored task poisons its queue's listings or a fetch.

The app runs in process (``fastapi.testclient``) on a real database of the backend under
test; bodies are sent as raw JSON text so that NaN, Infinity and lone surrogates reach the
server the way a hostile client would send them."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from labtasker.server.app import create_app
from labtasker.server.settings import ServerSettings

QUEUE, PASSWORD = "tenant-a", "secret-a"
API = "/api/v1/queues/me"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": "Basic " + token}


@pytest.fixture(scope="module")
def app(scratch_dbs):
    app = create_app(scratch_dbs.new_url())
    with TestClient(app) as client:
        app.state.client = client
        yield app


@pytest.fixture
def client(app) -> TestClient:
    """A client of a fresh queue (a poisoned queue must not hide the next case)."""
    name = "tenant-" + uuid.uuid4().hex[:10]
    app.state.storage.create_queue(name, PASSWORD, None)
    client = TestClient(app)
    client.headers.update(basic(name, PASSWORD))
    return client


def raw(client: TestClient, method: str, path: str, text: str):
    return client.request(
        method,
        path,
        content=text.encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json"},
    )


def assert_listings_work(client: TestClient) -> None:
    r = client.post(API + "/tasks/search", json={"limit": 1000})
    assert r.status_code == 200, r.text
    r = client.get(API + "/overview")
    assert r.status_code == 200, r.text


BAD_SUBMITS = [
    ('{"args": {"a": 1}, "heartbeat_timeout": Infinity}', "heartbeat_timeout"),
    ('{"args": {"a": 1}, "heartbeat_timeout": NaN}', "heartbeat_timeout"),
    ('{"args": {"a": 1}, "task_timeout": 1e400}', "task_timeout"),
    ('{"args": {"a": NaN}}', "args"),
    ('{"args": {"a": [1, -Infinity]}}', "args"),
    ('{"args": {"a": "\\ud800"}}', "args"),
    ('{"args": {"\\udc00": 1}}', "args"),
    ('{"args": {"a": "x\\u0000y"}}', "args"),
    ('{"args": {"a\\u0000": 1}}', "args"),
    ('{"args": {"a": 1}, "task_name": "a\\u0000"}', "task_name"),
    ('{"args": {"a": 1}, "metadata": {"m": "\\ud83d"}}', "metadata"),
    ('{"args": {"a": 1}, "cmd": "echo \\u0000"}', "cmd"),
    ('{"args": {"a": 1}, "priority": 2147483648}', "priority"),
    ('{"args": {"a": 1}, "priority": -9223372036854775809}', "priority"),
    ('{"args": {"a": 1}, "max_retries": 9223372036854775808}', "max_retries"),
    ('{"args": {"a": 99999999999999999999999}}', "args"),
]


@pytest.mark.parametrize("body, field", BAD_SUBMITS)
def test_bad_task_values_are_422_and_nothing_is_stored(client, body, field):
    before = client.post(API + "/tasks/search", json={"limit": 1000}).json()["content"]
    r = raw(client, "POST", API + "/tasks", body)
    assert r.status_code == 422, r.text
    assert field in r.text
    batch = '{"tasks": [{"args": {"ok": 1}}, ' + body + "]}"
    r = raw(client, "POST", API + "/tasks/batch", batch)
    assert r.status_code == 422, r.text
    after = client.post(API + "/tasks/search", json={"limit": 1000}).json()["content"]
    assert len(after) == len(before)
    assert_listings_work(client)


BAD_REQUESTS = [
    ("POST", "/tasks/next", '{"worker_id": null, "eta_max": "inf"}', "eta_max"),
    ("POST", "/tasks/next", '{"heartbeat_timeout": Infinity}', "heartbeat_timeout"),
    ("POST", "/tasks/next", '{"extra_filter": {"args.a": {"$size": 1e400}}}', "extra_filter"),
    ("POST", "/tasks/search", '{"offset": 9223372036854775808}', "offset"),
    ("POST", "/tasks/search", '{"offset": 2147483648}', "offset"),
    ("POST", "/tasks/search", '{"extra_filter": {"args.a": {"$size": 9223372036854775807}}}', None),
    ("POST", "/tasks/search", '{"extra_filter": {"args.a": {"$size": 2147483648}}}', None),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"args.a": {"$gt": 9223372036854775808}}}',
        "64 bits",
    ),
    ("POST", "/tasks/search", '{"extra_filter": {"priority": {"$gt": 9223372036854775807}}}', None),
    ("POST", "/tasks/search", '{"extra_filter": {"priority": {"$in": [2147483648, 1]}}}', None),
    ("POST", "/tasks/search", '{"extra_filter": {"args.a": "\\u0000"}}', None),
    ("POST", "/tasks/search", '{"extra_filter": {"args.a": "\\ud800"}}', None),
    ("POST", "/tasks/search", '{"extra_filter": {"task_id": "a\\u0000"}}', None),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"created_at": {"$gt": "9999-12-31T23:59:59-14:00"}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"created_at": {"$lt": "0001-01-01T00:00:00+14:00"}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"created_at": {"$gt": {"_dt": "9999-12-31T23:59:59.999999-23:59"}}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"$expr": {"$gt": [{"$multiply": [1e308, 1e308]}, 0]}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"$expr": {"$gt": [{"$multiply": ["$priority", 9223372036854775807, 9223372036854775807]}, 0]}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"$expr": {"$gt": [{"$add": [9223372036854775807, "$priority"]}, 0]}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"$expr": {"$eq": [{"$mod": [-9223372036854775808, -1]}, 0]}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"$expr": {"$lt": [{"$divide": [1e308, 1e-308]}, 0]}}}',
        None,
    ),
    (
        "POST",
        "/tasks/search",
        '{"extra_filter": {"$expr": {"$lt": [{"$subtract": [-1e308, 1e308]}, 0]}}}',
        None,
    ),
    ("POST", "/tasks/search", '{"extra_filter": {"args.a": {"$type": 1e400}}}', None),
    ("POST", "/tasks/search", '{"sort": [["args.a", 9223372036854775808]]}', None),
    ("POST", "/tasks/search", '{"cursor": "bm90IGpzb24"}', "cursor"),
    (
        "POST",
        "/tasks/count",
        '{"extra_filter": {"$expr": {"$gt": [{"$multiply": [1e308, 10]}, 0]}}}',
        None,
    ),
    (
        "POST",
        "/workers/search",
        '{"extra_filter": {"$expr": {"$gt": [{"$multiply": [1e308, 10]}, 0]}}}',
        None,
    ),
    ("POST", "/workers/search", '{"offset": 9223372036854775808}', "offset"),
    ("POST", "/workers/prune", '{"gone_for": 1e300}', None),
    ("POST", "/workers/prune", '{"gone_for": Infinity}', "gone_for"),
    ("POST", "/workers", '{"worker_name": "w", "max_retries": 2147483648}', "max_retries"),
    ("POST", "/workers", '{"worker_name": "w", "metadata": {"x": NaN}}', "metadata"),
    ("PUT", "", '{"metadata_update": {"x": "\\ud800"}}', "metadata"),
    ("PUT", "/tasks", '[{"task_id": "x", "priority": 2147483648}]', "priority"),
    ("PUT", "/tasks", '[{"task_id": "x\\u0000"}]', None),
    ("POST", "/tasks/requeue", '{"task_ids": ["\\u0000"]}', None),
    (
        "POST",
        "/tasks/x/status",
        '{"worker_id": "w", "status": "success", "summary": {"a": NaN}}',
        "summary",
    ),
    ("POST", "/tasks/x/progress", '{"step": 1e400}', "step"),
]


@pytest.mark.parametrize("method, path, body, name", BAD_REQUESTS)
def test_bad_requests_are_4xx_never_5xx(client, method, path, body, name):
    client.post(API + "/tasks", json={"args": {"a": [1, 2], "s": "x"}})
    r = raw(client, method, API + path, body)
    assert r.status_code < 500, r.text
    if name:  # refused, naming the field; the others are valid requests with an answer
        assert 400 <= r.status_code < 500, r.text
        assert name in r.text
    assert_listings_work(client)


@pytest.mark.parametrize(
    "path",
    ["/tasks/a%00b", "/workers/a%00b", "/tasks/%ED%A0%80", "/tasks/" + "x" * 5000],
)
def test_bad_path_ids_are_4xx(client, path):
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/heartbeat")):
        r = client.request(
            method,
            API + path + suffix,
            json={"worker_id": "w", "run_id": "r"} if method == "POST" else None,
        )
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)


def test_bad_basic_credentials_are_401(app):
    client = app.state.client
    for user, password in (("a\x00b", "x"), ("tenant-a\x00", PASSWORD), ("x" * 5000, "y")):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        r = client.get(API, headers={"Authorization": "Basic " + token})
        assert r.status_code == 401, r.text
    r = client.get(
        API, headers={"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()}
    )
    assert r.status_code == 401, r.text


def test_non_ascii_password_logs_in(app):
    client = app.state.client
    name, password = "tenant-utf8", "pässwörd-密码"
    r = client.post(
        "/api/v1/queues",
        json={"queue_name": name, "password": password},
        headers={"Authorization": ""},
    )
    assert r.status_code == 201, r.text
    assert client.get(API, headers=basic(name, password)).status_code == 200
    assert client.get(API, headers=basic(name, "passwort")).status_code == 401


def test_arg_key_structure_limit_is_the_same_on_both_backends(client):
    """PostgreSQL refused tasks with more than about 300 arg keys with a 500 (btree row
    limit of the shape index): a documented limit, refused alike on both backends."""
    args = {f"key_{i:04d}": i for i in range(120)}
    r = client.post(API + "/tasks", json={"args": args})
    assert r.status_code == 201, r.text
    args = {f"key_{i:04d}_{'x' * 20}": i for i in range(1200)}
    r = client.post(API + "/tasks", json={"args": args})
    assert r.status_code == 400, r.text
    assert "limit 2400 bytes" in r.text
    r = client.post(API + "/tasks/batch", json={"tasks": [{"args": {"a": 1}}, {"args": args}]})
    assert r.status_code == 400, r.text
    assert len(client.post(API + "/tasks/search", json={}).json()["content"]) == 1
    assert_listings_work(client)


def test_last_event_id_beyond_64_bits_is_400(client):
    for value in (str(2**64), "-1", "abc", "1" * 5000):
        r = client.get(API + "/events", headers={"Last-Event-ID": value})
        assert r.status_code == 400, (value, r.status_code, r.text[:200])
        assert "Last-Event-ID" in r.text


def test_crafted_cursors_are_400(client):
    def cursor(payload) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    for payload in (
        [["2024-01-01T00:00:00+00:00"], {"x": 1}],
        [[{"a": 1}], "t"],
        [["9999-12-31T23:59:59-14:00"], "t"],
        [["not a date"], "t"],
        [[2**70], "t"],
        [["2024-01-01T00:00:00+00:00"], "t\u0000"],
        [["2024-01-01T00:00:00"], "t"],
        [None, "t"],
        "x",
    ):
        r = client.post(API + "/tasks/search", json={"cursor": cursor(payload)})
        assert r.status_code == 400, (payload, r.status_code, r.text)
        assert "cursor" in r.text
    r = client.post(
        API + "/tasks/search", json={"cursor": cursor([[2**70], "t"]), "sort": [["priority", 1]]}
    )
    assert r.status_code == 400, r.text


def test_body_and_task_size_limits_are_413_naming_the_limit(scratch_dbs):
    settings = ServerSettings(max_body_bytes=100_000, max_task_bytes=10_000)
    app = create_app(scratch_dbs.new_url(), settings=settings)
    with TestClient(app) as client:
        app.state.storage.create_queue("sizes", PASSWORD, None)
        client.headers.update(basic("sizes", PASSWORD))
        r = client.post(API + "/tasks", json={"args": {"a": "x" * 200_000}})
        assert r.status_code == 413, r.text
        assert "limit 100000 bytes" in r.text and "--max-body-bytes" in r.text
        assert r.json()["code"] == "too_large"

        def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(30):
                yield b" " * 10_000

        r = client.post(
            API + "/tasks", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, r.text
        r = client.post(API + "/tasks", json={"args": {"a": "x" * 20_000}})
        assert r.status_code == 413, r.text
        assert "limit 10000 bytes" in r.text and "--max-task-bytes" in r.text
        assert r.json()["code"] == "too_large"
        r = client.post(API + "/tasks", json={"args": {"a": "x" * 5_000}})
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        r = client.put(API + "/tasks", json=[{"task_id": task_id, "metadata": {"m": "y" * 6_000}}])
        assert r.status_code in (400, 413), r.text  # the batch update reports per task
        assert "limit 10000 bytes" in r.text
        r = client.post(
            API + "/tasks/batch",
            json={"tasks": [{"args": {"a": 1}}, {"args": {"a": "x" * 20_000}}]},
        )
        assert r.status_code == 413, r.text
        assert "tasks[1]" in r.text
        assert len(client.post(API + "/tasks/search", json={}).json()["content"]) == 1


def test_failed_password_checks_are_throttled_and_verified_clients_stay_fast(app, monkeypatch):
    from labtasker.server import deps

    monkeypatch.setattr(deps, "FAILURE_LIMIT", 3)
    monkeypatch.setattr(deps, "_failures", {})
    name = "throttle-" + uuid.uuid4().hex[:8]
    app.state.storage.create_queue(name, PASSWORD, None)
    client = app.state.client
    assert client.get(API, headers=basic(name, PASSWORD)).status_code == 200  # verified
    codes = [client.get(API, headers=basic(name, f"wrong-{i}")).status_code for i in range(5)]
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]
    r = client.get(API, headers=basic(name, "wrong-again"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["code"] == "too_many_requests"
    # the verified client is answered without a KDF check, throttled address or not
    assert client.get(API, headers=basic(name, PASSWORD)).status_code == 200


def test_credentials_are_checked_before_the_body_is_read(client, app):
    """A body from a client without the queue's password is never read or parsed: 401, not
    the 422 that parsing this body would give."""
    stranger = TestClient(app)
    for headers in ({}, basic("nobody", "x"), {"Authorization": "Basic !!!"}):
        r = stranger.post(
            API + "/tasks",
            content=b'{"args": {"a": NaN}}',
            headers={"Content-Type": "application/json", **headers},
        )
        assert r.status_code == 401, r.text
        assert r.json()["code"] == "invalid_credentials"
    r = raw(client, "POST", API + "/tasks", '{"args": {"a": NaN}}')
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request"


def test_clients_of_one_queue_starting_at_once_share_one_password_check(app, monkeypatch):
    """Many clients with the same (not yet verified) password at the same moment, e.g. 16
    loops started together: they wait for one Argon2 check instead of each queueing its own,
    so none is refused with 429 even when the KDF queue holds a single check."""
    from concurrent.futures import ThreadPoolExecutor

    from labtasker.server import auth, deps

    monkeypatch.setattr(deps, "KDF_QUEUE", 1)
    monkeypatch.setattr(auth, "_cache", {})
    name = "burst-" + uuid.uuid4().hex[:8]
    app.state.storage.create_queue(name, PASSWORD, None)
    client = app.state.client
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: client.get(API, headers=basic(name, PASSWORD)).status_code, range(8))
        )
    assert codes == [200] * 8


def test_a_wrong_password_flood_from_one_address_does_not_lock_others_out(tmp_path, scratch_dbs):
    """24 connections from 127.0.0.2 send wrong passwords without pause to a real server;
    meanwhile a client on 127.0.0.1 logs in for the first time (nothing cached) and is
    answered 200: one address holds at most KDF_PER_ADDRESS password checks, so it cannot
    fill the KDF queue (16) that everybody's first log-in waits in."""
    import threading
    import time

    import httpx
    from support.server import ServerProcess

    server = ServerProcess(db_url=scratch_dbs.new_url(), workdir=tmp_path).start()
    try:
        name = "flooded-" + uuid.uuid4().hex[:8]
        r = httpx.post(
            server.url + "/api/v1/queues",
            json={"queue_name": name, "password": PASSWORD},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        stop = threading.Event()
        attacker_codes: list[int] = []

        def flood(i: int) -> None:
            transport = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(transport=transport, base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    attacker_codes.append(c.get(API, headers=basic(name, f"guess-{i}")).status_code)

        threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(24)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)  # the flood is under way (under the per-address failure limit)
            r = httpx.get(server.url + API, headers=basic(name, PASSWORD), timeout=60)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert r.status_code == 200, r.text
        assert 429 in attacker_codes and 401 in attacker_codes
    finally:
        server.kill()
