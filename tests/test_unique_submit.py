"""``unique`` submits and idempotency keys, on a real server (both backends), and migration
0007 on a database that already holds tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from support.http import API, get_task


def _count(http) -> int:
    return len(http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"])


def test_unique_equal_args_are_one_task(queue_env):
    """Key order and 1 vs 1.0 do not matter; bool is not int; deleting a task frees its args."""
    with queue_env.http() as http:
        first = http.post(
            f"{API}/tasks", json={"args": {"lr": 1, "m": {"a": 2, "b": [1, 2]}}, "unique": True}
        )
        assert first.status_code == 201 and first.json()["created"] is True
        tid = first.json()["task_id"]
        again = http.post(
            f"{API}/tasks",
            json={"args": {"m": {"b": [1.0, 2], "a": 2.0}, "lr": 1.0}, "unique": True},
        )
        assert again.json() == {"task_id": tid, "created": False}
        dotted = http.post(
            f"{API}/tasks", json={"args": {"m.a": 2, "m.b": [1, 2], "lr": 1}, "unique": True}
        )
        assert dotted.json()["task_id"] == tid
        other = http.post(
            f"{API}/tasks", json={"args": {"lr": True, "m": {"a": 2, "b": [1, 2]}}, "unique": True}
        )
        assert other.json()["created"] is True
        # without unique a duplicate is made, and the answer has no "created" (1.0.1 shape)
        plain = http.post(f"{API}/tasks", json={"args": {"lr": 1, "m": {"a": 2, "b": [1, 2]}}})
        assert set(plain.json()) == {"task_id"}
        assert _count(http) == 3
        # a unique submit matches a task in any state; a deleted one no longer counts
        http.put(
            f"{API}/tasks",
            json=[{"task_id": tid, "status": "cancelled"}],
            params={"reset_pending": False},
        )
        assert get_task(http, tid)["status"] == "cancelled"
        assert (
            http.post(
                f"{API}/tasks", json={"args": {"lr": 1, "m": {"a": 2, "b": [1, 2]}}, "unique": True}
            ).json()["created"]
            is False
        )
        assert http.delete(f"{API}/tasks/{tid}").status_code == 204
        assert http.delete(f"{API}/tasks/{plain.json()['task_id']}").status_code == 204
        back = http.post(
            f"{API}/tasks", json={"args": {"lr": 1, "m": {"a": 2, "b": [1, 2]}}, "unique": True}
        ).json()
        assert back["created"] is True and back["task_id"] != tid
        # changing a task's args changes its identity
        http.put(f"{API}/tasks", json=[{"task_id": back["task_id"], "args": {"lr": 5}}])
        assert (
            http.post(
                f"{API}/tasks", json={"args": {"lr": 5, "m": {"a": 2, "b": [1, 2]}}, "unique": True}
            ).json()["created"]
            is False
        )


def test_unique_batch_reports_created_and_existing(queue_env):
    with queue_env.http() as http:
        old = http.post(f"{API}/tasks", json={"args": {"i": 1}}).json()["task_id"]
        body = {"tasks": [{"args": {"i": i}} for i in (0, 1, 2, 0)], "unique": True}
        answer = http.post(f"{API}/tasks/batch", json=body).json()
        assert answer["created"] == [True, False, True, False]
        ids = answer["task_ids"]
        assert ids[1] == old and ids[3] == ids[0] and len(set(ids)) == 3
        assert _count(http) == 3
        again = http.post(f"{API}/tasks/batch", json=body).json()
        assert again["created"] == [False] * 4 and again["task_ids"] == ids
        # a task's own flag: only that one is checked
        mixed = http.post(
            f"{API}/tasks/batch",
            json={"tasks": [{"args": {"i": 0}}, {"args": {"i": 0}, "unique": True}]},
        ).json()
        assert mixed["created"] == [True, False] and mixed["task_ids"][1] in ids
        plain = http.post(f"{API}/tasks/batch", json={"tasks": [{"args": {"i": 0}}]}).json()
        assert set(plain) == {"task_ids"}


CONCURRENT = textwrap.dedent("""
    import json, random, sys, time
    import httpx
    url, name, password, start, seed = sys.argv[1:6]
    grid = [{"lr": lr, "seed": s, "model": {"depth": d}}
            for lr in (0.1, 0.01, 0.001) for s in range(4) for d in (2, 4)]
    random.Random(int(seed)).shuffle(grid)
    with httpx.Client(base_url=url, auth=(name, password), timeout=60) as http:
        while time.time() < float(start):
            time.sleep(0.001)
        made = 0
        for i in range(0, 24, 6):  # batches of 6, in a different order in each process
            body = {"tasks": [{"args": a} for a in grid[i:i + 6]], "unique": True}
            r = http.post("/api/v1/queues/me/tasks/batch", json=body)
            r.raise_for_status()
            made += sum(r.json()["created"])
    print(made)
