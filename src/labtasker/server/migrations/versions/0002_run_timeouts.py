"""Per-run timeout overrides: ``tasks.run_heartbeat_timeout`` and ``tasks.run_task_timeout``.

A fetch may override a task's ``heartbeat_timeout`` (request field) and ``task_timeout``
(``eta_max``). 1.0.1 wrote those overrides over the task's own values, so they silently applied
to every later run (docs/compatibility.md, B4). They now live in these columns, set by the claim and
cleared when the run ends; the task's submitted values are left alone.

Revision ID: 0002_run_timeouts
Revises: 0001_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_run_timeouts"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("run_heartbeat_timeout", sa.Float))
        batch.add_column(sa.Column("run_task_timeout", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("run_task_timeout")
        batch.drop_column("run_heartbeat_timeout")
