"""Initial schema: queues, arg_shapes, tasks, workers.

Revision ID: 0001_initial
Revises:
"""

import sqlalchemy as sa
from alembic import op

from labtasker.server.schema import JsonDoc, UTCDateTime

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("queue_id", sa.String(36), primary_key=True),
        sa.Column("queue_name", sa.String(100), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_modified", UTCDateTime, nullable=False),
        sa.Column("metadata", JsonDoc, nullable=False),
    )
    op.create_table(
        "arg_shapes",
        sa.Column("shape_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "queue_id",
            sa.String(36),
            sa.ForeignKey("queues.queue_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("shape_key", sa.Text, nullable=False),
        sa.UniqueConstraint("queue_id", "shape_key", name="uq_arg_shapes_queue_shape"),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column(
            "queue_id",
            sa.String(36),
            sa.ForeignKey("queues.queue_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task_name", sa.String(100)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("start_time", UTCDateTime),
        sa.Column("last_heartbeat", UTCDateTime),
        sa.Column("last_modified", UTCDateTime, nullable=False),
        sa.Column("heartbeat_timeout", sa.Float),
        sa.Column("task_timeout", sa.Float),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("metadata", JsonDoc, nullable=False),
        sa.Column("args", JsonDoc, nullable=False),
        sa.Column("cmd", JsonDoc),
        sa.Column("summary", JsonDoc, nullable=False),
        sa.Column("worker_id", sa.String(36)),
        sa.Column("run_id", sa.String(36)),
        sa.Column("shape_id", sa.Integer, sa.ForeignKey("arg_shapes.shape_id"), nullable=False),
    )
    op.create_index("ix_tasks_queue_modified", "tasks", ["queue_id", "last_modified", "task_id"])
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.create_index("ix_tasks_worker", "tasks", ["worker_id"])
    op.create_index(
        "ix_tasks_claim",
        "tasks",
        ["queue_id", "status", sa.text("priority DESC"), "last_modified", "created_at", "task_id"],
    )
    op.create_index(
        "ix_tasks_shape_claim",
        "tasks",
        [
            "queue_id",
            "shape_id",
            "status",
            sa.text("priority DESC"),
            "last_modified",
            "created_at",
            "task_id",
        ],
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(36), primary_key=True),
        sa.Column(
            "queue_id",
            sa.String(36),
            sa.ForeignKey("queues.queue_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("worker_name", sa.String(100)),
        sa.Column("metadata", JsonDoc, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_modified", UTCDateTime, nullable=False),
    )
    op.create_index("ix_workers_queue_modified", "workers", ["queue_id", "last_modified"])


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("tasks")
    op.drop_table("arg_shapes")
    op.drop_table("queues")