""")


def test_four_processes_submitting_one_grid_leave_it_once(queue_env, tmp_path):
    script = tmp_path / "submit.py"
    script.write_text(CONCURRENT)
    start = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                queue_env.url,
                queue_env.queue_name,
                queue_env.password,
                str(start),
                str(i),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    made = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        made.append(int(out))
    assert sum(made) == 24, made
    with queue_env.http() as http:
        tasks = http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"]
    assert len(tasks) == 24
    assert len({json.dumps(t["args"], sort_keys=True) for t in tasks}) == 24


def test_idempotency_key_replays_the_first_answer(queue_env):
    with queue_env.http() as http:
        body = {"tasks": [{"args": {"k": i}} for i in range(3)]}
        first = http.post(f"{API}/tasks/batch", json=body, headers={"Idempotency-Key": "abc-1"})
        again = http.post(f"{API}/tasks/batch", json=body, headers={"Idempotency-Key": "abc-1"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert _count(http) == 3
        one = http.post(f"{API}/tasks", json={"args": {"s": 1}}, headers={"Idempotency-Key": "s"})
        two = http.post(f"{API}/tasks", json={"args": {"s": 1}}, headers={"Idempotency-Key": "s"})
        assert one.json() == two.json() and _count(http) == 4
        reused = http.post(
            f"{API}/tasks", json={"args": {"s": 2}}, headers={"Idempotency-Key": "s"}
        )
        assert reused.status_code == 409 and "different submit" in reused.json()["detail"]
        too_long = http.post(
            f"{API}/tasks", json={"args": {"s": 3}}, headers={"Idempotency-Key": "x" * 101}
        )
        assert too_long.status_code == 422 and "Idempotency-Key" in too_long.text
        assert _count(http) == 4
    # keys are per queue: another queue may use the same key
    other = httpx.post(
        queue_env.url + "/api/v1/queues",
        json={"queue_name": queue_env.queue_name + "-b", "password": "pw"},
    )
    assert other.status_code == 201
    with httpx.Client(base_url=queue_env.url, auth=(queue_env.queue_name + "-b", "pw")) as http:
        made = http.post(f"{API}/tasks", json={"args": {"s": 2}}, headers={"Idempotency-Key": "s"})
        assert made.status_code == 201 and made.json()["task_id"] != one.json()["task_id"]
        http.delete("/api/v1/queues/me", params={"cascade_delete": True})


def test_openapi_documents_unique_and_idempotency(queue_env):
    doc = httpx.get(queue_env.url + "/openapi.json").json()
    submit = doc["paths"]["/api/v1/queues/me/tasks"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in submit["parameters"])
    schemas = doc["components"]["schemas"]
    assert "unique" in schemas["TaskSubmitRequest"]["properties"]
    assert "unique" in schemas["TaskBatchSubmitRequest"]["properties"]
    assert "created" in schemas["TaskBatchSubmitResponse"]["properties"]


def _alembic_config(db):
    from pathlib import Path

    from alembic.config import Config

    import labtasker.server.db as dbmod

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(dbmod.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return cfg


@pytest.mark.backend
def test_migration_fills_args_hash_of_existing_tasks(scratch_dbs):
    from alembic import command
    from sqlalchemy import insert, select

    from labtasker.server.db import Database
    from labtasker.server.identity import args_hash
    from labtasker.server.schema import tasks
    from labtasker.server.sql_storage import SqlStorage
    from labtasker.timeutil import utc_now

    db = Database(scratch_dbs.new_url())
    try:
        cfg = _alembic_config(db)
        with db.write() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0007_task_runs")
        store = SqlStorage(db)
        qid = store.create_queue("old", "pw", None)
        now = utc_now()
        with db.write() as conn:
            shape = store._shape_id(conn, qid, {"i": 0})
            rows = [
                {
                    "task_id": f"00000000-0000-0000-0000-{i:012d}",
                    "queue_id": qid,
                    "status": "pending",
                    "created_at": now,
                    "last_modified": now,
                    "max_retries": 3,
                    "retries": 0,
                    "priority": 10,
                    "metadata": {},
                    "args": {"i": i},
                    "cmd": "",
                    "summary": {},
                    "shape_id": shape,
                }
                for i in range(4500)
            ]
            conn.execute(insert(tasks), rows)  # no args_hash: the column is not there yet
        db.migrate()
        with db.read() as conn:
            got = {
                r.task_id: r.args_hash
                for r in conn.execute(select(tasks.c.task_id, tasks.c.args_hash))
            }
        assert len(got) == 4500
        assert got[rows[7]["task_id"]] == args_hash({"i": 7})
        answer = store.submit_batch(qid, [{"args": {"i": 7.0}}, {"args": {"i": 4500}}], unique=True)
        assert answer == {
            "task_ids": [rows[7]["task_id"], answer["task_ids"][1]],
            "created": [False, True],
        }
        # down and up again on the full database
        with db.write() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0007_task_runs")
        db.migrate()
        with db.read() as conn:
            assert conn.execute(
                select(tasks.c.args_hash).where(tasks.c.task_id == rows[3]["task_id"])
            ).scalar_one() == args_hash({"i": 3})
    finally:
        db.dispose()
