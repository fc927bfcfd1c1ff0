"""Several servers on one PostgreSQL database: no double claims, events everywhere.

Two ``labtasker-server`` processes share one scratch PostgreSQL database; four ``labtasker
loop`` processes (two per server) drain 200 tasks while an event listener is attached to each
server. Runs only on the PostgreSQL backend (SQLite is one server per file by design).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import BACKEND, ServerProcess, write_client_toml

from labtasker.client.events import EventListener

pytestmark = pytest.mark.skipif(BACKEND != "postgresql",
                                reason="multi-server needs the PostgreSQL backend")
API = "/api/v1/queues/me"
LABTASKER = str(Path(sys.executable).parent / "labtasker")
N_TASKS = 200


def test_two_servers_four_workers_one_database(tmp_path, scratch_dbs):
    url = scratch_dbs.new_url()
    servers = [ServerProcess(db_url=url, workdir=tmp_path,
                             extra_env={"PERIODIC_TASK_INTERVAL": "0.5"}).start()
               for _ in range(2)]
    try:
        assert httpx.post(servers[0].url + "/api/v1/queues",
                          json={"queue_name": "shared", "password": "pw"}).status_code == 201
        clients = [httpx.Client(base_url=s.url, auth=("shared", "pw"), timeout=30)
                   for s in servers]
        listeners = [EventListener(client=c).start(timeout=10) for c in clients]
        resp = clients[1].post(f"{API}/tasks/batch",
                               json={"tasks": [{"args": {"i": i}} for i in range(N_TASKS)]})
        assert resp.status_code == 201
        runs = tmp_path / "runs.txt"
        loops = []
        for n in range(4):
            root = tmp_path / f"root{n}"
            write_client_toml(root, servers[n % 2].url, "shared", "pw")
            env = {**os.environ, "LABTASKER_ROOT": str(root)}
            for var in ("LABTASKER_TASK_ID", "LABTASKER_WORKER_ID", "LABTASKER_LOG_DIR"):
                env.pop(var, None)
            loops.append(subprocess.Popen(
                [LABTASKER, "loop", "-c", f"echo %(i) $LABTASKER_WORKER_ID >> {runs}"],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True))
        for p in loops:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-2000:]
        lines = runs.read_text().splitlines()
        counts = Counter(line.split()[0] for line in lines)
        assert len(counts) == N_TASKS and max(counts.values()) == 1, "a task ran twice"
        assert len({line.split()[1] for line in lines}) >= 2  # work was shared
        done = clients[0].post(f"{API}/tasks/search",
                               json={"status": "success", "limit": 1000}).json()["content"]
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
        with clients[1].stream("GET", f"{API}/events",
                               headers={"Last-Event-ID": str(last)}) as stream:
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
