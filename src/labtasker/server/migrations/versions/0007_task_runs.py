"""Run history: one row per run (claim) of a task, with its outcome.

``task_runs`` keeps what each run of a task came to (success, failed, timed out, cancelled,
requeued) so that a later run's report no longer erases it, and records which failures were
charged to their worker (the blame policy). The runs going on at upgrade time get a
``running`` row, so that their end is recorded like any other.

Revision ID: 0007_task_runs
Revises: 0006_server_settings
"""

import sqlalchemy as sa
from alembic import op

from labtasker.server.schema import JsonDoc, UTCDateTime

revision = "0007_task_runs"
down_revision = "0006_server_settings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    runs = op.create_table(
        "task_runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("queue_id", sa.String(36), nullable=False),
        sa.Column("worker_id", sa.String(36)),
        sa.Column("started", UTCDateTime, nullable=False),
        sa.Column("ended", UTCDateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("charged", sa.Boolean, nullable=False),
        sa.Column("summary", JsonDoc, nullable=False),
    )
    op.create_index("ix_task_runs_task", "task_runs", ["queue_id", "task_id", "started"])
    op.create_index("ix_task_runs_worker_charged", "task_runs", ["worker_id", "charged"])
    tasks = sa.table(
        "tasks",
        sa.column("task_id"),
        sa.column("queue_id"),
        sa.column("worker_id"),
        sa.column("run_id"),
        sa.column("status"),
        sa.column("start_time", UTCDateTime),
        sa.column("last_modified", UTCDateTime),
    )
    rows = (
        op.get_bind()
        .execute(
            sa.select(
                tasks.c.task_id,
                tasks.c.queue_id,
                tasks.c.worker_id,
                tasks.c.run_id,
                tasks.c.start_time,
                tasks.c.last_modified,
            ).where(tasks.c.status == "running", tasks.c.run_id.is_not(None))
        )
        .fetchall()
    )
    if rows:
        op.bulk_insert(
            runs,
            [
                {
                    "run_id": r.run_id,
                    "task_id": r.task_id,
                    "queue_id": r.queue_id,
                    "worker_id": r.worker_id,
                    "started": r.start_time or r.last_modified,
                    "ended": None,
                    "status": "running",
                    "charged": False,
                    "summary": {},
                }
                for r in rows
            ],
        )


def downgrade() -> None:
    op.drop_table("task_runs")
