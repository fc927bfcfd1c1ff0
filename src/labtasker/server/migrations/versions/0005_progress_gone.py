"""Progress snapshots of running tasks (``tasks.progress``) and workers that have gone
(``workers.gone_at``).

``tasks.progress``: the latest ``report_progress`` snapshot of the task's current (or last)
run, ``NULL`` until one arrives; a new claim clears it. ``workers.gone_at``: when the loop
that created the worker ended (``NULL`` while it is live). Both columns are nullable, so
existing rows need no rewrite.

Revision ID: 0005_progress_gone
Revises: 0004_event_ids_never_reused
"""

import sqlalchemy as sa
from alembic import op

from labtasker.server.schema import JsonDoc, UTCDateTime

revision = "0005_progress_gone"
down_revision = "0004_event_ids_never_reused"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("progress", JsonDoc))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("gone_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("gone_at")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("progress")
