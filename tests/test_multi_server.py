"""Several servers on one database: no double claims, events everywhere.

Two ``labtasker-server`` processes share one scratch PostgreSQL database; four ``labtasker
loop`` processes (two per server) drain 200 tasks while an event listener is attached to each
server (PostgreSQL only: several machines' servers on one database is what PostgreSQL is for).
An event committed through one server promptly wakes the listeners of the other: through
LISTEN/NOTIFY on PostgreSQL (also after the LISTEN connections were killed), through the
``data_version`` watcher on an SQLite file shared by two processes (as ``serve --workers 2``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from support.events import (
    LATENCY_BOUND,
    MAX_LATENCY,
    SLOW_POLL_ENV,
    describe,
    event_latencies,
    new_queue,
)
from support.server import BACKEND, PG_ADMIN_URL, ServerProcess, write_client_toml

from labtasker.client.events import EventListener

postgresql_only = pytest.mark.skipif(
    BACKEND != "postgresql", reason="multi-server needs the PostgreSQL backend"
)
API = "/api/v1/queues/me"
LABTASKER = str(Path(sys.executable).parent / "labtasker")
N_TASKS = 200


@postgresql_only
def test_two_servers_four_workers_one_database(tmp_path, scratch_dbs):
    url = scratch_dbs.new_url()
    servers = [
        ServerProcess(
            db_url=url, workdir=tmp_path, extra_env={"PERIODIC_TASK_INTERVAL": "0.5"}
        ).start()
        for _ in range(2)
    ]
    try:
        assert (
            httpx.post(
                servers[0].url + "/api/v1/queues", json={"queue_name": "shared", "password": "pw"}
            ).status_code
            == 201
        )
        clients = [httpx.Client(base_url=s.url, auth=("shared", "pw"), timeout=30) for s in servers]
        listeners = [EventListener(client=c).start(timeout=10) for c in clients]
        resp = clients[1].post(
            f"{API}/tasks/batch", json={"tasks": [{"args": {"i": i}} for i in range(N_TASKS)]}
        )
        assert resp.status_code == 201
        runs = tmp_path / "runs.txt"
        loops = []
        for n in range(4):
            root = tmp_path / f"root{n}"
            write_client_toml(root, servers[n % 2].url, "shared", "pw")
            env = {**os.environ, "LABTASKER_ROOT": str(root)}
            for var in ("LABTASKER_TASK_ID", "LABTASKER_WORKER_ID", "LABTASKER_LOG_DIR"):
                env.pop(var, None)
            loops.append(
                subprocess.Popen(
                    [LABTASKER, "loop", "-c", f"echo %(i) $LABTASKER_WORKER_ID >> {runs}"],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for p in loops:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-2000:]
        lines = runs.read_text().splitlines()
        counts = Counter(line.split()[0] for line in lines)
        assert len(counts) == N_TASKS and max(counts.values()) == 1, "a task ran twice"
        assert len({line.split()[1] for line in lines}) >= 2  # work was shared
        done = (
            clients[0]
            .post(f"{API}/tasks/search", json={"status": "success", "limit": 1000})
            .json()["content"]
        )
        assert len(done) == N_TASKS

        # Both listeners saw every transition, in the same order, with no gap.
        seen = []
        for listener in listeners:
            events, deadline = [], time.monotonic() + 60
            while time.monotonic() < deadline:
                ev = listener.get_event(timeout=0.5)
                if ev is not None:
                    events.append(ev)
                elif len([e for e in events if e.event.entity_type == "task"]) >= 3 * N_TASKS:
                    break
            listener.stop()
            seen.append([(e.sequence, e.event.entity_id, e.event.new_state) for e in events])
        assert seen[0] == seen[1]
        running = Counter(eid for _, eid, state in seen[0] if state == "running")
        success = Counter(eid for _, eid, state in seen[0] if state == "success")
        assert len(running) == N_TASKS and set(running.values()) == {1}
        assert len(success) == N_TASKS and set(success.values()) == {1}

        # A listener that was away resumes from its last event id without a gap.
        last = seen[0][N_TASKS][0]
        with clients[1].stream(
            "GET", f"{API}/events", headers={"Last-Event-ID": str(last)}
        ) as stream:
            resumed = []
            for line in stream.iter_lines():
                if line.startswith("id: "):
                    resumed.append(int(line[4:]))
                    if len(resumed) == 20:
                        break
        assert resumed == [s for s, _, _ in seen[0] if s > last][:20]
    finally:
        for s in servers:
            s.kill()


@pytest.fixture
def two_slow_poll_servers(tmp_path, scratch_dbs):
    """Two servers on one new database whose streams re-read the log on their own only every
    ``SLOW_POLL`` s; yields ``(database url, servers)``."""
    url = scratch_dbs.new_url()
    servers = [
        ServerProcess(db_url=url, workdir=tmp_path, extra_env=SLOW_POLL_ENV).start()
        for _ in range(2)
    ]
    try:
        yield url, servers
    finally:
        for s in servers:
            s.kill()


def listen_pids(url: str) -> set[int]:
    """Backend pids of the LISTEN connections on the database at ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return {
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN%'"
            )
        }


