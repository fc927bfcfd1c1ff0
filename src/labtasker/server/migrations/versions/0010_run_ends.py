"""Index of run ends per queue: ``ix_task_runs_ended (queue_id, ended)``.

The queue overview counts the runs that ended in its window (``counting.queue_overview``):
with this index that is a range read of the queue's newest run ends, whatever the queue's size.

Revision ID: 0010_run_ends
Revises: 0009_event_retention
"""

from alembic import op

revision = "0010_run_ends"
down_revision = "0009_event_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_task_runs_ended", "task_runs", ["queue_id", "ended"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_ended", table_name="task_runs")
