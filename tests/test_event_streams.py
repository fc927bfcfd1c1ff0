"""Event streams belong to their queue: an open stream (API or dashboard) ends with a last
``closed`` message when the queue's password changes or the queue is deleted, while other
queues' streams go on (real server on the backend under test).

The server's streams re-read the log on their own only every ``SLOW_POLL`` s, longer than the
clients' read timeout: a stream ends in time only if the change wakes it."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from support.events import SLOW_POLL, SLOW_POLL_ENV
from support.http import API
from support.server import ServerProcess

READ_TIMEOUT = SLOW_POLL / 2  # s: a stream that is not woken times out the test


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, scratch_dbs):
    srv = ServerProcess(db_url=scratch_dbs.new_url(), workdir=tmp_path_factory.mktemp("streams"),
                        extra_env=SLOW_POLL_ENV).start()
    yield srv
    srv.kill()


def new_queue(url: str) -> tuple[str, str]:
    name, password = "s-" + uuid.uuid4().hex[:10], "pw-" + uuid.uuid4().hex[:6]
    r = httpx.post(url + "/api/v1/queues", json={"queue_name": name, "password": password})
    assert r.status_code == 201, r.text
    return name, password


class Stream:
    """One open SSE response, read message by message."""

    def __init__(self, client: httpx.Client, path: str):
        self._cm = client.stream("GET", path, timeout=httpx.Timeout(10, read=READ_TIMEOUT))
        self.resp = self._cm.__enter__()
        assert self.resp.status_code == 200, self.resp.read()
        self._lines = self.resp.iter_lines()
        assert self.next()[0] == "connection"

    def next(self) -> tuple[str, str] | None:
        """``(event, data)`` of the next message; ``None`` when the stream ended."""
        event, data = None, []
        for line in self._lines:
            if line == "":
                if event is not None:
                    return event, "\n".join(data)
                continue
            key, _, value = line.partition(": ")
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
        return None

    def next_non_ping(self) -> tuple[str, str] | None:
        while True:
            msg = self.next()
            if msg is None or msg[0] != "ping":
                return msg

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def expect_closed(stream: Stream, reason: str) -> None:
    msg = stream.next_non_ping()
    assert msg is not None and msg[0] == "closed", msg
    assert json.loads(msg[1])["reason"] == reason
    assert stream.next() is None  # and the stream ends


def test_password_change_and_queue_delete_end_the_queues_streams_only(slow_server):
    url = slow_server.url
    a_name, a_pw = new_queue(url)
    b_name, b_pw = new_queue(url)
    with httpx.Client(base_url=url, auth=(a_name, a_pw), timeout=30) as a, \
            httpx.Client(base_url=url, auth=(b_name, b_pw), timeout=30) as b:
        a_streams = [Stream(a, f"{API}/events") for _ in range(2)]
        b_stream = Stream(b, f"{API}/events")
        try:
            tid = a.post(f"{API}/tasks", json={"args": {"x": 1}}).json()["task_id"]
            r = a.put(API, json={"new_password": "changed-" + a_pw})
            assert r.status_code == 200, r.text
            for s in a_streams:
                msg = s.next_non_ping()  # what committed before the change is delivered
                assert msg is not None and msg[0] == "event", msg
                assert json.loads(msg[1])["event"]["entity_id"] == tid
                expect_closed(s, "password_changed")
            assert a.get(f"{API}/events").status_code == 401

            # queue b's stream was not touched
            tid = b.post(f"{API}/tasks", json={"args": {"y": 1}}).json()["task_id"]
            msg = b_stream.next_non_ping()
            assert msg is not None and json.loads(msg[1])["event"]["entity_id"] == tid
            assert b.delete(API, params={"cascade_delete": True}).status_code == 204
            expect_closed(b_stream, "queue_deleted")
        finally:
            for s in (*a_streams, b_stream):
                s.close()


def test_metadata_change_keeps_the_stream_and_dashboard_stream_ends_on_password_change(
        slow_server):
    """Only the password matters: a rename or a metadata change keeps the stream. The
    dashboard's stream (session cookie) ends too when the password changes."""
    url = slow_server.url
    name, pw = new_queue(url)
    with httpx.Client(base_url=url, auth=(name, pw), timeout=30) as api, \
            httpx.Client(base_url=url, timeout=30) as ui:
        token = re.search(r'name="login_token" value="([^"]+)"', ui.get("/ui/login").text)
        assert token is not None
        r = ui.post("/ui/login", data={"queue": name, "password": pw,
                                       "login_token": token.group(1)})
        assert r.status_code == 303, r.text
        api_stream = Stream(api, f"{API}/events")
        ui_stream = Stream(ui, "/ui/api/events")
        try:
            r = api.put(API, json={"new_queue_name": name + "-r", "metadata_update": {"k": 1}})
            assert r.status_code == 200, r.text
            api.auth = (name + "-r", pw)
            tid = api.post(f"{API}/tasks", json={"args": {"z": 1}}).json()["task_id"]
            for s in (api_stream, ui_stream):
                msg = s.next_non_ping()
                assert msg is not None and msg[0] == "event", msg
                assert json.loads(msg[1])["event"]["entity_id"] == tid
            assert api.put(API, json={"new_password": pw + "-2"}).status_code == 200
            expect_closed(api_stream, "password_changed")
            expect_closed(ui_stream, "password_changed")
        finally:
            api_stream.close()
            ui_stream.close()


def test_client_listener_stops_when_the_server_closes_the_stream(slow_server):
    from labtasker.client.events import EventListener

    name, pw = new_queue(slow_server.url)
    with httpx.Client(base_url=slow_server.url, auth=(name, pw), timeout=30) as http:
        said: list[str] = []
        listener = EventListener(client=http, on_status=said.append).start(timeout=10)
        try:
            assert http.delete(API, params={"cascade_delete": True}).status_code == 204
            kinds = [msg.event for msg in listener.iter_raw_sse()]  # ends by itself
        finally:
            listener.stop()
    assert kinds[-1] == "closed"
    assert listener.closed_reason == "The queue was deleted"
    assert any("closed the event stream" in line for line in said)