def test_event_through_one_server_reaches_a_listener_on_the_other_promptly(two_slow_poll_servers):
    _, (a, b) = two_slow_poll_servers
    with new_queue(a.url) as via_a:
        with httpx.Client(base_url=b.url, auth=via_a.auth, timeout=30) as via_b:
            listener = EventListener(client=via_b).start(timeout=10)
            try:
                latencies = event_latencies(via_a, listener)
            finally:
                listener.stop()
    print("A -> B event latency:", describe(latencies))
    assert statistics.median(latencies) < LATENCY_BOUND, describe(latencies)


def wait_for_listen_pids(url: str, n: int = 2, timeout: float = 10) -> set[int]:
    """The LISTEN connections' pids, once there are ``n`` of them (one per server)."""
    deadline = time.monotonic() + timeout
    while len(pids := listen_pids(url)) < n:
        assert time.monotonic() < deadline, f"LISTEN connections: {pids}"
        time.sleep(0.1)
    return pids


@postgresql_only
def test_killed_listen_connections_are_replaced_and_events_keep_arriving(two_slow_poll_servers):
    """While the LISTEN connections are down (killed, and kept from reconnecting for a second),
    notifications are lost; the servers reconnect by themselves and then wake their streams,
    which deliver what was committed meanwhile, long before the fallback poll would."""
    import psycopg

    url, (a, b) = two_slow_poll_servers
    dbname = url.rsplit("/", 1)[1]
    before = wait_for_listen_pids(url)
    with (
        new_queue(a.url) as via_a,
        httpx.Client(base_url=b.url, auth=via_a.auth, timeout=30) as via_b,
        psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin,
    ):
        listener = EventListener(client=via_b).start(timeout=10)
        try:
            event_latencies(via_a, listener, n=3)  # warm up auth caches and pools
            names = admin.execute(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE datname = %s AND query LIKE 'LISTEN%%'",
                (dbname,),
            )
            assert [n for (n,) in names] == ["labtasker-events"] * 2  # as docs/deployment.md
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            try:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND query LIKE 'LISTEN%%'",
                    (dbname,),
                ).fetchall()
                assert len(killed) == 2 and all(ok for (ok,) in killed)
                # Through server A's already open pool connections; nobody is listening.
                tids = [
                    via_a.post(f"{API}/tasks", json={"args": {"k": k}}).json()["task_id"]
                    for k in range(3)
                ]
                assert listener.get_event(timeout=1.0) is None, "the outage was no outage"
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
            t0 = time.perf_counter()
            got = []
            while len(got) < 3 and time.perf_counter() - t0 < MAX_LATENCY:
                ev = listener.get_event(timeout=0.2)
                if ev is not None:
                    got.append(ev.event.entity_id)
            recovery = time.perf_counter() - t0
            assert got == tids, f"after {recovery:.1f} s: {got} != {tids}"
            after = wait_for_listen_pids(url)
            assert not after & before
            latencies = event_latencies(via_a, listener)
        finally:
            listener.stop()
    print(
        f"events committed during a 1 s outage: delivered {1000 * recovery:.0f} ms after "
        "connections were allowed again; then A -> B event latency:",
        describe(latencies),
    )
    assert statistics.median(latencies) < LATENCY_BOUND, describe(latencies)
