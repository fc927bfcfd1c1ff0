"""Live events: SSE stream format, transitions published by each operation, resume with
Last-Event-ID, and the ``labtasker event listen`` command (real server, real processes)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from labtasker.client.events import EventListener

API = "/api/v1/queues/me"


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
            tid = http.post(f"{API}/tasks", json={"args": {"x": 1}, "max_retries": 1}
                            ).json()["task_id"]
            task = http.post(f"{API}/tasks/next", json={"worker_id": wid}).json()["task"]
            http.post(f"{API}/tasks/{tid}/heartbeat", params={"run_id": task["run_id"]})
            http.post(f"{API}/tasks/{tid}/status", json={"status": "failed",
                                                          "run_id": task["run_id"]})
            http.put(f"{API}/tasks", json=[{"task_id": tid}])  # reset to pending
            http.post(f"{API}/tasks/{tid}/status", json={"status": "cancelled"})
            events = collect(listener, 7)
        finally:
            listener.stop()
    assert transitions(events) == [
        ("worker", "created", "active"),
        ("task", "created", "pending"),
        ("task", "pending", "running"),
        ("worker", "active", "active"),  # worker charged before the task event (spec §2.4)
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
        missed = [http.post(f"{API}/tasks", json={"args": {"i": i}}).json()["task_id"]
                  for i in range(1, 4)]
        with http.stream("GET", f"{API}/events", headers={"Last-Event-ID": str(last)}) as resp:
            ids = []
            for line in resp.iter_lines():
                if line.startswith("data: {\"sequence\""):
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


def test_cli_event_listen_compact(queue_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "labtasker.client.cli.main", "event", "listen", "--compact"],
        env=queue_env.env(), cwd=queue_env.workdir, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
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
