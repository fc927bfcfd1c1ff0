"""Event streams belong to their queue: an open stream (API or dashboard) ends with a last
``closed`` message when the queue's password changes or the queue is deleted, while other
queues' streams go on (real server on the backend under test).

The server's streams re-read the log on their own only every ``SLOW_POLL`` s, longer than the
clients' read timeout: a stream ends in time only if the change wakes it."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest
from support.events import SLOW_POLL, SLOW_POLL_ENV
from support.http import API
from support.server import ServerProcess

READ_TIMEOUT = SLOW_POLL / 2  # s: a stream that is not woken times out the test


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, scratch_dbs):
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(),
        workdir=tmp_path_factory.mktemp("streams"),
        extra_env=SLOW_POLL_ENV,
    ).start()
    yield srv
    srv.kill()


def new_queue(url: str) -> tuple[str, str]:
    name, password = "s-" + uuid.uuid4().hex[:10], "pw-" + uuid.uuid4().hex[:6]
    r = httpx.post(url + "/api/v1/queues", json={"queue_name": name, "password": password})
    assert r.status_code == 201, r.text
    return name, password


class Stream:
    """One open SSE response, read message by message."""

    def __init__(self, client: httpx.Client, path: str, after: int | None = None):
        headers = {"Last-Event-ID": str(after)} if after is not None else {}
        self._cm = client.stream(
            "GET", path, headers=headers, timeout=httpx.Timeout(10, read=READ_TIMEOUT)
        )
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
    with (
        httpx.Client(base_url=url, auth=(a_name, a_pw), timeout=30) as a,
        httpx.Client(base_url=url, auth=(b_name, b_pw), timeout=30) as b,
    ):
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


def test_metadata_change_keeps_the_stream_and_dashboard_stream_ends_on_password_change(slow_server):
    """Only the password matters: a rename or a metadata change keeps the stream. The
    dashboard's stream (session cookie) ends too when the password changes."""
    url = slow_server.url
    name, pw = new_queue(url)
    with (
        httpx.Client(base_url=url, auth=(name, pw), timeout=30) as api,
        httpx.Client(base_url=url, timeout=30) as ui,
    ):
        token = re.search(r'name="login_token" value="([^"]+)"', ui.get("/ui/login").text)
        assert token is not None
        r = ui.post(
            "/ui/login", data={"queue": name, "password": pw, "login_token": token.group(1)}
        )
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


# ------------------------------------------------------------------ retention per queue
KEEP = 3


@pytest.fixture(scope="module")
def small_log_server(tmp_path_factory, scratch_dbs):
    """A server keeping the newest ``KEEP`` events of each queue, pruning every 0.5 s."""
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(),
        workdir=tmp_path_factory.mktemp("keep"),
        extra_env={"EVENT_LOG_SIZE": str(KEEP), "PERIODIC_TASK_INTERVAL": "0.5"},
    ).start()
    yield srv
    srv.kill()


def event_ids(db_url: str, queue_id: str) -> list[int]:
    from sqlalchemy import select

    from labtasker.server.db import Database
    from labtasker.server.schema import events

    db = Database(db_url)
    try:
        with db.read() as conn:
            return list(
                conn.execute(
                    select(events.c.event_id)
                    .where(events.c.queue_id == queue_id)
                    .order_by(events.c.event_id)
                ).scalars()
            )
    finally:
        db.dispose()


def replay(client: httpx.Client, after: int, n: int) -> list[tuple[str, str]]:
    """The first ``n`` messages after ``connection`` of a stream resumed after ``after``."""
    s = Stream(client, f"{API}/events", after)
    try:
        return [m for m in (s.next_non_ping() for _ in range(n)) if m is not None]
    finally:
        s.close()


