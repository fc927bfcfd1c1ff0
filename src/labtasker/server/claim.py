"""The claim (fetch) transaction: hand the best matching pending task to exactly one worker.

Called inside a write transaction (``Database.write``). Steps:

1. **Shapes, not tasks.** The "no more, no less" rule (``labtasker.keys``) depends only on the
   key structure of a task's args. Each queue keeps its distinct structures in ``arg_shapes``;
   the rule is evaluated once per structure, never per task, so 100k pending tasks of other
   shapes cost nothing.
2. **One indexed candidate query**: pending tasks of the queue with a matching shape and the
   compiled ``extra_filter``, ordered by priority (high first), then least recently modified,
   then oldest (spec §4), ``LIMIT 1``. On PostgreSQL the row is locked with
   ``FOR UPDATE SKIP LOCKED`` so concurrent claims never wait for each other.
3. **Compare-and-set**: ``UPDATE ... WHERE task_id = :id AND status = 'pending'``; the status
   guard makes a double claim impossible even if two transactions saw the same candidate.
   SQLite serialises writers (``BEGIN IMMEDIATE``), so the guard never fails there.

Every claim gets a fresh ``run_id`` (the fencing token): heartbeats and reports carrying an
older one are refused.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import false, select, true, update
from sqlalchemy.engine import Connection, Row

from labtasker.keys import shape_matches
from labtasker.server.schema import arg_shapes, tasks


def matching_shape_ids(conn: Connection, queue_id: str, required_fields: list[str] | None
                       ) -> list[int] | None:
    """Shape ids of ``queue_id`` that satisfy ``required_fields``; ``None`` = all of them."""
    rows = conn.execute(select(arg_shapes.c.shape_id, arg_shapes.c.shape_key)
                        .where(arg_shapes.c.queue_id == queue_id)).fetchall()
    ids = [r.shape_id for r in rows if shape_matches(required_fields, json.loads(r.shape_key))]
    return None if len(ids) == len(rows) else ids


def claim_next(conn: Connection, *, queue_id: str, required_fields: list[str] | None,
               where: Any, worker_id: str | None, run_id: str, now: datetime,
               task_timeout: float | None, heartbeat_timeout: float | None,
               start_heartbeat: bool, cmd: Any) -> Row | None:
    """Claim one task; returns the updated row (all task columns) or ``None``.

    ``where``: compiled extra filter (SQL boolean). ``task_timeout``/``heartbeat_timeout``:
    seconds, overrides for this run only (``run_task_timeout``/``run_heartbeat_timeout``).
    ``cmd``: recorded on the task only when the task
    has none of its own (1.0.1 overwrote the submitted command, spec §10 bug 8).
    """
    shape_ids = matching_shape_ids(conn, queue_id, required_fields)
    if shape_ids == []:
        return None
    shape_cond = true() if shape_ids is None else (
        tasks.c.shape_id.in_(shape_ids) if shape_ids else false())
    candidate = (
        select(tasks.c.task_id, tasks.c.cmd)
        .where(tasks.c.queue_id == queue_id, tasks.c.status == "pending", shape_cond, where)
        .order_by(tasks.c.priority.desc(), tasks.c.last_modified.asc(),
                  tasks.c.created_at.asc(), tasks.c.task_id.asc())
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True, of=tasks)
    row = conn.execute(candidate).first()
    if row is None:
        return None
    values: dict[str, Any] = {
        "status": "running",
        "start_time": now,
        "last_heartbeat": now if start_heartbeat else None,
        "last_modified": now,
        "worker_id": worker_id,
        "run_id": run_id,
    }
    if cmd and not row.cmd:
        values["cmd"] = cmd
    # Overrides apply to this run only (run_* columns, cleared when the run ends); the task's
    # own submitted timeouts are kept (1.0.1 overwrote them: spec §10 bug 8).
    values["run_task_timeout"] = task_timeout or None
    values["run_heartbeat_timeout"] = heartbeat_timeout or None
    return conn.execute(
        update(tasks)
        .where(tasks.c.task_id == row.task_id, tasks.c.status == "pending")
        .values(**values)
        .returning(*[c for c in tasks.c if c.name != "shape_id"])
    ).first()
