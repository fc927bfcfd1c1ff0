"""Events log: one row per state transition, streamed by ``GET /queues/me/events``.

Revision ID: 0003_events
Revises: 0002_run_timeouts
"""

import sqlalchemy as sa
from alembic import op

from labtasker.server.schema import JsonDoc, UTCDateTime

revision = "0003_events"
down_revision = "0002_run_timeouts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("queue_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(36), nullable=False),
        sa.Column("old_state", sa.String(16), nullable=False),
        sa.Column("new_state", sa.String(16), nullable=False),
        sa.Column("entity_data", JsonDoc, nullable=False),
    )
    op.create_index("ix_events_queue_event", "events", ["queue_id", "event_id"])


def downgrade() -> None:
    op.drop_table("events")