def test_a_busy_queue_keeps_its_own_log_and_a_too_old_last_event_id_is_told_lost(small_log_server):
    url = small_log_server.url
    quiet_name, quiet_pw = new_queue(url)
    busy_name, busy_pw = new_queue(url)
    with (
        httpx.Client(base_url=url, auth=(quiet_name, quiet_pw), timeout=30) as quiet,
        httpx.Client(base_url=url, auth=(busy_name, busy_pw), timeout=30) as busy,
    ):
        quiet_id = quiet.get(API).json()["queue_id"]
        busy_id = busy.get(API).json()["queue_id"]
        quiet_task = quiet.post(f"{API}/tasks", json={"args": {"q": 1}}).json()["task_id"]
        for i in range(10):
            assert busy.post(f"{API}/tasks", json={"args": {"i": i}}).status_code == 201
        deadline = time.monotonic() + 60  # the sweep prunes every 0.5 s
        while len(event_ids(small_log_server.db_url, busy_id)) > KEEP:
            assert time.monotonic() < deadline, "the busy queue's log was never pruned"
            time.sleep(0.2)
        kept = event_ids(small_log_server.db_url, busy_id)
        assert len(kept) == KEEP

        # the quiet queue's only event outlived the busy queue's ten
        (quiet_event,) = event_ids(small_log_server.db_url, quiet_id)
        msgs = replay(quiet, 0, 1)
        assert [m[0] for m in msgs] == ["event"]
        assert json.loads(msgs[0][1])["event"]["entity_id"] == quiet_task
        assert json.loads(msgs[0][1])["sequence"] == quiet_event

        # resuming below what the busy queue kept: told first, then the kept events
        for after in (0, kept[0] - 2):
            msgs = replay(busy, after, 1 + KEEP)
            assert msgs[0][0] == "lost", msgs
            lost = json.loads(msgs[0][1])
            assert lost["after"] == after and lost["pruned_through"] == kept[0] - 1
            assert [json.loads(m[1])["sequence"] for m in msgs[1:]] == kept
        # resuming right after the newest pruned event: nothing was lost
        msgs = replay(busy, kept[0] - 1, KEEP)
        assert [m[0] for m in msgs] == ["event"] * KEEP


def test_client_listener_counts_lost_events(small_log_server):
    from labtasker.client.events import EventListener

    name, pw = new_queue(small_log_server.url)
    with httpx.Client(base_url=small_log_server.url, auth=(name, pw), timeout=30) as http:
        qid = http.get(API).json()["queue_id"]
        for i in range(KEEP + 3):
            http.post(f"{API}/tasks", json={"args": {"i": i}})
        deadline = time.monotonic() + 60
        while len(event_ids(small_log_server.db_url, qid)) > KEEP:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        said: list[str] = []
        # a listener resuming after a long gap
        listener = EventListener(client=http, on_status=said.append, last_event_id="0")
        listener.start(timeout=10)
        try:
            kinds = []
            while kinds.count("event") < KEEP:
                msg = listener.get_raw_sse(timeout=READ_TIMEOUT)
                assert msg is not None, kinds
                kinds.append(msg.event)
        finally:
            listener.stop()
    assert kinds == ["connection", "lost"] + ["event"] * KEEP
    assert listener.events_lost == 1
    assert any("Events were lost" in line for line in said)


@pytest.mark.backend
def test_migration_marks_what_the_former_global_pruning_may_have_taken(scratch_dbs):
    """Before 0009 the newest events of all queues were kept: every id below the oldest one
    still stored may have been pruned, so existing queues start with that id minus one."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import insert, select

    from labtasker.server import db as dbmod
    from labtasker.server.db import Database
    from labtasker.server.schema import events, queues
    from labtasker.server.sql_storage import SqlStorage
    from labtasker.timeutil import utc_now

    db = Database(scratch_dbs.new_url())
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(dbmod.__file__).parent / "migrations"))
        cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
        with db.write() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0008_unique_submit")
        qid = SqlStorage(db).create_queue("old", "pw", None)
        with db.write() as conn:
            conn.execute(
                insert(events),
                [
                    {
                        "event_id": i,
                        "queue_id": qid,
                        "created_at": utc_now(),
                        "entity_type": "task",
                        "entity_id": f"t{i}",
                        "old_state": "created",
                        "new_state": "pending",
                        "entity_data": {},
                    }
                    for i in (5, 6, 7)
                ],
            )
        db.migrate()
        with db.read() as conn:
            mark = conn.execute(select(queues.c.events_pruned_through)).scalar_one()
        assert mark == 4
        assert SqlStorage(db).create_queue("new", "pw", None)
    finally:
        db.dispose()
