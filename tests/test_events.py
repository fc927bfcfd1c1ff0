"""Live events: SSE stream format, transitions published by each operation, resume with
Last-Event-ID, and the ``labtasker event listen`` command (real server, real processes)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import httpx
import pytest
from support.events import (
    LATENCY_BOUND,
    SLOW_POLL_ENV,
    describe,
    event_latencies,
    new_queue,
)
from support.http import API
from support.server import ServerProcess

from labtasker.client.events import EventListener


def collect(listener: EventListener, n: int, timeout: float = 15) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        ev = listener.get_event(timeout=0.5)
        if ev is not None:
            out.append(ev)
    return out


def transitions(events) -> list[tuple[str, str, str]]:
    return [(e.event.entity_type, e.event.old_state, e.event.new_state) for e in events]


def test_stream_format_and_first_message(queue_env):
    with queue_env.http() as http, http.stream("GET", f"{API}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in resp.iter_lines():
            lines.append(line)
            if line == "" and len(lines) > 1:
                break
        assert lines[0] == "event: connection"
        assert '"status": "connected"' in lines[1] and "client_id" in lines[1]
        assert lines[2] == "retry: 3000"


def test_transitions_of_a_task_life_in_order(queue_env):
    with queue_env.http() as http:
        listener = EventListener(client=http).start(timeout=10)
        try:
            wid = http.post(f"{API}/workers", json={}).json()["worker_id"]
            tid = http.post(f"{API}/tasks", json={"args": {"x": 1}, "max_retries": 1}).json()[
                "task_id"
            ]
            task = http.post(f"{API}/tasks/next", json={"worker_id": wid}).json()["task"]
            http.post(f"{API}/tasks/{tid}/heartbeat", params={"run_id": task["run_id"]})
            http.post(
                f"{API}/tasks/{tid}/status", json={"status": "failed", "run_id": task["run_id"]}
            )
            http.put(f"{API}/tasks", json=[{"task_id": tid}])  # reset to pending
            http.post(f"{API}/tasks/{tid}/status", json={"status": "cancelled"})
            events = collect(listener, 7)
        finally:
            listener.stop()
    assert transitions(events) == [
        ("worker", "created", "active"),
        ("task", "created", "pending"),
        ("task", "pending", "running"),
        ("worker", "active", "active"),  # worker charged before the task event, as in 1.0.1
        ("task", "running", "failed"),
        ("task", "failed", "pending"),
        ("task", "pending", "cancelled"),
    ]  # the heartbeat published nothing
    seqs = [e.sequence for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    running = events[2].event
    assert running.entity_id == tid and running.entity_data["args"] == {"x": 1}


def test_reconnect_with_last_event_id_gets_missed_events(queue_env):
    with queue_env.http() as http:
        listener = EventListener(client=http).start(timeout=10)
        http.post(f"{API}/tasks", json={"args": {"i": 0}})
        first = collect(listener, 1)
        listener.stop()
        last = first[0].sequence
        missed = [
            http.post(f"{API}/tasks", json={"args": {"i": i}}).json()["task_id"]
            for i in range(1, 4)
        ]
        with http.stream("GET", f"{API}/events", headers={"Last-Event-ID": str(last)}) as resp:
            ids = []
            for line in resp.iter_lines():
                if line.startswith('data: {"sequence"'):
                    ids.append(line)
                if len(ids) == 3:
                    break
        assert all(t in "".join(ids) for t in missed)
        bad = http.get(f"{API}/events", headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 400


def test_events_are_scoped_to_the_queue(server, queue_env):
    other = "o-" + queue_env.queue_name
    httpx.post(server.url + "/api/v1/queues", json={"queue_name": other, "password": "pw"})
    with queue_env.http() as http:
        listener = EventListener(client=http).start(timeout=10)
        try:
            with httpx.Client(base_url=server.url, auth=(other, "pw")) as o:
                o.post(f"{API}/tasks", json={"args": {"secret": 1}})
            mine = http.post(f"{API}/tasks", json={"args": {"x": 1}}).json()["task_id"]
            events = collect(listener, 1)
            time.sleep(0.5)
            assert listener.get_event(timeout=0.5) is None
        finally:
            listener.stop()
    assert [e.event.entity_id for e in events] == [mine]


def test_event_ids_are_never_reused_after_a_queue_is_deleted(server, queue_env):
    """Deleting a queue deletes its events; if they were the newest, the next event of another
    queue must still get a higher id than any handed out before (SQLite AUTOINCREMENT,
    migration 0004), or a listener resuming from its last id would miss it."""
    other = "d-" + queue_env.queue_name
    httpx.post(server.url + "/api/v1/queues", json={"queue_name": other, "password": "pw"})
    with queue_env.http() as http, httpx.Client(base_url=server.url, auth=(other, "pw")) as o:
        listener = EventListener(client=http).start(timeout=10)
        http.post(f"{API}/tasks", json={"args": {"i": 0}})
        before = collect(listener, 1)[0].sequence
        listener.stop()
        for i in range(5):  # the newest events now belong to the other queue
            assert o.post(f"{API}/tasks", json={"args": {"i": i}}).status_code == 201
        with o.stream("GET", f"{API}/events", headers={"Last-Event-ID": str(before)}) as resp:
            highest = 0
            for line in resp.iter_lines():
                if line.startswith("id:"):
                    highest = max(highest, int(line.split(":", 1)[1]))
                    if highest >= before + 5:
                        break
        assert o.delete(API, params={"cascade_delete": "true"}).status_code == 204
        listener = EventListener(client=http).start(timeout=10)
        try:
            http.post(f"{API}/tasks", json={"args": {"i": 1}})
            after = collect(listener, 1)[0].sequence
        finally:
            listener.stop()
    assert after > highest > before


def test_cli_event_listen_compact(queue_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "labtasker.client.cli.main", "event", "listen", "--compact"],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "Attempting to connect" in proc.stdout.readline()
        assert "Connected. Client listener ID:" in proc.stdout.readline()
        with queue_env.http() as http:
            tid = http.post(f"{API}/tasks", json={"args": {"x": 1}}).json()["task_id"]
            http.post(f"{API}/tasks/{tid}/status", json={"status": "cancelled"})
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "[task      ]" in lines[0] and "created    -> pending" in lines[0]
    assert tid[:10] in lines[0]
    assert "pending    -> cancelled" in lines[1]


@pytest.fixture(scope="module")
def slow_poll_server(tmp_path_factory, scratch_dbs):
    """A server whose streams re-read the log on their own only every ``SLOW_POLL`` s."""
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(),
        workdir=tmp_path_factory.mktemp("slow"),
        extra_env=SLOW_POLL_ENV,
    ).start()
    yield srv
    srv.kill()


def test_commit_wakes_listeners_without_waiting_for_the_poll(slow_poll_server):
    with new_queue(slow_poll_server.url) as http:
        listener = EventListener(client=http).start(timeout=10)
        try:
            latencies = event_latencies(http, listener)
        finally:
            listener.stop()
    print("same-server event latency:", describe(latencies))
    assert statistics.median(latencies) < LATENCY_BOUND, describe(latencies)


def test_poll_delivers_events_committed_outside_the_server(tmp_path, scratch_dbs):
    """The safety net: a commit that wakes nobody in the server (on SQLite, one made by
    another process) still reaches the listener, after at most ``EVENT_POLL_INTERVAL`` s."""
    from labtasker.server.db import Database
    from labtasker.server.sql_storage import SqlStorage

    poll = 1.0
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(), workdir=tmp_path, extra_env={"EVENT_POLL_INTERVAL": str(poll)}
    ).start()
    db = Database(srv.db_url)
    try:
        with new_queue(srv.url) as http:
            qid = http.get(API).json()["queue_id"]
            listener = EventListener(client=http).start(timeout=10)
            try:
                waits = []
                for i in range(3):
                    tid = SqlStorage(db).submit_task(qid, {"args": {"outside": i}})
                    committed = time.perf_counter()
                    ev = None
                    while ev is None and time.perf_counter() - committed < 10 * poll:
                        ev = listener.get_event(timeout=0.2)
                    assert ev is not None and ev.event.entity_id == tid
                    waits.append(time.perf_counter() - committed)
            finally:
                listener.stop()
    finally:
        db.dispose()
        srv.kill()
    assert max(waits) < poll + 1.0, waits


def test_server_shutdown_ends_open_streams_at_once(tmp_path, scratch_dbs):
    """SIGTERM to a server with open event streams: the streams end at once and the server
    exits well within uvicorn's 5 s graceful-shutdown timeout, without the cancelled-stream
    traceback ("Exception in ASGI application") that waiting for that timeout produced."""
    import signal
    import threading

    srv = ServerProcess(db_url=scratch_dbs.new_url(), workdir=tmp_path).start()
    try:
        httpx.post(srv.url + "/api/v1/queues", json={"queue_name": "sd", "password": "pw"})
        ended = threading.Event()

        def listen():
            with (
                httpx.Client(base_url=srv.url, auth=("sd", "pw"), timeout=30) as c,
                c.stream("GET", f"{API}/events") as resp,
            ):
                for _ in resp.iter_lines():
                    pass
            ended.set()

        threads = [threading.Thread(target=listen, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # both streams open
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        took = time.monotonic() - t0
        assert took < 3.0, took
        assert ended.wait(5)
        assert "Exception in ASGI application" not in srv.log_text()
    finally:
        srv.kill()


def test_event_rows_store_no_copy_of_row_keys_and_replay_full_documents(server, queue_env):
    """An event row keeps the entity document without the keys the row already holds (task
    id and queue id at the head, ``_id`` at the end); a replay puts them back where they were,
    so the stream shows the task document as the API returns it."""
    from sqlalchemy import select

    from labtasker.server.db import Database
    from labtasker.server.schema import events

    with queue_env.http() as http:
        tid = http.post(f"{API}/tasks", json={"args": {"x": 1}}).json()["task_id"]
        doc = http.get(f"{API}/tasks/{tid}").json()
        listener = EventListener(client=http)
        listener.start(timeout=10)
        try:
            http.post(f"{API}/tasks/{tid}/status", json={"status": "cancelled"})
            (event,) = collect(listener, 1)
        finally:
            listener.stop()
    data = event.event.entity_data
    assert list(data)[:2] == ["task_id", "queue_id"] and list(data)[-1] == "_id"
    assert data["task_id"] == data["_id"] == tid and data["queue_id"] == queue_env.queue_id
    assert data["status"] == "cancelled" and data["args"] == doc["args"] == {"x": 1}
    db = Database(server.db_url)
    try:
        with db.read() as conn:
            stored = [
                r.entity_data
                for r in conn.execute(select(events.c.entity_data).where(events.c.entity_id == tid))
            ]
    finally:
        db.dispose()
    assert len(stored) == 2
    for row in stored:
        assert not {"task_id", "queue_id", "_id"} & set(row), row
        assert row["args"] == {"x": 1}


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_listener_survives_a_server_restart(tmp_path, scratch_dbs, sig):
    """A listener keeps following the queue across a server restart, whether the server
    ended its stream on the way down (SIGTERM: a normal restart) or vanished (SIGKILL), and
    also while the server stays down for a few reconnect attempts: it says the connection was
    lost, then that it is back, and gets the events committed while it was away."""
    import signal

    srv = ServerProcess(db_url=scratch_dbs.new_url(), workdir=tmp_path).start()
    said: list[str] = []
    try:
        httpx.post(srv.url + "/api/v1/queues", json={"queue_name": "rs", "password": "pw"})
        http = httpx.Client(base_url=srv.url, auth=("rs", "pw"), timeout=30)
        listener = EventListener(client=http, reconnect_delay=0.2, on_status=said.append)
        listener.start(timeout=10)
        try:
            http.post(f"{API}/tasks", json={"args": {"n": 1}})
            assert len(collect(listener, 1)) == 1
            srv.kill(getattr(signal, sig))
            time.sleep(1.0)  # several reconnect attempts against a closed port
            port = srv.port
            srv.start()  # the same port and database
            assert srv.port == port
            http.post(f"{API}/tasks", json={"args": {"n": 2}})
            (event,) = collect(listener, 1)
            assert event.event.entity_data["args"] == {"n": 2}
            assert listener.closed_reason is None
        finally:
            listener.stop()
            http.close()
    finally:
        srv.kill()
    assert any(s.startswith("Connection lost") for s in said), said
    assert any(s.startswith("Reconnected") for s in said), said


class _ScriptedStream:
    """A plain HTTP server on 127.0.0.1 that answers each ``GET`` of the event stream with the
    next of ``answers``: ``(status, body)``. It stands in for a server that misbehaves in ways
    ours never does on purpose (a message the client cannot read, a 429 between two streams);
    the last answer is repeated. ``seen`` holds each request's ``Last-Event-ID``."""

    def __init__(self, answers: list[tuple[int, str]]):
        import http.server
        import threading

        self.answers = answers
        self.seen: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append(self.headers.get("Last-Event-ID"))
                status, body = outer.answers[min(len(outer.seen), len(outer.answers)) - 1]
                data = body.encode()
                self.send_response(status)
                ctype = "text/event-stream" if status == 200 else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sse(event: str, data: str, id: str | None = None) -> str:
    return (f"id: {id}\n" if id else "") + f"event: {event}\ndata: {data}\n\n"


