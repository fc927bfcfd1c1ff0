"""Server-wide settings (``server_settings``): the dashboard's session-signing key, shared by
every server process on the database; and an index on the events of one entity (the
dashboard's task page lists a task's transitions).

Revision ID: 0006_server_settings
Revises: 0005_progress_gone
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_server_settings"
down_revision = "0005_progress_gone"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_settings",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_index("ix_events_entity", "events", ["queue_id", "entity_id", "event_id"])


def downgrade() -> None:
    op.drop_index("ix_events_entity", table_name="events")
    op.drop_table("server_settings")
