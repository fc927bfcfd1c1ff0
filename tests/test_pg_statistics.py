"""Planner statistics after bulk submits (``labtasker.server.statistics``): on PostgreSQL a
bulk submit of many tasks is followed by ``ANALYZE tasks``, so the default ``ls`` page walks
the queue's ``last_modified`` index and stops after the page instead of reading and sorting
every task of the queue (the plan PostgreSQL picked while it still believed the table empty).
On SQLite nothing runs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from labtasker.server.db import Database
from labtasker.server.schema import tasks
from labtasker.server.sql_storage import _TASK_COLUMNS, SqlStorage
from labtasker.server.statistics import MIN_ROWS


@pytest.fixture
def storage(scratch_dbs):
    db = Database(scratch_dbs.new_url())
    db.migrate()
    store = SqlStorage(db)
    yield store
    store.analyzer.wait(30)
    db.dispose()


def _submit(store: SqlStorage, qid: str, start: int, count: int) -> None:
    for i in range(start, start + count, 500):
        batch = [{"args": {"i": j, "grp": j % 10}} for j in range(i, min(start + count, i + 500))]
        store.submit_batch(qid, batch)


def _page_plan(store: SqlStorage, qid: str) -> dict:
    """The PostgreSQL plan (EXPLAIN JSON) of the default ``ls`` page of 100 of ``qid``."""
    stmt = (
        select(*_TASK_COLUMNS)
        .where(tasks.c.queue_id == qid, tasks.c.status == "pending")
        .order_by(tasks.c.last_modified.asc(), tasks.c.task_id)
        .limit(100)
    )
    compiled = stmt.compile(dialect=store.db.write_engine.dialect)
    with store.db.read() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params)
        (plan,) = cursor.fetchone()
    return json.loads(plan)[0]["Plan"] if isinstance(plan, str) else plan[0]["Plan"]


def _node_types(plan: dict) -> list[str]:
    out = [plan["Node Type"] + ":" + plan.get("Index Name", "")]
    for child in plan.get("Plans", []):
        out += _node_types(child)
    return out


def test_bulk_submit_refreshes_statistics_and_the_page_plan(storage):
    qid = storage.create_queue("stats", "pw-stats", None)
    if storage.db.dialect != "postgresql":
        _submit(storage, qid, 0, MIN_ROWS + 500)
        storage.analyzer.wait(30)
        assert storage.analyzer.runs == 0  # SQLite: nothing to refresh
        return
    _submit(storage, qid, 0, MIN_ROWS // 2)
    storage.analyzer.wait(30)
    assert storage.analyzer.runs == 0  # below the threshold: no ANALYZE yet
    _submit(storage, qid, MIN_ROWS // 2, 4 * MIN_ROWS)
    storage.analyzer.wait(30)
    assert storage.analyzer.runs >= 1
    with storage.db.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass"
        ).scalar_one()
    assert rows >= 4 * MIN_ROWS  # the planner now knows the table's size
    nodes = _node_types(_page_plan(storage, qid))
    assert not any(n.startswith("Sort:") for n in nodes), nodes  # no sort of the whole queue
    assert "Index Scan:ix_tasks_queue_modified" in nodes, nodes
    # the page itself: the first 100 tasks of the oldest batch, in submit order (a batch's
    # tasks are a microsecond apart)
    page = storage.search_tasks(
        qid,
        extra_filter=None,
        task_id=None,
        task_name=None,
        status="pending",
        sort=None,
        offset=0,
        limit=100,
    )
    assert len(page) == 100
    assert [t["args"]["i"] for t in page] == list(range(100))
