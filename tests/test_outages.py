"""Leases across server outages, stalls, wrong clocks and database trouble, with real servers
and real loops: no run is timed out for heartbeats the server could not receive, no result
is lost, every job runs once.

Heartbeats every 2 s, heartbeat timeout 6 s (the loops' default: 3 x the interval); the
server outages last 3 x the timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from conftest import BACKEND, ServerProcess, write_client_toml
from helpers import API, wait_for

LABTASKER = str(Path(sys.executable).parent / "labtasker")
INTERVAL = 2.0  # heartbeat interval of every loop here
TIMEOUT = 3 * INTERVAL  # their heartbeat timeout
OUTAGE = 3 * TIMEOUT


class Site:
    """A server of our own (to stop, freeze or break), a queue on it and loops using it."""

    def __init__(self, tmp: Path, db_url: str, **env: str):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.server = ServerProcess(
            db_url=db_url, workdir=tmp, extra_env={"PERIODIC_TASK_INTERVAL": "0.5", **env}
        ).start()
        self.name, self.password = "q-" + uuid.uuid4().hex[:8], "pw"
        resp = httpx.post(
            self.server.url + "/api/v1/queues",
            json={"queue_name": self.name, "password": self.password},
        )
        assert resp.status_code in (201, 409), resp.text
        self.root = tmp / ".labtasker"
        write_client_toml(
            self.root, self.server.url, self.name, self.password, heartbeat_interval=INTERVAL
        )
        self.ledger = tmp / "ledger.txt"
        self.loops: list[subprocess.Popen] = []

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, auth=(self.name, self.password), timeout=30)

    def submit(self, n: int, **args) -> list[str]:
        with self.http() as http:
            return [
                http.post(f"{API}/tasks", json={"args": args}).json()["task_id"] for _ in range(n)
            ]

    def loop(self, cmd: str, **env: str) -> subprocess.Popen:
        """``labtasker loop -c 'echo $LABTASKER_TASK_ID >> ledger; <cmd>'``."""
        full = f'echo "$LABTASKER_TASK_ID" >> {self.ledger}; {cmd}'
        proc = subprocess.Popen(
            [LABTASKER, "loop", "-c", full],
            env={**os.environ, "LABTASKER_ROOT": str(self.root), **env},
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.loops.append(proc)
        return proc

    def wait_running(self, n: int, timeout: float = 60) -> None:
        def running():
            with self.http() as http:
                found = http.post(
                    f"{API}/tasks/search", json={"status": "running", "limit": 100}
                ).json()["content"]
            return len(found) >= n

        wait_for(running, timeout=timeout, interval=0.2, what=f"{n} running tasks")

    def finish(self, procs=None, timeout: float = 120) -> None:
        for p in procs or self.loops:
            _, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err

    def tasks(self) -> dict[str, dict]:
        with self.http() as http:
            return {
                t["task_id"]: t
                for t in http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"]
            }

    def workers(self) -> list[dict]:
        with self.http() as http:
            return http.post(f"{API}/workers/search", json={}).json()["content"]

    def runs(self, tid: str) -> list[dict]:
        with self.http() as http:
            return http.get(f"{API}/tasks/{tid}/runs").json()["content"]

    def starts(self) -> Counter:
        return Counter(self.ledger.read_text().split()) if self.ledger.exists() else Counter()

    def close(self) -> None:
        for p in self.loops:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.server.kill()


def assert_each_ran_once_and_succeeded(site: Site, ids: list[str]) -> None:
    """Each task of ``ids`` started once, succeeded with retries 0, and its worker was never
    charged."""
    tasks = site.tasks()
    starts = site.starts()
    assert {tid: starts[tid] for tid in ids} == dict.fromkeys(ids, 1), starts
    workers = {w["worker_id"]: w for w in site.workers()}
    for tid in ids:
        assert (tasks[tid]["status"], tasks[tid]["retries"]) == ("success", 0), tasks[tid]
        runs = site.runs(tid)
        assert [r["status"] for r in runs] == ["success"], runs
        worker = workers[runs[0]["worker_id"]]
        assert (worker["status"], worker["retries"]) == ("active", 0), worker


def test_leases_survive_a_server_restart_and_a_frozen_server(tmp_path, scratch_dbs):
    """(a) A server is stopped for 3 x the heartbeat timeout and started again; (b) another
    one is frozen (SIGSTOP) as long and continued. Jobs outlive the outage: every job runs
    once and succeeds, no worker is charged. A loop killed (kill -9) during the outage is
    still timed out, one heartbeat timeout of uptime after the restart."""
    restart = Site(tmp_path / "restart", scratch_dbs.new_url())
    frozen = Site(tmp_path / "frozen", scratch_dbs.new_url())
    try:
        ids_a = restart.submit(2, s=OUTAGE + 6)
        dead_id = restart.submit(1, s=OUTAGE + 6, dead=1)[0]
        ids_b = frozen.submit(2, s=OUTAGE + 6)
        for _ in ids_a:
            restart.loop("sleep %(s)")
        doomed = restart.loop("sleep %(s) %(dead)")
        for _ in ids_b:
            frozen.loop("sleep %(s)")
        restart.wait_running(3)
        frozen.wait_running(2)

        restart.server.kill(signal.SIGKILL)
        frozen.server.proc.send_signal(signal.SIGSTOP)
        os.killpg(doomed.pid, signal.SIGKILL)  # this loop dies for real meanwhile
        time.sleep(OUTAGE)
        frozen.server.proc.send_signal(signal.SIGCONT)
        restarted_at = time.time()
        restart.server.start()

        # the dead loop's lease expires, but only after one timeout of uptime
        def dead_run_ended():
            return next((r for r in restart.runs(dead_id) if r["ended"]), None)

        run = wait_for(dead_run_ended, timeout=30, interval=0.3, what="dead loop timed out")
        assert run["status"] == "timed_out" and run["summary"]["timeout"] == "heartbeat"
        ended = datetime.fromisoformat(run["ended"]).timestamp()
        assert ended >= restarted_at + TIMEOUT - 0.5, ended - restarted_at

        restart.finish(restart.loops[:2])
        frozen.finish()
        assert_each_ran_once_and_succeeded(restart, ids_a)
        assert_each_ran_once_and_succeeded(frozen, ids_b)
        dead = restart.tasks()[dead_id]
        assert (dead["status"], dead["retries"]) == ("pending", 1)  # no loop takes its shape
    finally:
        restart.close()
        frozen.close()


def test_a_result_finished_during_a_long_outage_is_delivered_when_the_server_is_back(
    tmp_path, scratch_dbs
):
    """The job ends while the server is down for longer than the client's retry budget
    (shortened to 1 s here): the loop keeps the result, says so naming the task, and
    delivers it once the server is back; the job ran once and the task succeeded."""
    site = Site(tmp_path, scratch_dbs.new_url())
    try:
        ids = site.submit(1, s=1)
        loop = site.loop("sleep %(s)", LABTASKER_TEST_RETRY_BUDGET="1")
        site.wait_running(1)
        site.server.kill(signal.SIGKILL)
        time.sleep(OUTAGE)  # the job ended meanwhile: several tries of its report failed
        site.server.start()
        _, err = loop.communicate(timeout=120)
        assert loop.returncode == 0, err
        assert f"Task {ids[0]}: its success report cannot be delivered yet" in err, err
        assert_each_ran_once_and_succeeded(site, ids)
    finally:
        site.close()


def test_one_clock_for_two_servers_on_one_database(tmp_path, scratch_dbs):
    """Two servers on one database, the clock of one of them 1 h ahead (test-only offset):
    a loop on the other runs its jobs while the ahead one sweeps; no run times out."""
    url = scratch_dbs.new_url()
    site = Site(tmp_path / "a", url)
    ahead = ServerProcess(
        db_url=url,
        workdir=tmp_path,
        extra_env={"PERIODIC_TASK_INTERVAL": "0.5", "LABTASKER_TEST_CLOCK_OFFSET": "3600"},
    ).start()
    try:
        ids = site.submit(2, s=5)
        site.loop("sleep %(s)")
        site.loop("sleep %(s)")
        site.finish()
        assert_each_ran_once_and_succeeded(site, ids)
        polled = httpx.get(ahead.url + "/api/v1/polling").json()
        assert abs(time.time() - polled["prev_polling"]) < 10  # the ahead server sweeps
    finally:
        site.close()
        ahead.kill()


def test_a_full_disk_loses_no_result(tmp_path, scratch_dbs):
    """The database cannot write for 10 s, longer than the heartbeat timeout (disk full, by
    the test-only fault hook), while 4 jobs run and finish: the server answers 503 with
    Retry-After and the cause, /health/full says so, the loops retry; every job ran once and
    succeeded."""
    fault = tmp_path / "fault"
    site = Site(tmp_path / "site", scratch_dbs.new_url(), LABTASKER_TEST_FAULT_FILE=str(fault))
    try:
        ids = site.submit(4, s=4)
        for _ in ids:
            site.loop("sleep %(s)")
        site.wait_running(4)
        fault.write_text("disk_full")
        try:
            health = httpx.get(site.server.url + "/health/full", timeout=10)
            assert health.status_code == 503 and "disk full" in health.json()["database"]
            assert int(health.headers["Retry-After"]) >= 1
            with site.http() as http:
                assert http.get(f"{API}/tasks/{ids[0]}").status_code == 200  # reads go on
                refused = http.post(f"{API}/tasks", json={"args": {"late": 1}})
            assert refused.status_code == 503 and refused.json()["code"] == "storage_unavailable"
            assert "disk full" in refused.json()["detail"] and refused.headers["Retry-After"]
            time.sleep(10)  # the jobs finish meanwhile; their reports wait
        finally:
            fault.unlink()
        assert httpx.get(site.server.url + "/health/full", timeout=10).status_code == 200
        site.finish()
        assert_each_ran_once_and_succeeded(site, ids)
    finally:
        site.close()


def test_relative_dates_in_filters_use_the_server_clock(queue_env, monkeypatch):
    """A client whose clock is 1 h ahead still finds the tasks created in the last 30
    minutes: ``date("30 minutes ago")`` travels as an offset the server resolves."""
    from labtasker import timeutil
    from labtasker.client import api

    with queue_env.http() as http:
        ids = {
            http.post(f"{API}/tasks", json={"args": {"i": i}}).json()["task_id"] for i in range(5)
        }
    monkeypatch.setattr(timeutil, "CLOCK_OFFSET", 3600.0)
    try:
        found = api.ls_tasks(extra_filter='created_at > date("30 minutes ago")')
        assert {t.task_id for t in found.content} == ids
        assert api.ls_tasks(extra_filter='created_at > date("in 10 minutes")').found is False
    finally:
        api.close_httpx_client()


@pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL connections")
def test_postgresql_connections_terminated_under_four_loops(tmp_path, scratch_dbs):
    """Every connection of the server to its (scratch) database is terminated again and again
    (pg_terminate_backend, this test's database only) while 4 loops run: every job runs once
    and succeeds."""
    import psycopg
    from conftest import PG_ADMIN_URL

    url = scratch_dbs.new_url()
    dbname = url.rsplit("/", 1)[1]
    site = Site(tmp_path / "site", url)
    stop = threading.Event()
    kills = Counter()

    def terminate():
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            while not stop.wait(0.7):
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchall()
                kills["rounds"] += 1
                kills["connections"] += len(rows)

    try:
        ids = site.submit(8, s=1.5)
        for _ in range(4):
            site.loop("sleep %(s)")
        killer = threading.Thread(target=terminate, daemon=True)
        killer.start()
        site.finish(timeout=180)
        stop.set()
        killer.join(5)
        assert kills["connections"] > 0
        assert_each_ran_once_and_succeeded(site, ids)
    finally:
        stop.set()
        site.close()


def test_a_large_sweep_submit_rides_out_a_server_restart(tmp_path, scratch_dbs):
    """``task submit --grid`` of 30,000 tasks (6 batches) while the server is killed and
    started again after 2 s: the CLI retries the batch that failed (its idempotency key makes
    the retry safe) and finishes, exit 0, every task stored once. When the server stays down,
    the Python API's error says how many tasks were stored and carries their ids."""
    import labtasker
    from labtasker.client import api

    site = Site(tmp_path / "s", scratch_dbs.new_url())
    n = 30_000

    def total() -> int:
        with site.http() as http:
            return http.post(f"{API}/tasks/count", json={}).json()["total"]

    try:
        proc = subprocess.Popen(
            [LABTASKER, "task", "submit", "--grid", f"a=range({n})", "--yes"],
            env={**os.environ, "LABTASKER_ROOT": str(site.root)},
            cwd=site.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        wait_for(lambda: total() > 0, timeout=60, interval=0.05, what="a first batch")
        site.server.kill(signal.SIGKILL)
        assert proc.poll() is None, "the submit ended before the restart: make it larger"
        time.sleep(2)
        site.server.start()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert f"{n} task(s) submitted" in out
        assert total() == n

        saved = api._default.retry_policy
        api.set_retry_policy(attempts=1, initial=0.1, max_wait=0.1, jitter=0.0, budget=0.5)
        caught: list[BaseException] = []
        answered = threading.Event()  # the client has the answer of a first batch

        def submit_more() -> None:
            try:
                labtasker.submit_sweep(
                    grid={"b": list(range(n))},
                    max_tasks=None,
                    client=site.http(),
                    progress=lambda done, total: answered.set(),
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                caught.append(exc)

        worker = threading.Thread(target=submit_more)
        try:
            worker.start()
            assert answered.wait(timeout=60), "no batch of the second sweep was answered"
            site.server.kill(signal.SIGKILL)
            worker.join(timeout=60)
        finally:
            api._default.set_retry_policy(saved)
        (exc,) = caught
        stored = exc.submitted_task_ids  # type: ignore[attr-defined]
        assert 0 < len(stored) < n and len(stored) % 5000 == 0, len(stored)
        assert f"{len(stored)} of {n} task(s) were submitted before this" in str(exc)
    finally:
        site.close()
