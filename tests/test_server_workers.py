"""``labtasker-server serve --workers N``: several server processes on one port and one
database (SQLite file or PostgreSQL) hand out every task exactly once, and stop together."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
from support.server import ServerProcess

API = "/api/v1/queues/me"
N_TASKS = 300
N_CLIENTS = 8


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def test_two_server_processes_claim_each_task_once(tmp_path, scratch_dbs):
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(), workdir=tmp_path, extra_env={"LABTASKER_SERVER_WORKERS": "2"}
    ).start()
    try:
        deadline = time.monotonic() + 60  # /health answers once the first process is up
        while len(re.findall(r"Started server process \[\d+\]", srv.log_text())) < 2:
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.1)
        workers = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", srv.log_text())}
        assert workers <= _children(srv.proc.pid), (workers, _children(srv.proc.pid))
        r = httpx.post(srv.url + "/api/v1/queues", json={"queue_name": "w", "password": "pw"})
        assert r.status_code == 201, r.text
        http = httpx.Client(base_url=srv.url, auth=("w", "pw"), timeout=60)
        r = http.post(
            f"{API}/tasks/batch", json={"tasks": [{"args": {"i": i}} for i in range(N_TASKS)]}
        )
        assert r.status_code == 201, r.text
        claimed: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()

        def work():
            # a new connection per request spreads the requests over both processes
            while True:
                with httpx.Client(base_url=srv.url, auth=("w", "pw"), timeout=60) as c:
                    r = c.post(f"{API}/tasks/next", json={"required_fields": ["i"]})
                    if r.status_code != 200:
                        errors.append(r.text)
                        return
                    task = r.json()["task"]
                    if task is None:
                        return
                    rep = c.post(
                        f"{API}/tasks/{task['task_id']}/status",
                        json={"status": "success", "run_id": task["run_id"]},
                    )
                    if rep.status_code != 200:
                        errors.append(rep.text)
                with lock:
                    claimed.append(task["task_id"])

        threads = [threading.Thread(target=work) for _ in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert errors == []
        assert len(claimed) == N_TASKS and len(set(claimed)) == N_TASKS
        done = http.post(f"{API}/tasks/search", json={"status": "success", "limit": 1000})
        assert len(done.json()["content"]) == N_TASKS
        # SIGTERM to the supervisor stops every worker process
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, [
                Path(f"/proc/{p}/cmdline").read_bytes()
                for p in workers
                if Path(f"/proc/{p}").exists()
            ]
            time.sleep(0.1)
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(timeout=30)


def test_serve_refuses_a_database_it_cannot_use_in_one_line(tmp_path):
    """``serve`` with an unsupported, malformed or unreachable database URL exits at once with
    a one-line message (2: the URL, 1: the database), never a traceback."""
    import subprocess
    import sys

    for url, code, words in (
        ("mysql://x@y/z", 2, "unsupported database 'mysql'"),
        ("not a url", 2, "invalid --db-url"),
        ("postgresql://postgres@127.0.0.1:1/nope", 1, "cannot open the database"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "labtasker.server.cli", "serve", "--port", "1", "--db-url", url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == code, (url, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_serve_refuses_a_port_out_of_range(tmp_path):
    """``serve --port`` (or ``API_PORT``) outside 1..65535 exits 2 naming --port before
    anything starts; 83000 used to be taken and bound as 83000 - 65536 = 17464. 0 is refused
    too: nothing documents it as "any free port", and the dashboard line would show :0."""
    import os
    import subprocess
    import sys

    # An unreachable database: were the port let through, serve would stop at the database
    # (exit 1) without binding anything.
    url = "postgresql://postgres@127.0.0.1:1/nope"
    for args, env in (
        (["--port", "83000"], {}),
        (["--port", "65536"], {}),
        (["--port", "0"], {}),
        (["--port", "-1"], {}),
        ([], {"API_PORT": "99999"}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "labtasker.server.cli", "serve", "--db-url", url, *args],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (args, env, proc.stderr)
        assert "Error: Invalid value for '--port'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "cannot open the database" not in proc.stderr


def test_kill_9_of_the_supervisor_leaves_nothing_serving(tmp_path, scratch_dbs):
    """``kill -9`` of the ``serve --workers 2`` supervisor: its server processes stop too
    (PR_SET_PDEATHSIG and the supervisor pipe), the port refuses connections."""
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(), workdir=tmp_path, extra_env={"LABTASKER_SERVER_WORKERS": "2"}
    ).start()
    try:
        deadline = time.monotonic() + 60
        while len(re.findall(r"Started server process \[\d+\]", srv.log_text())) < 2:
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.1)
        workers = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", srv.log_text())}
        assert len(workers) == 2 and workers <= _children(srv.proc.pid)
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
        srv.kill(signal.SIGKILL)

        def alive(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.1)
        try:
            httpx.get(srv.url + "/health", timeout=5)
            raise AssertionError("still serving after the supervisor was killed")
        except httpx.ConnectError:
            pass
        assert "the supervisor process is gone" in srv.log_text()
    finally:
        srv.kill(signal.SIGKILL)