def _event_data(n: int) -> str:
    import json

    return json.dumps(
        {
            "sequence": n,
            "timestamp": "2026-12-03T00:00:00Z",
            "event": {
                "type": "state_transition",
                "queue_id": "q",
                "timestamp": "2026-12-03T00:00:00Z",
                "metadata": {},
                "entity_type": "task",
                "entity_id": f"t{n}",
                "old_state": "pending",
                "new_state": "running",
                "entity_data": {"args": {"n": n}},
            },
        }
    )


def test_listener_reconnects_after_an_unreadable_message_or_a_429_and_stops_on_a_401():
    """Once connected, the listener stops only when the server refuses it for good (a 4xx
    such as 401). A message it cannot read (a ``connection`` message that is not JSON) or a
    429 from a busy server is a lost connection: it reconnects with the last event id seen
    and goes on."""
    hello = _sse("connection", '{"status": "connected", "client_id": "c"}')
    script = _ScriptedStream(
        [
            (200, hello + _sse("event", _event_data(1), id="1") + _sse("connection", "{not json")),
            (429, '{"detail": "busy"}'),
            (200, hello + _sse("event", _event_data(2), id="2")),
            (401, '{"detail": "Invalid credentials"}'),
        ]
    )
    said: list[str] = []
    try:
        listener = EventListener(
            client=httpx.Client(base_url=script.url), reconnect_delay=0.05, on_status=said.append
        ).start(timeout=10)
        try:
            events = collect(listener, 2)
            assert [e.event.entity_id for e in events] == ["t1", "t2"]
            deadline = time.monotonic() + 10
            while listener.closed_reason is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "Invalid credentials" in (listener.closed_reason or ""), said
            assert script.seen == [None, "1", "1", "2"]
        finally:
            listener.stop()
    finally:
        script.close()
    assert any(s.startswith("Connection lost (JSONDecodeError)") for s in said), said
    assert any(s.startswith("Reconnected") for s in said), said
