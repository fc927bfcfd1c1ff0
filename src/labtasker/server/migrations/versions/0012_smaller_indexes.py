"""Smaller indexes: the per-entity event index without the queue, and two partial task indexes.

* ``ix_events_entity`` becomes ``(entity_id, event_id)``: entity ids are random UUIDs, unique
  across queues, so the leading ``queue_id`` (36 characters in every event's entry) sorted
  nothing; one task's history still reads as a range of this index, the queue checked on the
  row (``SqlStorage.task_events``).
* ``ix_tasks_status`` becomes ``ix_tasks_running``, holding the running tasks only: its one
  reader, the timeout sweep, asks for ``status = 'running'`` across queues, and the finished
  and pending tasks, nearly all of them, no longer have an entry.
* ``ix_tasks_worker`` holds the tasks that have a worker only (``worker_id IS NOT NULL``; every
  query on it compares ``worker_id`` with a value).

Revision ID: 0012_smaller_indexes
Revises: 0011_leaf_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_smaller_indexes"
down_revision = "0011_leaf_index"
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")
HAS_WORKER = sa.text("worker_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_events_entity", table_name="events")
    op.create_index("ix_events_entity", "events", ["entity_id", "event_id"])
    op.drop_index("ix_tasks_status", table_name="tasks")
    op.create_index(
        "ix_tasks_running", "tasks", ["status"], sqlite_where=RUNNING, postgresql_where=RUNNING
    )
    op.drop_index("ix_tasks_worker", table_name="tasks")
    op.create_index(
        "ix_tasks_worker",
        "tasks",
        ["worker_id"],
        sqlite_where=HAS_WORKER,
        postgresql_where=HAS_WORKER,
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_worker", table_name="tasks")
    op.create_index("ix_tasks_worker", "tasks", ["worker_id"])
    op.drop_index("ix_tasks_running", table_name="tasks")
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.drop_index("ix_events_entity", table_name="events")
    op.create_index("ix_events_entity", "events", ["queue_id", "entity_id", "event_id"])
