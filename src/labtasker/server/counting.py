"""Task counts and the queue overview, each answered from one consistent read.

``count_tasks`` groups the matching tasks of a queue by one field in a single ``GROUP BY``
query, so the groups always add up to the total (one listing per status could not promise
that while tasks move). ``queue_overview`` gathers what ``labtasker status`` and the dashboard
show: counts per status, recent throughput and an ETA, workers, and the running tasks.

Both take an open read connection (``Database.read``) and the compiled filter; they know
nothing of HTTP. Times are seconds; timestamps are aware UTC datetimes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, func, select
from sqlalchemy.engine import Connection

from labtasker.filters.mongo_sql import FieldMap, FilterError, value_expression
from labtasker.fsm import TASK_STATES, WORKER_STATES
from labtasker.server.errors import Invalid
from labtasker.server.schema import arg_shapes, queues, task_runs, tasks, workers

MAX_GROUPS = 1000  # groups returned by one count; the largest ones when there are more
RUNNING_LIMIT = 200  # running tasks listed by the overview (oldest first)
FAILED_RUNS = ("failed", "timed_out")  # task_runs statuses of a failed run
FINISHED_RUNS = ("success", "cancelled", *FAILED_RUNS)  # ended by its job, the server or a cancel
ARG_FIELDS = "arg_fields"  # ``by`` value: group by the set of argument fields
# ``by`` fields that make no sense to group on (unique per task or per queue).
_NOT_GROUPABLE = {"_id", "task_id", "queue_id", "run_id"}


def count_tasks(
    conn: Connection, fields: FieldMap, queue_id: str, where, by: str | None, scope=None
) -> dict[str, Any]:
    """Count the tasks of ``queue_id`` matching ``where`` (a compiled filter), grouped by
    ``by``. ``scope``: the condition selecting the queue's tasks, when the caller has its
    own spelling of it (default ``tasks.queue_id = queue_id``).

    ``by``: ``"status"`` (the default for ``None``), another task column (``task_name``,
    ``priority``, ``retries``, ``worker_id`` ...) or a dotted JSON path (``args.lr``,
    ``metadata.tag``, ``summary.best``) or ``"arg_fields"``: the sorted list of dotted leaf
    fields of the task's args (``["lr", "model.depth"]``; what "no more, no less" compares).
    Returns::

        {"total": int,            # matching tasks; always the sum of every group
         "by": "status",
         "groups": [{"value": <JSON value | None>, "count": int}, ...],
         "truncated": bool}       # True when more than MAX_GROUPS distinct values exist

    For ``status`` every status is listed (zeros included) in the order pending, running,
    success, failed, cancelled. Other groups are ordered by value (missing/null first, then
    numbers, strings, objects, arrays, booleans); when truncated, the ``MAX_GROUPS`` largest
    groups are kept. A JSON path that is missing in a task and an explicit ``null`` fall in
    the same group (``value`` None). Raises ``Invalid`` naming ``by`` for an unknown field.
    """
    by = by or "status"
    if scope is None:
        scope = tasks.c.queue_id == queue_id
    if by == ARG_FIELDS:
        return _count_arg_fields(conn, scope, where)
    if by in _NOT_GROUPABLE:
        raise Invalid(f"by: cannot group by {by!r} (unique per task)")
    try:
        expr, is_json = value_expression(by, fields, conn.dialect.name)
    except FilterError as exc:
        raise Invalid(f"by: {exc}") from exc
    sub = select(expr.label("v")).where(scope, where).subquery()
    n = func.count().label("n")
    shown: ColumnElement[Any] = sub.c.v
    if is_json and conn.dialect.name == "postgresql":
        shown = cast(sub.c.v, Text)  # jsonb groups, shown as JSON text
    stmt = (
        select(
            shown.label("v"),
            n,
            func.sum(func.count()).over().label("total"),
            func.count().over().label("ngroups"),
        )
        .group_by(sub.c.v)
        .order_by(n.desc())
        .limit(MAX_GROUPS)
    )
    rows = conn.execute(stmt).fetchall()
    total = int(rows[0].total) if rows else 0
    truncated = bool(rows) and int(rows[0].ngroups) > len(rows)
    groups: list[dict[str, Any]] = []
    nulls: dict[str, Any] | None = None
    for row in rows:
        value = row.v
        if is_json and value is not None:
            value = json.loads(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        if value is None:  # missing (SQL NULL) and an explicit JSON null: one group
            if nulls is None:
                nulls = {"value": None, "count": 0}
                groups.append(nulls)
            nulls["count"] += int(row.n)
            continue
        groups.append({"value": value, "count": int(row.n)})
    if by == "status":
        have = {g["value"]: g["count"] for g in groups}
        groups = [{"value": s, "count": have.get(s, 0)} for s in TASK_STATES]
    else:
        groups.sort(key=lambda g: _value_order(g["value"]))
    return {"total": total, "by": by, "groups": groups, "truncated": truncated}


def _leaves(shape: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, sub in shape.items():
        path = prefix + key
        if isinstance(sub, dict) and sub:
            out.extend(_leaves(sub, path + "."))
        else:
            out.append(path)
    return out


def _count_arg_fields(conn: Connection, scope, where) -> dict[str, Any]:
    """``count_tasks`` by the argument shape: one GROUP BY on ``tasks.shape_id``."""
    n = func.count().label("n")
    stmt = (
        select(arg_shapes.c.shape_key, n)
        .select_from(tasks.join(arg_shapes, arg_shapes.c.shape_id == tasks.c.shape_id))
        .where(scope, where)
        .group_by(arg_shapes.c.shape_key)
        .order_by(n.desc())
    )
    rows = conn.execute(stmt).fetchall()
    groups = [{"value": sorted(_leaves(json.loads(r.shape_key))), "count": int(r.n)} for r in rows]
    truncated = len(groups) > MAX_GROUPS
    return {
        "total": sum(g["count"] for g in groups),
        "by": ARG_FIELDS,
        "groups": groups[:MAX_GROUPS],
        "truncated": truncated,
    }


def _value_order(value: Any) -> tuple:
    """Sort key of a JSON value: missing/null, numbers, strings, objects, arrays, booleans."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):
        return (5, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    if isinstance(value, str):
        return (2, 0, value)
    text = json.dumps(value, sort_keys=True)
    return (3 if isinstance(value, dict) else 4, 0, text)


def _seconds_between(dialect: str, start, end):
    """SQL seconds from ``start`` to ``end`` (two timestamp columns)."""
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def queue_overview(
    conn: Connection, queue_id: str, now: datetime, window_seconds: float
) -> dict[str, Any]:
    """The queue at a glance. ``now``: the server's current time (UTC); ``window_seconds``:
    how far back "recent" reaches. Returns::

        {"queue_id": str, "queue_name": str, "now": datetime,
         "total": int,
         "counts": {"pending": int, "running": int, "success": int, "failed": int,
                    "cancelled": int},          # sums to total (one GROUP BY)
         "window_seconds": float,
         "finished_recently": int,   # runs that ended inside the window: success, failed,
                                     # timed_out or cancelled (not requeued by hand)
         "succeeded_recently": int,
         "failed_recently": int,     # of those, failed or timed_out
         "mean_run_seconds": float | None,   # mean duration of those runs
         "throughput_per_minute": float | None,
         "eta_seconds": float | None,  # (pending + running) / throughput; None without runs
         "workers": {"active": int, "suspended": int, "crashed": int,  # live workers only
                     "gone": int},               # workers whose loop ended
         "running": [{"task_id", "task_name", "worker_id", "worker_name", "start_time",
                      "last_heartbeat", "progress"}, ...]}   # oldest first, <= RUNNING_LIMIT

    The throughput is measured over the window, or over the time since the earliest start
    among those runs when that is shorter (a sweep that began two minutes ago is not judged
    over ten). Raises ``NotFound`` for an unknown queue (via the caller).
    """
    dialect = conn.dialect.name
    queue = conn.execute(select(queues.c.queue_name).where(queues.c.queue_id == queue_id)).first()
    counts = {s: 0 for s in TASK_STATES}
    for row in conn.execute(
        select(tasks.c.status, func.count())
        .where(tasks.c.queue_id == queue_id)
        .group_by(tasks.c.status)
    ):
        counts[row[0]] = int(row[1])
    since = now - timedelta(seconds=window_seconds)
    # runs, not tasks: a task that failed twice and then succeeded ended three runs, and a
    # requeue of failed tasks does not erase their failures from the window
    recent = and_(
        task_runs.c.queue_id == queue_id,
        task_runs.c.ended >= since,
        task_runs.c.status.in_(FINISHED_RUNS),
    )
    duration = _seconds_between(dialect, task_runs.c.started, task_runs.c.ended)
    agg = conn.execute(
        select(
            func.count(),
            func.count().filter(task_runs.c.status == "success"),
            func.count().filter(task_runs.c.status.in_(FAILED_RUNS)),
            func.avg(duration),
            func.min(task_runs.c.started),
        ).where(recent)
    ).one()  # an aggregate without GROUP BY: always one row
    finished = int(agg[0] or 0)
    mean = float(agg[3]) if agg[3] is not None else None
    throughput = eta = None
    if finished:
        earliest = agg[4]
        if isinstance(earliest, str):  # SQLite aggregate over the text column
            earliest = datetime.fromisoformat(earliest).replace(tzinfo=now.tzinfo)
        span = min(window_seconds, max((now - earliest).total_seconds(), 1.0))
        throughput = finished / span * 60.0
        remaining = counts["pending"] + counts["running"]
        eta = remaining / (throughput / 60.0)
    worker_counts = {s: 0 for s in WORKER_STATES}
    worker_counts["gone"] = 0
    for row in conn.execute(
        select(workers.c.status, workers.c.gone_at.is_not(None).label("gone"), func.count())
        .where(workers.c.queue_id == queue_id)
        .group_by(workers.c.status, workers.c.gone_at.is_not(None))
    ):
        worker_counts["gone" if row.gone else row.status] += int(row[2])
    running = []
    stmt = (
        select(
            tasks.c.task_id,
            tasks.c.task_name,
            tasks.c.worker_id,
            workers.c.worker_name,
            tasks.c.start_time,
            tasks.c.last_heartbeat,
            tasks.c.progress,
        )
        .select_from(tasks.outerjoin(workers, workers.c.worker_id == tasks.c.worker_id))
        .where(tasks.c.queue_id == queue_id, tasks.c.status == "running")
        .order_by(tasks.c.start_time, tasks.c.task_id)
        .limit(RUNNING_LIMIT)
    )
    for row in conn.execute(stmt):
        running.append(dict(row._mapping))
    return {
        "queue_id": queue_id,
        "queue_name": queue.queue_name if queue else None,
        "now": now,
        "total": sum(counts.values()),
        "counts": counts,
        "window_seconds": float(window_seconds),
        "finished_recently": finished,
        "succeeded_recently": int(agg[1] or 0),
        "failed_recently": int(agg[2] or 0),
        "mean_run_seconds": mean,
        "throughput_per_minute": throughput,
        "eta_seconds": eta,
        "workers": worker_counts,
        "running": running,
    }
