"""The claim (fetch) transaction: hand the best matching pending task to exactly one worker.

Called inside a write transaction (``Database.write``). Steps:

1. **Shapes, not tasks.** The "no more, no less" rule (``labtasker.keys``) depends only on the
   key structure of a task's args. Each queue keeps its distinct structures in ``arg_shapes``;
   the rule is evaluated once per structure, never per task, so 100k pending tasks of other
   shapes cost nothing.
2. **One indexed candidate query**: pending tasks of the queue with a matching shape and the
   compiled ``extra_filter``, ordered by priority (high first), then least recently modified,
   then oldest (1.0.1's order), ``LIMIT 1``. On PostgreSQL the row is locked with
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

from sqlalchemy import bindparam, null, select, update
from sqlalchemy.engine import Connection, Row

from labtasker.keys import shape_matches
from labtasker.server.schema import arg_shapes, tasks

_SHAPES = select(arg_shapes.c.shape_id, arg_shapes.c.shape_key).where(
    arg_shapes.c.queue_id == bindparam("queue_id")
)
_ORDER = (
    tasks.c.priority.desc(),
    tasks.c.last_modified.asc(),
    tasks.c.created_at.asc(),
    tasks.c.task_id.asc(),
)


def _candidate(shape_filter: bool, where: Any = None):
    """The candidate query: pending tasks of ``:queue_id`` (with a shape in ``:shape_ids``
    when ``shape_filter``) matching ``where``, best first, one row, skipping rows other
    transactions hold (PostgreSQL; SQLite renders no ``FOR UPDATE``)."""
    conds = [tasks.c.queue_id == bindparam("queue_id"), tasks.c.status == "pending"]
    if shape_filter:
        conds.append(tasks.c.shape_id.in_(bindparam("shape_ids", expanding=True)))
    if where is not None:
        conds.append(where)
    return (
        select(tasks.c.task_id, tasks.c.cmd)
        .where(*conds)
        .order_by(*_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True, of=tasks)
    )


# Built once (no extra filter, the common case): their compiled SQL is cached by SQLAlchemy.
_CANDIDATE_ANY_SHAPE = _candidate(False)
_CANDIDATE_SHAPES = _candidate(True)


def _claim_update(with_cmd: bool):
    values = {
        "status": "running",
        "start_time": bindparam("p_now", type_=tasks.c.start_time.type),
        "last_heartbeat": bindparam("p_heartbeat", type_=tasks.c.last_heartbeat.type),
        "last_modified": bindparam("p_now", type_=tasks.c.last_modified.type),
        "worker_id": bindparam("p_worker_id"),
        "run_id": bindparam("p_run_id"),
        "run_task_timeout": bindparam("p_task_timeout", type_=tasks.c.run_task_timeout.type),
        "run_heartbeat_timeout": bindparam(
            "p_heartbeat_timeout", type_=tasks.c.run_heartbeat_timeout.type
        ),
        "progress": null(),  # a new run starts without progress
    }
    if with_cmd:
        values["cmd"] = bindparam("p_cmd", type_=tasks.c.cmd.type)
    return (
        update(tasks)
        .where(tasks.c.task_id == bindparam("p_task_id"), tasks.c.status == "pending")
        .values(**values)
        .returning(*[c for c in tasks.c if c.name != "shape_id"])
    )


_CLAIM = _claim_update(False)
_CLAIM_WITH_CMD = _claim_update(True)


def matching_shape_ids(
    conn: Connection, queue_id: str, required_fields: list[str] | None
) -> list[int] | None:
    """Shape ids of ``queue_id`` that satisfy ``required_fields``; ``None`` = all of them."""
    rows = conn.execute(_SHAPES, {"queue_id": queue_id}).fetchall()
    ids = [r.shape_id for r in rows if shape_matches(required_fields, json.loads(r.shape_key))]
    return None if len(ids) == len(rows) else ids


def claim_next(
    conn: Connection,
    *,
    queue_id: str,
    required_fields: list[str] | None,
    where: Any,
    worker_id: str | None,
    run_id: str,
    now: datetime,
    task_timeout: float | None,
    heartbeat_timeout: float | None,
    start_heartbeat: bool,
    cmd: Any,
) -> Row | None:
    """Claim one task; returns the updated row (all task columns) or ``None``.

    ``where``: compiled extra filter (SQL boolean) or ``None``. ``task_timeout``/
    ``heartbeat_timeout``: seconds, overrides for this run only (``run_task_timeout``/
    ``run_heartbeat_timeout``). ``cmd``: recorded on the task only when the task has none of
    its own (1.0.1 overwrote the submitted command; docs/compatibility.md, B3).
    """
    shape_ids = matching_shape_ids(conn, queue_id, required_fields)
    if shape_ids == []:
        return None
    params: dict[str, Any] = {"queue_id": queue_id}
    if shape_ids is not None:
        params["shape_ids"] = shape_ids
    if where is None:
        candidate = _CANDIDATE_ANY_SHAPE if shape_ids is None else _CANDIDATE_SHAPES
    else:
        candidate = _candidate(shape_ids is not None, where)
    row = conn.execute(candidate, params).first()
    if row is None:
        return None
    # Overrides apply to this run only (run_* columns, cleared when the run ends); the task's
    # own submitted timeouts are kept (1.0.1 overwrote them; docs/compatibility.md, B4).
    values: dict[str, Any] = {
        "p_task_id": row.task_id,
        "p_now": now,
        "p_heartbeat": now if start_heartbeat else None,
        "p_worker_id": worker_id,
        "p_run_id": run_id,
        "p_task_timeout": task_timeout or None,
        "p_heartbeat_timeout": heartbeat_timeout or None,
    }
    stmt = _CLAIM
    if cmd and not row.cmd:
        stmt = _CLAIM_WITH_CMD
        values["p_cmd"] = cmd
    return conn.execute(stmt, values).first()
