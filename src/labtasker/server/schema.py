"""SQLAlchemy Core tables of the labtasker database (SQLite and PostgreSQL).

The Alembic migrations in ``migrations/versions`` create exactly these tables; a test checks
that the migrated database and this module agree.

Design notes:
* every timestamp column is ``UTCDateTime``: aware UTC datetimes in Python, ``timestamptz`` in
  PostgreSQL, ISO text in SQLite;
* ``tasks.shape_id`` points at the key structure of the task's args (``arg_shapes``), so that
  fetch evaluates the "no more, no less" rule once per distinct structure (see ``claim.py``);
* ``tasks.run_id`` is the fencing token of the current claim;
* ``tasks.run_heartbeat_timeout``/``run_task_timeout`` hold a fetch's timeout overrides for
  that run only; ``heartbeat_timeout``/``task_timeout`` keep the values the task was submitted
  with (1.0.1 overwrote them; docs/compatibility.md, B4). The sweeper applies the override if set.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# The status of a running task as SQL text, not a bound parameter: a statement must say
# ``tasks.c.status == RUNNING`` for the planner to know that the partial ``ix_tasks_running``
# holds every row it asks for.
RUNNING = literal_column("'running'", String())

queues = Table(
    "queues",
    metadata,
    Column("queue_id", String(36), primary_key=True),
    Column("queue_name", String(100), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_modified", UTCDateTime, nullable=False),
    Column("metadata", JsonDoc, nullable=False),
    # highest event id pruned from this queue's log (``eventlog.prune``); migration 0009
    Column("events_pruned_through", BigInteger, nullable=False, server_default="0"),
)

arg_shapes = Table(
    "arg_shapes",
    metadata,
    Column("shape_id", Integer, primary_key=True, autoincrement=True),
    Column(
        "queue_id", String(36), ForeignKey("queues.queue_id", ondelete="CASCADE"), nullable=False
    ),
    Column("shape_key", Text, nullable=False),
    UniqueConstraint("queue_id", "shape_key", name="uq_arg_shapes_queue_shape"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(36), primary_key=True),
    Column(
        "queue_id", String(36), ForeignKey("queues.queue_id", ondelete="CASCADE"), nullable=False
    ),
    Column("status", String(16), nullable=False),
    Column("task_name", String(100)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("start_time", UTCDateTime),
    Column("last_heartbeat", UTCDateTime),
    Column("last_modified", UTCDateTime, nullable=False),
    Column("heartbeat_timeout", Float),
    Column("task_timeout", Float),
    Column("max_retries", Integer, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("metadata", JsonDoc, nullable=False),
    Column("args", JsonDoc, nullable=False),
    Column("cmd", JsonDoc),
    Column("summary", JsonDoc, nullable=False),
    Column("worker_id", String(36)),
    Column("run_id", String(36)),
    Column("shape_id", Integer, ForeignKey("arg_shapes.shape_id"), nullable=False),
    # Timeout overrides of the current run only (fetch ``heartbeat_timeout``/``eta_max``);
    # NULL when the run has none or no run is going on. Migration 0002.
    Column("run_heartbeat_timeout", Float),
    Column("run_task_timeout", Float),
    # Latest progress snapshot of the current/last run (``report_progress``); a claim clears
    # it. Migration 0005.
    Column("progress", JsonDoc),
    # Identity of the args (``identity.args_hash``) for ``unique`` submits. Migration 0007.
    Column("args_hash", String(32)),
    Index("ix_tasks_queue_modified", "queue_id", "last_modified", "task_id"),
    # Partial (migration 0012): the running tasks only, for the timeout sweep, which must
    # spell the status as a literal (``RUNNING``) for either planner to use it; and the
    # tasks that have a worker.
    Index(
        "ix_tasks_running",
        "status",
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
    Index(
        "ix_tasks_worker",
        "worker_id",
        sqlite_where=text("worker_id IS NOT NULL"),
        postgresql_where=text("worker_id IS NOT NULL"),
    ),
    Index("ix_tasks_args_hash", "args_hash"),
)
# Claim order: priority DESC, last_modified ASC, created_at ASC (1.0.1's fetch order), task_id last so
# that ties (a batch shares one timestamp) are ordered by the index, not sorted per query.
Index(
    "ix_tasks_claim",
    tasks.c.queue_id,
    tasks.c.status,
    tasks.c.priority.desc(),
    tasks.c.last_modified,
    tasks.c.created_at,
    tasks.c.task_id,
)
Index(
    "ix_tasks_shape_claim",
    tasks.c.queue_id,
    tasks.c.shape_id,
    tasks.c.status,
    tasks.c.priority.desc(),
    tasks.c.last_modified,
    tasks.c.created_at,
    tasks.c.task_id,
)

workers = Table(
    "workers",
    metadata,
    Column("worker_id", String(36), primary_key=True),
    Column(
        "queue_id", String(36), ForeignKey("queues.queue_id", ondelete="CASCADE"), nullable=False
    ),
    Column("status", String(16), nullable=False),
    Column("worker_name", String(100)),
    Column("metadata", JsonDoc, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_modified", UTCDateTime, nullable=False),
    # When the loop that created the worker ended (NULL while live). Migration 0005.
    Column("gone_at", UTCDateTime),
    Index("ix_workers_queue_modified", "queue_id", "last_modified"),
)

# Transition log for live events (``eventlog.py``); migrations 0003, 0004 (ids never reused),
# 0006 (index per entity).
events = Table(
    "events",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("queue_id", String(36), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", String(36), nullable=False),
    Column("old_state", String(16), nullable=False),
    Column("new_state", String(16), nullable=False),
    Column("entity_data", JsonDoc, nullable=False),
    Index("ix_events_queue_event", "queue_id", "event_id"),
    # One entity's history (the dashboard's task page); migration 0006, without the queue
    # since 0012 (entity ids are unique across queues; the queue is checked on the row).
    Index("ix_events_entity", "entity_id", "event_id"),
    sqlite_autoincrement=True,
)

# Server-wide settings shared by every server process on the database, e.g. the key that
# signs dashboard session cookies (generated once, ``SqlStorage.server_secret``). Migration
# 0006.
server_settings = Table(
    "server_settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per run (claim) of a task: its outcome and whether its failure was charged to its
# worker (the blame policy, ``sql_storage``). Migration 0007. Deleted with the task.
task_runs = Table(
    "task_runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("task_id", String(36), nullable=False),
    Column("queue_id", String(36), nullable=False),
    Column("worker_id", String(36)),
    Column("started", UTCDateTime, nullable=False),
    Column("ended", UTCDateTime),
    # running | success | failed | timed_out | cancelled | requeued
    Column("status", String(16), nullable=False),
    # a failure counted in its worker's current streak of failures (``workers.retries``)
    Column("charged", Boolean, nullable=False),
    Column("summary", JsonDoc, nullable=False),
    Index("ix_task_runs_task", "queue_id", "task_id", "started"),
    Index("ix_task_runs_worker_charged", "worker_id", "charged"),
    Index("ix_task_runs_ended", "queue_id", "ended"),  # recent runs of a queue (migration 0010)
)

# Answers of submits sent with an ``Idempotency-Key`` header (``sql_storage.submit_batch``): a
# retried submit gets the stored answer instead of making its tasks again. Kept for
# ``SUBMIT_KEY_SECONDS`` (pruned by the sweeper). Migration 0008.
submit_keys = Table(
    "submit_keys",
    metadata,
    Column("queue_id", String(36), primary_key=True),
    Column("idempotency_key", String(100), primary_key=True),
    Column("request_hash", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("answer", JsonDoc),
    Index("ix_submit_keys_created", "created_at"),
)

# The leaf index of tasks' args/metadata/summary (``leaf_rows.py``): the paths of each queue, and
# one row per value reached through objects, kept in step by triggers on ``tasks``.
# Migration 0011.
leaf_paths = Table(
    "leaf_paths",
    metadata,
    Column("path_id", Integer, primary_key=True, autoincrement=True),
    Column("queue_id", String(36), nullable=False),
    Column("path", Text, nullable=False),
    UniqueConstraint("queue_id", "path", name="uq_leaf_paths_queue_path"),
)

task_leaves = Table(
    "task_leaves",
    metadata,
    Column("path_id", Integer, nullable=False),
    # 0 null, 1 number, 2 string, 3 object, 4 array, 5 boolean
    Column("kind", SmallInteger, nullable=False),
    Column("num", Numeric, nullable=False),  # the number (booleans 0/1), else 0
    # the string, else ''; compared by code point on both backends
    Column("txt", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("task_id", String(36), nullable=False),
    PrimaryKeyConstraint("path_id", "kind", "num", "txt", "task_id", name="pk_task_leaves"),
    sqlite_with_rowid=False,
)

# One row: ``app_writes`` is 1 while the submit route writes the leaf rows of its batch itself
# (SQLite insert triggers then stand aside; ``leaf_rows.insert_rows``), else 0.
leaf_writer = Table(
    "leaf_writer",
    metadata,
    Column("app_writes", Integer, nullable=False),
)
