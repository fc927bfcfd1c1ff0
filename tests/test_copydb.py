"""``labtasker-server copy-db``: an SQLite database copied into PostgreSQL keeps everything,
and a server on the copy carries on (claims, new ids, events)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.server import BACKEND, ServerProcess

from labtasker.server.db import Database
from labtasker.server.sql_storage import SqlStorage

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="copies into PostgreSQL")
SERVER = str(Path(sys.executable).parent / "labtasker-server")
API = "/api/v1/queues/me"


def test_copy_sqlite_into_postgresql(tmp_path, scratch_dbs):
    src_url = f"sqlite:///{tmp_path / 'src.db'}"
    db = Database(src_url)
    db.migrate()
    store = SqlStorage(db)
    qid = store.create_queue("copied", "pw", {"team": "a"})
    ids = store.submit_tasks(qid, [{"args": {"i": i, "tags": ["x"]}} for i in range(30)])
    wid = store.create_worker(qid, "w1", None, 3)
    claimed = store.fetch_task(
        qid,
        worker_id=wid,
        task_timeout=None,
        heartbeat_timeout=None,
        start_heartbeat=True,
        required_fields=["i", "tags"],
        extra_filter=None,
        cmd=None,
    )
    store.report_task(
        qid,
        claimed["task_id"],
        status="success",
        worker_id=wid,
        run_id=claimed["run_id"],
        summary={"acc": 0.5},
    )
    before = store.search_tasks(
        qid,
        extra_filter=None,
        task_id=None,
        task_name=None,
        status=None,
        sort=None,
        offset=0,
        limit=1000,
    )
    db.dispose()

    target = scratch_dbs.new_url()
    done = subprocess.run(
        [SERVER, "copy-db", "--from", src_url, "--to", target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "30 tasks" in done.stdout and "1 queues" in done.stdout
    again = subprocess.run(
        [SERVER, "copy-db", "--from", src_url, "--to", target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "already holds queues" in again.stderr

    srv = ServerProcess(db_url=target, workdir=tmp_path).start()
    try:
        http = httpx.Client(base_url=srv.url, auth=("copied", "pw"))
        after = http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"]
        assert {t["task_id"]: (t["status"], t["args"], t["summary"]) for t in after} == {
            t["task_id"]: (t["status"], t["args"], t["summary"]) for t in before
        }
        assert http.get(API).json()["metadata"] == {"team": "a"}
        # the copy keeps working: claim by shape, new shapes and events get fresh ids
        got = http.post(f"{API}/tasks/next", json={"required_fields": ["i", "tags"]}).json()
        assert got["found"] and got["task"]["task_id"] in ids
        assert http.post(f"{API}/tasks", json={"args": {"new": 1}}).status_code == 201
        assert http.post(f"{API}/tasks/next", json={"required_fields": ["new"]}).json()["found"]
    finally:
        srv.kill()
